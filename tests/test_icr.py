"""ICR (Chen et al., ICLR 2025) on the real SmolLM2-135M-Instruct: prompt, spans, equality with the brute-force
attention path, window merging, document order, edge cases, overflow and efficiency counters."""
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from pyterrier_llmrank.icr import (ICR, ICR_LATE_INSTRUCTION_IE, ICR_LATE_INSTRUCTION_QA, ICR_QA_DATASETS, IcrPrompt,
                                   cut_words, icr_family, icr_retrieval_type)

SMOL_OPEN = ('<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n'
             '<|im_start|>user\n')
SMOL_CLOSE = '<|im_end|>\n<|im_start|>assistant\n'

DOCS = ['The Eiffel Tower is a wrought-iron tower in Paris, France.',
        'Bananas are rich in potassium and grow in tropical climates.',
        'Paris is the capital and largest city of France.']
QUERY = 'what is the capital of france'


@pytest.fixture(scope='module')
def icr(smollm2):
    return ICR(smollm2)


def frame(docs, query=QUERY, qid='q1', **extra):
    n = len(docs)
    return pd.DataFrame({'qid': [qid] * n, 'query': [query] * n, 'docno': [f'd{i}' for i in range(n)],
                         'text': list(docs), 'score': np.arange(n, 0, -1, dtype=float),
                         'rank': np.arange(n), **extra})


# --- prompt -----------------------------------------------------------------------------------------------------

def test_golden_prompt(icr):
    expected = (SMOL_OPEN + ' Here are some paragraphs:\n\n[1] first passage\n\n[2] second passage\n\n'
                'Please find information that are relevant to the following query in the paragraphs above.\n\n'
                'Query: what is x?' + SMOL_CLOSE)
    assert icr.prompt_text('what is x?', ['first passage', 'second passage']) == expected
    # the ids are those of the whole text tokenized at once (SmolLM2 writes "\n\n" before a word as two "\n")
    ids = icr.build_prompt('what is x?', ['first passage', 'second passage']).ids
    assert ids == icr.tokenizer(expected, add_special_tokens=False)['input_ids']
    assert icr.separator == '\n\n'  # not a Llama-3 model


def test_qa_instruction(smollm2):
    qa = ICR(smollm2, retrieval_type='QA')
    assert ICR_LATE_INSTRUCTION_QA in qa.prompt_text('q', ['d'])
    assert ICR_LATE_INSTRUCTION_IE not in qa.prompt_text('q', ['d'])


def test_simple_template(smollm2):
    simple = ICR(smollm2, template='simple')
    text = simple.prompt_text(' q ', ['a', 'b'])
    assert text == ('\n\n[1] a\n\n[2] b\n\n' + ICR_LATE_INSTRUCTION_IE + '\n\nQuery: q\n\nAnswer:')
    assert simple.build_prompt(' q ', ['a', 'b']).ids == simple.tokenizer(text, add_special_tokens=False)['input_ids']


def test_spans_by_construction(icr):
    docs = ['first passage', 'Ünïcödé 日本語 🙂 text', '']
    p = icr.build_prompt('my query', docs)
    tok = icr.tokenizer
    for i, (a, b) in enumerate(p.doc_spans):
        assert tok.decode(p.ids[a:b]) == f'[{i + 1}] {docs[i]}'
        assert tok.decode(p.ids[b:b + 2]) == '\n\n'  # the separator follows every document (2 tokens here)
    start, end = p.query_span
    assert end == len(p.ids)
    span = tok.decode(p.ids[start:end])
    assert span == ICR_LATE_INSTRUCTION_IE + '\n\nQuery: my query' + SMOL_CLOSE
    assert tok.decode(p.prefix).endswith('[3] \n\n')
    assert tok.decode(p.prefix).startswith(SMOL_OPEN + ' Here are some paragraphs:')


def test_document_text_title_and_words(icr):
    assert icr.document_text('a b  c d', 'T', max_words=2) == 'T\na b'
    assert icr.document_text('a b c', None) == 'a b c'
    assert icr.document_text(None, None) == ''
    assert icr.document_text('a  b c', None, max_words=2) == 'a'  # 'a', '' (the double space), then stripped
    assert cut_words('x y', 0) == ''
    assert icr.max_words == 300


