"""ICR: in-context re-ranking from the attention of a causal LLM.

Chen, Gutiérrez, Su: "Attention in Large Language Models Yields Efficient Zero-Shot Re-Rankers", ICLR 2025
(arXiv 2410.02642). Reference code: OSU-NLP-Group/In-Context-Reranking@9117e9f ``src/in_context_reranker.py``
(``_setup_llm_prompts``, ``_prepare_input_for_document_retrieval``, ``score_documents``, ``get_sorted_docs``,
``rerank``) and ``experiments.py``. The prompt of Llama-3 and Mistral models uses the reference's own wrapper,
not the chat template (see :class:`ICR`).

All candidates of a query go into one prompt, followed by an instruction and the query. A document's score is
the attention that the tokens of the query span (instruction, query, end of the turn) pay to its tokens,
summed over heads and layers, calibrated by the attention the same span pays when the query is the
content-free ``"N/A"``. No text is generated: two forward passes per prompt, the second over the query span
only (the KV cache of everything before it is reused).

The attention rows are computed beside SDPA by :mod:`pyterrier_llmrank.attention` (memory linear in the number
of candidates); ``attention='eager'`` keeps the brute-force path (``output_attentions=True``) that the tests
compare against.
"""
from __future__ import annotations

import inspect
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from pyterrier_llmrank import models
from pyterrier_llmrank.attention import ATTENTION_NAME, RowCapture, attn_implementation, capturing, register
from pyterrier_llmrank.base import AtLeast, OneOf, QueryCandidates, QueryReranker
from pyterrier_llmrank.listwise import sliding_windows

__all__ = ['ICR', 'ICR_INSTRUCTION', 'ICR_LATE_INSTRUCTION_IE', 'ICR_LATE_INSTRUCTION_QA', 'ICR_QUERY_PREFIX',
           'ICR_CALIBRATION_QUERY', 'ICR_SIMPLE_ANSWER', 'ICR_DOC_LABEL', 'ICR_WRAPPERS', 'ICR_SEPARATORS',
           'ICR_QA_DATASETS', 'IcrPrompt', 'icr_family', 'icr_retrieval_type', 'cut_words']

# --- Prompt strings: OSU-NLP-Group/In-Context-Reranking src/in_context_reranker.py (InContextReranker.__init__
# ``retrieval_instruction`` / ``retrieval_instruction_late`` and ``_prepare_input_for_document_retrieval``).
#: Opening instruction of the user turn (both retrieval types).
ICR_INSTRUCTION = ' Here are some paragraphs:'
#: Late instruction, retrieval type "IE" (information extraction; the reference's default for TREC/BEIR).
ICR_LATE_INSTRUCTION_IE = 'Please find information that are relevant to the following query in the paragraphs above.'
#: Late instruction, retrieval type "QA".
ICR_LATE_INSTRUCTION_QA = 'Please answer the following question based on the information in the paragraphs above.'
#: Written before the query (the query follows as ``' ' + query``).
ICR_QUERY_PREFIX = 'Query:'
#: Label of the i-th document (1-based) in the prompt.
ICR_DOC_LABEL = '[{i}] '
#: Content-free query of the calibration pass (``calibration_query = 'N/A'``).
ICR_CALIBRATION_QUERY = 'N/A'
#: Ending of the "simple" (no chat template) form, after the query.
ICR_SIMPLE_ANSWER = 'Answer:'
#: Separators: ``' \n\n'`` for the Llama-3 family, ``'\n\n'`` otherwise (``prompt_separator``).
SEPARATOR_LLAMA3 = ' \n\n'
SEPARATOR_DEFAULT = '\n\n'

# --- Model-family wrappers: OSU-NLP-Group/In-Context-Reranking@9117e9f src/in_context_reranker.py,
# ``InContextReranker._setup_llm_prompts`` (lines 136-145): the reference does not use the tokenizer's chat template;
# it writes ``prompt_prefix`` before the instruction (line 439, every template) and ``prompt_suffix`` right after the
# query (line 522, template 'instruct'), and tokenizes the whole string with the tokenizer's defaults (BOS added).
#: ``(prompt_prefix, prompt_suffix)`` per model family.
ICR_WRAPPERS = {
    'mistral': ('[INST]', '[/INST]'),
    'llama-3': ('<|start_header_id|>user<|end_header_id|>', '<|eot_id|><|start_header_id|>assistant<|end_header_id|>'),
}
#: ``prompt_separator`` per family (``InContextReranker.__init__``, lines 107-116: ``' \n\n'`` for Llama names,
#: ``'\n\n'`` otherwise); models of no named family get :data:`SEPARATOR_DEFAULT`.
ICR_SEPARATORS = {'mistral': SEPARATOR_DEFAULT, 'llama-3': SEPARATOR_LLAMA3}

