"""UPR: unsupervised passage re-ranking by query likelihood.

Sachan, Lewis, Joshi, Aghajanyan, Yih, Pineau, Zettlemoyer: "Improving Passage Retrieval with Zero-Shot
Question Generation", EMNLP 2022. Reference code: DevSinghSachan/unsupervised-passage-reranking ``upr.py``
(T5) and ``upr_gpt.py`` (decoder-only LMs).
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import pandas as pd
import torch

from pyterrier_llmrank import models
from pyterrier_llmrank.base import AtLeast, OneOf, PointwiseReranker, fit_pieces
from pyterrier_llmrank.causal import target_logprobs

__all__ = ['UPR', 'UPR_PASSAGE_TEMPLATE', 'UPR_HEAD', 'UPR_VERBALIZER', 'UPR_QUESTION_TEMPLATE']

# DevSinghSachan/unsupervised-passage-reranking upr.py: defaults of --verbalizer-head and --verbalizer, and
# the encoder input "{} {} {}. {}".format(verbalizer_head, title, text, verbalizer).
UPR_HEAD = 'Passage: '
UPR_VERBALIZER = 'Please write a question based on this passage.'
UPR_PASSAGE_TEMPLATE = '{head} {title} {text}. {verbalizer}'
# DevSinghSachan/unsupervised-passage-reranking utils/openqa_dataset.py: decoder labels "Question: {question}"
# (the "?" suffix is added only for NQ/EfficientQA questions, not for BEIR/MS MARCO queries).
UPR_QUESTION_TEMPLATE = 'Question: {query}'


class UPR(PointwiseReranker):
    """Unsupervised Passage Re-ranking (UPR): score = log P(question | passage) under a language model.

    Sachan et al., "Improving Passage Retrieval with Zero-Shot Question Generation", EMNLP 2022.

    Two model families:

    * ``kind='seq2seq'`` (T5/T0, as ``upr.py``): encoder input
      ``"Passage:  {title} {text}. Please write a question based on this passage."`` (at most 512 tokens),
      decoder labels ``"Question: {query}"`` with EOS (at most 128 tokens); score = sum of the label tokens'
      log-probabilities (``reduce='mean'``: their mean).
    * ``kind='causal'`` (decoder-only LMs, as ``upr_gpt.py``): the same passage text as context, then
      ``"Question: {query}"`` and EOS scored as its continuation (the default, the reference's form). With
      ``chat=True`` the passage text is the user turn of the tokenizer's chat template and
      ``"Question: {query}"`` plus the end-of-turn token the assistant's answer. The measured comparison of
      the two forms is in ``docs/upr.md``.

    Unlike the reference, which truncates the whole encoder input to 512 tokens (cutting the instruction of
    long passages), only the passage text is cut: the head, instruction and question are always kept. When a
    document has no title, the empty title field is dropped (``"Passage: {text}. ..."``) instead of leaving
    a run of spaces: T5's SentencePiece collapses them anyway, byte-level BPE tokenizers would not.

    Args:
        model: a hub name / local path / short name, or a ``(model, tokenizer)`` pair.
            Default ``google/t5-base-lm-adapt`` (the paper's T5 family).
        kind: ``'seq2seq'``, ``'causal'`` or ``'auto'`` (from the model's config).
        chat: causal form only: wrap the prompt in the tokenizer's chat template (default ``False``).
        reduce: ``'sum'`` (default, as the reference code) or ``'mean'`` over label tokens.
        max_passage_tokens: budget of the passage prompt (head + passage + instruction), 512 as the reference.
        max_query_tokens: budget of the label (question) tokens, 128 as the reference.
        title_field: column with a title (optional; used when present).
        text_field, batch_size, verbose: as every reranker of the toolkit.
        device, dtype: see :mod:`pyterrier_llmrank.models`.
    """

    label = 'UPR'
    ARGUMENTS = {'reduce': OneOf('sum', 'mean'), 'kind': OneOf('seq2seq', 'causal', 'auto'),
                 'max_passage_tokens': AtLeast(1), 'max_query_tokens': AtLeast(1)}

    def __init__(self, model: Any = 'google/t5-base-lm-adapt', *, kind: str = 'auto', chat: bool = False,
                 reduce: str = 'sum', max_passage_tokens: int = 512, max_query_tokens: int = 128,
                 title_field: str = 'title', text_field: str = 'text', batch_size: int = 16, verbose: bool = False,
                 device: Any = 'auto', dtype: Any = 'auto') -> None:
        super().__init__(text_field=text_field, batch_size=batch_size, verbose=verbose)
        self.check_arguments(reduce=reduce, kind=kind, max_passage_tokens=max_passage_tokens,
                             max_query_tokens=max_query_tokens)
        if kind == 'auto':
            kind = 'seq2seq' if models.is_encoder_decoder(model) else 'causal'
        self.kind = kind
        loader = models.load_seq2seq_lm if kind == 'seq2seq' else models.load_causal_lm
        self._use_model(loader, model, device=device, dtype=dtype)
        self.reduce = reduce
        self.max_passage_tokens = max_passage_tokens
        self.max_query_tokens = max_query_tokens
        self.title_field = title_field
        self.pad = self.lm.pad_id
        self._pre, self._post = self.lm.special_tokens
        if kind == 'causal':
            self.chat = chat
            if chat:
                before, after, end = self.lm.chat_parts()
                self._chat_before = self.lm.ids(before)
                self._chat_after = self.lm.ids(after)
                self._chat_end = self.lm.ids(end)[:1]  # the end-of-turn token (trailing newline not scored)
        else:
            self.chat = False

    def _repr_args(self) -> str:
        extra = f', chat={self.chat}' if self.kind == 'causal' else ''
        return f'{self.model_name!r}, kind={self.kind!r}{extra}'

    def passage_text(self, text: str, title: Optional[str] = None) -> str:
        """The passage prompt of the reference (``UPR_PASSAGE_TEMPLATE``) for one document."""
        if title:
            return UPR_PASSAGE_TEMPLATE.format(head=UPR_HEAD, title=title, text=text, verbalizer=UPR_VERBALIZER)
        return f'{UPR_HEAD}{text}. {UPR_VERBALIZER}'

    def _passage_ids(self, text: str, title: Optional[str], budget: int) -> List[int]:
        """Token ids of the passage prompt, the passage text cut (never the head or instruction) to ``budget``."""
        ids = self.lm.ids(self.passage_text(text, title))
        if len(ids) <= budget:
            return ids
        head = self.lm.ids(f'{UPR_HEAD} {title}' if title else UPR_HEAD.rstrip())
        tail = self.lm.ids(f'. {UPR_VERBALIZER}')
        body = self.lm.ids(' ' + text)
        return sum(fit_pieces([head, body, tail], budget, cut=[1]), [])

    def pair_ids(self, query: str, text: str, title: Optional[str] = None) -> Tuple[List[int], List[int]]:
        """``(context, target)`` token ids of one pair, exactly as scored: the target's log-probability after
        the context is the score (the training recipe ``upr`` trains on them)."""
        frame = pd.DataFrame({'query': [query], self.text_field: [text], self.title_field: [title]})
        return self._encode(frame)[0]

    def _encode(self, inp: pd.DataFrame) -> List[Any]:
        titles: Sequence[Any] = inp[self.title_field].tolist() if self.title_field in inp.columns else [None] * len(inp)
        cache_q: dict = {}
        items = []
        for query, text, title in zip(inp['query'].tolist(), inp[self.text_field].tolist(), titles):
            title = title if isinstance(title, str) and title.strip() else None
            text = text if isinstance(text, str) else ''
            if query not in cache_q:
                label = self.lm.ids(UPR_QUESTION_TEMPLATE.format(query=query))[:self.max_query_tokens]
                cache_q[query] = label
            label = cache_q[query]
            if self.kind == 'seq2seq':
                enc = self._pre + self._passage_ids(text, title, self.max_passage_tokens - len(self._pre) - len(self._post)) + self._post
                items.append((enc, label + [self.tokenizer.eos_token_id]))
            elif self.chat:
                ctx = self._chat_before + self._passage_ids(text, title, self.max_passage_tokens) + self._chat_after
                items.append((self._pre + ctx, label + self._chat_end))
            else:
                ctx = self._pre + self._passage_ids(text, title, self.max_passage_tokens)
                items.append((ctx, label + [self.tokenizer.eos_token_id]))
        return items

    def _length(self, item: Tuple[List[int], List[int]]) -> int:
        return len(item[0]) + len(item[1])

    def _score_batch(self, items: List[Tuple[List[int], List[int]]]) -> Sequence[float]:
        if self.kind == 'causal':
            return target_logprobs(self.model, [c for c, _ in items], [t for _, t in items], self.pad, self.reduce)
        return self._score_seq2seq(items)

    @torch.inference_mode()
    def _score_seq2seq(self, items: List[Tuple[List[int], List[int]]]) -> List[float]:
        dev = next(self.model.parameters()).device
        width = max(len(e) for e, _ in items)
        lwidth = max(len(t) for _, t in items)
        ids = torch.full((len(items), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full((len(items), lwidth), -100, dtype=torch.long)
        for i, (e, t) in enumerate(items):
            ids[i, :len(e)] = torch.as_tensor(e)
            mask[i, :len(e)] = 1
            labels[i, :len(t)] = torch.as_tensor(t)
        ids, mask, labels = ids.to(dev), mask.to(dev), labels.to(dev)
        # decoder inputs: the labels shifted right behind the decoder start token (as the model does when given
        # labels); padding after a short label never influences its tokens, the decoder being causal
        dec = torch.full_like(labels, self.pad)
        dec[:, 0] = self.model.config.decoder_start_token_id
        dec[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, self.pad)
        logits = self.model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        valid = labels != -100
        tok_lp = logprobs.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * valid
        total = tok_lp.sum(-1)
        if self.reduce == 'mean':
            total = total / valid.sum(-1)
        return total.cpu().tolist()