def test_cut_words_as_reference():
    # OSU-NLP-Group/In-Context-Reranking@9117e9f experiments.py: ' '.join(text.split(' ')[:300]); a newline does
    # not separate words, and each extra space of a run counts as an empty word
    def reference(text, n):
        return ' '.join(text.split(' ')[:n])
    text = 'one\ntwo three\n\nfour  five   six\tseven eight '
    assert cut_words(text, 1) == 'one\ntwo'
    assert cut_words(text, 2) == 'one\ntwo three\n\nfour'
    assert cut_words(text, 3) == 'one\ntwo three\n\nfour '
    assert cut_words(text, 4) == 'one\ntwo three\n\nfour  five'
    assert cut_words(text, 7) == 'one\ntwo three\n\nfour  five   six\tseven'
    assert cut_words(' x\ny  z ', 2) == ' x\ny'
    for n in range(12):
        assert cut_words(text, n) == reference(text, n)
    assert cut_words(text, None) == text


# --- equality with brute force ------------------------------------------------------------------------------------

def test_rows_equal_brute_force(smollm2):
    rows = ICR(smollm2)
    eager = ICR(smollm2, attention='eager')
    p = rows.build_prompt(QUERY, DOCS)
    cal = IcrPrompt(p.prefix, rows._suffix('N/A'), p.doc_spans)
    sq, sc, calls, tokens = rows.token_scores(p, cal)
    eq, ec, ecalls, _ = eager.token_scores(p, cal)
    assert calls == ecalls == 2
    assert tokens == len(cal.ids) + len(p.suffix)  # the second pass feeds the query span only
    n_prefix = len(p.prefix)
    # per-position scores over the shared prefix (the documents), and the whole calibration pass
    torch.testing.assert_close(sq[:n_prefix], eq[:n_prefix], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sc, ec, rtol=1e-4, atol=1e-6)
    # document scores: same values to 1e-4 relative, same ranking
    s_rows, s_eager = rows.doc_scores(p, sq, sc), eager.doc_scores(p, eq, ec)
    np.testing.assert_allclose(s_rows, s_eager, rtol=1e-4, atol=1e-4 * np.abs(s_eager).max())
    assert list(np.argsort(-s_rows)) == list(np.argsort(-s_eager))
    # the masked calibration itself: c = s(q) - s(N/A), tau = mean - 2 std, sum of c > tau
    for i, (a, b) in enumerate(p.doc_spans):
        c = (sq[a:b] - sc[a:b]).double()
        tau = c.mean() - 2 * c.std()
        assert s_rows[i] == pytest.approx(float(c[c > tau].sum()), rel=1e-9, abs=1e-12)
    # the full pipeline, uncalibrated (one pass each)
    a = ICR(smollm2, scoring='query_last')(frame(DOCS))
    b = ICR(smollm2, scoring='query_last', attention='eager')(frame(DOCS))
    np.testing.assert_allclose(a['score'], b['score'], rtol=1e-4, atol=1e-4 * b['score'].abs().max())
    assert list(a['docno']) == list(b['docno'])
    assert smollm2[0].config._attn_implementation == 'sdpa'  # restored after both paths


def test_layer_range(smollm2):
    full, part = ICR(smollm2), ICR(smollm2, layers=(0, 0))
    p = full.build_prompt(QUERY, DOCS[:1])
    s_full = full.token_scores(p)[0]
    s_part = part.token_scores(p)[0]
    assert float(s_part.sum()) == pytest.approx(part.model.config.num_attention_heads, rel=1e-4)  # 1 layer
    assert float(s_full.sum()) == pytest.approx(30 * part.model.config.num_attention_heads, rel=1e-4)


# --- ordering, windows --------------------------------------------------------------------------------------------

class _Spy:
    """Replaces score_window: records the windows and scores each document by a fixed relevance."""

    def __init__(self, relevance):
        self.relevance = relevance
        self.windows = []

    def __call__(self, query, docs):
        self.windows.append(list(docs))
        return np.array([self.relevance[d] for d in docs], dtype=float), {'model_calls': 2, 'sequences': 2,
                                                                           'input_tokens': 10}