# --- Retrieval type per data set: OSU-NLP-Group/In-Context-Reranking@9117e9f experiments.py (lines 61-76): the QA
# late instruction for these BEIR sets and for the multi-hop QA sets, IE for every other set.
#: Data sets the reference reranks with ``retrieval_type='QA'`` (BEIR names, then the multi-hop sets).
ICR_QA_DATASETS = ('trec-covid', 'fiqa', 'webis-touche2020', 'dbpedia-entity', 'nq',
                   'musique', 'hotpotqa', '2wikimultihopqa')

SCORINGS = ('masked_NA_calibration', 'NA_calibration', 'query_last')
OVERFLOWS = ('truncate', 'window', 'error')


# ---------------------------------------------------------------------------------------------------------------
# Prompt


@dataclass
class IcrPrompt:
    """Token ids of one ICR prompt with every span known by construction.

    Attributes:
        prefix: ids of everything before the query span (template opening, instruction, documents, the
            separator before the late instruction): the part whose KV cache both passes share.
        suffix: ids of the query span (late instruction, separator, ``Query:``, the query, end of the turn and
            assistant header; ``Answer:`` in the simple form).
        doc_spans: ``(start, end)`` token offsets (end exclusive) of each document's ``[i] text`` in ``prefix``,
            in prompt order.
    """

    prefix: List[int]
    suffix: List[int]
    doc_spans: List[Tuple[int, int]]

    @property
    def ids(self) -> List[int]:
        """The whole prompt."""
        return self.prefix + self.suffix

    @property
    def query_span(self) -> Tuple[int, int]:
        """``(start, end)`` of the query span in :attr:`ids` (end exclusive: the last token of the prompt)."""
        return len(self.prefix), len(self.prefix) + len(self.suffix)


def cut_words(text: str, max_words: Optional[int]) -> str:
    """``text`` cut as the reference's ``--truncate_by_space``: ``' '.join(text.split(' ')[:max_words])``.

    OSU-NLP-Group/In-Context-Reranking@9117e9f experiments.py (line 218, after RankGPT). Words are split on single
    spaces only: a newline does not separate words, and each extra space of a run counts as an (empty) word.
    ``None``: the text unchanged.
    """
    if max_words is None:
        return text
    return ' '.join(text.split(' ')[:max(0, int(max_words))])


def icr_family(name: str) -> Optional[str]:
    """The model family whose prompt wrapper the reference hard-codes, from a model name or path; else ``None``.

    As ``InContextReranker._setup_llm_prompts`` (OSU-NLP-Group/In-Context-Reranking@9117e9f
    src/in_context_reranker.py, line 136): ``'mistral'`` when the lower-cased name contains ``mistral``, else
    ``'llama-3'`` when it contains ``llama-3`` (or ``llama3``, the spelling of Meta's own download folders such as
    ``Llama3.1-8B-Instruct``; an addition to the reference, which would reject that name).
    """
    low = str(name).lower()
    if 'mistral' in low:
        return 'mistral'
    if 'llama-3' in low or 'llama3' in low:
        return 'llama-3'
    return None


def icr_retrieval_type(dataset: str) -> str:
    """The reference's retrieval type for a data set: ``'QA'`` for :data:`ICR_QA_DATASETS`, else ``'IE'``.

    ``dataset`` is a BEIR name or an ir_datasets/PyTerrier id; any ``/``- or ``:``-separated part of it is matched
    (``'irds:beir/trec-covid'``, ``'beir/webis-touche2020/v2'`` and ``'dbpedia-entity'`` are all ``'QA'``). Pass the
    result as ``ICR(retrieval_type=...)``; ICR itself never guesses the data set.
    """
    parts = re.split(r'[/:]', str(dataset).lower())
    return 'QA' if any(p in ICR_QA_DATASETS for p in parts) else 'IE'


