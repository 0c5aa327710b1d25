"""One contract for every public transformer of the toolkit, on tiny models (pyterrier_llmrank.testing) or a
scripted generation backend.

Each transformer is one line of ``SPECS`` (a factory and the kind of frames it maps); every check of ``CHECKS``
(PyTerrier frame conventions) and every case of ``BAD_INPUTS`` (issue 14: malformed or extreme input) runs on each.
A bad input must give either a clear error whose message names the problem, or a correct result (no row lost or
duplicated, finite scores, ranks consistent with scores). A case that fails today is listed in ``XFAIL`` with what
goes wrong (strict: fixing it makes the test fail until the line is removed).

Beyond frames: ``BAD_ARGUMENTS`` (constructor arguments: a ``ValueError`` naming the argument), ``BAD_FILES``
(truncated and corrupted model, checkpoint and collection files: an error naming the file) and interrupted cache
folders (rebuilt whole). Each case records its outcome (``correct result`` or ``clear error``) as a JUnit property:
``pytest tests/test_contract.py --junitxml=contract.xml`` gives the totals.

Adding a reranker: one ``Spec(...)`` line in ``SPECS``.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta
import pytest
import torch

from pyterrier_llmrank import MMR5, OCR, VLYesNo
from pyterrier_llmrank import (DeARListwise, DeARPointwise, DuoT5, Fusion, GenerateAnswer, Hybrid, ICR, IDCM, IDCMModel,
                               MonoT5, ProRank, QueryDecompose, QueryRewrite, RankGPT, RankR1, ScriptedBackend, Setwise,
                               SubQueryRetrieve, TopPassages, UPR, YesNo, aggregate_passages, datasets,
                               passage_cascade, split_passages)

# ------------------------------------------------------------------------------------------------ inputs

QUERIES = {'1': 'what is the capital of france', '2': 'how do cats purr'}
DOCS = {'d1': 'Paris is the capital and largest city of France.',
        'd2': 'Cats purr by vibrating the muscles of their larynx.',
        'd3': 'The Eiffel Tower stands in Paris on the Seine.',
        'd4': 'Dogs bark, cats purr and cows moo in the farmyard.'}
RUN = [('1', 'd1'), ('1', 'd3'), ('1', 'd2'), ('2', 'd2'), ('2', 'd4'), ('2', 'd1')]


def result_frame(rows=RUN) -> pd.DataFrame:
    """Two queries x three documents, with text and a first-stage score (descending within a query)."""
    df = pd.DataFrame([{'qid': q, 'query': QUERIES[q], 'docno': d, 'text': DOCS[d]} for q, d in rows])
    df['score'] = -df.groupby('qid').cumcount().astype(float)
    return pt.model.add_ranks(df)


def page(docno: str):
    """A small deterministic page image standing for a document (its pixels seeded by the docno)."""
    from PIL import Image
    rng = np.random.RandomState(sum(map(ord, docno)))
    return Image.fromarray((rng.rand(56, 56, 3) * 255).astype('uint8'))


def image_frame() -> pd.DataFrame:
    """:func:`result_frame` with each document's page image in ``image``."""
    df = result_frame()
    df['image'] = [page(d) for d in df['docno']]
    return df


def text_page(text: str):
    """A page with ``text`` drawn in Pillow's built-in font (for OCR)."""
    from PIL import Image, ImageDraw
    img = Image.new('RGB', (16 + 8 * max(len(text), 1), 40), 'white')
    ImageDraw.Draw(img).text((8, 12), text, fill='black')
    return img.resize((img.width * 3, img.height * 3))


def ocr_frame() -> pd.DataFrame:
    """:func:`result_frame` with the text replaced by a rendered page of it."""
    df = result_frame()
    df['image'] = [text_page(t) for t in df['text']]
    return df.drop(columns='text')


