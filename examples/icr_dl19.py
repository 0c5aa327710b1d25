"""ICR (calibrated attention re-ranking) with SmolLM2-135M-Instruct on TREC DL 2019, BM25 top-20 and top-100.

Chen, Gutiérrez, Su, "Attention in Large Language Models Yields Efficient Zero-Shot Re-Rankers", ICLR 2025.

Usage (offline; the stored BM25 run with texts comes from ``../shared/data``)::

    HF_HUB_OFFLINE=1 python examples/icr_dl19.py [--queries N] [--out DIR] [--threads T]

One ``pt.Experiment``: BM25 (baseline), ``bm25 % 20 >> ICR`` and ``bm25 % 100 >> ICR``; nDCG@10, RR(rel=2)@10
and AP(rel=2), paired t-tests against BM25 with Holm correction, plus the mean time per query and the number of
queries whose 100 candidates had to be cut to fit SmolLM2's 8,192-token context (``overflow='truncate'``, the
default: the words per document are lowered to fit, the instruction and query are never cut).
"""
from __future__ import annotations

import os
import time
import warnings

import harness  # first: sets the offline environment before torch loads
import pandas as pd
import pyterrier as pt
import torch
from ir_measures import AP, RR, nDCG

from pyterrier_llmrank.icr import ICR
from pyterrier_llmrank.models import load_causal_lm


def main() -> None:
    ap = harness.parser(__doc__, queries=0, out='icr_dl19_out', threads=0)
    args = ap.parse_args()
    harness.setup(args)
    verbose = not args.quiet

    dl19, topics, qrels = harness.load('msmarco-passage-trec-dl-2019', args.queries)
    bm25 = harness.first_stage(dl19)

    llm = load_causal_lm('smollm2-135m-instruct', device='cpu', dtype='float32')
    icr20, icr100 = ICR(llm, verbose=verbose), ICR(llm, verbose=verbose)
    measures = [nDCG @ 10, RR(rel=2) @ 10, AP(rel=2)]
    names = ['BM25', 'BM25_top20_ICR_smollm2', 'BM25_top100_ICR_smollm2']
    start = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        res = pt.Experiment([bm25, bm25 % 20 >> icr20, bm25 % 100 >> icr100], topics, qrels, measures, names=names,
                            baseline=0, correction='holm', save_dir=args.out, save_mode='reuse',
                            round=4, verbose=verbose)
    elapsed = time.time() - start
    overflow = [str(w.message) for w in caught if 'exceed the maximum length' in str(w.message)]
    pd.set_option('display.width', 250)
    pd.set_option('display.max_columns', 30)
    print(res.to_string())
    res.to_csv(os.path.join(args.out, 'experiment.csv'), index=False)
    for name, icr in (('top-20', icr20), ('top-100', icr100)):
        pq = icr.stats.per_query()
        trunc = int(pq['truncated_windows'].gt(0).sum()) if 'truncated_windows' in pq else 0
        print(f'ICR {name}: {len(pq)} queries, {pq["seconds"].mean():.2f} s/query, '
              f'{pq["model_calls"].mean():.1f} model calls/query, {pq["input_tokens"].mean():.0f} input tokens/query, '
              f'{trunc} queries cut to fit the context')
        pq.to_csv(os.path.join(args.out, f'stats_{name}.csv'), index=False)
    for msg in overflow[:5]:
        print('  warning:', msg)
    print(f'total wall time {elapsed:.0f} s, torch threads {torch.get_num_threads()}')


if __name__ == '__main__':
    main()
