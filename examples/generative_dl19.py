"""Generative rerankers (RankGPT, Setwise, Rank-R1 prompt) with SmolLM2-135M-Instruct on TREC DL 2019, BM25 top-20.

RankGPT: Sun et al., EMNLP 2023. Setwise: Zhuang et al., SIGIR 2024. Rank-R1: Zhuang et al., 2025.

Usage (offline; the stored BM25 run with texts comes from ``../shared/data``)::

    HF_HUB_OFFLINE=1 python examples/generative_dl19.py [--queries N] [--out DIR] [--threads T]
        [--rankgpt-tokens 100] [--rankr1-tokens 128] [--batch-size 8]

One ``pt.Experiment``: BM25 (baseline), ``bm25 % 20 >> RankGPT`` (one window of 20), ``bm25 % 20 >> Setwise``
(num_child 19, top 10 sorted, one generated token per comparison) and ``bm25 % 20 >> RankR1`` (the Rank-R1 v0.1
reasoning prompt on SmolLM2, which was not trained for it); nDCG@10, RR(rel=2)@10, AP(rel=2), paired t-tests
against BM25 with Holm correction. Afterwards, per reranker: LLM calls, prompt and generated tokens, model
seconds per query and the share of answers that had to be repaired or could not be parsed, from the rerankers'
efficiency stats; the traces (every raw answer) are written to ``DIR/trace_*.csv``.

Generation on a CPU is slow, so the answers are capped: ``--rankgpt-tokens`` (100: a permutation of 20 ids takes
about 120 SmolLM2 tokens, the ids it did not reach are appended in BM25 order by RankGPT's repair rule) and
``--rankr1-tokens`` (128 instead of the reference's 2048: an answer cut before ``</answer>`` counts as
unparsable and the parent stays in place).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import pandas as pd  # noqa: E402
import pyterrier as pt  # noqa: E402
import torch  # noqa: E402
from ir_measures import AP, RR, nDCG  # noqa: E402

from pyterrier_llmrank import RankGPT, RankR1, Setwise, datasets  # noqa: E402
from pyterrier_llmrank.models import load_causal_lm  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--queries', type=int, default=0, help='first N topics only (0: all 43)')
    ap.add_argument('--out', default='generative_dl19_out', help='folder for the runs, traces and tables')
    ap.add_argument('--threads', type=int, default=1,
                    help='torch threads (1 by default: on a shared CPU, more threads than free cores make '
                         'matrix products spin and run up to 30x slower; 0: torch default)')
    ap.add_argument('--rankgpt-tokens', type=int, default=100, help='max_new_tokens of RankGPT')
    ap.add_argument('--rankr1-tokens', type=int, default=128, help='max_new_tokens of RankR1')
    ap.add_argument('--batch-size', type=int, default=8, help='prompts per generate call')
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    dl19 = datasets.load('msmarco-passage-trec-dl-2019')
    topics, qrels = dl19.get_topics(), dl19.get_qrels()
    if args.queries:
        topics = topics.head(args.queries)
    bm25 = dl19.get_run('bm25')

    llm = load_causal_lm('smollm2-135m-instruct', device='cpu', dtype='float32')
    rerankers = {
        'RankGPT': RankGPT(llm, window=20, step=10, max_new_tokens=args.rankgpt_tokens, batch_size=args.batch_size,
                           verbose=True),
        'Setwise': Setwise(llm, num_child=19, k=10, batch_size=args.batch_size, verbose=True),
        'RankR1': RankR1(llm, num_child=19, k=10, max_new_tokens=args.rankr1_tokens, batch_size=args.batch_size,
                         verbose=True),
    }
    names = ['BM25'] + [f'BM25_top20_{n}_smollm2' for n in rerankers]
    systems = [bm25] + [bm25 % 20 >> r for r in rerankers.values()]
    start = time.time()
    res = pt.Experiment(systems, topics, qrels, [nDCG @ 10, RR(rel=2) @ 10, AP(rel=2), 'mrt'], names=names,
                        baseline=0, correction='holm', save_dir=args.out, save_mode='reuse', round=4, verbose=True)
    elapsed = time.time() - start
    pd.set_option('display.width', 250)
    pd.set_option('display.max_columns', 30)
    print(res.to_string())
    res.to_csv(os.path.join(args.out, 'experiment.csv'), index=False)

    rows = []
    for name, rr in rerankers.items():
        pq = rr.stats.per_query()
        if not len(pq):  # the run was reused from save_dir
            continue
        calls = pq['sequences'].sum()
        rows.append({'reranker': name, 'queries': len(pq), 'LLM calls/query': pq['sequences'].mean(),
                     'generate calls/query': pq['model_calls'].mean(), 'prompt tokens/query': pq['input_tokens'].mean(),
                     'generated tokens/query': pq['generated_tokens'].mean(), 's/query': pq['seconds'].mean(),
                     'repaired %': 100 * pq['repaired'].sum() / calls,
                     'unparsable %': 100 * pq['unparsable'].sum() / calls})
        pq.to_csv(os.path.join(args.out, f'stats_{name}.csv'), index=False)
        rr.trace().to_csv(os.path.join(args.out, f'trace_{name}.csv'), index=False)
    if rows:
        print(pd.DataFrame(rows).round(2).to_string(index=False))
    print(f'caps: RankGPT max_new_tokens {args.rankgpt_tokens}, Setwise 1, RankR1 {args.rankr1_tokens}; '
          f'{len(topics)} topics; total wall time {elapsed:.0f} s, torch threads {torch.get_num_threads()}')


if __name__ == '__main__':
    main()
