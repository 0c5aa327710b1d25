"""Hybrid sparse + dense retrieval, then an LLM reranker, on Vaswani, Cranfield and SciFact (issue 8).

As in Abdallah et al., "From Retrieval to Generation: Comparing Different Approaches" (2025): BM25 (PISA), a dense
bi-encoder (all-MiniLM-L6-v2 through pyterrier-dr, index cached), their reciprocal rank fusion and their linear
interpolation of min-max and z-score normalised scores, each alone and each followed by UPR (query likelihood with
SmolLM2-135M-Instruct) over its top ``--depth``.

    python examples/hybrid.py                              # 15 topics per collection for the reranked systems
    python examples/hybrid.py --topics 0                   # every topic (slow on a CPU)
    python examples/hybrid.py --collections cranfield --topics 5

Two tables per collection, paired t-tests against BM25 with Holm correction:

1. the five first stages on every topic (cheap: the dense index is built once, then queries take milliseconds);
2. the ten systems (first stages and first stage >> UPR) on the first ``--topics`` topics: the LLM stage is what costs.

UPR scores each (query, document) pair on its own, so a pair shared by several first stages is scored once (the union
of the top-``depth`` lists of the five first stages); each reranked system is that first stage's top ``depth``
ordered by UPR, with its remaining documents appended below in first-stage order (``(fs % depth >> upr) ^ fs``), so
AP and R@100 compare lists of the same length. Passages are cut to ``--max-passage-tokens`` tokens for UPR.
Building the dense indexes the first time encodes 18k documents (minutes on a CPU) and is not part of the timing.
"""
import os
import time

os.environ.setdefault('OMP_NUM_THREADS', '1')

import harness  # noqa: E402  (sets the offline environment before torch loads)
import pandas as pd  # noqa: E402
import pyterrier as pt  # noqa: E402
from ir_measures import AP, R, nDCG  # noqa: E402

import pyterrier_llmrank as llmrank  # noqa: E402
from pyterrier_llmrank.dense import DenseRetriever, dense_index, dense_index_path  # noqa: E402
from pyterrier_llmrank.fusion import Hybrid  # noqa: E402

MEASURES = [nDCG @ 10, AP, R @ 100]


def reranked(run: pd.DataFrame, scores: dict, depth: int) -> pd.DataFrame:
    """``(run % depth >> reranker) ^ run`` from the reranker's pair scores: the top ``depth`` of each query ordered by
    ``scores`` (ties: first-stage order), the rest below in first-stage order."""
    out = []
    for qid, g in run.sort_values(['qid', 'rank']).groupby('qid', sort=False):
        head, tail = g.iloc[:depth].copy(), g.iloc[depth:]
        head['llm'] = [scores[qid, d] for d in head['docno']]
        head = head.sort_values('llm', ascending=False, kind='stable').drop(columns='llm')
        g = pd.concat([head, tail])
        g['score'] = [float(len(g) - i) for i in range(len(g))]
        g['rank'] = range(len(g))
        out.append(g)
    return pd.concat(out, ignore_index=True)


def experiment(runs: dict, topics: pd.DataFrame, qrels: pd.DataFrame) -> pd.DataFrame:
    """One pt.Experiment (paired t-tests against the first run, Holm-corrected), shown compactly: each measure with
    its corrected p-value, and the queries up/down against BM25 for nDCG@10."""
    qids = set(topics['qid'])
    res = pt.Experiment([r[r.qid.isin(qids)] for r in runs.values()], topics, qrels, eval_metrics=MEASURES,
                        names=list(runs), baseline=0, correction='holm')
    out = pd.DataFrame({'system': res['name']})
    for m in map(str, MEASURES):
        out[m] = res[m].map(lambda v: f'{v:.4f}')
        out[f'{m} p'] = res[f'{m} p-value corrected'].map(lambda v: '' if pd.isna(v) else f'{v:.2g}')
    out['nDCG@10 +/-'] = [('' if pd.isna(u) else f'{int(u)}/{int(d)}')
                          for u, d in zip(res['nDCG@10 +'], res['nDCG@10 -'])]
    return out


