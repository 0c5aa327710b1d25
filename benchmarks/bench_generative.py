"""LLM calls and seconds per query of RankGPT, Setwise and ICR on the same 100 BM25 candidates, same model.

Sun et al. (RankGPT, EMNLP 2023): window 20, step 10 over the top 100 (9 windows per query, one after the other).
Zhuang et al. (Setwise, SIGIR 2024): heapsort with 19 children per node (up to 20 documents per prompt), top 10
sorted, one generated token per comparison. Chen et al. (ICR, ICLR 2025): all 100 candidates in one prompt,
attention scores, no generation (two forward passes per window).

All three use SmolLM2-135M-Instruct on the CPU (float32), on the BM25 top-100 of the first DL19 topics. Reported
per query: LLM calls (prompts; for ICR, windows), model calls (``generate`` / forward calls, shared among the
prompts of a batch), prompt tokens, generated tokens, and wall-clock seconds of the whole ``transform`` divided
by the number of queries. Queries run together, so RankGPT's and Setwise's prompts of different queries share
batches (``--batch-size``).

Usage::

    python benchmarks/bench_generative.py                        # 2 queries, RankGPT capped at 100 new tokens
    python benchmarks/bench_generative.py --queries 5 --rankgpt-tokens 160 --threads 2
"""
from __future__ import annotations

import argparse
import time

import harness  # noqa: E402,F401 -- offline hub, the repository on sys.path

import pandas as pd  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--queries', type=int, default=2, help='first N DL19 topics')
    ap.add_argument('--docs', type=int, default=100, help='BM25 candidates per query')
    ap.add_argument('--rankgpt-tokens', type=int, default=100, help='max_new_tokens of RankGPT per window')
    ap.add_argument('--batch-size', type=int, default=8, help='prompts per generate call')
    ap.add_argument('--threads', type=int, default=1,
                    help='torch CPU threads (1 by default: on a shared CPU, more threads than free cores make '
                         'matrix products spin and run up to 30x slower; 0: torch default)')
    ap.add_argument('--skip', default='', help='comma-separated methods to leave out (rankgpt,setwise,icr)')
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    from pyterrier_llmrank import RankGPT, Setwise, datasets
    from pyterrier_llmrank.models import load_causal_lm

    dl19 = datasets.load('msmarco-passage-trec-dl-2019')
    topics = dl19.get_topics().head(args.queries)
    inp = (dl19.get_run('bm25') % args.docs)(topics)
    llm = load_causal_lm('smollm2-135m-instruct', device='cpu', dtype='float32')

    methods = {
        'RankGPT w20 s10': lambda: RankGPT(llm, window=20, step=10, depth=args.docs, max_new_tokens=args.rankgpt_tokens,
                                           batch_size=args.batch_size),
        'Setwise c19 top-10': lambda: Setwise(llm, num_child=19, k=10, batch_size=args.batch_size),
    }
    try:
        from pyterrier_llmrank.icr import ICR
        methods['ICR (one window)'] = lambda: ICR(llm)
    except ImportError as e:  # pragma: no cover
        print(f'ICR not available ({e}); left out')
    skip = {s.strip().lower() for s in args.skip.split(',') if s.strip()}
    rows = []
    for name, make in methods.items():
        if name.split()[0].lower() in skip:
            continue
        rr = make()
        start = time.perf_counter()
        out = rr(inp)
        wall = time.perf_counter() - start
        assert len(out) == len(inp)
        pq = rr.stats.per_query()
        nq = len(pq)
        rows.append({
            'method': name,
            'LLM calls/q': pq['sequences'].mean(),
            'model calls/q': pq['model_calls'].mean(),
            'prompt tok/q': pq['input_tokens'].mean(),
            'gen tok/q': pq['generated_tokens'].mean() if 'generated_tokens' in pq else 0.0,
            's/q (wall)': wall / nq,
            'repaired+unparsable %': (100 * (pq['repaired'].sum() + pq['unparsable'].sum()) / pq['sequences'].sum()
                                      if 'repaired' in pq else float('nan')),
        })
        print(f'{name}: done in {wall:.1f} s', flush=True)
    print()
    print(f'{args.queries} DL19 queries x BM25 top-{args.docs}; SmolLM2-135M-Instruct, CPU float32, '
          f'{torch.get_num_threads()} torch threads; RankGPT max_new_tokens {args.rankgpt_tokens}, '
          f'Setwise 1 token, batch size {args.batch_size}')
    pd.set_option('display.width', 200)
    print(pd.DataFrame(rows).round(2).to_string(index=False))


if __name__ == '__main__':
    main()