def reference_rerank(n, w, stride, reverse, score):
    """A transcription of the reference's InContextReranker.rerank loop (ids only)."""
    sorted_ids = list(range(n))[::-1]
    i, j = 0, min(w, n)
    while True:
        ids = [sorted_ids[k] for k in range(i, j)]
        if not reverse:
            ids.reverse()
        asc = sorted(range(len(ids)), key=lambda t: score(ids[t]))
        new = [ids[t] for t in asc]
        for k in range(i, j):
            sorted_ids[k] = new[k - i]
        if j >= n:
            break
        i += stride
        j = min(j + stride, n)
    return sorted_ids[::-1]


@pytest.mark.parametrize('reverse', [True, False])
def test_window_merge_order(icr, monkeypatch, reverse):
    n = 10
    docs = [f'doc {k}' for k in range(n)]
    rng = np.random.RandomState(0)
    rel = dict(zip(docs, rng.permutation(n).astype(float)))
    spy = _Spy(rel)
    w = ICR.__new__(ICR)
    w.__dict__.update(icr.__dict__)
    w.window_size, w.stride, w.reverse_order = 4, 2, reverse
    w.stats = type(icr.stats)()
    monkeypatch.setattr(w, 'score_window', spy)
    out = w(frame(docs))
    got = list(out.sort_values('rank')['text'])
    expected = [docs[k] for k in reference_rerank(n, 4, 2, reverse, lambda k: rel[docs[k]])]
    assert got == expected
    # bottom of the list first; 4 windows of 4 with stride 2 over 10 documents
    assert len(spy.windows) == 4
    first = [f'doc {k}' for k in (9, 8, 7, 6)]
    assert spy.windows[0] == (first if reverse else first[::-1])
    assert got[0] == max(rel, key=rel.get)  # the best document always bubbles to the top
    assert out['score'].is_unique
    pq = w.stats.per_query()
    assert pq['windows'].iat[0] == 4 and pq['model_calls'].iat[0] == 8


def test_reverse_order_default(icr, monkeypatch):
    spy = _Spy({d: 0.0 for d in DOCS})
    monkeypatch.setattr(icr, 'score_window', spy)
    out = icr(frame(DOCS))
    assert icr.reverse_order is True
    assert spy.windows == [DOCS[::-1]]  # the first-stage top document stands last, next to the query
    # ties keep the first-stage order
    assert list(out.sort_values('rank')['docno']) == ['d0', 'd1', 'd2']


def test_first_stage_order_from_rank(icr, monkeypatch):
    spy = _Spy({d: 0.0 for d in DOCS})
    monkeypatch.setattr(icr, 'score_window', spy)
    df = frame(DOCS)
    df['rank'] = [2, 0, 1]
    icr(df.iloc[::-1])
    assert spy.windows == [[DOCS[0], DOCS[2], DOCS[1]]]


# --- edge cases ---------------------------------------------------------------------------------------------------

def test_real_run_and_columns(icr):
    icr.stats.reset()
    df = frame(DOCS, extra_col=['x', 'y', 'z'])
    out = icr(df)
    assert set(df.columns) <= set(out.columns)
    assert list(out['score']) == sorted(out['score'], reverse=True)
    assert list(out['rank']) == [0, 1, 2]
    assert out['score'].map(math.isfinite).all()
    again = icr(df)
    assert list(again['score']) == list(out['score'])  # deterministic
    pq = icr.stats.per_query()
    assert pq['model_calls'].iat[0] == 4 and pq['windows'].iat[0] == 2  # 2 passes per window, 2 runs
    assert pq['seconds'].iat[0] > 0 and pq['input_tokens'].iat[0] > 0


def test_one_and_zero_candidates(icr):
    one = icr(frame(DOCS[:1]))
    assert len(one) == 1 and one['rank'].iat[0] == 0 and math.isfinite(one['score'].iat[0])
    empty = icr(frame([]))
    assert len(empty) == 0 and {'score', 'rank'} <= set(empty.columns)


def test_empty_and_non_ascii(icr):
    docs = ['', 'Ünïcödé: la Tour Eiffel est à Paris. 日本語のテキスト 🙂', DOCS[2], '   ']
    out = icr(frame(docs, query='où est la tour eiffel ? 🗼'))
    assert len(out) == 4 and out['score'].map(math.isfinite).all()
    out = icr(frame(DOCS, query=''))
    assert out['score'].map(math.isfinite).all()


