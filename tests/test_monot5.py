"""MonoT5 / DuoT5 against pyterrier-t5 on a tiny random T5 (real tokenizer) and real TREC DL 2019 passages."""
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from pyterrier_llmrank import datasets
from pyterrier_llmrank.base import length_batches
from pyterrier_llmrank.monot5 import DUOT5_SUFFIX, MONOT5_SUFFIX, DuoT5, MonoT5

try:  # the reference of the equality claims: missing, the tests fail (never skip)
    import pyterrier_t5
except ImportError as e:
    raise ImportError('pyterrier-t5, the reference of these equality tests, is not installed: '
                      'pip install pyterrier-t5==0.3.0') from e

N_QUERIES, N_DOCS = 3, 10


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for the cores)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _read_dl19(folder, n_queries, n_docs):
    """BM25 top-``n_docs`` passages (with text) of the first ``n_queries`` DL19 topics."""
    dl19 = datasets.load(folder)
    run = (dl19.get_run('bm25') % n_docs)(dl19.get_topics().head(n_queries))
    return run[['qid', 'query', 'docno', 'score', 'text']].reset_index(drop=True)


@pytest.fixture(scope='module')
def dl19(data_dir):
    """3 DL19 queries x BM25 top-10 passages, plus one long document (> 512 tokens) for the first query."""
    inp = _read_dl19(data_dir / 'msmarco-passage-trec-dl-2019', N_QUERIES, N_DOCS)
    first = inp.iloc[0]
    long_doc = pd.DataFrame([{'qid': first['qid'], 'query': first['query'], 'docno': 'LONG', 'score': 0.0,
                              'text': ' '.join(inp['text'].tolist()[:12])}])
    return pd.concat([inp, long_doc], ignore_index=True)


@pytest.fixture(scope='module')
def reference_mono(tiny_t5, dl19):
    """pyterrier-t5's MonoT5ReRanker at batch size 1 (its only batch-independent setting)."""
    ref = pyterrier_t5.MonoT5ReRanker(tok_model=tiny_t5.path, model=tiny_t5.path, batch_size=1, verbose=False)
    return ref(dl19)


def _by_key(res):
    return res.set_index(['qid', 'docno']).sort_index()


def test_monot5_equals_pyterrier_t5(tiny_t5, dl19, reference_mono):
    ours = MonoT5(model=tiny_t5.pair, batch_size=8)(dl19)
    a, b = _by_key(ours), _by_key(reference_mono)
    assert len(a) == len(dl19)
    np.testing.assert_allclose(a['score'].values, b['score'].values, atol=1e-5, rtol=0)
    assert (a['rank'] == b['rank']).all()
    assert a['score'].std() > 1e-3  # the random model does separate the passages


def test_monot5_by_path_equals_pair(tiny_t5, dl19, reference_mono):
    ours = MonoT5(tok_model=tiny_t5.path, model=tiny_t5.path, batch_size=4, device='cpu', dtype='float32')(dl19)
    np.testing.assert_allclose(_by_key(ours)['score'].values, _by_key(reference_mono)['score'].values, atol=1e-5, rtol=0)


def test_monot5_scores_do_not_depend_on_batch_size(tiny_t5, dl19):
    runs = [_by_key(MonoT5(model=tiny_t5.pair, batch_size=bs)(dl19)) for bs in (1, 3, 8)]
    for other in runs[1:]:
        np.testing.assert_allclose(other['score'].values, runs[0]['score'].values, atol=1e-5, rtol=0)
        assert (other['rank'] == runs[0]['rank']).all()


def test_pyterrier_t5_depends_on_batch_size(tiny_t5, dl19, reference_mono):
    """Why the reference is taken at batch size 1: pyterrier-t5 appends 'Relevant:' after the padding of the
    shorter sequences of a batch, so a pair's score changes with its batch mates."""
    ref4 = pyterrier_t5.MonoT5ReRanker(tok_model=tiny_t5.path, model=tiny_t5.path, batch_size=4, verbose=False)(dl19)
    diff = np.abs(_by_key(ref4)['score'].values - _by_key(reference_mono)['score'].values)
    assert diff.max() > 1e-4


def test_monot5_truncates_the_document_and_keeps_the_suffix(tiny_t5, dl19):
    mono = MonoT5(model=tiny_t5.pair)
    suffix = tiny_t5.tokenizer(MONOT5_SUFFIX)['input_ids']
    assert suffix[-1] == tiny_t5.tokenizer.eos_token_id
    query = dl19['query'].iloc[0]
    long_ids = mono.encode(query, dl19['text'].iloc[-1])
    assert len(long_ids) == tiny_t5.model.config.n_positions == 512
    assert long_ids[-len(suffix):] == suffix
    prefix = tiny_t5.tokenizer(f'Query: {query} Document:')['input_ids'][:-1]
    assert long_ids[:len(prefix)] == prefix  # the query is kept, the document's tail is cut
    short_ids = mono.encode(query, 'a short passage')
    assert short_ids == tiny_t5.tokenizer(f'Query: {query} Document: a short passage')['input_ids'][:-1] + suffix


