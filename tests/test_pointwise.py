"""Pointwise LLM rerankers (ProRank, DeAR stage 1, YesNo) and the scoring core with prefix reuse.

Golden prompts (strings and ids), the position read (scores equal a direct, unbatched, unpadded computation
written here from the reference code), batch invariance (batch 1 vs 16), prefix reuse on/off equality,
LoRA adapters, frames and efficiency counters. Real SmolLM2-135M-Instruct and tiny random Llama/Qwen2 models.
"""
import copy

import numpy as np
import pandas as pd
import pytest
import torch

from pyterrier_llmrank import DeARPointwise, ProRank, YesNo
from pyterrier_llmrank.causal import (PrefixKV, last_hidden, next_token_logits, shared_prefix_lengths,
                                       target_logprobs)



@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """One thread in this module (the test machine is shared; scores must not depend on it anyway)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

DOCS = [
    ('1', 'what is a cat', 'd1', 'A cat is a small domesticated carnivorous mammal with soft fur.'),
    ('1', 'what is a cat', 'd2', 'Paris is the capital and most populous city of France.'),
    ('1', 'what is a cat', 'd3', 'Cats, also called house cats, are kept as pets worldwide.'),
    ('2', 'capital of france', 'd2', 'Paris is the capital and most populous city of France.'),
    ('2', 'capital of france', 'd4', 'Lyon est une ville française — troisième ville du pays. 日本語のテキスト'),
    ('2', 'capital of france', 'd5', ''),
]

TOL = dict(rtol=1e-5, atol=1e-5)


def frame(rows=DOCS):
    return pd.DataFrame(rows, columns=['qid', 'query', 'docno', 'text'])


def by_pair(out, inp):
    return out.set_index(['qid', 'docno']).loc[list(zip(inp.qid, inp.docno)), 'score'].to_numpy()


@pytest.fixture(scope='module')
def big_frame():
    """3 queries x 14 real DL19 passages of varied length (42 pairs: batches of 16 mix queries and lengths)."""
    from pyterrier_llmrank.testing import corpus_lines
    texts = corpus_lines(60)
    rows = []
    for q, (qid, query) in enumerate([('a', 'what is the population of manhattan'), ('b', 'define atomic bomb'),
                                      ('c', 'how do vaccines work')]):
        for j in range(14):
            rows.append((qid, query, f'p{q * 14 + j}', texts[(q * 14 + j) * 1 + (j % 3)]))
    return frame(rows)


@pytest.fixture(scope='module')
def tiny_qwen2(tiny_llama):
    """Tiny random Qwen2ForCausalLM (hidden 64, 2 layers, GQA 4/2) with tiny_llama's tokenizer (SmolLM2's)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    tok = tiny_llama.tokenizer
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(cfg).eval()
    model.config._name_or_path = 'tiny-qwen2'
    return model, tok


def _tiny_llama_cls(tok, seed=2, pad_token_id=0):
    from transformers import LlamaConfig, LlamaForSequenceClassification
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, num_labels=1,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(cfg).eval()
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)  # a head with some spread
    return model


@pytest.fixture(scope='module')
def tiny_cls(tiny_llama):
    """Tiny random LlamaForSequenceClassification (1 label), config.pad_token_id = 0 as DeAR's loader sets it."""
    model = _tiny_llama_cls(tiny_llama.tokenizer)
    model.config._name_or_path = 'tiny-llama-cls'
    return model, tiny_llama.tokenizer


# ------------------------------------------------------------------------------------------- the core

def _seqs(tok):
    head_a = tok('<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nquery: cats\ndocument:',
                 add_special_tokens=False)['input_ids']
    head_b = tok('<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nquery: the capital of france\ndocument:',
                 add_special_tokens=False)['input_ids']
    docs = [' a cat is an animal', ' paris is big', ' dogs bark loudly at night and in the day']
    return [head_a + tok(d)['input_ids'] for d in docs] + [head_b + tok(d)['input_ids'] for d in docs]