def query_frame() -> pd.DataFrame:
    return pd.DataFrame({'qid': list(QUERIES), 'query': list(QUERIES.values())})


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope='session', autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and leave the other core to other processes)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope='session')
def tiny_cls(tiny_llama):
    """Tiny LlamaForSequenceClassification (1 label, pad_token_id 0 as DeAR's loader sets it)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification
    tok = tiny_llama.tokenizer
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, num_labels=1,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=0)
    torch.manual_seed(2)
    model = LlamaForSequenceClassification(cfg).eval()
    model.config._name_or_path = 'tiny-llama-cls'
    return model, tok


@pytest.fixture(scope='session')
def tiny_vlm(tiny_qwen_vl):
    """The tiny Qwen2.5-VL, loaded once as a handle."""
    from pyterrier_llmrank import models as llm_models
    return llm_models.load_vlm(tiny_qwen_vl.path, device='cpu')


@pytest.fixture(scope='session')
def tiny_idcm(tiny_distilbert):
    """An IDCMModel around a copy of the tiny DistilBERT, with spread student and aggregation weights."""
    from transformers import AutoModel
    bert = AutoModel.from_pretrained(tiny_distilbert.path)
    torch.manual_seed(0)
    model = IDCMModel(bert)
    with torch.no_grad():
        model.sampling_binweights.weight.normal_(0, 1.0)
    return model.eval(), tiny_distilbert.tokenizer


@pytest.fixture(scope='session')
def tiny_collection(tmp_path_factory):
    """A folder collection (the offline format of datasets.py) with the documents, topics and run above."""
    folder = tmp_path_factory.mktemp('contract_collection')
    with gzip.open(folder / 'docs.jsonl.gz', 'wt', encoding='utf-8') as f:
        for docno, text in DOCS.items():
            f.write(json.dumps({'docno': docno, 'text': text}) + '\n')
    (folder / 'topics.tsv').write_text(''.join(f'{q}\t{t}\n' for q, t in QUERIES.items()))
    (folder / 'qrels.txt').write_text('1 0 d1 1\n2 0 d2 1\n')
    (folder / 'runs').mkdir()
    lines = [f'{q} Q0 {d} {r} {10 - r} bm25\n' for q in QUERIES
             for r, d in enumerate(d for qq, d in RUN if qq == q)]
    (folder / 'runs' / 'bm25.run').write_text(''.join(lines))
    return datasets.load(folder)


class Models:
    """What the factories build on: the session's tiny models, resolved lazily (a spec only builds what it uses)."""

    def __init__(self, request):
        self._request = request

    def __getattr__(self, name):
        return self._request.getfixturevalue(name)


@pytest.fixture(scope='session')
def models(request):
    return Models(request)


# --------------------------------------------------------------------------------- scripted judges, toys

def listwise_answer(prompt) -> str:
    """A deterministic listwise judge: the passages shown, in reverse order."""
    n = sum(1 for role, content in prompt.messages if role == 'user' and content.startswith('['))
    return ' > '.join(f'[{i}]' for i in range(max(n, 1), 0, -1))


def setwise_answer(prompt) -> str:
    return ' B' if 'Passage B' in prompt.last_user else ' A'


def rankr1_answer(prompt) -> str:
    return '<think>the second one</think>\n<answer>[2]</answer>' if '[2]' in prompt.last_user else \
        '<think>only one</think>\n<answer>[1]</answer>'


def scripted(answer, models, batch_size=8):
    return ScriptedBackend(answer, tokenizer=models.tiny_llama.tokenizer, batch_size=batch_size)


def word_overlap(name: str, weight: float = 1.0) -> pt.Transformer:
    """A toy retriever over DOCS: score = query words found in the document (every document returned)."""
    def retrieve(topics: pd.DataFrame) -> pd.DataFrame:
        rows = []
        for t in topics.itertuples(index=False):
            words = set(str(t.query).lower().split())
            for docno, text in DOCS.items():
                s = weight * sum(w.strip('.,') in words for w in text.lower().split())
                rows.append({**t._asdict(), 'docno': docno, 'score': float(s)})
        cols = list(topics.columns) + ['docno', 'score']
        return pt.model.add_ranks(pd.DataFrame(rows, columns=cols))
    return pt.apply.generic(retrieve)


def overlap_scorer() -> pt.Transformer:
    def score(row):
        words = set(str(row['text']).lower().split())
        return float(sum(w in words for w in str(row['query']).lower().split()))
    return pt.apply.doc_score(score)


# ------------------------------------------------------------------------------------------------- specs

@dataclass
class Spec:
    """One transformer under contract.

    ``make(models, batch_size)`` builds it (``batch_size=None``: its default). ``kind``: ``'rerank'`` (result frame
    in, the same rows with ``score``/``rank`` out), ``'retrieve'`` (query frame in, result frame out), ``'query'``
    (query frame in, query frame with ``adds`` out), ``'load'`` (result frame in, ``adds`` added), ``'answer'``
    (result frame in, one row per query with ``adds``). ``requires``: columns whose absence must be named in the
    error. ``batched``: it takes ``batch_size`` and its scores must not depend on it.
    """

    name: str
    make: Callable[[Any, Optional[int]], pt.Transformer]
    kind: str = 'rerank'
    requires: Sequence[str] = ('qid', 'query', 'docno', 'text')
    adds: Sequence[str] = ('score', 'rank')
    batched: bool = True
    input: Callable[[], pd.DataFrame] = field(default=result_frame)


