"""Pointwise LLM rerankers on one batched scoring core: ProRank, DeAR stage 1 and the yes/no-token scorer.

* :class:`ProRank`: Li et al.: "ProRank: Prompt Warmup via Reinforcement Learning for Small Language Models
  Reranking", arXiv 2506.03487, 2025; released as ``mixedbread-ai/mxbai-rerank-base-v2``
  (0.5B) and ``-large-v2`` (1.5B). Reference inference code: mixedbread-ai/mxbai-rerank
  ``mxbai_rerank/mxbai_rerank_v2.py`` (class ``MxbaiRerankV2``).
* :class:`DeARPointwise`: Abdallah et al.: "DeAR: Dual-Stage Document Reranking with Reasoning Agents via LLM
  Distillation", Findings of EMNLP 2025 (arXiv 2508.16998), stage 1 (the pointwise
  student). Reference code: DataScienceUIBK/DeAR-Reranking ``pointwise_reranker/`` (``inference.py``,
  ``modeling.py``, ``arguments.py``), ``data.py`` and ``run_pointwise.sh``.
* :class:`YesNo`: the generic yes/no relevance prompt of LLM rerankers ("relevance generation", Liang et al.,
  "Holistic Evaluation of Language Models", 2022; score = log-softmax over the logits of "Yes" and "No" at the
  answer position); default prompt as ielab/llm-rankers ``llmrankers/pointwise.py`` writes it
  (``PointwiseLlmRanker``, ``method="yes_no"``; Zhuang et al., "A Setwise Approach for Effective and Highly
  Efficient Zero-shot Ranking with Large Language Models", SIGIR 2024).

All three are :class:`~pyterrier_llmrank.base.PointwiseReranker`\\ s on the scoring core of
:mod:`pyterrier_llmrank.causal`: pairs are sorted by length and batched with left padding, only the logits
(or the one hidden state) read are computed, and the prompt prefix that the pairs of a query share (chat
header, system turn and, where the template puts it first, the query) is run through the model once per
query and its key/value states reused for every document (``prefix_reuse=True``).
"""
from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from pyterrier_llmrank import models
from pyterrier_llmrank.base import AtLeast, OneOf, PointwiseReranker, fit_pieces
from pyterrier_llmrank.causal import last_hidden, next_token_logits, shared_prefix_lengths
from pyterrier_llmrank.generative import fit_to_budget

__all__ = ['ProRank', 'DeARPointwise', 'YesNo',
           'PRORANK_SYSTEM_PREFIX', 'PRORANK_ASSISTANT_SUFFIX', 'PRORANK_SEP', 'PRORANK_INSTRUCTION_TEMPLATE',
           'PRORANK_QUERY_TEMPLATE', 'PRORANK_DOCUMENT_TEMPLATE', 'PRORANK_TASK_PROMPT', 'PRORANK_ESTIMATED_MAX',
           'DEAR_QUERY_TEMPLATE', 'DEAR_DOCUMENT_TEMPLATE', 'DEAR_MAX_QUERY_TOKENS', 'DEAR_MAX_PASSAGE_TOKENS',
           'YESNO_PROMPT', 'YESNO_YES', 'YESNO_NO']

# ------------------------------------------------------------------------------------------------ ProRank
# mixedbread-ai/mxbai-rerank mxbai_rerank/mxbai_rerank_v2.py (MxbaiRerankV2 class attributes, @8e709dc):
# ``chat_template["prefix"]``, ``chat_template["suffix"]``, ``sep``, ``instruction_prompt``, ``query_prompt``,
# ``doc_prompt`` and ``task_prompt``; the input is prefix + query + sep + document + sep + task + suffix, each
# part tokenized on its own without special tokens (``prepare_predefined_inputs``/``concat_input_ids``).
PRORANK_SYSTEM_PREFIX = ('<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.'
                         '<|im_end|>\n<|im_start|>user\n')