def test_shared_prefix_lengths():
    seqs = [[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 9], [7, 8], [1, 2, 3, 4]]
    assert shared_prefix_lengths(seqs, ['a', 'a', 'a', 'b', 'c'], [1] * 5) == [2, 2, 2, 0, 0]
    assert shared_prefix_lengths(seqs[:2], ['a', 'a'], [1, 1]) == [3, 3]
    # the reserve keeps the read positions out of the prefix
    assert shared_prefix_lengths([[1, 2, 3], [1, 2, 3]], ['a', 'a'], [1, 1]) == [2, 2]
    assert shared_prefix_lengths([[1, 2, 3], [1, 2, 3]], ['a', 'a'], [2, 2]) == [1, 1]


@pytest.mark.parametrize('which', ['smollm2', 'tiny_qwen2'])
def test_prefix_reuse_equals_full_computation(request, which):
    """Every core function gives the same outputs with and without shared prefixes (mixed prefixes per batch)."""
    model, tok = request.getfixturevalue(which)
    seqs = _seqs(tok)
    pad = tok.pad_token_id
    auto = shared_prefix_lengths(seqs, [0, 0, 0, 1, 1, 1], [1] * 6)
    assert auto[0] > 10 and auto[3] > auto[0]
    mixed = [0, 5, auto[0], 3, 0, auto[3]]  # several prefix lengths in one batch, some rows without
    ids = [tok('1', add_special_tokens=False)['input_ids'][0], tok('0', add_special_tokens=False)['input_ids'][0]]
    full = next_token_logits(model, seqs, ids, pad)
    single = torch.cat([next_token_logits(model, [s], ids, pad) for s in seqs])
    np.testing.assert_allclose(full, single, **TOL)
    targets = [[5, 6, 7]] * 6
    logprobs = target_logprobs(model, seqs, targets, pad)
    hidden = last_hidden(model, seqs, pad) if which != 'smollm2' else None
    for plens in (auto, mixed):
        kv = PrefixKV(model)
        np.testing.assert_allclose(next_token_logits(model, seqs, ids, pad, prefix_lens=plens, prefix_kv=kv), full, **TOL)
        assert kv.computed_tokens == sum(len(p) for p in {tuple(s[:n]) for s, n in zip(seqs, plens) if n})
        np.testing.assert_allclose(target_logprobs(model, seqs, targets, pad, prefix_lens=plens, prefix_kv=kv),
                                   logprobs, rtol=1e-5, atol=5e-5)  # sums of 3 log-probabilities
        if hidden is not None:
            np.testing.assert_allclose(last_hidden(model, seqs, pad, prefix_lens=plens, prefix_kv=kv), hidden, **TOL)
    with pytest.raises(ValueError, match='after its prefix'):
        next_token_logits(model, seqs[:1], ids, pad, prefix_lens=[len(seqs[0])], prefix_kv=PrefixKV(model))


def test_extra_token_equals_right_padding(tiny_cls):
    """last_hidden(extra_token=(pad, L-1)) is the hidden state a right-padded length-L input has at its end."""
    model, tok = tiny_cls
    seqs = _seqs(tok)
    pad, width = tok.pad_token_id, 40
    ids = torch.full((len(seqs), width), pad)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    with torch.no_grad():
        ref = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]
    np.testing.assert_allclose(last_hidden(model, seqs, pad, extra_token=(pad, width - 1)), ref, **TOL)
    plens = shared_prefix_lengths(seqs, [0, 0, 0, 1, 1, 1], [1] * 6)
    np.testing.assert_allclose(last_hidden(model, seqs, pad, extra_token=(pad, width - 1), prefix_lens=plens,
                                           prefix_kv=PrefixKV(model)), ref, **TOL)


# -------------------------------------------------------------------------------------------- ProRank

