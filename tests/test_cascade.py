"""Pipeline-level cascades: passages, selection and aggregation against direct computations; a real cascade
(word-overlap or MiniLM choosing passages for UPR on a tiny Llama) equal to scoring the chosen passages by hand."""
import numpy as np
import pandas as pd
import pyterrier as pt
import pytest

from pyterrier_llmrank.testing import corpus_lines
from pyterrier_llmrank import UPR
from pyterrier_llmrank.cascade import SplitPassages, TopPassages, aggregate_passages, passage_cascade, split_passages
from pyterrier_llmrank.dense import minilm_path, minilm_scorer


def docs_frame():
    lines = corpus_lines(60)
    rows = [('1', 'what is the capital of france', 'd1', ' '.join(lines[0:3]), 'a'),
            ('1', 'what is the capital of france', 'd2', lines[5], 'b'),
            ('1', 'what is the capital of france', 'd3', '', 'c'),
            ('2', 'how to cook pasta', 'd1', ' '.join(lines[0:3]), 'd'),
            ('2', 'how to cook pasta', 'd4', ' '.join(lines[10:14]), 'e')]
    return pd.DataFrame(rows, columns=['qid', 'query', 'docno', 'text', 'extra'])


def overlap_scorer():
    """A deterministic cheap scorer: query words found in the passage, ties broken by shorter passages."""
    def score(row):
        words = set(row['text'].lower().split())
        return sum(w in words for w in row['query'].lower().split()) - 1e-4 * len(row['text'].split())
    return pt.apply.doc_score(score)