PRORANK_ASSISTANT_SUFFIX = '<|im_end|>\n<|im_start|>assistant\n'
PRORANK_SEP = '\n'
PRORANK_INSTRUCTION_TEMPLATE = 'instruction: {instruction}'
PRORANK_QUERY_TEMPLATE = 'query: {query}'
PRORANK_DOCUMENT_TEMPLATE = 'document: {document}'
PRORANK_TASK_PROMPT = ('You are a search relevance expert who evaluates how well documents match search queries. '
                       'For each query-document pair, carefully analyze the semantic relationship between them, then '
                       'provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:')
#: ``estimated_max_cfg`` of mxbai_rerank_v2.py (sigmoid normalisation: ``sigmoid(x - estimated_max / 2)``,
#: mxbai_rerank/utils.py ``sigmoid_normalize``); other models get the reference's default 12.
PRORANK_ESTIMATED_MAX = {'mixedbread-ai/mxbai-rerank-base-v2': 9.0, 'mixedbread-ai/mxbai-rerank-large-v2': 12.0}
_PRORANK_DEFAULT_ESTIMATED_MAX = 12.0

# --------------------------------------------------------------------------------------------------- DeAR
# DataScienceUIBK/DeAR-Reranking data.py (RerankerInferencePreProcessor.__call__): 'query: ' + query and
# 'document: ' + title + separator + text with separator ' ' (DataArguments.passage_field_separator), each encoded
# without special tokens; RerankerInferenceDataset.__getitem__ then builds [BOS] + query + [BOS] + document,
# truncated 'only_second' and padded ('max_length', right, with EOS) to q_max_len + p_max_len.
DEAR_QUERY_TEMPLATE = 'query: {query}'
DEAR_DOCUMENT_TEMPLATE = 'document: {title}{separator}{text}'
DEAR_SEPARATOR = ' '
#: run_pointwise.sh: ``--q_max_len 32 --p_max_len 196``; the document text keeps ``p_max_len - 3`` = 193 tokens
#: (data.py) and the padded length is ``q_max_len + p_max_len`` = 228.
DEAR_MAX_QUERY_TOKENS = 32
DEAR_MAX_PASSAGE_TOKENS = 196

# -------------------------------------------------------------------------------------------------- YesNo
# ielab/llm-rankers llmrankers/pointwise.py, PointwiseLlmRanker.rerank, method == "yes_no": the prompt, and the
# answer tokens ``tokenizer.encode("Yes")[0]`` / ``tokenizer.encode("No")[0]`` whose logits are compared.
YESNO_PROMPT = "Passage: {text}\nQuery: {query}\nDoes the passage answer the query? Answer 'Yes' or 'No'"
YESNO_YES = 'Yes'
YESNO_NO = 'No'


def _first_token(lm: models.LoadedModel, word: str) -> int:
    ids = lm.ids(word)
    if not ids:
        raise ValueError(f'{word!r} encodes to no token')
    return int(ids[0])