def test_prorank_prompt_golden(smollm2):
    pr = ProRank(smollm2)
    tok = pr.tokenizer
    ids = pr.prompt_ids('what is a cat', 'Cats purr.')
    assert tok.decode(ids) == (
        '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n'
        '<|im_start|>user\nquery: what is a cat\ndocument: Cats purr.\nYou are a search relevance expert who evaluates '
        'how well documents match search queries. For each query-document pair, carefully analyze the semantic '
        'relationship between them, then provide your binary relevance judgment (0 for not relevant, 1 for relevant).'
        '\nRelevance:<|im_end|>\n<|im_start|>assistant\n')
    # built from the separately tokenized parts, as mxbai_rerank_v2.py's concat_input_ids
    assert ids[:7] == [1, 9690, 198, 2683, 359, 1606, 30219]  # <|im_start|> system \n You are Q wen
    q = [8433, 42, 732, 314, 253, 2644]  # 'query: what is a cat'
    d = [17483, 42, 24395, 1381, 98, 30]  # 'document: Cats purr.'
    assert ids[len(pr._prefix):len(pr._prefix) + 14] == q + [198] + d + [198]
    n = len(tok('<|im_end|>\n<|im_start|>assistant\n', add_special_tokens=False)['input_ids'])
    assert tok.decode(ids[-n:]) == '<|im_end|>\n<|im_start|>assistant\n'
    assert ids[-n - 10:-n] == [28, 216, 33, 327, 4006, 595, 198, 29919, 8169, 42]  # ', 1 for relevant).\nRelevance:'
    assert (pr._pos_id, pr._neg_id) == (33, 32)  # "1", "0"
    with_instr = ProRank(smollm2, instruction='Find cat facts.')
    assert '<|im_start|>user\ninstruction: Find cat facts.\nquery: what is a cat\ndocument: Cats' in \
        tok.decode(with_instr.prompt_ids('what is a cat', 'Cats purr.'))


def test_prorank_truncation(smollm2):
    pr = ProRank(smollm2, max_length=40)
    ids = pr.prompt_ids('what is a cat ' * 20, 'felines ' * 200)
    tok = pr.tokenizer
    text = tok.decode(ids)
    # query capped at 3/4 of max_length (30 tokens); query + sep + document at max_length; template kept whole
    assert len(ids) == len(pr._prefix) + 40 + 1 + len(pr._task) + len(pr._suffix)
    assert text.endswith('\nRelevance:<|im_end|>\n<|im_start|>assistant\n')
    assert len(tok('query: ' + 'what is a cat ' * 20, add_special_tokens=False)['input_ids']) > 30
    body = ids[len(pr._prefix):len(pr._prefix) + 40]
    assert body[:30] == tok('query: ' + 'what is a cat ' * 20, add_special_tokens=False)['input_ids'][:30]
    assert tok.decode(body[30:]).startswith('\ndocument: felines')


def _direct_last_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def test_prorank_scores_equal_direct_computation(smollm2):
    model, tok = smollm2
    inp = frame()
    out = ProRank(smollm2, batch_size=4)(inp)
    parts = lambda s: tok(s, add_special_tokens=False)['input_ids']  # noqa: E731
    expected = []
    for _, query, _, text in DOCS:
        ids = (parts('<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.'
                     '<|im_end|>\n<|im_start|>user\n') + parts(f'query: {query}') + parts('\n')
               + parts(f'document: {text}') + parts('\n') + parts(
                   'You are a search relevance expert who evaluates how well documents match search queries. For each '
                   'query-document pair, carefully analyze the semantic relationship between them, then provide your '
                   'binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:')
               + parts('<|im_end|>\n<|im_start|>assistant\n'))
        logits = _direct_last_logits(model, ids)
        expected.append(float(logits[parts('1')[0]] - logits[parts('0')[0]]))
    np.testing.assert_allclose(by_pair(out, inp), expected, **TOL)
    norm = ProRank(smollm2, normalize=True)
    assert norm.estimated_max == 12.0 and 'normalize=True' in repr(norm)
    np.testing.assert_allclose(by_pair(norm(inp[:2]), inp[:2]), 1 / (1 + np.exp(-(np.array(expected[:2]) - 6.0))),
                               **TOL)


# ---------------------------------------------------------------------------------------------- YesNo