def test_title_column(icr, monkeypatch):
    spy = _Spy({'T\nbody': 0.0})
    monkeypatch.setattr(icr, 'score_window', spy)
    icr(frame(['body'], title=['T']))
    assert spy.windows == [['T\nbody']]


# --- overflow -----------------------------------------------------------------------------------------------------

LONG = ['word ' * 60 + f'end{k}' for k in range(4)]


def _budget(model_icr, docs, words):
    return len(model_icr.build_prompt(QUERY, [model_icr.document_text(d, None, words) for d in docs]).ids)


def test_overflow_truncate_default(smollm2):
    probe = ICR(smollm2)
    limit = _budget(probe, LONG, 25)  # room for 25 words per document, not for 61
    icr = ICR(smollm2, max_length=limit)
    assert icr.overflow == 'truncate'
    seen = []
    orig = icr.build_prompt

    def spy(q, docs):
        p = orig(q, docs)
        seen.append(p)
        return p
    icr.build_prompt = spy
    with pytest.warns(UserWarning, match='cut to 25 words'):
        out = icr(frame(LONG))
    assert len(out) == 4 and out['score'].map(math.isfinite).all()
    scored = seen[-1]
    assert len(scored.ids) <= limit
    text = icr.tokenizer.decode(scored.suffix)
    assert text == ICR_LATE_INSTRUCTION_IE + '\n\nQuery: ' + QUERY + SMOL_CLOSE  # never cut
    assert icr.stats.per_query()['truncated_windows'].iat[0] == 1


def test_overflow_error_and_window(smollm2):
    probe = ICR(smollm2)
    limit = _budget(probe, LONG[:2], None) + 5  # two whole documents fit, four do not
    with pytest.raises(ValueError, match='overflow="error"'):
        ICR(smollm2, max_length=limit, overflow='error')(frame(LONG))
    win = ICR(smollm2, max_length=limit, overflow='window')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        out = win(frame(LONG))
    assert not [w for w in caught if 'ICR' in str(w.message)]  # windows fit: nothing cut, nothing to warn
    assert len(out) == 4
    pq = win.stats.per_query()
    assert pq['windows'].iat[0] == 3 and pq['model_calls'].iat[0] == 6 and pq['overflow_windows'].iat[0] == 1


def test_overflow_query_too_long(smollm2):
    icr = ICR(smollm2, max_length=60)
    with pytest.raises(ValueError, match='instruction, query'):
        icr(frame(['short'], query='very long query ' * 20))


def test_bad_arguments(smollm2):
    for kw in ({'scoring': 'x'}, {'overflow': 'x'}, {'window_size': 0}, {'window_size': 4, 'stride': 5},
               {'layers': (3, 40)}, {'retrieval_type': 'x'}, {'attention': 'x'}):
        with pytest.raises(ValueError):
            ICR(smollm2, **kw)
    assert ICR(smollm2, layers=(-2, -1)).layers == (28, 29)


# --- the reference's own wrappers (Llama-3, Mistral), not the chat template ------------------------------------
# Literal copies of OSU-NLP-Group/In-Context-Reranking@9117e9f src/in_context_reranker.py (_setup_llm_prompts,
# lines 136-145; prompt_separator, lines 107-116; instructions, lines 79-86), deliberately not imported from icr.py.
REFERENCE = {  # family: (prompt_prefix, prompt_suffix, prompt_separator, BOS its tokenizer adds)
    'llama-3': ('<|start_header_id|>user<|end_header_id|>', '<|eot_id|><|start_header_id|>assistant<|end_header_id|>',
                ' \n\n', '<|begin_of_text|>'),
    'mistral': ('[INST]', '[/INST]', '\n\n', '<s>'),
}
REFERENCE_LATE = {
    'IE': 'Please find information that are relevant to the following query in the paragraphs above.',
    'QA': 'Please answer the following question based on the information in the paragraphs above.',
}
FAMILY_DOCS = ['Paris is the capital of France.', 'Bananas grow\nin the tropics, 12 kg a plant.',
               'Ünïcödé 日本語 🙂']


