"""Dense retrieval with pyterrier-dr (real MiniLM), the cached dense index (built by folders.build_folder), and
the hybrid BM25 + dense pipeline."""
import gzip
import json
import os

import numpy as np
import pandas as pd
import pyterrier_alpha as pta
import pytest

from pyterrier_llmrank import datasets
from pyterrier_llmrank.dense import DenseRetriever, dense_index, dense_index_path, minilm_path
from pyterrier_llmrank.fusion import Fusion, Hybrid, fuse

DOCS = [
    ('d1', 'Cardiovascular illness can be managed with statins, beta blockers and changes in diet.'),
    ('d2', 'The stock market fell sharply after the central bank raised interest rates.'),
    ('d3', 'Photosynthesis converts light energy into chemical energy stored in glucose.'),
    ('d4', 'A heart attack happens when blood flow to part of the heart muscle is blocked.'),
    ('d5', 'Football clubs in Europe compete every year for the Champions League trophy.'),
    ('d6', 'Treatment of disease in plants often relies on fungicides sprayed on the leaves.'),
    ('d7', 'Glaciers retreat as global temperatures rise and snowfall decreases.'),
    ('d8', 'Inflation measures how quickly the prices of goods and services increase.'),
    ('d9', 'The treatment of heart disease patients includes surgery such as bypass grafts.'),
    ('d10', 'Chlorophyll absorbs red and blue light and reflects green light.'),
]
TOPICS = [('q1', 'how to treat coronary artery illness'), ('q2', 'why do prices go up'),
          ('q3', 'how do plants make food from sunlight')]


@pytest.fixture(scope='module')
def tiny_collection(tmp_path_factory):
    root = tmp_path_factory.mktemp('tinycol') / 'tiny'
    root.mkdir()
    with gzip.open(root / 'docs.jsonl.gz', 'wt', encoding='utf-8') as f:
        for docno, text in DOCS:
            f.write(json.dumps({'docno': docno, 'text': text}) + '\n')
    (root / 'topics.tsv').write_text(''.join(f'{q}\t{t}\n' for q, t in TOPICS))
    (root / 'qrels.txt').write_text('q1 0 d9 1\nq1 0 d1 1\nq2 0 d8 1\nq3 0 d3 1\nq3 0 d10 1\n')
    return datasets.load(root)


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    """A private cache folder for the module (the MiniLM folder and the tiny indexes)."""
    old = os.environ.get('PYTERRIER_LLMRANK_CACHE')
    path = tmp_path_factory.mktemp('cache')
    os.environ['PYTERRIER_LLMRANK_CACHE'] = str(path)
    yield path
    if old is None:
        del os.environ['PYTERRIER_LLMRANK_CACHE']
    else:
        os.environ['PYTERRIER_LLMRANK_CACHE'] = old


@pytest.fixture(scope='module')
def dense(tiny_collection, cache):
    import torch
    torch.set_num_threads(1)
    return DenseRetriever(tiny_collection, num_results=5, device='cpu')


def test_minilm_is_extracted_once(cache):
    path = minilm_path()
    assert path.startswith(str(cache)) and os.path.exists(os.path.join(path, 'modules.json'))
    mtime = os.path.getmtime(os.path.join(path, 'model.safetensors'))
    assert minilm_path() == path and os.path.getmtime(os.path.join(path, 'model.safetensors')) == mtime


def test_dense_scores_equal_sentence_transformers(dense, tiny_collection):
    from sentence_transformers import SentenceTransformer
    topics = tiny_collection.get_topics()
    res = dense(topics)
    assert list(res.columns) == ['qid', 'query', 'docno', 'score', 'rank']
    assert res.groupby('qid').size().tolist() == [5, 5, 5]
    st = SentenceTransformer(minilm_path(), device='cpu')
    q = st.encode(topics['query'].tolist())
    d = st.encode([t for _, t in DOCS])
    sims = q @ d.T
    for i, qid in enumerate(topics['qid']):
        got = res[res.qid == qid].sort_values('rank')
        order = np.argsort(-sims[i])[:5]
        assert got['docno'].tolist() == [DOCS[j][0] for j in order]
        np.testing.assert_allclose(got['score'].to_numpy(), sims[i][order], rtol=1e-4, atol=1e-5)
    # semantic matches without shared words: the heart-disease documents for "coronary artery illness"
    assert set(res[res.qid == 'q1'].sort_values('rank')['docno'].head(2)) <= {'d1', 'd4', 'd9'}
    assert res[res.qid == 'q2'].sort_values('rank')['docno'].iloc[0] == 'd8'