class _PrefixReusingPointwise(PointwiseReranker):
    """A pointwise reranker on a decoder LM whose prompts of one query share a token prefix.

    Subclasses implement :meth:`_prompts` (token ids of every pair's full input) and :meth:`_scores` (scores of a
    batch given the full inputs and each one's shared prefix length). The base computes, per query, the longest
    token prefix its pairs share (when ``prefix_reuse``), runs each such prefix through the model once and lets
    the core reuse its key/value states; the frame is processed ``prefix_cache_queries`` queries at a time so
    that the states of at most that many prefixes are held at once.

    Extra efficiency counters (per query): ``reused_prefix_tokens`` (prompt tokens served from a prefix cache,
    not fed again), ``prefix_tokens`` and ``prefix_calls`` (tokens and forward passes spent computing prefixes).
    ``input_tokens`` counts the tokens actually fed with each pair (its suffix).
    """

    #: tokens at the end of every prompt that must stay out of the shared prefix (those whose outputs are read)
    _reserve = 1
    ARGUMENTS = {'prefix_cache_queries': AtLeast(1)}

    def __init__(self, *, prefix_reuse: bool, prefix_cache_queries: int, text_field: str, batch_size: int,
                 verbose: bool) -> None:
        super().__init__(text_field=text_field, batch_size=batch_size, verbose=verbose)
        self.check_arguments(prefix_cache_queries=prefix_cache_queries)
        self.prefix_reuse = prefix_reuse
        self.prefix_cache_queries = prefix_cache_queries

    def _init_prefix_cache(self) -> None:
        self._kv = self.lm.prefix_kv()

    # -- to implement -------------------------------------------------------------------------------------
    def _prompts(self, inp: pd.DataFrame) -> List[List[int]]:
        raise NotImplementedError

    def _scores(self, seqs: List[List[int]], prefix_lens: List[int]) -> Sequence[float]:
        raise NotImplementedError

    # -- PointwiseReranker ----------------------------------------------------------------------------------
    def _rerank(self, inp: pd.DataFrame) -> pd.DataFrame:
        qids = pd.unique(inp['qid'])
        parts = []
        for i in range(0, len(qids), self.prefix_cache_queries):
            chunk = inp[inp['qid'].isin(qids[i:i + self.prefix_cache_queries])]
            try:
                parts.append(super()._rerank(chunk))
            finally:
                self._kv.clear()
        return pd.concat(parts).loc[inp.index]

    def _encode(self, inp: pd.DataFrame) -> List[Tuple[List[int], int, Any]]:
        seqs = self._prompts(inp)
        qids = inp['qid'].tolist()
        if self.prefix_reuse:
            plens = shared_prefix_lengths(seqs, qids, [self._reserve] * len(seqs))
        else:
            plens = [0] * len(seqs)
        return list(zip(seqs, plens, qids))

    def _length(self, item: Tuple[List[int], int, Any]) -> int:
        return len(item[0]) - item[1]

    def _score_batch(self, items: List[Tuple[List[int], int, Any]]) -> Sequence[float]:
        for seq, plen, qid in items:
            if plen:
                prefix = tuple(seq[:plen])
                if prefix not in self._kv:
                    self._kv.get(prefix)
                    self.stats.add(qid, prefix_tokens=plen, prefix_calls=1)
                self.stats.add(qid, reused_prefix_tokens=plen)
        return self._scores([s for s, _, _ in items], [p for _, p, _ in items])