def reference_prompt(family, query, documents, template='instruct', retrieval_type='IE'):
    """The string of the reference's ``_prepare_input_for_document_retrieval`` (query_position='last', no extra
    system prompt), from its format strings; the reference tokenizes it whole with the tokenizer's defaults."""
    prefix, suffix, sep, _ = REFERENCE[family]
    system_prompt = ' Here are some paragraphs:' if template == 'instruct' else ''
    llm_prompt = prefix + system_prompt
    for i, doc in enumerate(documents):
        llm_prompt += sep + f'[{i + 1}] {doc}'
    llm_prompt += sep + REFERENCE_LATE[retrieval_type] + sep + 'Query:'
    if template == 'simple':
        return llm_prompt + f' {query.strip()}{sep}Answer:'
    return llm_prompt + f' {query.strip()}' + suffix


@pytest.fixture(scope='module')
def family_models(tmp_path_factory):
    """Tiny random Llama models with a Llama-3-style and a Mistral-style tokenizer (tests/family_tokenizers.py),
    saved under names from which the family is detected as the reference does."""
    from family_tokenizers import train_llama3_tokenizer, train_mistral_tokenizer
    from pyterrier_llmrank.testing import build_tiny_llama
    root = tmp_path_factory.mktemp('icr_families')
    return {'llama-3': build_tiny_llama(root / 'Meta-Llama-3.1-8B-Instruct-tiny', train_llama3_tokenizer()),
            'mistral': build_tiny_llama(root / 'Mistral-7B-Instruct-v0.2-tiny', train_mistral_tokenizer())}


def test_icr_family_detection(icr):
    assert icr_family('meta-llama/Meta-Llama-3.1-8B-Instruct') == 'llama-3'
    assert icr_family('meta-llama/Llama-3.2-1B-Instruct') == 'llama-3'
    assert icr_family('/models/Llama3.1-8B-Instruct') == 'llama-3'
    assert icr_family('mistralai/Mistral-7B-Instruct-v0.2') == 'mistral'
    for other in ('HuggingFaceTB/SmolLM2-135M-Instruct', 'meta-llama/Llama-2-7b-chat-hf', 'Qwen/Qwen2.5-7B-Instruct'):
        assert icr_family(other) is None
    assert icr.family is None and icr.template == 'chat'  # SmolLM2: its chat template (ChatML), as before


@pytest.mark.parametrize('family', ['llama-3', 'mistral'])
@pytest.mark.parametrize('template,retrieval_type', [('instruct', 'IE'), ('instruct', 'QA'), ('simple', 'IE')])
def test_reference_wrapper_golden(family_models, family, template, retrieval_type):
    tiny = family_models[family]
    tok = tiny.tokenizer
    prefix, suffix, sep, bos = REFERENCE[family]
    icr = ICR(tiny.pair, retrieval_type=retrieval_type, **({'template': 'simple'} if template == 'simple' else {}))
    assert icr.family == family and icr.separator == sep
    assert icr.template == ('chat' if template == 'instruct' else 'simple')  # 'auto' = the reference's 'instruct'
    query = '  what is the capital of France? '
    expected = reference_prompt(family, query, FAMILY_DOCS, template, retrieval_type)
    p = icr.build_prompt(query, FAMILY_DOCS)
    # character for character: our decoded prompt is the reference's string behind the BOS its tokenizer adds
    assert tok.decode(p.ids) == bos + expected
    # golden ids: the reference's, i.e. its whole string tokenized at once with the tokenizer's defaults
    golden = tok(expected)['input_ids']
    assert golden[0] == tok.bos_token_id
    assert p.ids == golden
    # spans as the reference computes them: each document's '[i] doc', and the query span from the late
    # instruction to the last token (query_start_idx .. query_end_idx)
    for i, (a, b) in enumerate(p.doc_spans):
        assert tok.decode(p.ids[a:b]) == f'[{i + 1}] {FAMILY_DOCS[i]}'
    start, end = p.query_span
    tail = REFERENCE_LATE[retrieval_type] + sep + 'Query: ' + query.strip()
    tail += (sep + 'Answer:') if template == 'simple' else suffix
    assert tok.decode(p.ids[start:end]) == tail and end == len(golden)
    # the calibration prompt is the reference's with the query 'N/A'
    calib = IcrPrompt(p.prefix, icr._suffix('N/A'), p.doc_spans)
    assert calib.ids == tok(reference_prompt(family, 'N/A', FAMILY_DOCS, template, retrieval_type))['input_ids']


