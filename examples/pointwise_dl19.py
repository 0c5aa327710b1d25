"""Pointwise LLM scorers with SmolLM2-135M-Instruct on TREC DL 2019: BM25 top-20 reranked by YesNo, the ProRank
prompt and UPR (causal, chat form), beside BM25, in one ``pt.Experiment`` with significance tests.

* ``YesNo``: ielab/llm-rankers' yes/no prompt, score = log-softmax over the "Yes"/"No" logits.
* ``ProRank`` prompt: mxbai-rerank-v2's exact input, score = logit("1") - logit("0"). SmolLM2 was never trained
  on this prompt (ProRank's checkpoints are Qwen2.5 models fine-tuned for it): the figure only shows that the
  code runs end to end, not what ProRank achieves.
* ``UPR``: query likelihood log P("Question: {query}" | passage prompt), Sachan et al. 2022.

Usage (offline; the stored BM25 run with texts comes from ``../shared/data``)::

    HF_HUB_OFFLINE=1 python examples/pointwise_dl19.py [--queries N] [--out DIR] [--threads T] [--batch-size B]
        [--only YesNo ProRank-prompt UPR-causal]

Measures nDCG@10, RR(rel=2)@10 and AP(rel=2); paired t-tests against BM25 with Holm correction. Prints the
table and, per reranker, seconds per query, tokens fed per query and prompt tokens served from the shared-prefix
cache per query.
"""
from __future__ import annotations

import os
import time

import harness  # first: sets the offline environment before torch loads
import pandas as pd
import pyterrier as pt
import torch
from ir_measures import AP, RR, nDCG

import pyterrier_llmrank
from pyterrier_llmrank.models import load_causal_lm


def main() -> None:
    ap = harness.parser(__doc__, queries=0, out='pointwise_dl19_out', threads=0, batch_size=16)
    ap.add_argument('--only', nargs='*', default=None, choices=['YesNo', 'ProRank-prompt', 'UPR-causal'],
                    help='run only these rerankers (beside BM25); their runs are saved in --out and reused by a '
                         'later full invocation, so that the rerankers can be computed by separate processes')
    args = ap.parse_args()
    harness.setup(args)
    verbose = not args.quiet

    dl19, topics, qrels = harness.load('msmarco-passage-trec-dl-2019', args.queries)
    bm25 = harness.first_stage(dl19)

    llm = load_causal_lm('smollm2-135m-instruct', device='cpu', dtype='float32')
    rerankers = {
        'YesNo': pyterrier_llmrank.YesNo(llm, batch_size=args.batch_size, verbose=verbose),
        'ProRank-prompt': pyterrier_llmrank.ProRank(llm, batch_size=args.batch_size, verbose=verbose),
        'UPR-causal': pyterrier_llmrank.UPR('smollm2-135m-instruct', batch_size=args.batch_size, verbose=verbose,
                                            device='cpu', dtype='float32'),
    }
    if args.only is not None:
        rerankers = {k: v for k, v in rerankers.items() if k in args.only}
    names = ['BM25'] + [f'BM25_top20_{k}_smollm2' for k in rerankers]
    measures = [nDCG @ 10, RR(rel=2) @ 10, AP(rel=2)]
    start = time.time()
    res = pt.Experiment([bm25] + [bm25 % 20 >> r for r in rerankers.values()], topics, qrels, measures, names=names,
                        baseline=0, correction='holm', save_dir=args.out, save_mode='reuse', round=4, verbose=verbose)
    elapsed = time.time() - start
    pd.set_option('display.width', 250)
    pd.set_option('display.max_columns', 30)
    print(res.to_string())
    res.to_csv(os.path.join(args.out, 'experiment.csv'), index=False)
    for name, r in rerankers.items():
        pq = r.stats.per_query()
        if not len(pq):
            print(f'{name}: run reused from {args.out}, no timing')
            continue
        reused = pq['reused_prefix_tokens'].mean() if 'reused_prefix_tokens' in pq else 0.0
        print(f'{name}: {len(pq)} queries, {pq["seconds"].mean():.2f} s/query, {pq["model_calls"].mean():.1f} model '
              f'calls/query, {pq["input_tokens"].mean():.0f} tokens fed/query, {reused:.0f} prompt tokens/query '
              f'served from the shared-prefix cache')
        pq.to_csv(os.path.join(args.out, f'stats_{name}.csv'), index=False)
    print(f'total wall time {elapsed:.0f} s, torch threads {torch.get_num_threads()}')


if __name__ == '__main__':
    main()