def test_yesno_prompt_golden(smollm2):
    yn = YesNo(smollm2)
    tok = yn.tokenizer
    assert yn.chat
    text = yn.prompt_text('what is a cat', 'Cats purr.')
    assert text == (
        '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n'
        "<|im_start|>user\nPassage: Cats purr.\nQuery: what is a cat\nDoes the passage answer the query? "
        "Answer 'Yes' or 'No'<|im_end|>\n<|im_start|>assistant\n")
    msgs = [{'role': 'user', 'content': "Passage: Cats purr.\nQuery: what is a cat\n"
                                        "Does the passage answer the query? Answer 'Yes' or 'No'"}]
    ref = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    ref = ref['input_ids'] if isinstance(ref, dict) or hasattr(ref, 'keys') else ref
    assert yn.prompt_ids('what is a cat', 'Cats purr.') == list(ref)
    assert (yn._pos_id, yn._neg_id) == (10539, 5230)  # "Yes", "No"
    custom = YesNo(smollm2, prompt='Q: {query}\nD: {text}\nRelevant?', system='Judge.')
    assert custom.prompt_text('q', 't') == ('<|im_start|>system\nJudge.<|im_end|>\n<|im_start|>user\nQ: q\nD: t\n'
                                            'Relevant?<|im_end|>\n<|im_start|>assistant\n')
    with pytest.raises(ValueError, match='text'):
        YesNo(smollm2, prompt='{query} only')
    short = YesNo(smollm2, max_text_tokens=4)
    cut = tok.decode(tok('Cats purr. And more words', add_special_tokens=False)['input_ids'][:4])
    assert len(cut) < len('Cats purr. And more words')
    assert f'<|im_start|>user\nPassage: {cut}\nQuery: q\n' in short.prompt_text('q', 'Cats purr. And more words')


def test_yesno_scores_equal_direct_computation(smollm2):
    model, tok = smollm2
    inp = frame()
    out = YesNo(smollm2, batch_size=4)(inp)
    expected = []
    for _, query, _, text in DOCS:
        msgs = [{'role': 'user', 'content': f"Passage: {text}\nQuery: {query}\n"
                                            "Does the passage answer the query? Answer 'Yes' or 'No'"}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        ids = list(ids['input_ids'] if hasattr(ids, 'keys') else ids)
        logits = _direct_last_logits(model, ids)
        pair = torch.stack([logits[tok.encode('Yes')[0]], logits[tok.encode('No')[0]]])
        expected.append(float(torch.log_softmax(pair, 0)[0]))
    np.testing.assert_allclose(by_pair(out, inp), expected, **TOL)
    assert (out['score'] <= 0).all()


# ----------------------------------------------------------------------------------------------- DeAR

def _dear_reference_scores(model, tok, rows, max_q=32, max_p=196):
    """DeAR-Reranking data.py + inference.py, written out: [BOS] q [BOS] d right-padded (EOS) to 228, HF's head."""
    out = []
    for _, query, _, text in rows:
        q = tok.encode('query: ' + query, add_special_tokens=False)[:max_q]
        d = tok.encode('document: ' + '' + ' ' + text, add_special_tokens=False)[:max_p - 3]
        ids = [tok.bos_token_id] + q + [tok.bos_token_id] + d
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        mask = [1] * len(ids) + [0] * (max_q + max_p - len(ids))
        ids = ids + [pad] * (max_q + max_p - len(ids))
        with torch.no_grad():
            out.append(float(model(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([mask])).logits[0, 0]))
    return np.array(out)


def test_dear_prompt_golden(tiny_cls):
    dear = DeARPointwise(tiny_cls)
    tok = dear.tokenizer
    ids = dear.prompt_ids('cats', 'Cats purr.')
    assert ids == [1, 8433, 42, 7680, 1, 17483, 42, 216, 24395, 1381, 98, 30]  # BOS query: cats BOS document:  Cats purr.
    assert tok.decode(ids) == '<|im_start|>query: cats<|im_start|>document:  Cats purr.'
    assert tok.decode(dear.prompt_ids('cats', 'Cats purr.', title='Cat')) == \
        '<|im_start|>query: cats<|im_start|>document: Cat Cats purr.'
    long = dear.prompt_ids('cat ' * 100, 'felines ' * 400)
    assert len(long) == 1 + 32 + 1 + 193 and long[33] == 1
    assert dear.pooling == 'padded'  # config.pad_token_id (0) is not the padding id
    assert repr(dear) == "DeARPointwise('tiny-llama-cls', pooling='padded')"


def test_dear_scores_equal_reference(tiny_cls, big_frame):
    model, tok = tiny_cls
    inp = pd.concat([frame(), big_frame[:10]], ignore_index=True)
    rows = list(inp.itertuples(index=False, name=None))
    out = DeARPointwise(tiny_cls, batch_size=16)(inp)
    np.testing.assert_allclose(by_pair(out, inp), _dear_reference_scores(model, tok, rows), **TOL)
    # pooling at the last real token: what the head reads when config.pad_token_id is the padding id
    last = DeARPointwise(tiny_cls, pooling='last', batch_size=16)(inp)
    model.config.pad_token_id = tok.pad_token_id
    try:
        np.testing.assert_allclose(by_pair(last, inp), _dear_reference_scores(model, tok, rows), **TOL)
        assert DeARPointwise(tiny_cls).pooling == 'last'
    finally:
        model.config.pad_token_id = 0
    assert not np.allclose(by_pair(last, inp), by_pair(out, inp))


def test_dear_lora_adapter(tiny_llama, tmp_path):
    from peft import LoraConfig, TaskType, get_peft_model
    tok = tiny_llama.tokenizer
    base = _tiny_llama_cls(tok, seed=3, pad_token_id=None)
    base.save_pretrained(tmp_path / 'base')
    tok.save_pretrained(tmp_path / 'base')
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=['q_proj', 'v_proj', 'down_proj'],
                     base_model_name_or_path=str(tmp_path / 'base'))
    peft_model = get_peft_model(copy.deepcopy(base), cfg)
    torch.manual_seed(4)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if 'lora_B' in name or 'modules_to_save' in name:
                p.normal_(0, 0.3)
    peft_model.peft_config['default'].base_model_name_or_path = str(tmp_path / 'base')
    peft_model.save_pretrained(tmp_path / 'adapter')
    assert (tmp_path / 'adapter' / 'adapter_config.json').exists()
    merged = peft_model.merge_and_unload().eval()
    merged.config.pad_token_id = 0

    inp = frame()
    dear = DeARPointwise(str(tmp_path / 'adapter'), device='cpu', dtype='float32', batch_size=4)
    assert dear.model.config.pad_token_id == 0 and dear.pooling == 'padded'
    got = by_pair(dear(inp), inp)
    np.testing.assert_allclose(got, _dear_reference_scores(merged, tok, DOCS), **TOL)
    base.config.pad_token_id = 0
    assert not np.allclose(got, _dear_reference_scores(base, tok, DOCS), atol=1e-3)  # the adapter is applied
    merged_dir = tmp_path / 'merged'
    merged.save_pretrained(merged_dir)
    tok.save_pretrained(merged_dir)
    np.testing.assert_allclose(by_pair(DeARPointwise(str(merged_dir), device='cpu', dtype='float32')(inp), inp), got,
                               **TOL)