def main() -> None:
    parser = harness.parser(__doc__, full_doc=True, topics=15, depth=20, model=harness.DEFAULT_MODEL, threads=1,
                            helps={'topics': 'topics per collection for the reranked systems (the first N; 0 = all)',
                                   'depth': 'documents re-ranked per query', 'model': 'causal LM of UPR',
                                   'threads': 'torch threads'})
    parser.add_argument('--collections', nargs='+', default=['vaswani', 'cranfield', 'beir-scifact'])
    parser.add_argument('--num-results', type=int, default=100, help='documents per first stage')
    parser.add_argument('--encoder', default='all-minilm-l6-v2', help='bi-encoder (sentence-transformers name/path)')
    parser.add_argument('--max-passage-tokens', type=int, default=128)
    args = parser.parse_args()
    harness.setup(args)
    verbose = not args.quiet

    import torch
    upr = llmrank.UPR(args.model, batch_size=16, max_passage_tokens=args.max_passage_tokens, verbose=verbose)
    k = args.num_results
    total = time.time()
    for name in args.collections:
        coll, topics, qrels = harness.load(name)
        cached = (dense_index_path(coll, args.encoder) / 'pt_meta.json').exists()
        t0 = time.time()
        dense_index(coll, args.encoder, verbose=verbose)     # built once and cached (not timed below)
        build = time.time() - t0
        bm25 = coll.bm25(num_results=k)
        dense = DenseRetriever(coll, args.encoder, num_results=k)
        first = {
            'BM25': bm25,
            'Dense (MiniLM)': dense,
            'RRF (k=60)': Hybrid(bm25, dense, fusion='rrf', num_results=k),
            'Linear min-max (0.5)': Hybrid(bm25, dense, fusion='minmax', alpha=0.5, num_results=k),
            'Linear z-score (0.5)': Hybrid(bm25, dense, fusion='zscore', alpha=0.5, num_results=k),
        }
        t0 = time.time()
        runs = {label: t(topics) for label, t in first.items()}
        retrieval = time.time() - t0
        print(f'\n=== {name}: {len(topics)} topics, {coll!r} ===')
        print(f'dense index {"from the cache" if cached else f"built in {build:.0f} s"}; the five first stages on '
              f'all topics: {retrieval:.1f} s')
        with pd.option_context('display.width', 250, 'display.max_columns', 50):
            print(experiment(runs, topics, qrels).to_string(index=False))

        sub = topics if not args.topics else topics.head(args.topics)
        qids = set(sub['qid'])
        pool = pd.concat([r[r.qid.isin(qids) & (r['rank'] < args.depth)][['qid', 'docno']] for r in runs.values()])
        pool = pool.drop_duplicates().merge(sub[['qid', 'query']], on='qid')
        pool = coll.text_loader()(pool.assign(score=0.0))
        upr.stats.reset()
        t0 = time.time()
        scored = upr(pool)
        llm_s = time.time() - t0
        scores = {(q, d): s for q, d, s in zip(scored['qid'], scored['docno'], scored['score'])}
        systems = dict(runs)
        for label in first:
            systems[f'{label} >> UPR'] = reranked(runs[label][runs[label].qid.isin(qids)], scores, args.depth)
        st = upr.stats.summary()
        tokens_per_pair = st.get('input_tokens_per_query', 0.0) * st.get('queries', 0.0) / max(len(pool), 1)
        print(f'\n{name}, first {len(sub)} topics: each first stage alone and % {args.depth} >> UPR '
              f'({args.model}, passages cut to {args.max_passage_tokens} tokens); UPR scored {len(pool)} distinct '
              f'pairs ({len(pool) / len(sub):.1f}/query, {tokens_per_pair:.0f} tokens/pair) in {llm_s:.0f} s '
              f'({llm_s / len(pool):.2f} s/pair, {torch.get_num_threads()} thread)')
        with pd.option_context('display.width', 250, 'display.max_columns', 50):
            print(experiment(systems, sub, qrels).to_string(index=False))
    print(f'\ntotal {time.time() - total:.0f} s')


if __name__ == '__main__':
    main()
