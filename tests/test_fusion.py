"""Fusion of result lists: RRF equal to Cormack's formula, linear fusions equal to direct computation, and the
rules on duplicated documents, int/str qids and NaN scores (issue 14)."""
import gzip
import json

import numpy as np
import pandas as pd
import pyterrier as pt
import pytest

from pyterrier_llmrank import datasets
from pyterrier_llmrank.fusion import Fusion, add_ranks, fuse, normalise_scores


def _frame(rows):
    return pd.DataFrame(rows, columns=['qid', 'query', 'docno', 'score'])


A = _frame([('1', 'q', 'a', 9.0), ('1', 'q', 'b', 7.0), ('1', 'q', 'c', 1.0), ('2', 'r', 'x', 3.0)])
B = _frame([('1', 'q', 'c', 0.9), ('1', 'q', 'd', 0.8), ('1', 'q', 'a', 0.1), ('2', 'r', 'y', 0.5),
            ('2', 'r', 'x', 0.4)])


def scores(out):
    return {(r.qid, r.docno): r.score for r in out.itertuples()}


def test_rrf_equals_cormack_formula():
    out = fuse([A, B], 'rrf', k=60)
    # 1-based ranks: a = 1/61 + 1/63, c = 1/63 + 1/61, b = 1/62, d = 1/62
    got = scores(out)
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
    got = scores(out)
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
    got = scores(z)
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


@pytest.mark.parametrize('method', ['rrf', 'minmax', 'zscore'])
def test_duplicated_document_counts_once_with_its_best_score(method):
    # A returns 'b' twice for query 1 (scores 7 and 0.5) and 'x' twice for query 2: the best copy counts
    dup = pd.concat([A, _frame([('1', 'q', 'b', 0.5), ('2', 'r', 'x', 8.0)])], ignore_index=True)
    best = _frame([('1', 'q', 'a', 9.0), ('1', 'q', 'b', 7.0), ('1', 'q', 'c', 1.0), ('2', 'r', 'x', 8.0)])
    out = fuse([dup, B], method)
    assert not out.duplicated(['qid', 'docno']).any()
    pd.testing.assert_frame_equal(out, fuse([best, B], method))
    # equal copies: the first counts (same result as without the copy)
    pd.testing.assert_frame_equal(fuse([pd.concat([A, A.iloc[[1]]], ignore_index=True), B], method),
                                  fuse([A, B], method))


@pytest.mark.parametrize('method', ['rrf', 'minmax', 'zscore'])
def test_int_and_str_qids_are_the_same_queries(method):
    ints = A.assign(qid=A['qid'].astype(int))
    out = fuse([ints, B], method)
    expected = fuse([A, B], method)
    pd.testing.assert_frame_equal(out.drop(columns='qid'), expected.drop(columns='qid'))
    assert out['qid'].tolist() == [int(q) for q in expected['qid']]          # the first list's form
    assert fuse([B, ints], method)['qid'].map(type).eq(str).all()


@pytest.fixture(scope='module')
def numeric_collection(tmp_path_factory):
    """A tiny collection with numeric qids and a stored BM25-like run (a stored run gives str qids)."""
    root = tmp_path_factory.mktemp('numcol') / 'num'
    (root / 'runs').mkdir(parents=True)
    with gzip.open(root / 'docs.jsonl.gz', 'wt', encoding='utf-8') as f:
        for d in 'abcde':
            f.write(json.dumps({'docno': d, 'text': f'document {d}'}) + '\n')
    (root / 'topics.tsv').write_text('101\tfirst query\n102\tsecond query\n')
    (root / 'qrels.txt').write_text('101 0 a 1\n102 0 d 1\n')
    (root / 'runs' / 'bm25.run').write_text('101 Q0 a 1 3.0 bm25\n101 Q0 b 2 2.0 bm25\n101 Q0 c 3 1.0 bm25\n'
                                            '102 Q0 d 1 5.0 bm25\n102 Q0 e 2 4.0 bm25\n')
    return datasets.load(root)