class _NextTokenPointwise(_PrefixReusingPointwise):
    """Scores from the logits of two answer tokens at the position after the prompt."""

    def _combine(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _scores(self, seqs: List[List[int]], prefix_lens: List[int]) -> Sequence[float]:
        logits = next_token_logits(self.model, seqs, [self._pos_id, self._neg_id], self.pad,
                                   prefix_lens=prefix_lens, prefix_kv=self._kv)
        return self._combine(logits[:, 0], logits[:, 1]).tolist()


class ProRank(_NextTokenPointwise):
    """ProRank / mxbai-rerank-v2: score = logit("1") - logit("0") after a fixed relevance prompt.

    Li et al., "ProRank: Prompt Warmup via Reinforcement Learning for Small Language Models Reranking",
    arXiv 2506.03487, 2025. Checkpoints ``mixedbread-ai/mxbai-rerank-base-v2`` (Qwen2.5-0.5B) and
    ``mixedbread-ai/mxbai-rerank-large-v2`` (Qwen2.5-1.5B).

    The input is built from token ids exactly as mixedbread-ai/mxbai-rerank ``mxbai_rerank_v2.py`` does
    (:data:`PRORANK_SYSTEM_PREFIX`, ``[instruction: {instruction}\\n]query: {query}``, ``\\n``,
    ``document: {document}``, ``\\n``, :data:`PRORANK_TASK_PROMPT`, :data:`PRORANK_ASSISTANT_SUFFIX`, each
    tokenized on its own without special tokens); the query part is cut to ``max_length * 3 // 4`` tokens and the
    query + document part to ``max_length`` (the document being cut), as the reference. The score is read at the
    last position (left padding; the reference's padding to a multiple of 8 does not change scores). With
    ``normalize=True`` scores are ``sigmoid(x - estimated_max / 2)`` as the reference's ``normalize=True``
    (``estimated_max`` 9 for the base model, 12 for the large one and any other).

    Any causal LM can be given (e.g. ``smollm2-135m-instruct`` to run the prompt offline); the scores then
    only mean something for a model trained on this prompt.

    Args:
        model: hub name / local folder / short name, or a ``(model, tokenizer)`` pair.
            Default ``mixedbread-ai/mxbai-rerank-base-v2``.
        instruction: optional task instruction (``instruction: ...`` line before the query), as the reference.
        normalize: return sigmoid-normalised scores (same order).
        estimated_max: the normalisation constant (default: from :data:`PRORANK_ESTIMATED_MAX`, else 12).
        max_length: budget of the query + document tokens (reference default 8192), lowered so that the whole
            input fits the model's ``max_position_embeddings``.
        prefix_reuse: compute the shared prompt prefix (system turn + query) once per query.
        prefix_cache_queries: queries whose prefix states are held at once.
        text_field, batch_size, verbose: as every reranker of the toolkit.
        device, dtype: see :mod:`pyterrier_llmrank.models`.
    """

    label = 'ProRank'

    def __init__(self, model: Any = 'mixedbread-ai/mxbai-rerank-base-v2', *, instruction: Optional[str] = None,
                 normalize: bool = False, estimated_max: Optional[float] = None, max_length: int = 8192,
                 prefix_reuse: bool = True, prefix_cache_queries: int = 64, text_field: str = 'text',
                 batch_size: int = 16, verbose: bool = False, device: Any = 'auto', dtype: Any = 'auto') -> None:
        super().__init__(prefix_reuse=prefix_reuse, prefix_cache_queries=prefix_cache_queries, text_field=text_field,
                         batch_size=batch_size, verbose=verbose)
        self._use_model(models.load_causal_lm, model, device=device, dtype=dtype)
        self.instruction = instruction
        self.normalize = normalize
        self.estimated_max = float(estimated_max if estimated_max is not None else
                                   PRORANK_ESTIMATED_MAX.get(self.model_name, _PRORANK_DEFAULT_ESTIMATED_MAX))
        self.pad = self.lm.pad_id
        self._pos_id = _first_token(self.lm, '1')
        self._neg_id = _first_token(self.lm, '0')
        self._prefix = self.lm.ids(PRORANK_SYSTEM_PREFIX)
        self._suffix = self.lm.ids(PRORANK_ASSISTANT_SUFFIX)
        self._sep = self.lm.ids(PRORANK_SEP)
        self._task = self.lm.ids(PRORANK_TASK_PROMPT)
        fixed = len(self._prefix) + len(self._task) + len(self._suffix) + len(self._sep)
        self.model_max_length = int(getattr(self.model.config, 'max_position_embeddings', max_length + fixed))
        if max_length + fixed > self.model_max_length:
            max_length = self.model_max_length - fixed
        if max_length < 4:
            raise ValueError('max_length leaves no room for the query and document')
        self.max_length = max_length
        self._fixed = fixed
        self._init_prefix_cache()

    def _repr_args(self) -> str:
        return f'{self.model_name!r}' + (', normalize=True' if self.normalize else '')

    def prompt_ids(self, query: str, document: str) -> List[int]:
        """Token ids of the model input for one (query, document) pair."""
        qtext = PRORANK_QUERY_TEMPLATE.format(query=query)
        if self.instruction:
            qtext = PRORANK_INSTRUCTION_TEMPLATE.format(instruction=self.instruction) + PRORANK_SEP + qtext
        q = self.lm.ids(qtext)[:self.max_length * 3 // 4]
        doc_max = min(self.model_max_length - len(q) - self._fixed, self.max_length)
        d = self.lm.ids(PRORANK_DOCUMENT_TEMPLATE.format(document=document))[:doc_max]
        q, d = fit_pieces([q, self._sep + d], self.max_length, cut=[1])  # prepare_for_model(truncation='only_second')
        return self._prefix + q + d + self._sep + self._task + self._suffix

    def _prompts(self, inp: pd.DataFrame) -> List[List[int]]:
        return [self.prompt_ids(q, t if isinstance(t, str) else '')
                for q, t in zip(inp['query'].tolist(), inp[self.text_field].tolist())]

    def _combine(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        score = pos - neg
        if self.normalize:
            score = torch.sigmoid(score - self.estimated_max / 2)
        return score


class YesNo(_NextTokenPointwise):
    """Yes/no relevance scorer: score = log P("Yes") / (P("Yes") + P("No")) at the answer position.

    The generic pointwise prompt of LLM rerankers fine-tuned or prompted to answer whether a document is
    relevant. The default prompt, :data:`YESNO_PROMPT` (``"Passage: {text}\\nQuery: {query}\\nDoes the passage
    answer the query? Answer 'Yes' or 'No'"``), and the answer tokens (first token of ``"Yes"``/``"No"``) are
    those of ielab/llm-rankers ``llmrankers/pointwise.py`` (``method="yes_no"``; Zhuang et al., SIGIR 2024),
    written there for Flan-T5; here the prompt is the user turn of the tokenizer's chat template and the logits
    are read at the first position of the assistant's answer. The score is ``log_softmax`` over the two logits,
    taken at "Yes" (the reference returns its ``softmax``: the same order).

    Args:
        model: hub name / local folder / short name, or a ``(model, tokenizer)`` pair.
            Default ``smollm2-135m-instruct`` (offline).
        prompt: user message template with ``{query}`` and ``{text}``.
        system: system message (``None``: the chat template's default, if any).
        yes, no: the answer words whose first tokens are read.
        chat: wrap the prompt in the chat template (``None``: when the tokenizer has one); ``False``: the plain
            prompt with the tokenizer's leading special tokens.
        max_text_tokens: the passage is cut to this many tokens (decoded back to text, as ielab's ``truncate``).
            A prompt still longer than the model's ``max_position_embeddings`` has its passage cut further, with a
            ``UserWarning`` and the ``truncated_prompts`` counter of ``stats``; a query too long by itself (the
            reference never cuts it) raises a ``ValueError`` naming the query
            (:func:`~pyterrier_llmrank.generative.fit_to_budget`).
        prefix_reuse, prefix_cache_queries: see :class:`ProRank`.
        text_field, batch_size, verbose, device, dtype: as every reranker of the toolkit.
    """

    label = 'YesNo'

    def __init__(self, model: Any = 'smollm2-135m-instruct', *, prompt: str = YESNO_PROMPT, system: Optional[str] = None,
                 yes: str = YESNO_YES, no: str = YESNO_NO, chat: Optional[bool] = None, max_text_tokens: int = 512,
                 prefix_reuse: bool = True, prefix_cache_queries: int = 64, text_field: str = 'text',
                 batch_size: int = 16, verbose: bool = False, device: Any = 'auto', dtype: Any = 'auto') -> None:
        super().__init__(prefix_reuse=prefix_reuse, prefix_cache_queries=prefix_cache_queries, text_field=text_field,
                         batch_size=batch_size, verbose=verbose)
        for field in ('{query}', '{text}'):
            if field not in prompt:
                raise ValueError(f'YesNo: prompt must contain {field}')
        self._use_model(models.load_causal_lm, model, device=device, dtype=dtype)
        self.prompt = prompt
        self.system = system
        self.max_text_tokens = max_text_tokens
        self.pad = self.lm.pad_id
        self._pos_id = _first_token(self.lm, yes)
        self._neg_id = _first_token(self.lm, no)
        if self._pos_id == self._neg_id:
            raise ValueError(f'{yes!r} and {no!r} start with the same token')
        if chat is None:
            chat = self.lm.has_chat_template
        self.chat = chat
        if chat:
            self._before, self._after, _ = self.lm.chat_parts(system)
            self._pre: List[int] = []
        else:
            if system is not None:
                raise ValueError('YesNo: system needs the chat form (chat=True)')
            self._before, self._after = '', ''
            self._pre = self.lm.special_tokens[0]
        self._init_prefix_cache()

    def _repr_args(self) -> str:
        return f'{self.model_name!r}' + ('' if self.prompt == YESNO_PROMPT else ', prompt=...')

    def prompt_text(self, query: str, text: str, max_tokens: Optional[int] = None) -> str:
        """The full prompt string of one pair (chat template applied), before tokenization; the text cut to
        ``max_text_tokens`` (or ``max_tokens`` when smaller)."""
        cap = self.max_text_tokens if max_tokens is None else min(max_tokens, self.max_text_tokens)
        ids = self.lm.ids(text)
        if len(ids) > cap:
            text = self.tokenizer.decode(ids[:cap])
        return self._before + self.prompt.format(query=query, text=text) + self._after

    def prompt_ids(self, query: str, text: str, max_tokens: Optional[int] = None) -> List[int]:
        """Token ids of the model input for one pair."""
        return self._pre + self.lm.ids(self.prompt_text(query, text, max_tokens))

    def _prompts(self, inp: pd.DataFrame) -> List[List[int]]:
        budget = self.lm.max_positions
        out = []
        for qid, q, t in zip(inp['qid'].tolist(), inp['query'].tolist(), inp[self.text_field].tolist()):
            t = t if isinstance(t, str) else ''
            out.append(fit_to_budget(lambda cap: self.prompt_ids(q, t, cap), len, budget,
                                     lambda: min(len(self.lm.ids(t)), self.max_text_tokens), who='YesNo', qid=qid,
                                     room=" (the model's max_position_embeddings)", stats=self.stats))
        return out

    def _combine(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(torch.stack([pos, neg], -1), -1)[:, 0]


def _adapter_config(path: str) -> Optional[str]:
    """The path of ``adapter_config.json`` of a local folder or (cached / reachable) hub repository, else None."""
    if os.path.isdir(path):
        cfg = os.path.join(path, 'adapter_config.json')
        return cfg if os.path.exists(cfg) else None
    from transformers.utils import cached_file
    return cached_file(path, 'adapter_config.json', _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False)


def load_dear(model: Any, device: Any = 'auto', dtype: Any = 'auto', tokenizer: Any = None) -> models.LoadedModel:
    """Load a DeAR stage-1 model: a merged checkpoint, or a peft LoRA adapter on its base, merged.

    A folder (or hub repository) holding ``adapter_config.json`` is a LoRA adapter: its base
    (``base_model_name_or_path``) is loaded with a 1-label sequence-classification head, the model config's
    missing ``pad_token_id`` set to 0 as DeAR's ``modeling.py`` (``DistillRerankerModel.load``) does, and the
    adapter (with its trained head) loaded and merged (``merge_and_unload``). The tokenizer is the adapter
    folder's when it has one, else the base model's (``tokenizer`` overrides both).
    """
    if isinstance(model, (tuple, models.LoadedModel)):
        return models.load_sequence_classifier(model, device=device, dtype=dtype, tokenizer=tokenizer)
    path = models.resolve_model_path(model)
    adapter = _adapter_config(path)
    if adapter is None:
        return models.load_sequence_classifier(model, device=device, dtype=dtype, tokenizer=tokenizer)
    return models.load_sequence_classifier(os.path.dirname(adapter), device=device, dtype=dtype, tokenizer=tokenizer,
                                           base_config=_dear_pad_token, num_labels=1)


def _dear_pad_token(model: Any) -> None:
    """DeAR's ``DistillRerankerModel.load``: a config without ``pad_token_id`` gets 0."""
    if model.config.pad_token_id is None:
        model.config.pad_token_id = 0


class DeARPointwise(_PrefixReusingPointwise):
    """DeAR stage 1: a decoder LM with a 1-label classification head scores ``[BOS] query: q [BOS] document: d``.

    Abdallah et al., "DeAR: Dual-Stage Document Reranking with Reasoning Agents via LLM Distillation",
    Findings of EMNLP 2025. Checkpoints ``abdoelsayed/dear-8b-reranker-ce-v1`` (merged), ``...-ce-lora-v1``
    (LoRA adapter on Llama-3.1-8B), ``...-ranknet-...`` and the 3B variants.

    Input as DataScienceUIBK/DeAR-Reranking ``data.py``: ``"query: {query}"`` (at most ``max_query_tokens``,
    32) and ``"document: {title} {text}"`` (at most ``max_passage_tokens - 3``, 193; an absent title leaves
    ``"document:  {text}"`` with two spaces, as the reference's ``example.get('title', '')``), each encoded
    without special tokens and preceded by the tokenizer's BOS, the pair cut (document side) to
    ``max_query_tokens + max_passage_tokens`` (228).

    Pooling (``pooling``): the reference right-pads every pair with the pad token (EOS) to 228 tokens and the
    head reads Hugging Face's "last token that is not ``config.pad_token_id``". DeAR's loader sets
    ``pad_token_id = 0`` when the config has none, so that the read position is the **last padding position**
    (227), not the document's last token. ``'padded'`` computes exactly that, without the padding: one pad
    token at position ``max_length - 1`` that attends to the pair (the padding in between is masked and
    invisible); ``'last'`` reads the pair's last token (what the head reads when ``config.pad_token_id`` is the
    padding id, as the README's ``rerank()`` loader sets it). ``'auto'`` (default) applies Hugging Face's rule
    to the loaded model: ``'last'`` when ``config.pad_token_id`` is the padding id, else ``'padded'``.

    Args:
        model: a merged checkpoint or a LoRA adapter folder / hub name (see :func:`load_dear`), or a
            ``(model, tokenizer)`` pair (a ``*ForSequenceClassification`` with one label).
            Default ``abdoelsayed/dear-8b-reranker-ce-v1``.
        tokenizer: tokenizer name or object overriding the model's (``run_pointwise.sh`` uses
            ``meta-llama/Llama-3.1-8B``'s).
        pooling: ``'auto'``, ``'padded'`` or ``'last'`` (above).
        max_query_tokens, max_passage_tokens: 32 and 196 as ``run_pointwise.sh``.
        bos_token: the token put before query and document when the tokenizer has no BOS (the reference
            uses ``<|endoftext|>`` for Qwen tokenizers); ``None``: the tokenizer's BOS, an error without one.
        title_field: column with a title (optional).
        prefix_reuse, prefix_cache_queries: see :class:`ProRank` (the shared prefix is ``[BOS] query: q [BOS]``...).
        text_field, batch_size, verbose, device, dtype: as every reranker of the toolkit.
    """

    label = 'DeAR-P'
    ARGUMENTS = {'pooling': OneOf('auto', 'padded', 'last'), 'max_query_tokens': AtLeast(1),
                 'max_passage_tokens': AtLeast(4)}

    def __init__(self, model: Any = 'abdoelsayed/dear-8b-reranker-ce-v1', *, tokenizer: Any = None,
                 pooling: str = 'auto', max_query_tokens: int = DEAR_MAX_QUERY_TOKENS,
                 max_passage_tokens: int = DEAR_MAX_PASSAGE_TOKENS, bos_token: Optional[str] = None,
                 title_field: str = 'title', prefix_reuse: bool = True, prefix_cache_queries: int = 64,
                 text_field: str = 'text', batch_size: int = 16, verbose: bool = False, device: Any = 'auto',
                 dtype: Any = 'auto') -> None:
        super().__init__(prefix_reuse=prefix_reuse, prefix_cache_queries=prefix_cache_queries, text_field=text_field,
                         batch_size=batch_size, verbose=verbose)
        self.check_arguments(pooling=pooling, max_query_tokens=max_query_tokens,
                             max_passage_tokens=max_passage_tokens)
        self._use_model(load_dear, model, device=device, dtype=dtype, tokenizer=tokenizer)
        self.head = getattr(self.model, 'score', None)
        if not isinstance(self.head, torch.nn.Module):
            raise ValueError(f'{type(self.model).__name__} has no sequence-classification head (.score); '
                             'DeAR needs a *ForSequenceClassification model')
        if getattr(self.model.config, 'num_labels', 1) != 1:
            raise ValueError(f'DeAR reads one logit; the model has num_labels={self.model.config.num_labels}')
        if bos_token is not None:
            bos = self.tokenizer.convert_tokens_to_ids(bos_token)
        else:
            bos = self.tokenizer.bos_token_id
        if bos is None or (bos_token is not None and bos == self.tokenizer.unk_token_id):
            raise ValueError('the tokenizer has no BOS token: pass bos_token (the reference uses "<|endoftext|>" '
                             'for Qwen tokenizers)')
        self.bos = int(bos)
        self.pad = self.lm.pad_id  # the reference pads with the pad token, else EOS
        if pooling == 'auto':
            pooling = 'last' if self.model.config.pad_token_id == self.pad else 'padded'
        self.pooling = pooling
        self.max_query_tokens = max_query_tokens
        self.max_passage_tokens = max_passage_tokens
        self.max_length = max_query_tokens + max_passage_tokens
        self.title_field = title_field
        self._init_prefix_cache()

    def _repr_args(self) -> str:
        return f'{self.model_name!r}, pooling={self.pooling!r}'

    def _ids(self, text: str, limit: int) -> List[int]:
        return self.lm.ids(text)[:limit]

    def document_text(self, text: str, title: Optional[str] = None) -> str:
        """The document string of the reference for one passage."""
        return DEAR_DOCUMENT_TEMPLATE.format(title=title or '', separator=DEAR_SEPARATOR, text=text)

    def prompt_ids(self, query: str, text: str, title: Optional[str] = None) -> List[int]:
        """Token ids of the (unpadded) model input for one pair."""
        q = [self.bos] + self._ids(DEAR_QUERY_TEMPLATE.format(query=query), self.max_query_tokens)
        d = [self.bos] + self._ids(self.document_text(text, title), self.max_passage_tokens - 3)
        q, d = fit_pieces([q, d], self.max_length, cut=[1])  # prepare_for_model(truncation='only_second')
        return q + d

    def _prompts(self, inp: pd.DataFrame) -> List[List[int]]:
        titles: Sequence[Any] = inp[self.title_field].tolist() if self.title_field in inp.columns else [None] * len(inp)
        return [self.prompt_ids(q, t if isinstance(t, str) else '', ti if isinstance(ti, str) else None)
                for q, t, ti in zip(inp['query'].tolist(), inp[self.text_field].tolist(), titles)]

    @torch.inference_mode()
    def _scores(self, seqs: List[List[int]], prefix_lens: List[int]) -> Sequence[float]:
        out = np.zeros(len(seqs), dtype='float64')
        if self.pooling == 'padded':
            # a pair of max_length tokens has no padding: the head reads its last token
            groups = [([i for i, s in enumerate(seqs) if len(s) < self.max_length], (self.pad, self.max_length - 1)),
                      ([i for i, s in enumerate(seqs) if len(s) >= self.max_length], None)]
        else:
            groups = [(list(range(len(seqs))), None)]
        for idx, extra in groups:
            if not idx:
                continue
            hidden = last_hidden(self.model, [seqs[i] for i in idx], self.pad, prefix_lens=[prefix_lens[i] for i in idx],
                                 prefix_kv=self._kv, extra_token=extra)
            out[idx] = self.head(hidden.to(self.head.weight.dtype))[:, 0].float().cpu().numpy()
        return out
