"""Generative rerankers (RankGPT, Setwise, Rank-R1 prompt) with SmolLM2-135M-Instruct on TREC DL 2019, BM25 top-20.

RankGPT: Sun et al., EMNLP 2023. Setwise: Zhuang et al., SIGIR 2024. Rank-R1: Zhuang et al., 2025.

Usage (offline; the stored BM25 run with texts comes from ``../shared/data``)::

    HF_HUB_OFFLINE=1 python examples/generative_dl19.py [--queries N] [--methods rankgpt,setwise,rankr1]
        [--out DIR] [--threads T] [--rankgpt-tokens 100] [--rankr1-tokens 128] [--batch-size 8]

One ``pt.Experiment``: BM25 (baseline), ``bm25 % 20 >> RankGPT`` (one window of 20), ``bm25 % 20 >> Setwise``
(num_child 19, top 10 sorted, one generated token per comparison) and ``bm25 % 20 >> RankR1`` (the Rank-R1 v0.1
reasoning prompt on SmolLM2, which was not trained for it); nDCG@10, RR(rel=2)@10, AP(rel=2), paired t-tests
against BM25 with Holm correction. Afterwards, per reranker: LLM calls, prompt and generated tokens, model
seconds per query and the share of answers that had to be repaired or could not be parsed, from the rerankers'
efficiency stats; the traces (every raw answer) are written to ``DIR/trace_*.csv``.

Every method's run, per-query stats and trace are kept in ``DIR`` and extended query by query: a later call
with more topics computes only the topics missing, and ``--methods`` picks the rerankers to evaluate. Generation
on a 2-core CPU is slow, so the figures of the README come from successive calls: ``--methods rankgpt`` and
``--methods rankgpt,setwise`` on all 43 topics, then ``--methods rankgpt,setwise,rankr1 --queries 16``.

Generation on a CPU is slow, so the answers are capped: ``--rankgpt-tokens`` (100: a permutation of 20 ids takes
about 120 SmolLM2 tokens, the ids it did not reach are appended in BM25 order by RankGPT's repair rule) and
``--rankr1-tokens`` (128 instead of the reference's 2048: an answer cut before ``</answer>`` counts as
unparsable and the parent stays in place).
"""
from __future__ import annotations

import os
import time

import harness  # first: sets the offline environment before torch loads
import pandas as pd
import pyterrier as pt
import torch
from ir_measures import AP, RR, nDCG

from pyterrier_llmrank import RankGPT, RankR1, Setwise
from pyterrier_llmrank.models import load_causal_lm


METHODS = ('rankgpt', 'setwise', 'rankr1')
NAMES = {'rankgpt': 'RankGPT', 'setwise': 'Setwise', 'rankr1': 'RankR1'}


def _load(path: str) -> pd.DataFrame:
    return pd.read_csv(path, dtype={'qid': str, 'docno': str}) if os.path.exists(path) else pd.DataFrame()


def run_method(name: str, reranker, candidates: pd.DataFrame, topics: pd.DataFrame, out: str) -> pd.DataFrame:
    """The reranker's run on ``topics``, computing only the topics not yet stored in ``out``."""
    run_f, stats_f, trace_f = (os.path.join(out, f'{kind}_{name}.csv') for kind in ('run', 'stats', 'trace'))
    run, stats, trace = _load(run_f), _load(stats_f), _load(trace_f)
    done = set(run['qid']) if len(run) else set()
    todo = [q for q in topics['qid'] if q not in done]
    if todo:
        reranker.stats.reset()
        reranker.reset()
        print(f'{name}: {len(todo)} topics to rerank ({len(done)} stored)', flush=True)
        new = reranker(candidates[candidates['qid'].isin(todo)])
        run = pd.concat([run, new[['qid', 'docno', 'score', 'rank']]], ignore_index=True)
        stats = pd.concat([stats, reranker.stats.per_query()], ignore_index=True)
        trace = pd.concat([trace, reranker.trace()], ignore_index=True)
        run.to_csv(run_f, index=False)
        stats.to_csv(stats_f, index=False)
        trace.to_csv(trace_f, index=False)
    return run[run['qid'].isin(set(topics['qid']))]


def main() -> None:
    ap = harness.parser(__doc__, queries=0, out='generative_dl19_out', threads=1, batch_size=8,
                        helps={'batch_size': 'prompts per generate call'})
    ap.add_argument('--methods', default=','.join(METHODS), help=f'comma-separated subset of {",".join(METHODS)}')
    ap.add_argument('--rankgpt-tokens', type=int, default=100, help='max_new_tokens of RankGPT')
    ap.add_argument('--rankr1-tokens', type=int, default=128, help='max_new_tokens of RankR1')
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(',') if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f'unknown methods {unknown}; choose among {list(METHODS)}')
    harness.setup(args)
    verbose = not args.quiet

    dl19, topics, qrels = harness.load('msmarco-passage-trec-dl-2019', args.queries)
    bm25 = harness.first_stage(dl19)
    candidates = (bm25 % 20)(topics)

    llm = load_causal_lm('smollm2-135m-instruct', device='cpu', dtype='float32')
    make = {
        'rankgpt': lambda: RankGPT(llm, window=20, step=10, max_new_tokens=args.rankgpt_tokens,
                                   batch_size=args.batch_size, verbose=verbose),
        'setwise': lambda: Setwise(llm, num_child=19, k=10, batch_size=args.batch_size, verbose=verbose),
        'rankr1': lambda: RankR1(llm, num_child=19, k=10, max_new_tokens=args.rankr1_tokens,
                                 batch_size=args.batch_size, verbose=verbose),
    }
    start = time.time()
    runs = {m: run_method(NAMES[m], make[m](), candidates, topics, args.out) for m in methods}
    elapsed = time.time() - start
    names = ['BM25'] + [f'BM25_top20_{NAMES[m]}_smollm2' for m in methods]
    systems = [bm25] + [pt.Transformer.from_df(runs[m]) for m in methods]
    res = pt.Experiment(systems, topics, qrels, [nDCG @ 10, RR(rel=2) @ 10, AP(rel=2)], names=names,
                        baseline=0, correction='holm', round=4)
    pd.set_option('display.width', 250)
    pd.set_option('display.max_columns', 30)
    print(f'{len(topics)} topics')
    print(res.to_string())
    res.to_csv(os.path.join(args.out, f'experiment_{"_".join(methods)}_{len(topics)}q.csv'), index=False)

    rows = []
    wanted = set(topics['qid'])
    for m in methods:
        pq = _load(os.path.join(args.out, f'stats_{NAMES[m]}.csv'))
        pq = pq[pq['qid'].isin(wanted)]
        calls = pq['sequences'].sum()
        rows.append({'reranker': NAMES[m], 'queries': len(pq), 'LLM calls/query': pq['sequences'].mean(),
                     'generate calls/query': pq['model_calls'].mean(), 'prompt tokens/query': pq['input_tokens'].mean(),
                     'generated tokens/query': pq['generated_tokens'].mean(), 's/query': pq['seconds'].mean(),
                     'repaired %': 100 * pq['repaired'].sum() / calls,
                     'unparsable %': 100 * pq['unparsable'].sum() / calls})
    print(pd.DataFrame(rows).round(2).to_string(index=False))
    print(f'caps: RankGPT max_new_tokens {args.rankgpt_tokens}, Setwise 1, RankR1 {args.rankr1_tokens}; '
          f'{len(topics)} topics; wall time of this call {elapsed:.0f} s, torch threads {torch.get_num_threads()}')


if __name__ == '__main__':
    main()