@pytest.fixture(scope='module')
def duo_input(dl19):
    """3 queries x 5 passages; the first query's group holds two long documents (a pair of them is trimmed by
    pyterrier-t5's rule, which fits there) and three short ones."""
    first = dl19['qid'].iloc[0]
    short = dl19[dl19['docno'] != 'LONG']
    texts = short['text'].tolist()
    longs = pd.DataFrame([{**short.iloc[0].to_dict(), 'docno': f'LONG{i}', 'score': -1.0 - i,
                           'text': ' '.join(texts[3 * i:3 * i + 3])} for i in range(2)])
    parts = [short[short['qid'] == first].head(3), longs,
             short[short['qid'] != first].groupby('qid', sort=False).head(5)]
    return pd.concat(parts, ignore_index=True)


def test_duot5_equals_pyterrier_t5(tiny_t5, duo_input):
    ref = pyterrier_t5.DuoT5ReRanker(tok_model=tiny_t5.path, model=tiny_t5.path, batch_size=1, verbose=False)(duo_input)
    duo = DuoT5(model=tiny_t5.pair, batch_size=8)
    ours = duo(duo_input)
    a, b = _by_key(ours), _by_key(ref)
    assert len(a) == len(duo_input) == 15
    np.testing.assert_allclose(a['score'].values, b['score'].values, atol=1e-5, rtol=0)
    assert (a['rank'] == b['rank']).all()
    # ... and at another batch size
    ours3 = _by_key(DuoT5(model=tiny_t5.pair, batch_size=3)(duo_input))
    np.testing.assert_allclose(ours3['score'].values, a['score'].values, atol=1e-5, rtol=0)
    # n (n - 1) sequences per query, sorted in batches of 8 across queries
    per_q = duo.stats.per_query().set_index('qid')
    assert per_q['sequences'].tolist() == [20.0] * 3
    assert per_q['model_calls'].sum() == pytest.approx(np.ceil(60 / 8))
    # the two long documents were trimmed by pyterrier-t5's rule (the sequence of that pair is at the limit)
    long0, long1 = duo_input.set_index('docno').loc[['LONG0', 'LONG1'], 'text']
    pair = duo.encode(duo_input['query'].iloc[0], long0, long1)
    assert len(pair) in (511, 512)
    # too long: ceil(excess / 2) tokens cut from each document (one more than needed when excess is odd)
    long_pair = duo.encode(duo_input['query'].iloc[0], 'x ' * 400, 'y ' * 401)
    assert long_pair[-3:] == tiny_t5.tokenizer(DUOT5_SUFFIX)['input_ids']
    assert len(long_pair) in (511, 512)


