"""A run of a cached reranker on the real SmolLM2, as a separate process (tests/test_caching.py kills it part-way).

    python tests/caching_worker.py METHOD CACHE_DIR OUT_FILE [QUERIES] [DEPTH]

METHOD is ``upr`` or ``rankgpt``; the first QUERIES topics of TREC DL 2019 (BM25 run, cut to DEPTH) are re-ranked
through :func:`pyterrier_llmrank.cached`; the output and the reranker's efficiency counters (the work this process
did) are pickled to OUT_FILE once the run is complete.
"""
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's package
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')


def reranker(method: str):
    """The reranker of the test: small settings so that a query takes a few seconds on a CPU."""
    import pyterrier_llmrank as llmrank
    if method == 'upr':
        return llmrank.UPR('smollm2-135m-instruct', device='cpu', dtype='float32', max_passage_tokens=48)
    if method == 'rankgpt':
        return llmrank.RankGPT('smollm2-135m-instruct', window=3, step=3, max_words=40, max_new_tokens=12,
                               batch_size=1, device='cpu', dtype='float32')
    raise ValueError(f'unknown method {method!r}')


def inputs(queries: int, depth: int):
    """The first ``queries`` topics of TREC DL 2019 with their BM25 top ``depth`` (texts included)."""
    from pyterrier_llmrank import datasets
    dl19 = datasets.load('msmarco-passage-trec-dl-2019')
    return (dl19.get_run('bm25') % depth)(dl19.get_topics().head(queries))


def main() -> None:
    method, cache, out = sys.argv[1:4]
    queries = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    depth = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    import torch
    torch.set_num_threads(1)
    import pyterrier_llmrank as llmrank
    model = reranker(method)
    result = llmrank.cached(model, cache)(inputs(queries, depth))
    with open(out + '.tmp', 'wb') as f:
        pickle.dump({'result': result, 'stats': model.stats.per_query()}, f)
    os.replace(out + '.tmp', out)


if __name__ == '__main__':
    main()