def _bs(batch_size):
    return {} if batch_size is None else {'batch_size': batch_size}


def subquery_frame() -> pd.DataFrame:
    return query_frame().assign(subqueries=[['capital of france', 'paris'], ['cats purr']])


SPECS: List[Spec] = [
    Spec('UPR-t5', lambda m, bs: UPR(m.tiny_t5.pair, device='cpu', **_bs(bs))),
    Spec('UPR-llama', lambda m, bs: UPR(m.tiny_llama.pair, device='cpu', **_bs(bs))),
    Spec('MonoT5', lambda m, bs: MonoT5(model=m.tiny_t5.pair, device='cpu', **_bs(bs))),
    Spec('DuoT5', lambda m, bs: DuoT5(model=m.tiny_t5.pair, device='cpu', **_bs(bs))),
    Spec('ProRank', lambda m, bs: ProRank(m.tiny_llama.pair, device='cpu', **_bs(bs))),
    Spec('YesNo', lambda m, bs: YesNo(m.tiny_llama.pair, device='cpu', **_bs(bs))),
    Spec('DeARPointwise', lambda m, bs: DeARPointwise(m.tiny_cls, device='cpu', **_bs(bs))),
    Spec('ICR', lambda m, bs: ICR(m.tiny_llama.pair, device='cpu'), batched=False),  # one window per pass
    Spec('IDCM', lambda m, bs: IDCM(m.tiny_idcm[0], tokenizer=m.tiny_idcm[1], device='cpu', **_bs(bs))),
    Spec('RankGPT', lambda m, bs: RankGPT(scripted(listwise_answer, m, bs or 8), window=2, step=1, **_bs(bs))),
    Spec('DeARListwise', lambda m, bs: DeARListwise(scripted(listwise_answer, m, bs or 8), window=2, step=1,
                                                    **_bs(bs))),
    Spec('Setwise', lambda m, bs: Setwise(scripted(setwise_answer, m, bs or 8), num_child=2, k=2, **_bs(bs))),
    Spec('RankR1', lambda m, bs: RankR1(scripted(rankr1_answer, m, bs or 8), num_child=2, k=2, **_bs(bs))),
    Spec('RankGPT-hf', lambda m, bs: RankGPT(m.tiny_llama.pair, window=2, step=1, max_new_tokens=6, device='cpu',
                                             dtype='float32', **_bs(bs))),
    Spec('passage_cascade', lambda m, bs: passage_cascade(overlap_scorer(), MonoT5(model=m.tiny_t5.pair, device='cpu',
                                                                                     **_bs(bs)),
                                                          k=1, length=4, stride=2)),
    Spec('passages-mean', lambda m, bs: split_passages(4, 2) >> overlap_scorer() >> TopPassages(2)
         >> aggregate_passages('mean'), batched=False),
    Spec('TextLoader', lambda m, bs: m.tiny_collection.text_loader(), kind='load', requires=('docno',),
         adds=('text',), batched=False, input=lambda: result_frame().drop(columns='text')),
    Spec('StoredRun', lambda m, bs: m.tiny_collection.get_run('bm25'), kind='retrieve', requires=('qid', 'query'),
         adds=('docno', 'score', 'rank'), batched=False, input=query_frame),
    Spec('Fusion', lambda m, bs: Fusion(word_overlap('a'), word_overlap('b', 2.0), method='minmax'), kind='retrieve',
         requires=('qid', 'query'), adds=('docno', 'score', 'rank'), batched=False, input=query_frame),
    Spec('Hybrid', lambda m, bs: Hybrid(word_overlap('a'), m.tiny_collection.get_run('bm25')), kind='retrieve',
         requires=('qid', 'query'), adds=('docno', 'score', 'rank'), batched=False, input=query_frame),
    Spec('QueryRewrite', lambda m, bs: QueryRewrite(scripted(lambda p: 'Query: rewritten', m), **_bs(bs)),
         kind='query', requires=('qid', 'query'), adds=('query_0',), input=query_frame),
    Spec('QueryDecompose', lambda m, bs: QueryDecompose(scripted(lambda p: '["first", "second"]', m), **_bs(bs)),
         kind='query', requires=('qid', 'query'), adds=('subqueries',), input=query_frame),
    Spec('SubQueryRetrieve', lambda m, bs: SubQueryRetrieve(word_overlap('a')), kind='retrieve',
         requires=('qid', 'subqueries'), adds=('docno', 'score', 'rank'), batched=False, input=subquery_frame),
    Spec('GenerateAnswer', lambda m, bs: GenerateAnswer(scripted(lambda p: 'Answer: paris', m), k=2, **_bs(bs)),
         kind='answer', requires=('qid', 'query', 'text'), adds=('qanswer',)),
    Spec('VLYesNo-text', lambda m, bs: VLYesNo(m.tiny_vlm, image_field=None, **_bs(bs))),
    Spec('VLYesNo', lambda m, bs: VLYesNo(m.tiny_vlm, **_bs(bs)), requires=('qid', 'query', 'docno', 'image'),
         input=image_frame),
    Spec('MMR5', lambda m, bs: MMR5(m.tiny_vlm, window=2, step=1, max_new_tokens=8, **_bs(bs)),
         requires=('qid', 'query', 'docno', 'image'), input=image_frame),
    Spec('OCR', lambda m, bs: OCR(), kind='load', requires=('image',), adds=('text',), batched=False,
         input=ocr_frame),
]
SPEC = {s.name: s for s in SPECS}


