"""Before/after evaluation of the supervised training recipes on SciFact test: ``bm25 % 20 >> reranker``.

Systems (SmolLM2-135M-Instruct everywhere, documents cut to 128 tokens as in training):

* ``BM25``: PISA BM25 top 20;
* ``UPR (teacher)``: the distillation teacher, query likelihood (:class:`pyterrier_llmrank.UPR`);
* ``DeAR before``: the distillation student before training (the same seed, so the same random head and LoRA
  initialisation as ``build/train/distill`` started from);
* ``DeAR distilled``: ``DeARPointwise('build/train/distill')``;
* ``YesNo zero-shot``: :class:`pyterrier_llmrank.YesNo` on the base model (before SFT / contrastive);
* ``YesNo SFT``, ``YesNo contrastive``: ``YesNo('build/train/sft')``, ``YesNo('build/train/contrastive')``.

Usage (after the three training commands of ``examples/train/*.yaml``)::

    HF_HUB_OFFLINE=1 python examples/train/evaluate_scifact.py [--topics 50] [--out build/train/eval]
        [--only NAME ...]

One ``pt.Experiment`` (nDCG@10, RR@10, AP@20) with paired t-tests against a baseline; the runs are saved in
``--out`` and reused, so the table is printed again for the other baselines at no cost (``--only`` computes
some systems in a separate process). ``--topics N`` keeps the first N test topics (0: all 300).
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
from pyterrier_llmrank.train.common import load_config, set_seed  # noqa: E402
from pyterrier_llmrank.train.recipe import resolve_config  # noqa: E402
from pyterrier_llmrank.train.distill import DISTILL_DEFAULTS, DeARStudent  # noqa: E402

NAMES = ['BM25', 'UPR (teacher)', 'DeAR before', 'DeAR distilled', 'YesNo zero-shot', 'YesNo SFT',
         'YesNo contrastive']


def build(name: str, args: argparse.Namespace) -> pt.Transformer:
    kw = dict(batch_size=args.batch_size, verbose=not args.quiet, device='cpu', dtype='float32')
    if name == 'UPR (teacher)':
        return pyterrier_llmrank.UPR('smollm2-135m-instruct', max_passage_tokens=128, **kw)
    if name == 'DeAR before':
        cfg = resolve_config(load_config(os.path.join(args.configs, 'distill.yaml')), 'distill', DISTILL_DEFAULTS)
        set_seed(int(cfg['seed']))  # as the recipe, right before it builds the student
        student = DeARStudent(cfg['model'], cfg['lora'], max_query_tokens=cfg['max_query_tokens'],
                              max_passage_tokens=cfg['max_passage_tokens'], bos_token=cfg['bos_token'])
        student.model.eval()
        scorer = student.scorer
        scorer.batch_size, scorer.verbose = args.batch_size, not args.quiet
        return scorer
    if name == 'DeAR distilled':
        return pyterrier_llmrank.DeARPointwise(os.path.join(args.runs, 'distill'), max_passage_tokens=131, **kw)
    if name == 'YesNo zero-shot':
        return pyterrier_llmrank.YesNo('smollm2-135m-instruct', max_text_tokens=128, **kw)
    folder = {'YesNo SFT': 'sft', 'YesNo contrastive': 'contrastive'}[name]
    return pyterrier_llmrank.YesNo(os.path.join(args.runs, folder), max_text_tokens=128, **kw)


def main() -> None:
    ap = harness.parser(__doc__, topics=50, out='build/train/eval', threads=1, batch_size=8,
                        helps={'topics': 'first N test topics (0: all 300)', 'out': 'folder for the saved runs'})
    ap.add_argument('--runs', default='build/train', help='folder holding the sft/contrastive/distill outputs')
    ap.add_argument('--configs', default='examples/train', help='folder of the recipe configs')
    ap.add_argument('--only', nargs='*', default=None, choices=NAMES, help='compute only these systems')
    args = ap.parse_args()
    harness.setup(args)

    scifact, topics, qrels = harness.load('beir-scifact', args.topics)
    first = harness.first_stage(scifact, 20)(topics)
    stage1 = pt.Transformer.from_df(first, uniform=False)
    names = args.only or NAMES
    systems, times = [], {}
    for name in names:
        if name == 'BM25':
            systems.append(stage1)
            continue
        saved = os.path.join(args.out, f'{name}.res.gz')
        if os.path.exists(saved):  # computed earlier: pt.Experiment reuses it
            systems.append(stage1 >> pt.Transformer.identity())
            continue
        reranker = build(name, args)
        res, times[name] = harness.timed(name, reranker, first, len(topics))
        pt.io.write_results(res, saved)  # kept at once (pt.Experiment reads it back with save_mode='reuse')
        systems.append(pt.Transformer.from_df(res, uniform=False))
        del reranker
    for baseline in ([names.index('BM25')] if 'BM25' in names else [None]) + \
            [names.index(b) for b in ('DeAR before', 'YesNo zero-shot') if b in names]:
        table = pt.Experiment(systems, topics, qrels, [nDCG @ 10, RR @ 10, AP @ 20], names=names, baseline=baseline,
                              correction='holm' if baseline is not None else None, save_dir=args.out,
                              save_mode='reuse', round=4)
        label = names[baseline] if baseline is not None else 'none'
        print(f'\n## SciFact test, first {len(topics)} topics, BM25 top 20; baseline: {label} '
              f'(paired t-test, Holm)\n')
        print(table.to_string(index=False))


if __name__ == '__main__':
    main()