# -------------------------------------------------------------------------- batch invariance, prefix reuse

@pytest.mark.parametrize('which', ['tiny_llama', 'tiny_qwen2'])
def test_batch_and_prefix_invariance_tiny(request, which, big_frame, tiny_cls):
    fixture = request.getfixturevalue(which)
    pair = fixture.pair if hasattr(fixture, 'pair') else fixture
    makers = [lambda **kw: ProRank(pair, **kw), lambda **kw: YesNo(pair, **kw)]
    if which == 'tiny_llama':
        makers.append(lambda **kw: DeARPointwise(tiny_cls, **kw))
    for make in makers:
        ref = by_pair(make(batch_size=1, prefix_reuse=False)(big_frame), big_frame)
        for kw in (dict(batch_size=16), dict(batch_size=16, prefix_reuse=False), dict(batch_size=1),
                   dict(batch_size=7, prefix_cache_queries=1)):
            np.testing.assert_allclose(by_pair(make(**kw)(big_frame), big_frame), ref, **TOL, err_msg=str(kw))


def test_batch_invariance_smollm2(smollm2, big_frame):
    """Real model: batch 1 without prefix reuse vs batch 16 with it (YesNo runs the same core path)."""
    inp = big_frame.groupby('qid').head(3).reset_index(drop=True)  # 9 real passages, 3 queries
    ref = by_pair(ProRank(smollm2, batch_size=1, prefix_reuse=False)(inp), inp)
    np.testing.assert_allclose(by_pair(ProRank(smollm2, batch_size=16)(inp), inp), ref, **TOL)


