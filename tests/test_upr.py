"""UPR: exact templates, scores equal to a direct computation, batch invariance, truncation, frames."""
import numpy as np
import pandas as pd
import pytest
import torch

from pyterrier_llmrank import UPR
from pyterrier_llmrank.upr import UPR_PASSAGE_TEMPLATE, UPR_QUESTION_TEMPLATE

DOCS = [
    ('1', 'what is a cat', 'd1', 'A cat is a small domesticated carnivorous mammal with soft fur.'),
    ('1', 'what is a cat', 'd2', 'Paris is the capital and most populous city of France.'),
    ('1', 'what is a cat', 'd3', 'Cats, also called house cats, are kept as pets worldwide.'),
    ('2', 'capital of france', 'd2', 'Paris is the capital and most populous city of France.'),
    ('2', 'capital of france', 'd4', 'Lyon est une ville française — troisième ville du pays. 日本語のテキスト'),
    ('2', 'capital of france', 'd5', ''),
]


def frame(rows=DOCS):
    return pd.DataFrame(rows, columns=['qid', 'query', 'docno', 'text'])


def test_templates_golden():
    assert UPR_PASSAGE_TEMPLATE.format(head='Passage: ', title='T', text='body', verbalizer='V') == 'Passage:  T body. V'
    assert UPR_QUESTION_TEMPLATE.format(query='who am i') == 'Question: who am i'


def test_prompt_text_golden(smollm2):
    upr = UPR(smollm2, chat=False)
    assert upr.passage_text('Some text', 'A title') == \
        'Passage:  A title Some text. Please write a question based on this passage.'
    assert upr.passage_text('Some text') == 'Passage: Some text. Please write a question based on this passage.'
    ctx, label = upr._encode(frame()[:1])[0]
    assert upr.tokenizer.decode(ctx) == \
        'Passage: A cat is a small domesticated carnivorous mammal with soft fur.. Please write a question based on this passage.'
    assert upr.tokenizer.decode(label) == 'Question: what is a cat<|im_end|>'


def test_chat_prompt_golden(smollm2):
    assert not UPR(smollm2).chat  # the reference's plain form by default
    upr = UPR(smollm2, chat=True)
    ctx, label = upr._encode(frame()[:1])[0]
    assert upr.tokenizer.decode(ctx + label) == (
        '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n'
        '<|im_start|>user\nPassage: A cat is a small domesticated carnivorous mammal with soft fur.. '
        'Please write a question based on this passage.<|im_end|>\n<|im_start|>assistant\n'
        'Question: what is a cat<|im_end|>')


def _direct_logprob(model, ctx, label):
    """Brute force: one unpadded forward pass over the whole sequence, full logits."""
    ids = torch.tensor([ctx + label])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]
    return sum(float(lp[len(ctx) - 1 + j, t]) for j, t in enumerate(label))


@pytest.mark.parametrize('chat', [True, False])
def test_causal_scores_equal_direct_computation(smollm2, chat):
    upr = UPR(smollm2, chat=chat, batch_size=4)
    inp = frame()
    out = upr(inp)
    items = upr._encode(inp)
    expected = [_direct_logprob(upr.model, c, t) for c, t in items]
    got = out.set_index(['qid', 'docno']).loc[list(zip(inp.qid, inp.docno)), 'score'].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    mean = UPR(smollm2, chat=chat, reduce='mean')(inp)
    np.testing.assert_allclose(mean.set_index(['qid', 'docno']).loc[list(zip(inp.qid, inp.docno)), 'score'],
                               np.array(expected) / [len(t) for _, t in items], rtol=1e-5, atol=1e-5)


def test_batch_size_does_not_change_scores(smollm2):
    inp = frame()
    scores = [UPR(smollm2, batch_size=b)(inp).sort_values(['qid', 'docno'])['score'].to_numpy() for b in (1, 2, 6)]
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scores[0], scores[2], rtol=1e-5, atol=1e-4)


def test_truncation_keeps_instruction_and_query(smollm2):
    upr = UPR(smollm2, chat=False, max_passage_tokens=64)
    long_text = ' '.join(['felines'] * 400)
    inp = frame([('1', 'what is a cat', 'long', long_text)])
    (ctx, label), = upr._encode(inp)
    assert len(ctx) == 64
    tail = upr.lm.ids('. Please write a question based on this passage.')
    assert ctx[-len(tail):] == tail
    assert upr.tokenizer.decode(ctx).startswith('Passage: felines felines')
    assert upr.tokenizer.decode(label) == 'Question: what is a cat<|im_end|>'
    assert np.isfinite(upr(inp)['score']).all()


def test_title_column_is_used(smollm2):
    upr = UPR(smollm2, chat=False)
    inp = frame()[:1].assign(title='Cats')
    ctx, _ = upr._encode(inp)[0]
    assert upr.tokenizer.decode(ctx).startswith('Passage:  Cats A cat is')


def test_efficiency_stats_and_repr(smollm2):
    upr = UPR(smollm2, batch_size=3)
    upr.max_padding = float('inf')  # plain slices of batch_size (the default also cuts by padding)
    inp = frame().assign(extra=range(len(DOCS)), score=0.0, rank=0)
    upr(inp)
    # efficiency counters per query
    stats = upr.stats.per_query().set_index('qid')
    assert stats.loc['1', 'sequences'] == 3  # one transform call with data: three docs of qid 1
    assert stats['model_calls'].sum() == pytest.approx(2)  # 6 pairs in batches of 3
    assert (stats['input_tokens'] > 0).all() and (stats['seconds'] > 0).all()
    upr.stats.reset()
    assert len(upr.stats.per_query()) == 0
    assert repr(upr).startswith("UPR('smollm2-135m-instruct'")


def test_seq2seq_equals_reference_computation(tiny_t5):
    """On a tiny T5: our batched scores equal upr.py's computation (labels= path, full logits, one pair at a time)."""
    model, tok = tiny_t5.model, tiny_t5.tokenizer
    upr = UPR((model, tok), batch_size=4)
    assert upr.kind == 'seq2seq'
    inp = frame()
    out = upr(inp).set_index(['qid', 'docno'])
    for qid, query, docno, text in DOCS:
        # upr.py's encoder input, with the empty title of an untitled document
        enc = tok('{} {} {}. {}'.format('Passage: ', '', text, 'Please write a question based on this passage.'),
                  return_tensors='pt',
                  max_length=512, truncation=True)
        labels = tok(f'Question: {query}', return_tensors='pt', max_length=128, truncation=True).input_ids
        with torch.no_grad():
            logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels).logits
        ref = float(torch.log_softmax(logits, -1).gather(2, labels.unsqueeze(2)).sum())
        assert out.loc[(qid, docno), 'score'] == pytest.approx(ref, rel=1e-5, abs=1e-4)
