"""A passage-level cascade on BEIR SciFact: MiniLM picks the passages that UPR (SmolLM2-135M) scores.

Each of BM25's top-20 abstracts is split into passages of ``--length`` words every ``--stride`` words, the
title prepended to each passage (SciFact's text is ``title\\nabstract``). Three systems, in one
``pt.Experiment``:

* ``BM25``: PISA BM25 top 20 (the candidates of both others);
* ``UPR (all passages)``: UPR query likelihood (causal, plain form) on every passage, max per document;
* ``MiniLM -> UPR (k per doc)``: the all-MiniLM-L6-v2 bi-encoder scores every passage, its best ``--k`` per
  document go to UPR, max per document (IDCM's intra-document cascade as a pipeline).

Each system runs once (timed: seconds per query, BM25 and text loading included); its run is evaluated twice,
nDCG@10 with paired t-tests (Holm-corrected) against ``UPR (all passages)`` and against BM25. UPR's efficiency
counters (passages, tokens and seconds per query) follow.

Usage (offline)::

    HF_HUB_OFFLINE=1 python examples/cascade_scifact.py [--topics N] [--k K] [--length L] [--stride S] [--threads T]
"""
from __future__ import annotations

import time

import harness  # first: sets the offline environment before torch loads
import pandas as pd
import pyterrier as pt
from ir_measures import nDCG

import pyterrier_llmrank
from pyterrier_llmrank.cascade import passage_cascade
from pyterrier_llmrank.dense import minilm_scorer
from pyterrier_llmrank.models import load_causal_lm


def split_title(df: pd.DataFrame) -> pd.DataFrame:
    """SciFact's text is ``title\\nabstract``: move the title into its own column."""
    parts = df['text'].fillna('').str.split('\n', n=1)
    return df.assign(title=parts.str[0], text=parts.str[1].fillna(''))


def main() -> None:
    ap = harness.parser(__doc__, topics=10, threads=1, batch_size=16,
                        helps={'topics': 'first N test topics (0: all 300)'})
    ap.add_argument('--candidates', type=int, default=20)
    ap.add_argument('--k', type=int, default=1, help='passages per document that reach UPR')
    ap.add_argument('--length', type=int, default=100, help='passage length in words')
    ap.add_argument('--stride', type=int, default=100)
    args = ap.parse_args()
    harness.setup(args)
    verbose = not args.quiet

    scifact, topics, qrels = harness.load('beir-scifact', args.topics)
    bm25 = harness.first_stage(scifact, args.candidates)
    candidates = bm25 >> pt.apply.generic(split_title)

    llm = load_causal_lm('smollm2-135m-instruct', device='cpu', dtype='float32')
    upr_all = pyterrier_llmrank.UPR(llm, batch_size=args.batch_size, verbose=verbose)
    upr_cascade = pyterrier_llmrank.UPR(llm, batch_size=args.batch_size, verbose=verbose)
    minilm = minilm_scorer(batch_size=64)
    split = dict(length=args.length, stride=args.stride, title_field='title')
    systems = {
        'BM25': bm25,
        'UPR (all passages)': candidates >> passage_cascade(None, upr_all, **split),
        f'MiniLM -> UPR ({args.k} per doc)': candidates >> passage_cascade(minilm, upr_cascade, k=args.k, **split),
    }
    print(f'SciFact test, first {len(topics)} of 300 topics, BM25 top {args.candidates}, passages of {args.length} '
          f'words every {args.stride}, {args.threads} torch thread(s)', flush=True)
    runs, seconds = [], []
    for name, system in systems.items():
        start = time.perf_counter()
        runs.append(system(topics))
        seconds.append(time.perf_counter() - start)
        print(f'{name}: {seconds[-1] / len(topics):.2f} s/query', flush=True)
    for baseline in (1, 0):
        res = pt.Experiment(runs, topics, qrels, eval_metrics=[nDCG @ 10], names=list(systems), baseline=baseline,
                            correction='holm', round=4)
        res['s/query'] = [round(t / len(topics), 2) for t in seconds]
        print(f'\nsignificance against {list(systems)[baseline]} (paired t-test, Holm):')
        with pd.option_context('display.width', 200, 'display.max_columns', 20):
            print(res.to_string(index=False))
    for name, upr in (('UPR (all passages)', upr_all), (f'MiniLM -> UPR ({args.k} per doc)', upr_cascade)):
        s = upr.stats.summary()
        print(f'{name}: UPR {s["sequences_per_query"]:.1f} passages/query, {s["input_tokens_per_query"]:.0f} input '
              f'tokens/query, {s["seconds_per_query"]:.2f} UPR s/query')
    print(f'total {sum(seconds):.0f} s')


if __name__ == '__main__':
    main()