# ------------------------------------------------------------------------------------------------ frames

@pytest.mark.parametrize('make', [lambda m, c: YesNo(m, batch_size=4), lambda m, c: DeARPointwise(c, batch_size=4)],
                         ids=['YesNo', 'DeAR'])
def test_efficiency_stats(smollm2, tiny_cls, make):
    rr = make(smollm2, tiny_cls)
    inp = frame().assign(extra=range(len(DOCS)), score=0.0, rank=0)
    out = rr(inp)
    assert out['extra'].tolist() == list(range(len(DOCS)))
    stats = rr.stats.per_query().set_index('qid')
    assert stats.loc['1', 'sequences'] == 3
    # batches of at most 4 whose padding stays within the budget; without a budget, slices of 4 (2 batches)
    assert (stats['padded_tokens'].sum() - stats['input_tokens'].sum()) <= rr.max_padding * stats['input_tokens'].sum()
    assert 2 <= stats['model_calls'].sum() <= 6
    rr.max_padding = float('inf')
    rr.stats.reset()
    rr(inp)
    assert rr.stats.per_query()['model_calls'].sum() == pytest.approx(2)  # 6 pairs, batches of 4
    rr.stats.reset()
    rr(inp)
    stats = rr.stats.per_query().set_index('qid')
    # each query's pairs share a prefix, computed once: DeAR's holds the query; YesNo's (chat header + "Passage:")
    # is the same for both queries, computed once in all
    assert stats['prefix_calls'].sum() == (1 if isinstance(rr, YesNo) else 2)
    assert (stats['reused_prefix_tokens'] == 3 * stats['prefix_tokens'].max()).all() if isinstance(rr, YesNo) else \
        (stats['reused_prefix_tokens'] == 3 * stats['prefix_tokens']).all()
    assert (stats['input_tokens'] > 0).all() and (stats['seconds'] > 0).all()
    assert len(rr._kv) == 0  # prefix states are freed after the transform
    rr.stats.reset()
    assert len(rr.stats.per_query()) == 0
    assert rr.schematic['label'] in ('YesNo', 'DeAR-P')


def test_reprs_and_errors(smollm2, tiny_cls):
    assert repr(YesNo(smollm2)) == "YesNo('smollm2-135m-instruct')"
    assert repr(ProRank(smollm2)) == "ProRank('smollm2-135m-instruct')"
    with pytest.raises(ValueError, match='pooling'):
        DeARPointwise(tiny_cls, pooling='mean')
    with pytest.raises(ValueError, match='classification head'):
        DeARPointwise(smollm2)
    with pytest.raises(ValueError, match='batch_size'):
        ProRank(smollm2, batch_size=0)


def test_yesno_fits_the_context(tiny_llama):
    """A pair past max_position_embeddings (2048 on the tiny Llama) has its text cut further, with a warning and
    the truncated_prompts counter; a query too long by itself is a clear error, the model never runs on it."""
    yn = YesNo(tiny_llama.pair, max_text_tokens=100_000, device='cpu', dtype='float32')
    inp = pd.DataFrame({'qid': ['1', '1'], 'query': 'cats', 'docno': ['a', 'b'],
                        'text': ['cats purr ' * 3000, 'a short one']})
    with pytest.warns(UserWarning, match=r"YesNo: query '1'.*each document cut to \d+ tokens"):
        out = yn(inp)
    assert len(out) == 2 and np.isfinite(out['score']).all()
    assert yn.stats.per_query()['truncated_prompts'].tolist() == [1.0]
    long_ids = yn.prompt_ids('cats', 'cats purr ' * 3000)
    assert len(long_ids) > 2048
    assert len(yn._prompts(inp.iloc[:1])[0]) <= 2048
    assert yn._prompts(inp.iloc[1:])[0] == yn.prompt_ids('cats', 'a short one')  # a pair that fits is untouched
    with pytest.raises(ValueError, match=r"YesNo: query '1' is too long"):
        yn(inp.assign(query='purr ' * 5000))