def test_fusion_of_a_stored_run_on_int_qid_topics(numeric_collection):
    topics = numeric_collection.get_topics()
    topics = topics.assign(qid=topics['qid'].astype(int), query_0=topics['query'].str.upper())

    def other(df):   # a retriever that keeps the topics' int qids
        rows = [(q, t, d, s) for q, t in zip(df['qid'], df['query']) for d, s in (('c', 2.0), ('b', 1.0))]
        return pd.DataFrame(rows, columns=['qid', 'query', 'docno', 'score'])

    for method in ('rrf', 'minmax', 'zscore'):
        out = Fusion(numeric_collection.get_run('bm25'), pt.apply.generic(other), method=method)(topics)
        assert out['qid'].map(type).eq(int).all()                            # the topics' form
        assert sorted(out['qid'].unique()) == [101, 102]
        assert not out.duplicated(['qid', 'docno']).any()
        assert out.groupby('qid').size().to_dict() == {101: 3, 102: 4}
        assert (out['query_0'] == out['query'].str.upper()).all()
    rrf = Fusion(numeric_collection.get_run('bm25'), pt.apply.generic(other))(topics)
    got = scores(rrf)
    assert got[(101, 'b')] == pytest.approx(1 / 62 + 1 / 62) and got[(101, 'c')] == pytest.approx(1 / 63 + 1 / 61)


def test_nan_scores_rank_last():
    nan = _frame([('1', 'q', 'a', 9.0), ('1', 'q', 'n', np.nan), ('1', 'q', 'b', 7.0), ('1', 'q', 'm', np.nan),
                  ('1', 'q', 'c', 1.0), ('2', 'r', 'x', np.nan)])
    # add_ranks: NaN below every number, ties (and NaNs) in row order; pt.model.add_ranks fails here
    assert add_ranks(nan)['rank'].tolist() == [0, 3, 1, 4, 2, 0]
    with pytest.raises(Exception):
        pt.model.add_ranks(nan.copy())
    # RRF: the NaN rows take the last ranks of their list, in row order
    last = _frame([('1', 'q', 'a', 9.0), ('1', 'q', 'b', 7.0), ('1', 'q', 'c', 1.0), ('1', 'q', 'n', -1.0),
                   ('1', 'q', 'm', -2.0), ('2', 'r', 'x', 0.0)])
    pd.testing.assert_frame_equal(fuse([nan, B], 'rrf'), fuse([last, B], 'rrf'))
    got = scores(fuse([nan, B], 'rrf'))
    assert got[('1', 'n')] == pytest.approx(1 / 64) and got[('1', 'm')] == pytest.approx(1 / 65)
    # linear: a NaN score stays NaN when normalised and counts as the list's floor (as a missing document)
    norm = normalise_scores(nan, 'minmax')
    assert norm.isna().tolist() == [False, True, False, True, False, True]
    np.testing.assert_allclose(norm.dropna().to_numpy(), [1.0, 0.75, 0.0])
    for method in ('minmax', 'zscore'):
        out = fuse([nan, B], method)
        assert np.isfinite(out['score']).all()
        plain = fuse([nan.dropna(), B], method)
        got, want = scores(out), scores(plain)
        for key, value in want.items():
            assert got[key] == pytest.approx(value)
        # n and m: the floor of each list (they are not in B either)
        floor = 0.0 if method == 'minmax' else (normalise_scores(nan.dropna(), 'zscore').iloc[:3].min()
                                                + normalise_scores(B, 'zscore').iloc[:3].min())
        assert got[('1', 'n')] == pytest.approx(floor) and got[('1', 'm')] == pytest.approx(floor)
    assert fuse([nan], 'rrf')[lambda d: d.qid == '1']['docno'].tolist() == ['a', 'b', 'c', 'n', 'm']