def test_duot5_input_always_fits(tiny_t5):
    """Where pyterrier-t5's rule cannot fit n_positions (one short document and a long one, or a long query), the
    budget rule does: the short document whole, the query kept while it leaves room, cut to half the budget when
    it alone is too long."""
    duo = DuoT5(model=tiny_t5.pair, batch_size=8)
    q, short, big = duo._ids(['Query: cats purr', 'Document0: a short one', 'Document1: ' + 'word ' * 50_000])
    budget = 512 - len(duo.suffix)
    ids = duo.pair_ids(q, short, big)
    assert len(ids) == 512 and ids[:len(q) + len(short)] == q + short  # query and short document whole
    ids = duo.pair_ids(q, big, short)
    assert len(ids) == 512 and ids[:len(q)] == q and ids[-len(short) - 3:-3] == short
    long_q, = duo._ids(['Query: ' + 'purr ' * 2000])
    ids = duo.pair_ids(long_q, short, short)
    assert len(ids) == 512 and ids[len(ids) - 3 - 2 * len(short):-3] == short + short  # documents whole
    ids = duo.pair_ids(long_q, big, big)
    assert len(ids) in (511, 512) and ids[:budget // 2] == long_q[:budget // 2]
    # scored end to end: a 50k-word document and a 2k-word query run within n_positions
    frame = pd.DataFrame({'qid': '1', 'query': ['purr ' * 2000] * 3, 'docno': ['a', 'b', 'c'],
                          'text': ['word ' * 50_000, 'a short one', 'another short one']})
    out = duo(frame)
    assert len(out) == 3 and np.isfinite(out['score']).all()
    assert duo.stats.per_query()['padded_tokens'].max() <= 512 * 6


def test_duot5_single_document_and_many_documents(tiny_t5):
    duo = DuoT5(model=tiny_t5.pair, batch_size=64)
    one = pd.DataFrame({'qid': ['1'], 'query': ['q'], 'docno': ['d'], 'text': ['t']})
    assert duo(one)['score'].tolist() == [0.0]  # no pair: pyterrier-t5's score
    many = pd.DataFrame({'qid': '1', 'query': 'flea life cycle', 'docno': [f'd{i}' for i in range(51)],
                         'text': [f'passage {i}' for i in range(51)]})
    with pytest.warns(UserWarning, match='large number of results'):
        res = duo(many)
    assert len(res) == 51 and res['rank'].tolist() != []


@pytest.mark.parametrize('cls', [MonoT5, DuoT5])
def test_empty_input(tiny_t5, cls):
    empty = pd.DataFrame({'qid': pd.Series(dtype=str), 'query': pd.Series(dtype=str),
                          'docno': pd.Series(dtype=str), 'text': pd.Series(dtype=str)})
    res = cls(model=tiny_t5.pair)(empty)
    assert len(res) == 0
    assert {'qid', 'query', 'docno', 'text', 'score', 'rank'} <= set(res.columns)


@pytest.mark.parametrize('cls', [MonoT5, DuoT5])
def test_missing_column_is_named(tiny_t5, dl19, cls):
    with pytest.raises(Exception, match='text'):
        cls(model=tiny_t5.pair)(dl19.drop(columns=['text']))
    with pytest.raises(Exception, match='body'):
        cls(model=tiny_t5.pair, text_field='body')(dl19)


@pytest.mark.parametrize('cls', [MonoT5, DuoT5])
def test_extra_columns_kept_and_ranked(tiny_t5, dl19, cls):
    inp = dl19.groupby('qid').head(4).assign(extra=lambda d: 'x' + d['docno'])
    res = cls(model=tiny_t5.pair, verbose=True)(inp)
    assert (res['extra'] == 'x' + res['docno']).all()
    assert len(res) == len(inp)
    for _, g in res.groupby('qid'):
        g = g.sort_values('rank')
        assert g['rank'].tolist() == list(range(len(g)))
        assert g['score'].is_monotonic_decreasing


def test_monot5_stats_count_sequences(tiny_t5, dl19):
    mono = MonoT5(model=tiny_t5.pair, batch_size=8)
    mono(dl19)
    per_q = mono.stats.per_query().set_index('qid')
    counts = dl19.groupby('qid').size()
    assert per_q.loc[counts.index, 'sequences'].tolist() == counts.astype(float).tolist()
    # one call per batch (length_batches: at most 8 rows, padding within the budget), shared out exactly
    lengths = np.array([len(mono.encode(q, t)) for q, t in zip(dl19['query'], dl19['text'])])
    batches = length_batches(np.argsort(-lengths, kind='stable'), lengths, 8, mono.max_padding)
    assert per_q['model_calls'].sum() == pytest.approx(len(batches))
    assert len(batches) >= np.ceil(len(dl19) / 8)
    assert per_q['padded_tokens'].sum() == sum(len(b) * lengths[b].max() for b in batches)
    assert per_q['input_tokens'].sum() == sum(len(mono.encode(q, t)) for q, t in zip(dl19['query'], dl19['text']))


def test_repr_and_schematic(tiny_t5):
    mono = MonoT5(tok_model=tiny_t5.path, model=tiny_t5.path)
    assert repr(mono) == f'MonoT5({tiny_t5.path})'
    assert str(DuoT5(tok_model=tiny_t5.path, model=tiny_t5.path)) == f'DuoT5({tiny_t5.path})'
    assert repr(MonoT5(model=tiny_t5.pair)) == f'MonoT5({tiny_t5.path})'
    assert mono.schematic['label'] == 'MonoT5' and DuoT5.label == 'DuoT5'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with pytest.raises(ValueError):
            DuoT5(model=tiny_t5.pair, agg='max')


# -- checkpoints as castorini ships them: spiece.model only ---------------------------------------------------

def test_spiece_only_folder_loads_its_own_tokenizer_and_equals_pyterrier_t5(tiny_t5_spiece, dl19):
    """castorini's monoT5 folders hold only ``spiece.model``: ``MonoT5(model=folder)`` takes the folder's tokenizer
    (not 't5-base', which is not reachable offline), converted by transformers' SentencePiece converter."""
    import os
    assert sorted(os.listdir(tiny_t5_spiece)) == ['config.json', 'model.safetensors', 'spiece.model']
    mono = MonoT5(model=tiny_t5_spiece, batch_size=8, device='cpu', dtype='float32')
    assert mono.tok_model == tiny_t5_spiece
    inp = dl19[dl19['docno'] != 'LONG']
    ref = pyterrier_t5.MonoT5ReRanker(tok_model=tiny_t5_spiece, model=tiny_t5_spiece, batch_size=1, verbose=False)
    a, b = _by_key(mono(inp)), _by_key(ref(inp))
    np.testing.assert_allclose(a['score'].values, b['score'].values, atol=1e-5, rtol=0)
    assert a['score'].std() > 1e-3
    duo = DuoT5(model=tiny_t5_spiece, device='cpu', dtype='float32')
    assert duo.tok_model == tiny_t5_spiece


def test_spiece_only_folder_needs_protobuf(tiny_t5_spiece):
    """Why protobuf is a dependency: without it transformers 5 cannot convert ``spiece.model`` and falls back to a
    tiktoken reader that fails on the file (run in a child process with ``google.protobuf`` made unimportable)."""
    import subprocess
    import sys
    import google.protobuf  # noqa: F401  (declared in install_requires)
    code = ('import sys\n'
            'class Block:\n'
            '    def find_spec(self, name, path=None, target=None):\n'
            '        if name.startswith("google.protobuf"): raise ImportError("protobuf blocked")\n'
            'sys.meta_path.insert(0, Block())\n'
            'from transformers import AutoTokenizer\n'
            f'AutoTokenizer.from_pretrained({tiny_t5_spiece!r})\n')
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert res.returncode != 0
    assert 'TikToken' in res.stderr or 'tiktoken' in res.stderr


def test_folder_without_tokenizer_error_names_what_was_looked_for(tiny_t5, tmp_path):
    """A model folder with no tokenizer file and the default tok_model ('t5-base', not reachable offline): the error
    names the folder, the files looked for and 't5-base'."""
    folder = tmp_path / 'weights-only'
    tiny_t5.model.save_pretrained(folder)
    with pytest.raises(OSError) as err:
        MonoT5(model=str(folder), device='cpu')
    msg = str(err.value)
    assert str(folder) in msg and 't5-base' in msg and 'spiece.model' in msg
    with pytest.raises(OSError, match='tok_model=.*no-such-tokenizer'):
        MonoT5(tok_model=str(tmp_path / 'no-such-tokenizer'), model=str(folder), device='cpu')
    # an explicit tok_model is used as given
    assert MonoT5(tok_model=tiny_t5.path, model=str(folder), device='cpu').tok_model == tiny_t5.path


def _hard_passages(n):
    """DL19 passages (not among the tokenizer's training lines) with non-ASCII characters, digits and punctuation."""
    import string
    from pyterrier_llmrank.testing import corpus_lines
    lines = corpus_lines(20000)[2000:]
    hard = [t for t in lines if any(ord(c) > 127 for c in t) and any(c.isdigit() for c in t)
            and any(c in string.punctuation for c in t)]
    assert len(hard) >= n, len(hard)
    return list(hard[:n])


def test_fast_tokenizer_equals_sentencepiece_and_pyterrier_t5(tiny_t5_spiece):
    """MonoT5's tokenizer (transformers' converted fast tokenizer) gives the ids of pyterrier-t5's ``T5Tokenizer``
    and of SentencePiece itself (what the slow T5Tokenizer wrapped), EOS appended, on real passages with accents,
    non-Latin characters, digits and punctuation."""
    import sentencepiece as spm
    from transformers import T5Tokenizer
    ours = MonoT5(model=tiny_t5_spiece, device='cpu').tokenizer
    theirs = T5Tokenizer.from_pretrained(tiny_t5_spiece)  # what pyterrier-t5's MonoT5ReRanker loads
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tiny_t5_spiece, 'spiece.model'))
    texts = _hard_passages(50) + ['Query: café 1,234.5 — “quoted” naïve £20 Ⅻ ½ ﬁne  double  space\ttab\nnewline',
                                  'Query: what is 3½% of ¥1,000? Document: ①②③ Relevant:']
    for text in texts:
        ids = ours(text)['input_ids']
        assert ids == theirs(text)['input_ids'], text
        assert ids == sp.encode(text) + [sp.eos_id()], text
    unk = sum(ours(t)['input_ids'].count(ours.unk_token_id) for t in texts)
    assert unk < sum(len(ours(t)['input_ids']) for t in texts) / 10  # the texts are mostly covered, not all <unk>