def test_dense_index_cached_and_cutoff(dense, tiny_collection):
    dense(tiny_collection.get_topics().head(1))
    path = dense_index_path(tiny_collection)
    vecs = path / 'vecs.f4'
    assert vecs.exists() and (path / 'pt_meta.json').exists()
    mtime = vecs.stat().st_mtime_ns
    index = dense_index(tiny_collection)                 # found in the cache: not rebuilt
    assert len(index) == len(DOCS) and vecs.stat().st_mtime_ns == mtime
    assert not list(path.parent.glob('.*tmp-*'))
    cut = (dense % 2).compile()
    assert isinstance(cut, DenseRetriever) and cut.num_results == 2
    assert cut(tiny_collection.get_topics()).groupby('qid').size().tolist() == [2, 2, 2]
    empty = dense(tiny_collection.get_topics().iloc[:0])
    assert len(empty) == 0 and {'docno', 'score', 'rank'} <= set(empty.columns)
    with pytest.raises(pta.validate.InputValidationError, match='query'):
        dense(pd.DataFrame({'qid': ['q1']}))
    assert repr(dense).startswith("DenseRetriever('tiny', 'all-minilm-l6-v2'")


def test_dense_index_rebuilds_unfinished_folders(tiny_collection, cache):
    """The index is built by folders.build_folder: a target folder without pt_meta.json (an interrupted older
    build) is rebuilt, and the temporary folder of a builder process that no longer runs is removed."""
    model = minilm_path()                                  # a model given by path: a cache folder of its own
    path = dense_index_path(tiny_collection, model)
    assert path != dense_index_path(tiny_collection)
    path.mkdir(parents=True)
    (path / 'vecs.f4').write_bytes(b'partial')
    stale = path.parent / f'.{path.name}.tmp-999999999-dead'
    stale.mkdir()
    index = dense_index(tiny_collection, model, device='cpu')
    assert len(index) == len(DOCS) and (path / 'pt_meta.json').exists()
    assert (path / 'vecs.f4').stat().st_size == len(DOCS) * 384 * 4
    assert not stale.exists() and not list(path.parent.glob('.*tmp-*'))


def test_dense_rejects_missing_and_blank_queries(dense):
    topics = pd.DataFrame({'qid': ['q1', 'q2', 'q3'], 'query': ['heart disease', float('nan'), '  ']})
    with pytest.raises(ValueError, match=r'column "query".*2 row\(s\).*\[\'q2\', \'q3\'\]'):
        dense(topics)
    with pytest.raises(ValueError, match='query'):
        dense(pd.DataFrame({'qid': [7], 'query': [None]}))


def test_hybrid_pipeline(tiny_collection, dense):
    bm25 = tiny_collection.bm25(num_results=5)
    topics = tiny_collection.get_topics().assign(query_0=lambda d: d['query'].str.upper())
    for fusion in ('rrf', 'minmax', 'zscore'):
        hybrid = Hybrid(bm25, dense, fusion=fusion, alpha=0.4)
        out = hybrid(topics)
        expected = fuse([bm25(topics), dense(topics)], fusion, weights=None if fusion == 'rrf' else [0.4, 0.6])
        pd.testing.assert_frame_equal(out[['qid', 'docno', 'score', 'rank']].reset_index(drop=True),
                                      expected[['qid', 'docno', 'score', 'rank']].reset_index(drop=True))
        assert list(out.columns) == ['qid', 'query', 'query_0', 'docno', 'score', 'rank']
        assert (out['query_0'] == out['query'].str.upper()).all()
    # q1 shares no word with its relevant documents' key terms beyond "illness": the hybrid keeps the dense hits
    rrf = Hybrid(bm25, dense)(topics)
    assert {'d1', 'd9'} <= set(rrf[rrf.qid == 'q1']['docno'])
    assert repr(Hybrid(bm25, dense)).endswith("fusion='rrf', k=60)")
    assert 'weights=[1.0, 2.0]' in repr(Fusion(bm25, dense, method='minmax', weights=[1, 2]))
    with pytest.raises(ValueError, match='alpha'):
        Hybrid(bm25, dense, alpha=2.0)
    with pytest.raises(ValueError, match='not to rrf'):
        Fusion(bm25, dense, weights=[1, 1])
