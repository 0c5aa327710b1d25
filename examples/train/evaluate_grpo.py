"""Before/after evaluation of the GRPO recipes on SciFact test: ``bm25 % K >> ProRank`` (and ``>> RankR1``).

Systems (SmolLM2-135M-Instruct everywhere; prompts cut as in training):

* ``BM25``: PISA BM25 top K;
* ``ProRank before``: :class:`pyterrier_llmrank.ProRank` on the base model (zero-shot prompt);
* ``ProRank stage 1``: ``ProRank('<prorank>/stage1/model')`` (after the GRPO prompt warm-up);
* ``ProRank stage 1+2``: ``ProRank('<prorank>/model')`` (after the score learning);
* with ``--rank-r1 FOLDER``: ``RankR1 before`` / ``RankR1 after`` (slow on a CPU: generation).

Usage (after ``python -m pyterrier_llmrank.train prorank --config examples/train/prorank-cpu.yaml``)::

    HF_HUB_OFFLINE=1 python examples/train/evaluate_grpo.py --prorank build/train/prorank-cpu [--topics 30] [--depth 10]
        [--out build/train/eval-grpo] [--only NAME ...]

One ``pt.Experiment`` (nDCG@10, RR@10, AP@10) with paired t-tests (Holm) against ``BM25`` and ``ProRank before``;
runs are saved in ``--out`` and reused (``--only`` computes some systems in a separate process).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # examples/, for the harness

import harness  # noqa: E402  (sets the offline environment before torch loads)
import pyterrier as pt  # noqa: E402
from ir_measures import AP, RR, nDCG  # noqa: E402

import pyterrier_llmrank  # noqa: E402

PRORANK = ['ProRank before', 'ProRank stage 1', 'ProRank stage 1+2']
RANKR1 = ['RankR1 before', 'RankR1 after']


def build(name: str, args: argparse.Namespace) -> pt.Transformer:
    kw = dict(batch_size=args.batch_size, verbose=not args.quiet, device='cpu', dtype='float32')
    if name in PRORANK:
        folder = {'ProRank before': 'smollm2-135m-instruct',
                  'ProRank stage 1': os.path.join(args.prorank, 'stage1', 'model'),
                  'ProRank stage 1+2': os.path.join(args.prorank, 'model')}[name]
        return pyterrier_llmrank.ProRank(folder, max_length=args.max_length, **kw)
    folder = 'smollm2-135m-instruct' if name == 'RankR1 before' else args.rank_r1
    return pyterrier_llmrank.RankR1(folder, max_passage_tokens=args.passage_tokens, max_new_tokens=args.new_tokens,
                                    **kw)


def _markdown(df) -> str:
    """A markdown table (without the optional ``tabulate`` that ``DataFrame.to_markdown`` needs)."""
    rows = [[str(c) for c in df.columns]] + [[str(v) for v in r] for r in df.itertuples(index=False)]
    lines = ['| ' + ' | '.join(r) + ' |' for r in rows]
    lines.insert(1, '|' + '|'.join(' --- ' for _ in df.columns) + '|')
    return '\n'.join(lines)


def main() -> None:
    ap = harness.parser(__doc__, topics=30, depth=10, out='build/train/eval-grpo', threads=1, batch_size=8,
                        helps={'topics': 'first N test topics (0: all 300)', 'depth': 'BM25 candidates reranked',
                               'out': 'folder for the saved runs'})
    ap.add_argument('--prorank', default='build/train/prorank-cpu', help='output folder of the prorank recipe')
    ap.add_argument('--rank-r1', default=None, help='model folder of the grpo-rank-r1 recipe (adds RankR1 runs)')
    ap.add_argument('--max-length', type=int, default=64, help='ProRank query + document tokens (as in training)')
    ap.add_argument('--passage-tokens', type=int, default=32, help='RankR1 passage tokens (as in training)')
    ap.add_argument('--new-tokens', type=int, default=64, help='RankR1 tokens generated per comparison')
    ap.add_argument('--only', nargs='*', default=None, help='compute only these systems')
    args = ap.parse_args()
    harness.setup(args)

    scifact, topics, qrels = harness.load('beir-scifact', args.topics)
    first = harness.first_stage(scifact, args.depth)(topics)
    stage1 = pt.Transformer.from_df(first, uniform=False)
    names = ['BM25'] + PRORANK + (RANKR1 if args.rank_r1 else [])
    todo = args.only or names
    systems = []
    for name in names:
        saved = os.path.join(args.out, f'{name}.res.gz')
        if name == 'BM25' or os.path.exists(saved) or name not in todo:
            systems.append(stage1 >> pt.Transformer.identity())  # BM25, or a run reused from --out
            continue
        reranker = build(name, args)
        res, _ = harness.timed(name, reranker, first, len(topics))
        systems.append(pt.Transformer.from_df(res, uniform=False))
        del reranker
    if args.only:  # compute and save only
        names_done = [n for n in names if n in todo or n == 'BM25']
        pt.Experiment([s for s, n in zip(systems, names) if n in names_done], topics, qrels, [nDCG @ 10],
                      names=names_done, save_dir=args.out, save_mode='reuse')
        return
    for baseline in ('BM25', 'ProRank before'):
        table = pt.Experiment(systems, topics, qrels, [nDCG @ 10, RR @ 10, AP @ 10], names=names,
                              baseline=names.index(baseline), correction='holm', save_dir=args.out,
                              save_mode='reuse', round=4)
        print(f'\n## SciFact test, first {len(topics)} topics, BM25 top {args.depth}; baseline: {baseline} '
              f'(paired t-test, Holm)\n')
        print(_markdown(table))


if __name__ == '__main__':
    main()