@pytest.fixture(scope='session')
def built(models):
    """Each spec's transformer at its default batch size, built once."""
    cache: Dict[Tuple[str, Optional[int]], pt.Transformer] = {}

    def get(name: str, batch_size: Optional[int] = None) -> pt.Transformer:
        key = (name, batch_size)
        if key not in cache:
            cache[key] = SPEC[name].make(models, batch_size)
        return cache[key]
    return get


# ------------------------------------------------------------------------------------------ assertions

def row_key(spec: Spec, df: pd.DataFrame) -> List[tuple]:
    """The identity of the rows (sorted): (qid, docno) for result frames, qid for query frames."""
    if spec.kind in ('rerank', 'load', 'retrieve'):
        return sorted(zip(df['qid'].map(repr), df['docno'].map(str)))
    return sorted(df['qid'].map(repr))


def scores_by_key(df: pd.DataFrame) -> pd.Series:
    return df.assign(qid=df['qid'].map(repr)).set_index(['qid', 'docno'])['score'].sort_index()


def check_ranks(df: pd.DataFrame) -> None:
    """Finite scores; per query, ranks 0..n-1 in order of descending score."""
    assert np.isfinite(df['score'].astype(float)).all(), df['score'].tolist()
    for _, g in df.groupby(df['qid'].map(repr)):
        g = g.sort_values('rank')
        assert g['rank'].tolist() == list(range(len(g))), g['rank'].tolist()
        assert (np.diff(g['score'].astype(float)) <= 1e-9).all(), g['score'].tolist()


def check_output(spec: Spec, inp: pd.DataFrame, out: pd.DataFrame) -> None:
    """The output of a well-formed run: columns, rows kept (or one per query), ranks."""
    for c in spec.adds:
        assert c in out.columns, (c, list(out.columns))
    if spec.kind in ('rerank', 'load'):
        assert row_key(spec, out) == row_key(spec, inp)
    elif spec.kind in ('query', 'answer'):
        assert row_key(spec, out) == sorted(set(row_key(spec, inp)))
    else:
        assert set(out['qid'].map(repr)) <= set(inp['qid'].map(repr))
        assert not out.duplicated(['qid', 'docno']).any()
    if 'rank' in spec.adds:
        check_ranks(out)


