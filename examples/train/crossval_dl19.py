"""Topic-level cross-validation of a training recipe on TREC DL 2019: train on k-1 folds, evaluate on the unseen one.

The 43 judged topics are shuffled with ``--seed`` and dealt into ``--folds`` folds (round robin); for each fold
the recipe (``--recipe``, ``--config``, default the ``upr`` recipe of ``examples/train/dl19-reranker.yaml``) is
trained on the topics of the other folds only (``qids=<train_qids.txt>``), then ``BM25 % depth >> trained``
is evaluated on the held-out fold against BM25 and zero-shot UPR on the same candidates. No topic of a test
fold is read by its training run (the test topics are never in ``qids``), and nothing is tuned on them.

Usage::

    HF_HUB_OFFLINE=1 python examples/train/crossval_dl19.py                     # all folds, then the report
    python examples/train/crossval_dl19.py --fold 0 --stage train            # one fold's training (parallel runs)
    python examples/train/crossval_dl19.py --stage report                     # the tables, from the saved runs
    python examples/train/crossval_dl19.py --stage curve --step 20          # nDCG@10 of checkpoint 20 per fold

Folder ``--out`` (default ``build/train/crossval-dl19``): ``fold<k>/{train,test}_qids.txt``, ``fold<k>/model``
(the trained folder), ``runs/`` (per-topic cached runs: ``BM25``-reranked by ``UPR zero-shot`` and by each
fold's model). The report prints, per fold and pooled over all 43 topics (each topic scored by the model that
never saw it), nDCG@10, RR(rel=2)@10 and AP(rel=2)@depth with paired t-tests against BM25 and against zero-shot
UPR (Holm), and each fold's training time (``summary.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))                   # examples/train/
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # examples/, for the harness

import harness  # noqa: E402  (sets the offline environment before torch loads)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import evaluate_folder  # noqa: E402
from pyterrier_llmrank.train import run_recipe  # noqa: E402
from pyterrier_llmrank.train.common import apply_overrides, load_config  # noqa: E402

DATA = 'msmarco-passage-trec-dl-2019'
TRAINED = 'UPR fine-tuned (CV)'


def folds(qids: List[str], k: int, seed: int) -> List[List[str]]:
    """``qids`` shuffled with ``seed`` and dealt round robin into ``k`` folds."""
    order = np.random.default_rng(seed).permutation(len(qids))
    return [[qids[i] for i in order[f::k]] for f in range(k)]


def write_lines(path: str, lines: List[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(''.join(f'{x}\n' for x in lines))


def main() -> None:
    ap = harness.parser(__doc__, depth=20, out='build/train/crossval-dl19', threads=1, batch_size=16)
    ap.add_argument('--recipe', default='upr', help='training recipe (python -m pyterrier_llmrank.train RECIPE)')
    ap.add_argument('--config', default='examples/train/dl19-reranker.yaml', help='recipe configuration')
    ap.add_argument('--set', nargs='*', default=[], help='key=value overrides of the configuration')
    ap.add_argument('--folds', type=int, default=3, help='number of folds')
    ap.add_argument('--seed', type=int, default=42, help='seed of the topic shuffle')
    ap.add_argument('--fold', type=int, nargs='*', default=None, help='only these folds (default all)')
    ap.add_argument('--stage', choices=['train', 'eval', 'report', 'all', 'curve'], default='all')
    ap.add_argument('--step', type=int, nargs='*', default=[], help='stage curve: the checkpoints to evaluate')
    args = ap.parse_args()
    harness.setup(args)
    collection, topics, qrels = harness.load(DATA)
    parts = folds(topics['qid'].astype(str).tolist(), args.folds, args.seed)
    chosen = args.fold if args.fold is not None else list(range(args.folds))
    runs_dir = os.path.join(args.out, 'runs')
    os.makedirs(runs_dir, exist_ok=True)
    for f in chosen:
        fold_dir = os.path.join(args.out, f'fold{f}')
        test = parts[f]
        train = [q for g, part in enumerate(parts) if g != f for q in part]
        write_lines(os.path.join(fold_dir, 'test_qids.txt'), test)
        write_lines(os.path.join(fold_dir, 'train_qids.txt'), train)
        model = os.path.join(fold_dir, 'model')
        if args.stage in ('train', 'all'):
            cfg = apply_overrides(load_config(args.config), args.set)
            cfg.update(qids=os.path.join(fold_dir, 'train_qids.txt'), output_dir=model)
            run_recipe(args.recipe, cfg)
        held = topics[topics['qid'].astype(str).isin(set(test))]
        if args.stage in ('eval', 'all'):
            evaluate_folder.evaluate(collection, held, qrels, [model], [f'fold{f}'], args.depth, runs_dir,
                                     args.batch_size, not args.quiet)
        for step in args.step if args.stage == 'curve' else []:
            folder = export_checkpoint(model, step, os.path.join(fold_dir, f'model-step{step}'))
            evaluate_folder.evaluate(collection, held, qrels, [folder], [f'fold{f}-step{step}'], args.depth,
                                     runs_dir, args.batch_size, not args.quiet)
    if args.stage in ('report', 'all'):
        report(args, collection, topics, qrels, parts, runs_dir)


def export_checkpoint(model_dir: str, step: int, target: str) -> str:
    """A reranker folder (like ``model_dir``) holding the LoRA weights of checkpoint ``step`` of the run in
    ``model_dir`` (for the learning curve: nDCG after ``step`` steps)."""
    import shutil
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from pyterrier_llmrank.models import resolve_model_path
    from pyterrier_llmrank.train.common import load_checkpoint
    from pyterrier_llmrank.train.recipe import RERANKER_FILE, set_adapter_base
    if os.path.exists(os.path.join(target, RERANKER_FILE)):
        return target
    base_name = json.load(open(os.path.join(model_dir, 'adapter_config.json')))['base_model_name_or_path']
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(base_name))
    peft = PeftModel.from_pretrained(base, model_dir, is_trainable=True)
    load_checkpoint(os.path.join(model_dir, 'checkpoints', f'step-{step}'), peft.get_base_model(), restore_rng=False)
    peft.save_pretrained(target)
    set_adapter_base(target, base_name)
    for name in os.listdir(model_dir):
        if name.startswith('tokenizer') or name in (RERANKER_FILE, 'chat_template.jinja', 'special_tokens_map.json'):
            shutil.copy(os.path.join(model_dir, name), target)
    return target


def curve(args: argparse.Namespace, topics: pd.DataFrame, qrels: pd.DataFrame, parts: List[List[str]], runs_dir: str,
          first: pd.DataFrame, upr: pd.DataFrame, trained: pd.DataFrame) -> None:
    """The learning curve: pooled nDCG@10 of the checkpoints evaluated by ``--stage curve`` (all folds present)."""
    import re
    import pyterrier as pt
    from ir_measures import nDCG
    steps = sorted({int(m.group(1)) for n in os.listdir(runs_dir) for m in [re.match(r'fold0-step(\d+)\.res\.gz$', n)] if m})
    rows = [('BM25 (step 0 of nothing)', first), ('UPR zero-shot (step 0)', upr)]
    for step in steps:
        paths = [os.path.join(runs_dir, f'fold{f}-step{step}.res.gz') for f in range(len(parts))]
        if all(os.path.exists(p) for p in paths):
            runs = [pt.io.read_results(p) for p in paths]
            rows.append((f'step {step}', pd.concat([r[r['qid'].astype(str).isin(set(parts[f]))]
                                                     for f, r in enumerate(runs)])))
    rows.append(('final', trained))
    print(f'\n## Learning curve: pooled nDCG@10 over the {len(topics)} held-out topics\n')
    for label, run in rows:
        value = pt.Evaluate(run, qrels[qrels['qid'].astype(str).isin(set(run['qid'].astype(str)))], [nDCG @ 10])
        print(f'{label}: {list(value.values())[0]:.4f}')


def report(args: argparse.Namespace, collection, topics: pd.DataFrame, qrels: pd.DataFrame, parts: List[List[str]],
           runs_dir: str) -> None:
    """Per-fold and pooled tables (paired t-tests vs BM25 and vs zero-shot UPR, Holm), and training times."""
    import pyterrier as pt
    first = harness.first_stage(collection, args.depth)(topics)
    upr = pt.io.read_results(os.path.join(runs_dir, 'UPR zero-shot.res.gz'))
    fold_runs = []
    for f, test in enumerate(parts):
        path = os.path.join(runs_dir, f'fold{f}.res.gz')
        if not os.path.exists(path):
            print(f'fold {f}: no run yet ({path})')
            continue
        run = pt.io.read_results(path)
        fold_runs.append(run[run['qid'].astype(str).isin(set(test))])
        summary = os.path.join(args.out, f'fold{f}', 'model', 'summary.json')
        if os.path.exists(summary):
            s = json.load(open(summary))
            print(f'fold {f}: {len(test)} test topics, trained on {len(topics) - len(test)} topics: {s["groups"]} '
                  f'groups, {s["steps_done"]} steps in {s["seconds"]:.0f} s ({s["total_seconds"]:.0f} s in all)')
    if not fold_runs:
        return
    names = ['BM25', 'UPR zero-shot', TRAINED]
    scopes = [(f'fold {f}', parts[f]) for f in range(len(parts))
              if os.path.exists(os.path.join(runs_dir, f'fold{f}.res.gz'))]
    if len(fold_runs) == len(parts):
        scopes.append((f'pooled ({len(topics)} topics)', topics['qid'].astype(str).tolist()))
    trained = pd.concat(fold_runs)
    curve(args, topics, qrels, parts, runs_dir, first, upr, trained)
    for label, qids in scopes:
        keep = set(qids)
        sub = topics[topics['qid'].astype(str).isin(keep)]
        runs = [r[r['qid'].astype(str).isin(keep)] for r in (first, upr, trained)]
        for b in (0, 1):
            table = evaluate_folder.experiment(runs, names, sub, qrels, args.depth, b)
            print(f'\n## DL19 {label}, BM25 top {args.depth}; baseline {names[b]} (paired t-test, Holm)\n')
            print(table.to_string(index=False))


if __name__ == '__main__':
    main()