@pytest.mark.parametrize('family', ['llama-3', 'mistral'])
def test_reference_wrapper_is_not_the_chat_template(family_models, family):
    tiny = family_models[family]
    tok = tiny.tokenizer
    ours = ICR(tiny.pair)
    chat = ICR(tiny.pair, family='none')  # what the chat template would give
    assert chat.family is None and chat.template == 'chat' and chat.separator == '\n\n'
    ids, chat_ids = ours.build_prompt('q', ['d']).ids, chat.build_prompt('q', ['d']).ids
    text, chat_text = tok.decode(ids), tok.decode(chat_ids)
    assert ids != chat_ids
    # the chat template's rendering of the same user turn, as ICR would have used it
    rendered = tok.apply_chat_template([{'role': 'user', 'content': 'X'}], tokenize=False, add_generation_prompt=True)
    before, after = rendered.split('X')
    opening = before + ' Here are some paragraphs:'
    assert chat_text.startswith(opening) and chat_text.endswith(after)
    assert not text.startswith(opening) and not text.endswith(after)
    if family == 'llama-3':
        assert 'Cutting Knowledge Date' in chat_text and 'Cutting Knowledge Date' not in text
        assert '<|end_header_id|>\n\n' in chat_text and '<|end_header_id|>\n\n' not in text
        assert text.startswith('<|begin_of_text|><|start_header_id|>user<|end_header_id|> Here are some paragraphs:')
        assert text.endswith('Query: q<|eot_id|><|start_header_id|>assistant<|end_header_id|>')
    else:
        assert '[INST]  Here' in chat_text and ' [/INST]' in chat_text
        assert text.startswith('<s>[INST] Here are some paragraphs:') and text.endswith('Query: q[/INST]')


@pytest.mark.parametrize('family', ['llama-3', 'mistral'])
def test_reference_wrapper_end_to_end(family_models, family):
    tiny = family_models[family]
    rows, eager = ICR(tiny.pair), ICR(tiny.pair, attention='eager')
    a, b = rows(frame(DOCS)), eager(frame(DOCS))
    assert len(a) == 3 and a['score'].map(math.isfinite).all()
    np.testing.assert_allclose(a['score'], b['score'], rtol=1e-4, atol=1e-4 * b['score'].abs().max())
    assert list(a['docno']) == list(b['docno'])
    pq = rows.stats.per_query()
    # the prompts fed: the reference's calibration prompt whole, then the real query's span over its prefix
    # (reverse_order: the first-stage top document stands last)
    p = rows.build_prompt(QUERY, DOCS[::-1])
    assert p.ids == tiny.tokenizer(reference_prompt(family, QUERY, DOCS[::-1]))['input_ids']
    calib = tiny.tokenizer(reference_prompt(family, 'N/A', DOCS[::-1]))['input_ids']
    assert pq['model_calls'].iat[0] == 2 and pq['input_tokens'].iat[0] == len(calib) + len(p.suffix)
    assert a.equals(rows(frame(DOCS)))  # deterministic


def test_family_override_and_errors(smollm2, family_models):
    # SmolLM2's tokenizer has no Llama-3 header tokens: forcing the wrapper is an error that says so
    with pytest.raises(ValueError, match='start_header_id'):
        ICR(smollm2, family='llama-3')
    with pytest.raises(ValueError, match='family'):
        ICR(smollm2, family='gemma')
    forced = ICR(family_models['llama-3'].pair, family='mistral')
    assert forced.family == 'mistral' and forced.separator == '\n\n'
    assert forced.prompt_text('q', ['d']).startswith('<|begin_of_text|>[INST] Here')


def test_qa_datasets_as_reference():
    # OSU-NLP-Group/In-Context-Reranking@9117e9f experiments.py, lines 61-76
    assert set(ICR_QA_DATASETS) >= {'trec-covid', 'fiqa', 'webis-touche2020', 'dbpedia-entity', 'nq'}
    for name in ('trec-covid', 'irds:beir/trec-covid', 'beir/webis-touche2020/v2', 'beir/fiqa/test', 'beir/nq',
                 'dbpedia-entity', 'hotpotqa'):
        assert icr_retrieval_type(name) == 'QA', name
    for name in ('beir/scifact/test', 'beir/nfcorpus', 'msmarco-passage/trec-dl-2019', 'beir-scifact', 'covid'):
        assert icr_retrieval_type(name) == 'IE', name
