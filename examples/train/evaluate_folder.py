"""Evaluate trained reranker folders on any collection folder: ``BM25 % depth >> reranker`` vs BM25 and zero-shot UPR.

Systems, on the same BM25 candidates (the collection's stored ``bm25`` run when it has one, else PISA BM25):

* ``BM25``: the first stage cut to ``--depth``;
* ``UPR zero-shot``: :class:`pyterrier_llmrank.UPR` on the base model (query likelihood; the reference's plain
  form and its 512-token passage budget);
* one system per ``--folder``: ``pyterrier_llmrank.train.load_reranker(folder)`` (the reranker class and the
  arguments it was trained with come from the folder's ``reranker.json``).

Usage::

    HF_HUB_OFFLINE=1 python examples/train/evaluate_folder.py --folder build/train/dl19-reranker \\
        --data ../shared/data/beir-scifact --topics 100 --depth 20 [--out build/train/eval-scifact]
        [--qids FILE] [--name NAME]

``--data`` is a collection folder in the ``../shared/data`` format (``docs.jsonl.gz``, ``topics.tsv``,
``qrels.txt``, optionally ``runs/bm25.run``), a collection name, or ``irds:<id>``: the script runs on
collections the reranker has never seen. ``--qids`` keeps only the topics listed in a file (one qid a line,
e.g. a held-out cross-validation fold). One ``pt.Experiment`` (nDCG@10, RR@10, AP@depth; relevant means label >= 2
on graded qrels, as TREC DL, else >= 1) with
paired t-tests against ``BM25`` and against ``UPR zero-shot``, Holm-corrected. Runs are cached per topic in
``--out`` (``<system>.res.gz``): a rerun computes only the topics that are missing.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # examples/, for the harness

import harness  # noqa: E402  (sets the offline environment before torch loads)
import pandas as pd  # noqa: E402
import pyterrier as pt  # noqa: E402
from ir_measures import AP, RR, nDCG  # noqa: E402

import pyterrier_llmrank  # noqa: E402
from pyterrier_llmrank.train import load_reranker  # noqa: E402

BASELINES = ['BM25', 'UPR zero-shot']


def read_qids(path: Optional[str]) -> Optional[List[str]]:
    """The qids listed in ``path`` (one a line; blank lines skipped), or ``None``."""
    if not path:
        return None
    with open(path, encoding='utf-8') as f:
        return [line.strip() for line in f if line.strip()]


def cached_rerank(path: str, make: Callable[[], Any], first: pd.DataFrame) -> pd.DataFrame:
    """The reranked ``first`` frame, read from the run file ``path`` for the topics it already holds; the other
    topics are reranked by ``make()`` (built only when needed) and added to the file."""
    have = pt.io.read_results(path) if os.path.exists(path) else None
    done = set(have['qid'].astype(str)) if have is not None else set()
    todo = first[~first['qid'].astype(str).isin(done)]
    if len(todo):
        new = make()(todo)
        keep = new[['qid', 'docno', 'score', 'rank']]
        have = keep if have is None else pd.concat([have[['qid', 'docno', 'score', 'rank']], keep])
        pt.io.write_results(have, path)
    have = have[have['qid'].astype(str).isin(set(first['qid'].astype(str)))]
    return have.merge(first[['qid', 'query']].drop_duplicates('qid'), on='qid')


def evaluate(collection: Any, topics: pd.DataFrame, qrels: pd.DataFrame, folders: List[str], names: List[str],
             depth: int, out: str, batch_size: int = 16, verbose: bool = True) -> List[pd.DataFrame]:
    """``BM25``, ``UPR zero-shot`` and the folders' rerankers on ``topics``; returns the result frames in that order."""
    first = harness.first_stage(collection, depth)(topics)
    kw = dict(batch_size=batch_size, verbose=verbose, device='cpu', dtype='float32')
    runs = [first]
    makers = [lambda: pyterrier_llmrank.UPR(harness.DEFAULT_MODEL, **kw)]
    makers += [(lambda f=f: load_reranker(f, **kw)) for f in folders]
    for name, make in zip(['UPR zero-shot', *names], makers):
        runs.append(cached_rerank(os.path.join(out, f'{name}.res.gz'), make, first))
    return runs


def experiment(runs: List[pd.DataFrame], names: List[str], topics: pd.DataFrame, qrels: pd.DataFrame, depth: int,
               baseline: int) -> pd.DataFrame:
    """One ``pt.Experiment`` of the runs with paired t-tests against ``names[baseline]`` (Holm correction)."""
    systems = [pt.Transformer.from_df(r, uniform=False) for r in runs]
    rel = 2 if qrels['label'].max() >= 2 else 1  # graded qrels (TREC DL): relevant means label >= 2
    return pt.Experiment(systems, topics, qrels, [nDCG @ 10, RR(rel=rel) @ 10, AP(rel=rel) @ depth], names=names,
                         baseline=baseline, correction='holm', round=4)


def main() -> None:
    ap = harness.parser(__doc__, data='msmarco-passage-trec-dl-2019', topics=0, depth=20, out=None, threads=1,
                        batch_size=16)
    ap.add_argument('--folder', action='append', default=[], help='a trained folder (repeatable)')
    ap.add_argument('--name', action='append', default=None, help='system name of each --folder')
    ap.add_argument('--qids', default=None, help='file of the qids to evaluate on (one a line)')
    args = ap.parse_args()
    names = args.name or [os.path.basename(os.path.normpath(f)) for f in args.folder]
    if len(names) != len(args.folder):
        raise SystemExit('--name must be given once per --folder')
    collection, topics, qrels = harness.load(args.data)
    qids = read_qids(args.qids)
    if qids is not None:
        topics = topics[topics['qid'].astype(str).isin(set(qids))]
    if args.topics:
        topics = topics.head(args.topics)
    args.out = args.out or os.path.join('build/train/eval', f'{collection.name.replace("/", "-")}-top{args.depth}')
    harness.setup(args)
    runs = evaluate(collection, topics, qrels, args.folder, names, args.depth, args.out, args.batch_size,
                    not args.quiet)
    all_names = BASELINES + names
    for b in range(len(BASELINES)):
        table = experiment(runs, all_names, topics, qrels, args.depth, b)
        print(f'\n## {collection.name}, {len(topics)} topics, BM25 top {args.depth}; baseline {all_names[b]} '
              f'(paired t-test, Holm)\n')
        print(table.to_string(index=False))


if __name__ == '__main__':
    main()