@pytest.mark.parametrize('n', [0, 1, 9, 10, 11, 25, 26, 40])
def test_split_passages_cover_every_token(n):
    text = ' '.join(f'w{i}' for i in range(n))
    out = split_passages(10, 4)(pd.DataFrame([['1', 'q', 'd', text]], columns=['qid', 'query', 'docno', 'text']))
    passages = [p.split() for p in out['text']]
    assert out['docno'].tolist() == [f'd%p{i}' for i in range(len(out))]
    if n <= 10:
        assert len(passages) == 1
    for i, p in enumerate(passages):
        assert p == [f'w{j}' for j in range(4 * i, min(4 * i + 10, n))]
    assert {w for p in passages for w in p} == {f'w{i}' for i in range(n)}
    assert len(passages) == 1 + max(0, -(-(n - 10) // 4))


def test_split_passages_equal_pt_sliding_where_the_tail_fits():
    df = pd.DataFrame([['1', 'q', 'd', ' '.join(f'w{i}' for i in range(28))]], columns=['qid', 'query', 'docno', 'text'])
    ours = split_passages(10, 4)(df)
    ptdf = pt.text.sliding(text_attr='text', length=10, stride=4, prepend_attr=None)(df)
    # the same passages, but pt.text.sliding drops the tail: its last passage ends at w25 (w26, w27 are lost)
    assert ours['text'].tolist()[:len(ptdf)] == ptdf['text'].tolist()
    assert 'w27' not in ' '.join(ptdf['text']) and ours['text'].iloc[-1].split()[-1] == 'w27'
    assert len(ours) == len(ptdf) + 1
    titled = split_passages(10, 4, title_field='title')(df.assign(title='T'))
    assert titled['text'].iloc[0] == 'T ' + ours['text'].iloc[0]


def passage_frame():
    rows, rng = [], np.random.default_rng(0)
    for qid in ('1', '2'):
        for d in ('a', 'b', 'c'):
            for p in range({'a': 4, 'b': 1, 'c': 3}[d]):
                rows.append((qid, 'q' + qid, f'{d}%p{p}', f'text {d}{p}', float(rng.normal())))
    return pd.DataFrame(rows, columns=['qid', 'query', 'docno', 'text', 'score'])


def test_top_passages_per_document_and_query():
    df = passage_frame()
    doc = df['docno'].str.split('%p').str[0]
    out = TopPassages(2)(df)
    expect = df.assign(doc=doc).sort_values('score', ascending=False).groupby(['qid', 'doc']).head(2)
    tied = TopPassages(2)(df.assign(score=1.0))  # ties: the earliest passages of each document
    assert sorted(tied['qid'] + tied['docno']) == sorted(q + d for q in '12' for d in ('a%p0', 'a%p1', 'b%p0', 'c%p0', 'c%p1'))
    assert sorted(out['qid'] + out['docno']) == sorted(expect['qid'] + expect['docno'])
    perq = TopPassages(3, per='query')(df)
    expect = df.sort_values('score', ascending=False).groupby('qid').head(3)
    assert sorted(perq['qid'] + perq['docno']) == sorted(expect['qid'] + expect['docno'])
    assert len(TopPassages(2)(df.iloc[:0])) == 0


@pytest.mark.parametrize('method,k', [('max', None), ('first', None), ('mean', None), ('sum', None), ('sum', 2)])
def test_aggregation_equals_direct(method, k):
    df = passage_frame()
    out = aggregate_passages(method, k)(df)
    frame = df.assign(doc=df['docno'].str.split('%p').str[0], pid=df['docno'].str.split('%p').str[1].astype(int))
    for (qid, d), g in frame.groupby(['qid', 'doc']):
        if method == 'max':
            expect = g['score'].max()
        elif method == 'first':
            expect = g.sort_values('pid')['score'].iloc[0]
        elif method == 'mean':
            expect = g['score'].mean()
        else:
            expect = np.sort(g['score'].to_numpy())[::-1][:k].sum()
        got = out[(out.qid == qid) & (out.docno == d)]
        assert len(got) == 1 and float(got['score'].iloc[0]) == pytest.approx(expect)
    for _, g in out.groupby('qid'):
        assert sorted(g['rank']) == list(range(len(g)))
        assert (np.diff(g.sort_values('rank')['score']) <= 0).all()
    assert len(aggregate_passages(method, k)(df.iloc[:0])) == 0


def nan_frame():
    """Passages of query 1: a (a%p1 NaN), b (only passage NaN), c (all numbers); query 2: d."""
    rows = [('1', 'a%p0', 0.2), ('1', 'a%p1', np.nan), ('1', 'a%p2', 0.1), ('1', 'b%p0', np.nan),
            ('1', 'c%p0', 0.3), ('1', 'c%p1', 0.05), ('2', 'd%p0', 1.0)]
    return pd.DataFrame([(q, 'q', d, s) for q, d, s in rows], columns=['qid', 'query', 'docno', 'score'])


def test_top_passages_rank_nan_scores_last():
    df = nan_frame()
    out = TopPassages(2)(df)               # a: a%p0 and a%p2 beat the NaN a%p1; b keeps its only (NaN) passage
    assert out['docno'].tolist() == ['a%p0', 'a%p2', 'b%p0', 'c%p0', 'c%p1', 'd%p0']
    assert out.loc[out.docno == 'b%p0', 'rank'].item() == 4              # last of query 1
    one = TopPassages(1)(df.assign(score=[np.nan, 0.5, np.nan, np.nan, 0.3, 0.05, 1.0]))
    assert one['docno'].tolist() == ['a%p1', 'b%p0', 'c%p0', 'd%p0']
    perq = TopPassages(5, per='query')(df)
    # the 4 numbers, then one NaN passage (ties: the lower passage number, as for equal scores)
    assert perq[perq.qid == '1'].sort_values('rank')['docno'].tolist() == ['c%p0', 'a%p0', 'a%p2', 'c%p1', 'b%p0']


@pytest.mark.parametrize('method,k,expect', [
    ('max', None, {'a': 0.2, 'b': np.nan, 'c': 0.3}),
    ('first', None, {'a': 0.2, 'b': np.nan, 'c': 0.3}),
    ('mean', None, {'a': np.nan, 'b': np.nan, 'c': 0.175}),
    ('sum', None, {'a': np.nan, 'b': np.nan, 'c': 0.35}),
    ('sum', 2, {'a': 0.3, 'b': np.nan, 'c': 0.35}),        # the 2 best of a are numbers: the NaN is not summed
    ('sum', 3, {'a': np.nan, 'b': np.nan, 'c': 0.35})])
def test_aggregation_ranks_nan_scores_last(method, k, expect):
    """A NaN passage score is lower than every number: an aggregate that takes one in is NaN and ranks last."""
    out = aggregate_passages(method, k)(nan_frame())
    q1 = out[out.qid == '1'].sort_values('rank')
    got = dict(zip(q1['docno'], q1['score']))
    assert got.keys() == expect.keys()
    for d, v in expect.items():
        assert (np.isnan(got[d]) and np.isnan(v)) or got[d] == pytest.approx(v)
    numbers = sorted((v for v in expect.values() if not np.isnan(v)), reverse=True)
    assert q1['score'].tolist()[:len(numbers)] == pytest.approx(numbers)     # NaN documents after all numbers
    assert q1['score'].iloc[len(numbers):].isna().all() and sorted(q1['rank']) == list(range(3))
    assert out[out.qid == '2']['score'].tolist() == [1.0]


@pytest.mark.parametrize('step', [TopPassages(2), aggregate_passages('max'), aggregate_passages('first'),
                                  aggregate_passages('mean'), aggregate_passages('sum', 2)], ids=repr)
def test_passage_steps_reject_document_docnos(step):
    docs = pd.DataFrame({'qid': ['1', '1'], 'query': 'q', 'docno': ['d1', 'd2%p0'], 'score': [1.0, 2.0]})
    with pytest.raises(ValueError, match=r'"<docno>%p<i>".*1 row\(s\).*\[\'d1\'\].*split_passages'):
        step(docs)


def test_cascade_equals_scoring_the_chosen_passages(tiny_llama):
    """The cascade's document scores equal: split by hand, cheap-score, keep k per document, UPR each, max."""
    inp = docs_frame()
    upr = UPR(tiny_llama.pair, device='cpu')
    cascade = passage_cascade(overlap_scorer(), upr, k=2, length=30, stride=20)
    out = cascade(inp)
    splitter = SplitPassages(30, 20)
    direct_upr = UPR(tiny_llama.pair, device='cpu', batch_size=1)
    chosen_total = 0
    for rec in inp.to_dict('records'):
        words = rec['text'].split()
        passages = [' '.join(words[a:b]) for a, b in splitter.spans(len(words))]
        qwords = rec['query'].lower().split()
        cheap = [sum(w in set(p.lower().split()) for w in qwords) - 1e-4 * len(p.split()) for p in passages]
        chosen = sorted(np.argsort(-np.array(cheap), kind='stable')[:2])
        chosen_total += len(chosen)
        rows = pd.DataFrame([(rec['qid'], rec['query'], f"{rec['docno']}%p{i}", passages[i]) for i in chosen],
                            columns=['qid', 'query', 'docno', 'text'])
        expect = direct_upr(rows)['score'].max()
        got = out[(out.qid == rec['qid']) & (out.docno == rec['docno'])]
        assert len(got) == 1 and float(got['score'].iloc[0]) == pytest.approx(expect, rel=1e-4, abs=1e-4)
    assert upr.stats.per_query()['sequences'].sum() == chosen_total  # UPR saw only the chosen passages
    full = passage_cascade(None, UPR(tiny_llama.pair, device='cpu'), length=30, stride=20)
    every = full(inp)
    assert len(every) == len(out) == len(inp)
    # a document of at most k passages gets the same score either way; a longer one at most the full score
    merged = out.merge(every, on=['qid', 'docno'], suffixes=('_cascade', '_all'))
    n_passages = {d: len(splitter.spans(len(t.split()))) for d, t in zip(inp['docno'], inp['text'])}
    short = merged['docno'].map(n_passages) <= 2
    assert short.any() and (~short).any()
    np.testing.assert_allclose(merged[short]['score_cascade'], merged[short]['score_all'], rtol=1e-5)
    assert (merged['score_cascade'] <= merged['score_all'] + 1e-4).all()


def test_minilm_scorer_is_cosine(tiny_llama):
    """MiniLM from the packaged model.zip: scores are the cosine of sentence-transformers' embeddings; it
    works as the cheap stage of a cascade."""
    from sentence_transformers import SentenceTransformer
    scorer = minilm_scorer()
    inp = docs_frame().iloc[:2]
    out = scorer(inp)
    st = SentenceTransformer(minilm_path(), device='cpu')
    q = st.encode(inp['query'].tolist(), normalize_embeddings=True)
    d = st.encode(inp['text'].tolist(), normalize_embeddings=True)
    expect = dict(zip(inp['docno'], (q * d).sum(1)))
    for docno, score in zip(out['docno'], out['score']):
        assert score == pytest.approx(float(expect[docno]), abs=1e-4)
    cascade = passage_cascade(scorer, UPR(tiny_llama.pair, device='cpu'), k=1, length=30, stride=20)
    res = cascade(docs_frame())
    assert len(res) == len(docs_frame())


def test_duplicate_docnos_named_and_inputs_validated():
    """The passage helpers never merge duplicate docnos silently, and name missing columns and qids."""
    import pyterrier_alpha as pta
    docs = pd.DataFrame({'qid': ['1', '1', '2'], 'query': 'q', 'docno': ['d1', 'd1', 'd1'],
                         'text': ['a b c d e', 'other words', 'x y']})
    with pytest.raises(ValueError, match=r"split_passages: 1 document docno\(s\) appear more than once.*\('1', 'd1'\)"):
        split_passages(2, 2)(docs)
    split_passages(2, 2)(docs.iloc[1:])  # the same docno under two queries is fine
    passages = pd.DataFrame({'qid': '1', 'query': 'q', 'docno': ['d1%p0', 'd1%p0'], 'score': [1.0, 2.0]})
    for method in ('max', 'first', 'mean', 'sum'):
        with pytest.raises(ValueError, match=r"1 passage docno\(s\) appear more than once.*d1%p0"):
            aggregate_passages(method)(passages)
    with pytest.raises(pta.validate.InputValidationError, match='qid'):
        split_passages()(docs.drop(columns='qid'))
    with pytest.raises(ValueError, match=r"split_passages: column 'qid' is missing"):
        split_passages()(docs.iloc[1:].assign(qid=[float('nan'), '2']))


def test_mean_aggregation_keeps_columns():
    passages = pd.DataFrame({'qid': '1', 'query': 'q', 'docno': ['d1%p0', 'd1%p1', 'd2%p0'], 'score': [1.0, 3.0, 2.5],
                             'extra': ['x1', 'x1', 'x2']})
    out = aggregate_passages('mean')(passages).set_index('docno')
    assert out.loc['d1', 'score'] == 2.0 and out.loc['d2', 'score'] == 2.5
    assert out.loc['d1', 'extra'] == 'x1' and out.loc['d2', 'rank'] == 0