class ICR(QueryReranker):
    """In-Context Re-ranking (ICR): rank documents by the calibrated attention an LLM pays them.

    Chen, Gutiérrez, Su, "Attention in Large Language Models Yields Efficient Zero-Shot Re-Rankers", ICLR 2025.
    Reference: OSU-NLP-Group/In-Context-Reranking (``src/in_context_reranker.py``, ``experiments.py``).

    Prompt (built piece by piece, so that every span is known by construction; the ids are those of the whole
    text tokenized at once, as the reference tokenizes it): an opening, ``" Here are some paragraphs:"``, for each
    document the separator and ``"[i] " + doc``, then the separator, the late instruction, the separator,
    ``"Query:"``, ``" " + query``, and a closing. Opening and closing (``family``):

    * the families the reference names get the reference's own wrapper (:data:`ICR_WRAPPERS`,
      ``_setup_llm_prompts``), **not** the tokenizer's chat template: the tokenizer's BOS, then for Llama-3.x
      ``<|start_header_id|>user<|end_header_id|>`` ... ``<|eot_id|><|start_header_id|>assistant<|end_header_id|>``
      (no system turn, no ``"\\n\\n"`` after the headers: Llama-3.1's chat template would add a "Cutting
      Knowledge Date" system block and newlines that fall in the query span), for Mistral ``[INST]`` ...
      ``[/INST]`` (no spaces added around them, unlike Mistral's chat template). The family is detected from the
      model name and the config's ``_name_or_path`` as the reference does (:func:`icr_family`: ``mistral``, else
      ``llama-3``/``llama3``), or set with ``family``;
    * every other model (the reference raises for them), SmolLM2 included, gets its tokenizer's chat template
      around the user turn (SmolLM2: ChatML with its default system prompt).

    The reference's "simple" form (``template='simple'``; the default for a model of no named family whose
    tokenizer has no chat template): no opening instruction, and ``separator + "Answer:"`` instead of the
    closing; for a named family it still starts with BOS and the family's prefix (the reference writes it in
    every form), otherwise with the tokenizer's BOS only. The separator is ``" \\n\\n"`` for Llama-3 and
    ``"\\n\\n"`` otherwise (:data:`ICR_SEPARATORS`). (The reference's ``'simple_instruct'`` form and
    query-first position are not offered.)

    Scores (``scoring``):

    * ``'masked_NA_calibration'`` (default, the reference's): per document token, ``c = s(query) - s("N/A")``
      where ``s`` is the attention from the query span (mean over its tokens, summed over heads and layers);
      ``tau = mean(c) - 2 std(c)`` over the document's tokens; score = sum of the ``c > tau``. Two forward
      passes per window: the full prompt with ``"N/A"``, then the query span of the real query over the
      cached prefix. (A one-token document keeps its only token.)
    * ``'NA_calibration'``: plain difference ``sum(s(query)) - sum(s("N/A"))`` over the document's tokens
      (two passes; the reference's ``NA_calibration_no_agg`` is this with the last token as the only span row).
    * ``'query_last'``: uncalibrated ``sum(s(query))`` (one pass).

    Candidates: all in one prompt by default (``window_size=None``), in reversed first-stage order so that the
    top document stands last, next to the query (``reverse_order=True``, the reference's
    ``--reverse_doc_order``). With ``window_size``, sliding windows of that size and ``stride`` (default half
    the window) go from the bottom of the list to the top and are merged as the reference's ``rerank``: after
    each window the ``stride`` lowest-scored documents are final, the others move up into the next window.
    Window scores are not comparable across windows, so with several windows the output ``score`` is the
    final position (``n - position``); with one window it is the ICR score itself.

    Documents are ``title + "\\n" + text`` when ``title_field`` is a column (else the text), the text cut to
    ``max_words`` words as the reference's ``--truncate_by_space 300`` (:func:`cut_words`:
    ``' '.join(text.split(' ')[:300])``, split on single spaces; the reference gives no title for fiqa).

    Retrieval type: ``'IE'`` by default. The reference's experiments switch to the QA late instruction for
    trec-covid, fiqa, webis-touche2020, dbpedia-entity and nq (and the multi-hop QA sets), IE for the other BEIR
    sets (:data:`ICR_QA_DATASETS`); that is the user's choice here: ``ICR(retrieval_type=icr_retrieval_type(name))``
    reproduces the reference's mapping.

    Overflow (a window longer than ``max_length``, by default the model's context): never silent, and the
    instruction and query are never cut.

    * ``overflow='truncate'`` (default): the words kept per document are lowered to the largest number that
      fits (the same for every document of the window) and a ``UserWarning`` names the query and the number;
      the ``truncated_windows`` counter of :attr:`stats` counts them.
    * ``overflow='window'``: the window is shrunk to the largest size whose longest possible window fits
      (stride half of it, or ``stride`` if smaller); the ``overflow_windows`` counter records it.
    * ``overflow='error'``: ``ValueError``.

    In every mode a ``ValueError`` is raised when even empty documents (labels, titles) with the instruction and
    query cannot fit.

    Args:
        model: a hub name / local path / short name (``'smollm2-135m-instruct'``) or a ``(model, tokenizer)``
            pair from :func:`pyterrier_llmrank.models.load_causal_lm`.
        retrieval_type: ``'IE'`` (default late instruction) or ``'QA'``.
        scoring: see above.
        window_size: documents per prompt (``None``: all candidates of the query).
        stride: sliding-window stride (default ``window_size // 2``).
        reverse_order: put the first-stage top document last (default ``True``).
        max_words: words kept per document text (``None``: all).
        max_length: token budget of a prompt (default: the model's ``max_position_embeddings``).
        overflow: ``'truncate'``, ``'window'`` or ``'error'``.
        layers: ``(first, last)`` layers (inclusive, 0-based) whose attention is summed; default all.
        template: ``'auto'`` (the chat form, the reference's ``'instruct'``, for a named family or when the
            tokenizer has a chat template; else ``'simple'``), ``'chat'`` or ``'simple'``.
        family: ``'auto'`` (detected from the model name, see above), ``'llama-3'`` or ``'mistral'`` (the
            reference's wrapper for that family) or ``'none'`` (the tokenizer's chat template).
        separator: the prompt separator; default from the model family as above.
        attention: ``'rows'`` (default: SDPA plus the query-span rows, linear memory) or ``'eager'``
            (brute force: eager attention with ``output_attentions=True`` and no KV reuse; for checks only).
        title_field: column holding a title (used when present).
        text_field, verbose: as every reranker. (No ``batch_size``: ICR feeds one window, itself holding all its
            candidates, per forward pass.)
        device, dtype: see :mod:`pyterrier_llmrank.models`.
    """

    label = 'ICR'
    ARGUMENTS = {'retrieval_type': OneOf('IE', 'QA'), 'scoring': OneOf(*SCORINGS), 'overflow': OneOf(*OVERFLOWS),
                 'attention': OneOf('rows', 'eager'), 'template': OneOf('auto', 'chat', 'simple'),
                 'family': OneOf('auto', 'llama-3', 'mistral', 'none'),
                 'window_size': AtLeast(1, optional=True), 'stride': AtLeast(1, optional=True),
                 'max_words': AtLeast(0, optional=True)}

    def __init__(self, model: Any = 'smollm2-135m-instruct', *, retrieval_type: str = 'IE',
                 scoring: str = 'masked_NA_calibration', window_size: Optional[int] = None,
                 stride: Optional[int] = None, reverse_order: bool = True, max_words: Optional[int] = 300,
                 max_length: Optional[int] = None, overflow: str = 'truncate',
                 layers: Optional[Tuple[int, int]] = None, template: str = 'auto', family: str = 'auto',
                 separator: Optional[str] = None, attention: str = 'rows', title_field: str = 'title',
                 text_field: str = 'text', verbose: bool = False, device: Any = 'auto',
                 dtype: Any = 'auto') -> None:
        super().__init__(text_field=text_field, batch_size=1, verbose=verbose)
        self.check_arguments(retrieval_type=retrieval_type, scoring=scoring, overflow=overflow, attention=attention,
                             template=template, family=family, window_size=window_size, stride=stride,
                             max_words=max_words)
        if stride is not None and window_size is not None and stride > window_size:
            raise ValueError(f'ICR: stride must be in [1, window_size], got stride={stride}, window_size={window_size}')
        self._use_model(models.load_causal_lm, model, device=device, dtype=dtype)
        cfg = self.model.config
        n_layers = int(cfg.num_hidden_layers)
        first, last = (0, n_layers - 1) if layers is None else (int(layers[0]), int(layers[1]))
        if first < 0:
            first += n_layers
        if last < 0:
            last += n_layers
        if not 0 <= first <= last < n_layers:
            raise ValueError(f'layers must be (first, last) with 0 <= first <= last < {n_layers}')
        self.layers = (first, last)
        self.retrieval_type = retrieval_type
        self.late_instruction = ICR_LATE_INSTRUCTION_IE if retrieval_type == 'IE' else ICR_LATE_INSTRUCTION_QA
        self.scoring = scoring
        self.window_size = window_size
        self.stride = stride
        self.reverse_order = reverse_order
        self.max_words = max_words
        self.max_length = int(max_length or getattr(cfg, 'max_position_embeddings', 0) or 4096)
        self.overflow = overflow
        self.attention = attention
        self.title_field = title_field
        if family == 'auto':
            self.family = icr_family(self.model_name + ' ' + str(getattr(cfg, '_name_or_path', '')))
        else:
            self.family = None if family == 'none' else family
        if template == 'auto':  # the reference's default is 'instruct' (the chat form) for the families it wraps
            template = 'chat' if (self.family is not None or self.lm.has_chat_template) else 'simple'
        self.template = template
        self.separator = ICR_SEPARATORS.get(self.family, SEPARATOR_DEFAULT) if separator is None else separator
        self._piece_cache: Dict[str, List[int]] = {}
        self._close_text = ''  # the family suffix, tokenized together with the query (as the reference does)
        if self.family is not None:
            prompt_prefix, prompt_suffix = ICR_WRAPPERS[self.family]
            self._check_family_tokens(family)
            # BOS as the tokenizer adds it, then prefix + instruction tokenized together (the text starts there)
            opening = prompt_prefix + (ICR_INSTRUCTION if template == 'chat' else '')
            self._open = list(self.lm.special_tokens[0]) + self.lm.ids(opening)
            self._close = []
            self._close_text = prompt_suffix if template == 'chat' else ''
        elif template == 'chat':
            before, after, _ = self.lm.chat_parts()
            self._open = self.lm.piece_ids(before) + self._fixed(ICR_INSTRUCTION)
            self._close = self.lm.piece_ids(after)
        else:
            self._open = list(self.lm.special_tokens[0])
            self._close = []
        self._cache_kw = 'cache' if 'cache' in inspect.signature(self.model.forward).parameters else 'past_key_values'
        if attention == 'rows':
            register()

    def _check_family_tokens(self, family: str) -> None:
        """The Llama-3 wrapper needs the header/eot tokens as single tokens of the vocabulary."""
        if self.family != 'llama-3':
            return
        for token in ('<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'):
            if len(self.lm.ids(token)) != 1:
                how = 'detected from the model name' if family == 'auto' else 'family="llama-3"'
                raise ValueError(f'ICR: the Llama-3 prompt wrapper ({how}) needs {token!r} as one token, but the '
                                 f'tokenizer of {self.model_name!r} splits it; pass family="none" to use the '
                                 f'tokenizer\'s chat template instead')

    def _repr_args(self) -> str:
        args = [repr(self.model_name)]
        if self.scoring != 'masked_NA_calibration':
            args.append(f'scoring={self.scoring!r}')
        if self.window_size is not None:
            args.append(f'window_size={self.window_size}')
        if self.retrieval_type != 'IE':
            args.append(f'retrieval_type={self.retrieval_type!r}')
        return ', '.join(args)

    # --- tokenization -------------------------------------------------------------------------------------------

    def _sep_then(self, text: str) -> Tuple[List[int], List[int]]:
        """Token ids of ``separator + text`` as the tokenizer reads them together, split into the separator's
        ids and the text's.

        Byte-level BPE tokenizers such as SmolLM2's write ``"\n\n"`` as one token at the end of a text but as
        two ``"\n"`` tokens before a word: tokenizing the pieces apart would feed the model a sequence it never
        sees. The split point is known by construction: the first ids that decode to the separator exactly;
        when a token straddles the two (no such point), both are tokenized apart.
        """
        joint = self.lm.piece_ids(self.separator + text)
        sep = self.separator
        for k in range(1, len(joint) + 1):
            head = self.tokenizer.decode(joint[:k])
            if head == sep:
                return joint[:k], joint[k:]
            if len(head) >= len(sep):
                break
        return self.lm.piece_ids(sep), self.lm.piece_ids(text)

    def _fixed_after_sep(self, text: str) -> List[int]:
        """``separator + text`` (a fixed string of the template) as ids, cached."""
        key = '\x00sep\x00' + text
        ids = self._piece_cache.get(key)
        if ids is None:
            a, b = self._sep_then(text)
            ids = self._piece_cache[key] = a + b
        return ids

    def _fixed(self, text: str) -> List[int]:
        ids = self._piece_cache.get(text)
        if ids is None:
            ids = self._piece_cache[text] = self.lm.piece_ids(text)
        return ids

    def document_text(self, text: Any, title: Any = None, max_words: Optional[int] = -1) -> str:
        """A document as it enters the prompt: ``title + "\\n" + text`` (text cut to ``max_words``), stripped."""
        words = self.max_words if max_words == -1 else max_words
        text = cut_words(text if isinstance(text, str) else '', words)
        if isinstance(title, str) and title.strip():
            return (title + '\n' + text).strip()
        return text.strip()

    def build_prompt(self, query: str, docs: Sequence[str]) -> IcrPrompt:
        """The ICR prompt for ``query`` and documents ``docs`` (already formatted, in prompt order)."""
        prefix = list(self._open)
        spans = []
        for i, doc in enumerate(docs):
            sep_ids, ids = self._sep_then(ICR_DOC_LABEL.format(i=i + 1) + doc)
            prefix += sep_ids
            spans.append((len(prefix), len(prefix) + len(ids)))
            prefix += ids
        # the separator before the late instruction closes the prefix (as it reads before that instruction)
        sep_ids, _ = self._sep_then(self.late_instruction)
        return IcrPrompt(prefix + sep_ids, self._suffix(query), spans)

    def _suffix(self, query: str) -> List[int]:
        out = self._fixed(self.late_instruction) + self._fixed_after_sep(ICR_QUERY_PREFIX)
        out = out + self.lm.piece_ids(' ' + (query or '').strip() + self._close_text)
        if self.template == 'chat':
            return out + self._close
        return out + self._fixed_after_sep(ICR_SIMPLE_ANSWER)

    def prompt_text(self, query: str, docs: Sequence[str]) -> str:
        """The decoded prompt (for inspection)."""
        return self.tokenizer.decode(self.build_prompt(query, docs).ids)

    # --- model passes -------------------------------------------------------------------------------------------

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def _pass(self, ids: List[int], rows: int, cache: Any = None, keep_cache: bool = True) -> Tuple[torch.Tensor, Any]:
        """One forward pass over ``ids`` (after ``cache``); the per-key scores of the last ``rows``, and the cache."""
        dev = self._device()
        x = torch.as_tensor([ids], dtype=torch.long, device=dev)
        cap = RowCapture(rows, *self.layers)
        kw = {self._cache_kw: cache} if cache is not None else {}
        with attn_implementation(self.model, ATTENTION_NAME), capturing(cap):
            out = self.model(input_ids=x, use_cache=keep_cache or cache is not None, logits_to_keep=1, **kw)
        keys = out.keys()
        cache = out['cache'] if 'cache' in keys else (out['past_key_values'] if 'past_key_values' in keys else None)
        return cap.scores, cache

    @torch.inference_mode()
    def _pass_eager(self, ids: List[int], rows: int) -> torch.Tensor:
        """Brute force: eager attention, ``output_attentions=True``, the span rows read from the full matrices."""
        x = torch.as_tensor([ids], dtype=torch.long, device=self._device())
        with attn_implementation(self.model, 'eager'):
            out = self.model(input_ids=x, use_cache=False, output_attentions=True, logits_to_keep=1)
        first, last = self.layers
        total = None
        for att in out.attentions[first:last + 1]:
            per_key = att[0, :, -rows:, :].float().mean(dim=1).sum(dim=0)
            total = per_key if total is None else total + per_key
        return total

    def token_scores(self, prompt: IcrPrompt, calibration: Optional[IcrPrompt] = None
                     ) -> Tuple[torch.Tensor, Optional[torch.Tensor], int, int]:
        """Per-position attention scores of the query span of ``prompt`` (and of ``calibration``'s).

        Returns ``(s_query, s_calibration, model_calls, input_tokens)``; the scores are float32 vectors over
        the positions of the prompt (the prefix positions are shared). With ``attention='rows'`` the
        calibration prompt is run whole and the query's span reuses its prefix cache.
        """
        q_rows = len(prompt.suffix)
        if calibration is None:
            if self.attention == 'eager':
                return self._pass_eager(prompt.ids, q_rows).cpu(), None, 1, len(prompt.ids)
            s_q, _ = self._pass(prompt.ids, q_rows, keep_cache=False)
            return s_q.cpu(), None, 1, len(prompt.ids)
        if calibration.prefix != prompt.prefix:
            raise ValueError('the calibration prompt must share the prefix of the query prompt')
        c_rows = len(calibration.suffix)
        if self.attention == 'eager':
            s_c = self._pass_eager(calibration.ids, c_rows).cpu()
            s_q = self._pass_eager(prompt.ids, q_rows).cpu()
            return s_q, s_c, 2, len(calibration.ids) + len(prompt.ids)
        s_c, cache = self._pass(calibration.ids, c_rows)
        _crop(cache, len(prompt.prefix))
        s_q, _ = self._pass(prompt.suffix, q_rows, cache=cache)
        return s_q.cpu(), s_c.cpu(), 2, len(calibration.ids) + len(prompt.suffix)

    def score_window(self, query: str, docs: Sequence[str]) -> Tuple[np.ndarray, Dict[str, float]]:
        """ICR scores of ``docs`` (formatted, in prompt order) for ``query``; and the window's counters."""
        prompt = self.build_prompt(query, docs)
        calib = None
        if self.scoring != 'query_last':
            calib = IcrPrompt(prompt.prefix, self._suffix(ICR_CALIBRATION_QUERY), prompt.doc_spans)
        s_q, s_c, calls, tokens = self.token_scores(prompt, calib)
        return self.doc_scores(prompt, s_q, s_c), {'model_calls': calls, 'sequences': calls, 'input_tokens': tokens}

    def doc_scores(self, prompt: IcrPrompt, s_q: torch.Tensor, s_c: Optional[torch.Tensor]) -> np.ndarray:
        """Document scores from the per-position scores of the query (and calibration) span (``scoring``)."""
        scores = np.zeros(len(prompt.doc_spans), dtype='float64')
        for i, (a, b) in enumerate(prompt.doc_spans):
            tq = s_q[a:b].double()
            if self.scoring == 'query_last':
                scores[i] = float(tq.sum())
                continue
            c = tq - s_c[a:b].double()
            if self.scoring == 'NA_calibration' or c.numel() < 2:
                scores[i] = float(c.sum())
            else:
                tau = c.mean() - 2 * c.std()  # unbiased std, as torch's default in the reference
                scores[i] = float(c[c > tau].sum())
        return scores

    # --- overflow ---------------------------------------------------------------------------------------------

    def _prompt_len(self, query: str, docs: Sequence[str]) -> int:
        return len(self.build_prompt(query, docs).ids)

    def _fit_words(self, query: str, texts: Sequence[Tuple[Any, Any]]) -> Optional[int]:
        """The largest words-per-document cap (<= max_words) with which the window fits; None if none does."""
        def fits(w: Optional[int]) -> bool:
            return self._prompt_len(query, [self.document_text(t, ti, w) for t, ti in texts]) <= self.max_length
        hi = self.max_words
        if hi is None:
            hi = max((len(str(t).split(' ')) for t, _ in texts), default=0)
        if not fits(0):
            return None
        lo = 0  # fits(lo) holds; find the largest w in [lo, hi] that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _fixed_error(self, qid: Any, n: int) -> ValueError:
        return ValueError(
            f'ICR: query {qid!r}: the instruction, query and {n} document labels/titles alone exceed the maximum '
            f'length of {self.max_length} tokens; shorten the query or use window_size')

    # --- ranking ------------------------------------------------------------------------------------------------

    def _rank_query(self, qid: Any, query: str, texts: List[Tuple[Any, Any]]) -> Tuple[np.ndarray, List[int]]:
        """Scores (higher is better) of one query's candidates, in first-stage order, and the final ranking
        (indices into ``texts``, best first; ties go to the better first-stage rank)."""
        n = len(texts)
        docs = [self.document_text(t, ti) for t, ti in texts]
        window = n if self.window_size is None else min(self.window_size, n)
        stride = self.stride if self.stride is not None else max(1, window // 2)
        words: Optional[int] = None  # a tighter per-query word cap, when truncating to fit
        if self.overflow in ('window', 'error'):
            # worst case over the windows: the `window` longest documents together
            lens = sorted((sum(map(len, self._sep_then(ICR_DOC_LABEL.format(i=n) + d))) for d in docs), reverse=True)
            base = self._prompt_len(query, [])
            if self.overflow == 'window' and base + sum(lens[:window]) > self.max_length:
                fit = 0
                while fit < n and base + sum(lens[:fit + 1]) <= self.max_length:
                    fit += 1
                if fit == 0:
                    raise ValueError(f'ICR: query {qid!r}: a single document does not fit the maximum length of '
                                     f'{self.max_length} tokens (overflow="window"); use overflow="truncate" or a '
                                     f'smaller max_words')
                window = fit
                stride = min(stride, max(1, window // 2))
                self.stats.add(qid, overflow_windows=1)
            elif self.overflow == 'error' and base + sum(lens[:window]) > self.max_length:
                raise ValueError(
                    f'ICR: query {qid!r}: {window} documents need about {base + sum(lens[:window])} tokens, more than '
                    f'the maximum length {self.max_length} (overflow="error"); use overflow="truncate" or "window", '
                    f'window_size, or fewer candidates')
        # windows from the bottom of the list to the top, as the reference's rerank: positions [start, end) of the
        # current list, the last one clipped at the top (the reference's loop, not RankGPT's extra full window)
        order = list(range(n))  # the current list, best first; each window re-sorts its slice
        first_window_scores: Optional[np.ndarray] = None
        n_windows = 0
        for a, b in sliding_windows(n, window, stride, last='clip'):
            start = time.perf_counter()
            ids = order[a:b][::-1]  # bottom first
            in_prompt = ids if self.reverse_order else ids[::-1]
            window_docs = [docs[k] for k in in_prompt]
            if self._prompt_len(query, window_docs) > self.max_length:
                if self.overflow != 'truncate':  # cannot happen for 'window'/'error' (checked above); be safe
                    raise ValueError(f'ICR: query {qid!r}: a window exceeds the maximum length {self.max_length}')
                w = self._fit_words(query, [texts[k] for k in in_prompt])
                if w is None:
                    raise self._fixed_error(qid, len(in_prompt))
                words = w if words is None else min(words, w)
                window_docs = [self.document_text(*texts[k], max_words=words) for k in in_prompt]
                warnings.warn(f'ICR: query {qid!r}: {len(in_prompt)} documents exceed the maximum length of '
                              f'{self.max_length} tokens; each document cut to {words} words to fit '
                              f'(overflow="truncate"; use overflow="window" for sliding windows instead)',
                              UserWarning, stacklevel=4)
                self.stats.add(qid, truncated_windows=1)
            scores, counters = self.score_window(query, window_docs)
            self.stats.add(qid, seconds=time.perf_counter() - start, windows=1, **counters)
            n_windows += 1
            # descending; ties broken towards the first-stage order (the better-ranked document ends up higher)
            desc = sorted(range(len(in_prompt)), key=lambda t: (-scores[t], in_prompt[t]))
            order[a:b] = [in_prompt[t] for t in desc]
            if n_windows == 1:
                first_window_scores = np.zeros(n)
                first_window_scores[in_prompt] = scores
        ranking = order
        if n_windows == 1:
            return first_window_scores, ranking
        out = np.zeros(n)
        for pos, k in enumerate(ranking):
            out[k] = float(n - pos)
        return out, ranking

    def _rerank_query(self, q: QueryCandidates) -> np.ndarray:
        texts = list(zip(q.texts, q.column(self.title_field)))
        scores, _ = self._rank_query(q.qid, q.query, texts)
        return scores


def _crop(cache: Any, keep: int) -> None:
    """Cut a KV cache back to its first ``keep`` positions."""
    extra = cache.get_seq_length() - keep
    if extra > 0:
        cache.crop(-extra)  # negative: remove that many tokens (every transformers version)
    if cache.get_seq_length() != keep:
        raise RuntimeError(f'KV cache crop failed: {cache.get_seq_length()} positions instead of {keep}')