def same_scores(a: pd.DataFrame, b: pd.DataFrame) -> None:
    np.testing.assert_allclose(scores_by_key(a).to_numpy(), scores_by_key(b).to_numpy(), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- checks

def check_empty(spec, t, built):
    out = t(spec.input().iloc[:0])
    assert len(out) == 0
    for c in spec.adds:
        assert c in out.columns, (c, list(out.columns))


def check_empty_no_columns(spec, t, built):
    """A frame with no columns: an empty result, or an error naming a missing column."""
    try:
        out = t(pd.DataFrame())
    except pta.validate.InputValidationError as e:
        assert any(c in str(e) for c in spec.requires), str(e)
        return
    assert len(out) == 0


def check_missing_columns(spec, t, built):
    for column in spec.requires:
        with pytest.raises(pta.validate.InputValidationError, match=column):
            t(spec.input().drop(columns=[column]))


def check_extra_columns(spec, t, built):
    inp = spec.input()
    inp['extra'] = [f'x{i}' for i in range(len(inp))] if spec.kind in ('rerank', 'load') else \
        inp['qid'].map(lambda q: f'x-{q}')
    out = t(inp)
    check_output(spec, inp, out)
    assert 'extra' in out.columns, list(out.columns)
    keys = ['qid', 'docno'] if spec.kind in ('rerank', 'load') else ['qid']
    want = inp.drop_duplicates(keys).set_index(keys)['extra']
    got = out.drop_duplicates(keys).set_index(keys)['extra']
    assert (got == want.loc[got.index]).all()


def check_score_rank_replaced(spec, t, built):
    if spec.kind != 'rerank':
        pytest.skip('takes no result frame to re-score')
    inp = spec.input().assign(score=7.0, rank=99)
    out = t(inp)
    assert list(out.columns).count('score') == 1 and list(out.columns).count('rank') == 1
    check_output(spec, inp, out)
    same_scores(out, t(spec.input()))


def check_int_and_str_qids(spec, t, built):
    ref = t(spec.input())
    mapping = {'1': 1, '2': 2}
    inp = spec.input().assign(qid=lambda d: d['qid'].map(mapping))
    out = t(inp)
    check_output(spec, inp, out)
    assert all(isinstance(q, (int, np.integer)) for q in out['qid']), out['qid'].tolist()  # not turned into str
    if 'score' in spec.adds:
        back = out.assign(qid=out['qid'].map({v: k for k, v in mapping.items()}))
        same_scores(back, ref)


def check_interleaved(spec, t, built):
    """Rows of the queries interleaved (q1, q2, q1, ...): the same result as grouped rows."""
    inp = spec.input()
    if spec.kind in ('rerank', 'load', 'answer'):
        shuffled = inp.iloc[np.argsort(inp.groupby('qid').cumcount().to_numpy(), kind='stable')]
    else:
        shuffled = inp.iloc[::-1]
    assert shuffled['qid'].tolist() != inp['qid'].tolist()
    out = t(shuffled.reset_index(drop=True))
    check_output(spec, shuffled, out)
    if 'score' in spec.adds:
        same_scores(out, t(inp))


def check_one_candidate(spec, t, built):
    inp = spec.input().iloc[:1].reset_index(drop=True)
    out = t(inp)
    check_output(spec, inp, out)


def check_deterministic(spec, t, built):
    a, b = t(spec.input()), t(spec.input())
    if 'score' in spec.adds:
        same_scores(a, b)
    else:
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def check_batch_invariance(spec, t, built):
    if not spec.batched:
        pytest.skip('no batch_size')
    inp = pd.concat([spec.input(), spec.input().assign(qid=lambda d: d['qid'] + 'b')], ignore_index=True)
    a, b = built(spec.name, 1)(inp), built(spec.name, 7)(inp)
    if 'score' in spec.adds:
        same_scores(a, b)
    else:
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def check_repr_and_inspect(spec, t, built):
    text = repr(t)
    assert '\n' not in text, text
    if not isinstance(t, pt.Compose):  # a pipeline's repr is as long as its parts
        assert len(text) <= 160, text
    inputs = pt.inspect.transformer_inputs(t)
    assert isinstance(inputs, list) and inputs and all(isinstance(c, str) for i in inputs for c in i)
    for cols in inputs:
        outputs = pt.inspect.transformer_outputs(t, input_columns=cols)
        assert all(c in outputs for c in spec.adds), (cols, outputs)
    offline_docs = pt.documentation._cached_objects_inv is None
    if offline_docs:  # the schematic links the class's PyTerrier documentation, whose index is downloaded: none here
        pt.documentation._cached_objects_inv = {}
    try:
        schematic = pt.schematic.transformer_schematic(t)
    finally:
        if offline_docs:
            pt.documentation._cached_objects_inv = None
    if schematic['type'] == 'transformer':
        assert len(schematic['label']) <= 20, schematic['label']
    # (pt.schematic.draw is left out: it fetches its stylesheet from the network)


CHECKS: Dict[str, Callable] = {
    'empty': check_empty,
    'empty_no_columns': check_empty_no_columns,
    'missing_columns': check_missing_columns,
    'extra_columns': check_extra_columns,
    'score_rank_replaced': check_score_rank_replaced,
    'int_and_str_qids': check_int_and_str_qids,
    'interleaved_queries': check_interleaved,
    'one_candidate': check_one_candidate,
    'deterministic': check_deterministic,
    'batch_invariance': check_batch_invariance,
    'repr_and_inspect': check_repr_and_inspect,
}

# ------------------------------------------------------------------------------------------- bad inputs

LONG = ' '.join(['paris'] * 50_000)
RTL = 'باريس هي عاصمة فرنسا וגם עיר גדולה'
NON_ASCII = 'Ünïcödé — 日本語のテキスト, ça marche? 🐈'


def _set(column, value):
    """Set ``column`` of the first row (for ``query``: of every row of the first query) to ``value``."""
    def edit(df):
        if column not in df.columns:
            return None
        df = df.copy()
        df[column] = df[column].astype(object)
        rows = df.index[df['qid'] == df['qid'].iloc[0]] if column == 'query' else df.index[:1]
        df.loc[rows, column] = pd.Series([value] * len(rows), index=rows, dtype=object)
        return df
    return edit


def _duplicate_docno(df):
    if 'docno' not in df.columns:
        return None
    return pd.concat([df, df.iloc[[0]].assign(text='A second copy of d1 with other words.')
                      if 'text' in df.columns else df.iloc[[0]]], ignore_index=True)


def _mixed_qids(df):
    df = df.copy()
    df['qid'] = df['qid'].map({'1': 1, '2': '2'}).astype(object)
    return df


#: case -> (edit of the spec's input (None: does not apply), words one of which a clear error must name)
BAD_INPUTS: Dict[str, Tuple[Callable, Tuple[str, ...]]] = {
    'nan_query': (_set('query', float('nan')), ('query',)),
    'empty_query': (_set('query', ''), ('query',)),
    'whitespace_query': (_set('query', ' \t\n '), ('query',)),
    'long_query': (_set('query', LONG), ('query', 'long')),
    'nan_text': (_set('text', float('nan')), ('text',)),
    'empty_text': (_set('text', ''), ('text',)),
    'whitespace_text': (_set('text', ' \t\n '), ('text',)),
    'long_text': (_set('text', LONG), ('text', 'long')),
    'non_ascii': (lambda df: _set('text', NON_ASCII)(_set('query', NON_ASCII)(df)), ()),
    'right_to_left': (lambda df: _set('text', RTL)(_set('query', RTL)(df)), ()),
    'nan_qid': (_set('qid', float('nan')), ('qid',)),
    'empty_qid': (_set('qid', ''), ('qid',)),
    'duplicate_docno': (_duplicate_docno, ('docno', 'duplicate')),
    'mixed_qid_types': (_mixed_qids, ('qid',)),
}


def run_bad_input(spec, t, case):
    edit, words = BAD_INPUTS[case]
    inp = spec.input()
    bad = edit(inp)
    if bad is None:
        pytest.skip(f'{case} does not apply to {spec.name}')
    try:
        out = t(bad)
    except Exception as e:  # a clear error is a correct outcome: its message must name the problem
        message = f'{type(e).__name__}: {e}'
        assert words and isinstance(e, (ValueError, TypeError, KeyError, LookupError)) and \
            any(w in str(e).lower() for w in words), f'unclear error for {case}: {message[:300]}'
        return 'clear error'
    if spec.kind in ('rerank', 'load'):
        assert len(out) == len(bad), (len(out), len(bad))
        key = lambda df: sorted(zip(df['qid'].map(repr), df['docno'].map(str)))  # noqa: E731
        assert key(out) == key(bad)
    elif spec.kind in ('query', 'answer'):
        assert sorted(out['qid'].map(repr)) == sorted(set(bad['qid'].map(repr)))
    else:
        assert set(out['qid'].map(repr)) <= set(bad['qid'].map(repr)) and len(out) > 0
    for c in spec.adds:
        assert c in out.columns
    if 'rank' in spec.adds:
        check_ranks(out)
    return 'correct result'


# ------------------------------------------------------------------------------------- known failures

#: (spec, case) -> what goes wrong today. Strict: a fixed case fails until its line is removed.
XFAIL: Dict[Tuple[str, str], str] = {}

#: (spec, case) -> why it is not run (too slow to run on every test run), listed as an expected failure.
NOT_RUN: Dict[Tuple[str, str], str] = {}


def _params(cases):
    out = []
    for spec in SPECS:
        for case in cases:
            key = (spec.name, case)
            marks = [pytest.mark.xfail(strict=True, reason=XFAIL[key])] if key in XFAIL else \
                [pytest.mark.xfail(run=False, reason=NOT_RUN[key])] if key in NOT_RUN else []
            out.append(pytest.param(spec.name, case, marks=marks, id=f'{spec.name}-{case}'))
    return out


@pytest.mark.parametrize('name, check', _params(CHECKS))
def test_contract(built, name, check):
    spec = SPEC[name]
    CHECKS[check](spec, built(name), built)


@pytest.mark.parametrize('name, case', _params(BAD_INPUTS))
def test_bad_input(built, name, case, record_property):
    spec = SPEC[name]
    record_property('outcome', run_bad_input(spec, built(name), case))


# ------------------------------------------------------------------------------------------ bad arguments

#: case -> (a constructor call with one bad argument, the argument its ValueError must name)
BAD_ARGUMENTS: Dict[str, Tuple[Callable[[Any], Any], str]] = {
    'UPR-batch_size-0': (lambda m: UPR(m.tiny_t5.pair, device='cpu', batch_size=0), 'batch_size'),
    'MonoT5-batch_size-neg': (lambda m: MonoT5(model=m.tiny_t5.pair, device='cpu', batch_size=-1), 'batch_size'),
    'DuoT5-agg': (lambda m: DuoT5(model=m.tiny_t5.pair, device='cpu', agg='max'), 'agg'),
    'YesNo-prompt': (lambda m: YesNo(m.tiny_llama.pair, device='cpu', prompt='{query} only'), 'text'),
    'ICR-scoring': (lambda m: ICR(m.tiny_llama.pair, device='cpu', scoring='best'), 'scoring'),
    'ICR-overflow': (lambda m: ICR(m.tiny_llama.pair, device='cpu', overflow='ignore'), 'overflow'),
    'RankGPT-window-1': (lambda m: RankGPT(scripted(listwise_answer, m), window=1), 'window'),
    'RankGPT-step-str': (lambda m: RankGPT(scripted(listwise_answer, m), step='10'), 'step'),
    'Setwise-num_child-0': (lambda m: Setwise(scripted(setwise_answer, m), num_child=0), 'num_child'),
    'RankR1-num_child-20': (lambda m: RankR1(scripted(rankr1_answer, m), num_child=20), 'num_child'),
    'RankR1-max_new_tokens-0': (lambda m: RankR1(scripted(rankr1_answer, m), max_new_tokens=0), 'max_new_tokens'),
    'split_passages-stride': (lambda m: split_passages(4, 8), 'stride'),
    'TopPassages-k-0': (lambda m: TopPassages(0), 'k'),
    'TopPassages-per': (lambda m: TopPassages(2, per='corpus'), 'per'),
    'aggregate_passages-method': (lambda m: aggregate_passages('median'), 'method'),
    'Fusion-method': (lambda m: Fusion(word_overlap('a'), word_overlap('b'), method='borda'), 'borda'),
    'Hybrid-alpha': (lambda m: Hybrid(word_overlap('a'), word_overlap('b'), fusion='minmax', alpha=2.0), 'alpha'),
    'SubQueryRetrieve-fusion': (lambda m: SubQueryRetrieve(word_overlap('a'), fusion='borda'), 'fusion'),
    'QueryDecompose-max_subqueries': (lambda m: QueryDecompose(scripted(lambda p: '[]', m), max_subqueries=0),
                                      'max_subqueries'),
    'GenerateAnswer-k': (lambda m: GenerateAnswer(scripted(lambda p: 'Answer: x', m), k=0), 'k'),
}


@pytest.mark.parametrize('case', list(BAD_ARGUMENTS))
def test_bad_argument(models, case, record_property):
    make, word = BAD_ARGUMENTS[case]
    with pytest.raises(ValueError) as e:
        make(models)
    assert word in str(e.value), str(e.value)
    record_property('outcome', 'clear error')


# ------------------------------------------------------------------------------ truncated and corrupted files

def _truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[:len(data) // 2])


def _idcm_folder(models, tmp_path, weights):
    model, tok = models.tiny_idcm
    folder = tmp_path / 'idcm'
    IDCM(model, tokenizer=tok, device='cpu').save_pretrained(folder)
    if weights == 'model.safetensors':
        from safetensors.torch import save_file
        state = torch.load(folder / 'pytorch_model.bin', weights_only=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / 'model.safetensors'))
        (folder / 'pytorch_model.bin').unlink()
    return folder


def _model_copy(models, tmp_path):
    import shutil
    folder = tmp_path / 't5'
    shutil.copytree(models.tiny_t5.path, folder)
    return folder


def _idcm_config(models, tmp_path):
    folder = _idcm_folder(models, tmp_path, 'pytorch_model.bin')
    _truncate(folder / 'config.json')
    IDCM.from_pretrained(folder, device='cpu')


def _idcm_weights(name):
    def case(models, tmp_path):
        folder = _idcm_folder(models, tmp_path, name)
        _truncate(folder / name)
        IDCM.from_pretrained(folder, device='cpu')
    return case


def _model_file(name):
    def case(models, tmp_path):
        folder = _model_copy(models, tmp_path)
        _truncate(folder / name)
        MonoT5(model=str(folder), device='cpu')
    return case


def _gzip_docs(models, tmp_path):
    import shutil
    folder = tmp_path / 'collection'
    shutil.copytree(models.tiny_collection.path, folder)
    data = bytearray(gzip.compress(gzip.decompress((folder / 'docs.jsonl.gz').read_bytes()), mtime=0))
    data[10] = 0xFF  # the first deflate block (after the 10-byte header of gzip.compress): a reserved block type
    (folder / 'docs.jsonl.gz').write_bytes(bytes(data))
    datasets.load(folder).text_loader()(result_frame().drop(columns='text'))


def _truncated_topics(models, tmp_path):
    import shutil
    folder = tmp_path / 'collection'
    shutil.copytree(models.tiny_collection.path, folder)
    (folder / 'topics.tsv').write_text('1\twhat is the capital of france\n2')  # the last line lost its text
    datasets.load(folder).get_topics()


#: case -> (make the damaged file and load it, accepted error types, words one of which the message must name)
BAD_FILES: Dict[str, Tuple[Callable, Tuple[type, ...], Tuple[str, ...]]] = {
    'idcm-truncated-config.json': (_idcm_config, (ValueError,), ('config.json',)),
    'idcm-truncated-pytorch_model.bin': (_idcm_weights('pytorch_model.bin'), (ValueError,), ('pytorch_model.bin',)),
    'idcm-truncated-model.safetensors': (_idcm_weights('model.safetensors'), (ValueError,), ('model.safetensors',)),
    'model-truncated-model.safetensors': (_model_file('model.safetensors'), (OSError,), ('model.safetensors',)),
    'model-truncated-config.json': (_model_file('config.json'), (OSError,), ('config.json',)),
    'collection-corrupted-docs.jsonl.gz': (_gzip_docs, (ValueError,), ('docs.jsonl.gz',)),
    'collection-truncated-topics.tsv': (_truncated_topics, (ValueError,), ('topics.tsv',)),
}


@pytest.mark.parametrize('case', list(BAD_FILES))
def test_bad_file(models, tmp_path, case, record_property):
    make, types, words = BAD_FILES[case]
    with pytest.raises(types) as e:
        make(models, tmp_path)
    assert any(w in str(e.value) for w in words), f'{type(e.value).__name__}: {str(e.value)[:300]}'
    record_property('outcome', 'clear error')


# -------------------------------------------------------------------------------- interrupted cache folders

@pytest.mark.parametrize('leftover', ['files-without-marker', 'temporary-sibling', 'empty'])
def test_interrupted_cache_folder(tmp_path, leftover, record_property):
    """A cache folder an interrupted build left behind is rebuilt by the next build (folders.build_folder), and the
    result is whole: the case behind models.resolve_model_path, PISA and dense indexes."""
    from pyterrier_llmrank.folders import build_folder
    target = tmp_path / 'index'
    if leftover == 'files-without-marker':
        target.mkdir()
        (target / 'part-0').write_text('half')
    elif leftover == 'temporary-sibling':
        (tmp_path / '.index.tmp-dead').mkdir()
        (tmp_path / '.index.tmp-dead' / 'part-0').write_text('half')
    else:
        target.mkdir()

    def write(tmp):
        (tmp / 'part-0').write_text('whole')
        (tmp / 'meta.json').write_text('{}')

    assert build_folder(target, write, marker='meta.json') == target
    assert (target / 'part-0').read_text() == 'whole' and (target / 'meta.json').exists()
    record_property('outcome', 'correct result')
