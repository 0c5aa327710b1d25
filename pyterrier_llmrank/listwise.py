"""Listwise rerankers that generate a permutation: RankGPT (sliding windows) and DeAR's chain-of-thought stage.

* RankGPT: Sun, Yan, Ma, Wang, Ren, Chen, Yin, Ren: "Is ChatGPT Good at Search? Investigating Large Language Models
  as Re-Ranking Agents", EMNLP 2023. Reference code: sunnweiwei/RankGPT ``rank_gpt.py``.
* DeAR stage 2: Abdallah, Mozafari, Piryani, Jatowt: "DeAR: Dual-Stage Document Reranking with Reasoning Agents
  via LLM Distillation", 2025. Reference code: DataScienceUIBK/DeAR-Reranking ``listwise_rerank/prompts.py`` and
  ``listwise_rerank/pipeline.py``.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pyterrier_llmrank.backends import ChatPrompt
from pyterrier_llmrank.base import AtLeast
from pyterrier_llmrank.generative import Algorithm, GenerativeReranker, QueryState, cut_words

__all__ = ['RankGPT', 'DeARListwise', 'listwise_messages', 'rankgpt_content', 'sliding_windows', 'parse_permutation',
           'RANKGPT_SYSTEM', 'RANKGPT_PREFIX_USER', 'RANKGPT_PREFIX_ASSISTANT', 'RANKGPT_PASSAGE',
           'RANKGPT_RECEIVED', 'RANKGPT_POST', 'DEAR_SYSTEM', 'DEAR_PREFIX_USER', 'DEAR_POST', 'DEAR_THINK_PATTERN']

# sunnweiwei/RankGPT rank_gpt.py (commit 0d62bc3): get_prefix_prompt, create_permutation_instruction, get_post_prompt
RANKGPT_SYSTEM = ('You are RankGPT, an intelligent assistant that can rank passages based on their relevancy to the '
                  'query.')
RANKGPT_PREFIX_USER = ('I will provide you with {num} passages, each indicated by number identifier []. \n'
                       'Rank the passages based on their relevance to query: {query}.')
RANKGPT_PREFIX_ASSISTANT = 'Okay, please provide the passages.'
RANKGPT_PASSAGE = '[{rank}] {content}'
RANKGPT_RECEIVED = 'Received passage [{rank}].'
RANKGPT_POST = ('Search Query: {query}. \nRank the {num} passages above based on their relevance to the search query. '
                'The passages should be listed in descending order using identifiers. The most relevant passages '
                'should be listed first. The output format should be [] > [], e.g., [1] > [2]. Only response the '
                'ranking results, do not say any word or explain.')

# DataScienceUIBK/DeAR-Reranking listwise_rerank/prompts.py (commit c31c739): SYSTEM_PROMPT, prefix_messages,
# build_messages (same passage and acknowledgement turns as RankGPT), post_prompt
DEAR_SYSTEM = 'You are RankLLM, an assistant that ranks passages by relevance to the query.'
DEAR_PREFIX_USER = ('I will provide you with {num} passages, each indicated by number identifier [].\n'
                    'Rank the passages based on their relevance to query: {query}.')
DEAR_POST = ('Search Query: {query}.\n'
             'Rank the {num} passages above based on their relevance to the search query. '
             'The passages should be listed in descending order using identifiers.\n'
             'Please follow the steps below:\n'
             'Step 1. List the information requirements to answer the query.\n'
             'Step 2. For each requirement, find the passages containing that information.\n'
             'Step 3. Rank passages that best cover clear and diverse information. Include all passages.\n'
             'Output format strictly: [2] > [1] > [3] ... Only output the ranking using identifiers; no explanations.')
# DataScienceUIBK/DeAR-Reranking listwise_rerank/prompts.py: extract_after_think (DOTALL | IGNORECASE)
DEAR_THINK_PATTERN = r'</think>\s*(.*)'


def sliding_windows(n: int, window: int, step: int, last: str = 'full') -> List[Tuple[int, int]]:
    """Windows ``[start, end)`` over the top ``n`` documents, from the bottom of the list to the top.

    As RankGPT's ``sliding_windows``: the first window is ``[n - window, n)``, each next one ``step`` higher, while
    its start is >= 0 (``n=100, window=20, step=10`` gives 9 windows, ``[80, 100)`` ... ``[0, 20)``). Two cases the
    reference leaves out are covered: ``n <= window`` gives the single window ``[0, n)``, and when the last window
    does not start at 0 (``(n - window) % step != 0``) a final window ``[0, window)`` is added so that the top
    documents are ranked too (the reference would never show them to the model).

    ``last='clip'`` ends instead, as ICR's reference ``rerank`` loop (OSU-NLP-Group/In-Context-Reranking
    ``src/in_context_reranker.py``), with the window one ``step`` higher, clipped at the top: ``[0, end - step)``.
    """
    if window < 1 or step < 1:
        raise ValueError('window and step must be >= 1')
    if last not in ('full', 'clip'):
        raise ValueError("last must be 'full' or 'clip'")
    if n <= 0:
        return []
    if n <= window:
        return [(0, n)]
    out = []
    end, start = n, n - window
    while start >= 0:
        out.append((start, end))
        end -= step
        start -= step
    if out[-1][0] > 0:
        out.append((0, window) if last == 'full' else (0, end))
    return out


def parse_permutation(text: str, n: int) -> Tuple[List[int], str]:
    """RankGPT's permutation parser and repair, returning 0-based positions and a status.

    Rule (sunnweiwei/RankGPT ``rank_gpt.py``, ``clean_response`` / ``receive_permutation``): every non-digit becomes
    a space; the numbers are read as 1-based identifiers; duplicates are removed (first occurrence kept); ids
    outside ``1..n`` are dropped; the ids never mentioned are appended in their original order.

    Returns:
        ``(order, status)``: ``status`` is ``'ok'`` when the answer named every id exactly once and nothing else,
        ``'unparsable'`` when it named no valid id at all (the window keeps its order), ``'repaired'`` otherwise.
    """
    nums = [int(x) - 1 for x in ''.join(c if c.isdigit() else ' ' for c in text).split()]
    seen: List[int] = []
    for x in nums:
        if x not in seen:
            seen.append(x)
    valid = [x for x in seen if 0 <= x < n]
    order = valid + [x for x in range(n) if x not in valid]
    if not valid:
        status = 'unparsable'
    elif len(nums) == n and len(valid) == n:
        status = 'ok'
    else:
        status = 'repaired'
    return order, status


def rankgpt_content(text: str, title: Optional[str] = None) -> str:
    """A passage as RankGPT writes it (sunnweiwei/RankGPT ``rank_gpt.py``, ``run_retriever`` and
    ``create_permutation_instruction``): with a title, ``'Title: ' + title + ' ' + 'Content: ' + text``, whitespace
    runs joined by single spaces, ``'Title: Content: '`` (an empty title) removed, stripped."""
    if title is None:
        return text
    content = ' '.join(f'Title: {title} Content: {text}'.split())
    return content.replace('Title: Content: ', '').strip()


def listwise_messages(query: str, passages: Sequence[str], *, system: str, prefix_user: str, prefix_assistant: str,
                      passage: str, received: str, post: str) -> List[Dict[str, str]]:
    """The multi-turn chat of RankGPT-style listwise prompts.

    system; user ``prefix_user``; assistant ``prefix_assistant``; then for each passage a user turn ``passage``
    (``[i] text``) answered by ``received`` (``Received passage [i].``); last, the user turn ``post``.
    """
    num = len(passages)
    msgs = [{'role': 'system', 'content': system},
            {'role': 'user', 'content': prefix_user.format(num=num, query=query)},
            {'role': 'assistant', 'content': prefix_assistant}]
    for i, content in enumerate(passages, start=1):
        msgs.append({'role': 'user', 'content': passage.format(rank=i, content=content)})
        msgs.append({'role': 'assistant', 'content': received.format(rank=i)})
    msgs.append({'role': 'user', 'content': post.format(query=query, num=num)})
    return msgs


class _SlidingWindowListwise(GenerativeReranker):
    """Sliding-window listwise reranking over the top ``depth`` documents (bottom window first)."""

    _prompt: Dict[str, str] = {}
    #: tokenize the rendered chat with the tokenizer's special tokens, as the reference client does
    _add_special_tokens = False
    ARGUMENTS = {'window': AtLeast(2), 'step': AtLeast(1), 'depth': AtLeast(1, optional=True),
                 'max_words': AtLeast(1)}

    def __init__(self, model: Any, *, window: int, step: int, depth: Optional[int], max_words: int,
                 max_new_tokens: int, **kwargs: Any) -> None:
        self.check_arguments(window=window, step=step, depth=depth, max_words=max_words)
        super().__init__(model, max_new_tokens=max_new_tokens, **kwargs)
        self.window = window
        self.step = step
        self.depth = depth
        self.max_words = max_words

    def _repr_args(self) -> str:
        return f'{self.backend.name!r}, window={self.window}, step={self.step}, depth={self.depth}'

    def document(self, text: str, title: Optional[str] = None) -> str:  # noqa: D102
        return rankgpt_content(text, title)

    def messages(self, query: str, texts: Sequence[str]) -> List[Dict[str, str]]:
        """The chat messages of one window (passages cut to ``max_words`` words)."""
        return listwise_messages(query, [cut_words(t, self.max_words) for t in texts], **self._prompt)

    def _answer_text(self, text: str) -> str:
        return text

    def _algorithm(self, st: QueryState) -> Algorithm:
        n = len(st.rows) if self.depth is None else min(self.depth, len(st.rows))
        order = list(range(len(st.rows)))
        for start, end in sliding_windows(n, self.window, self.step):
            cut = order[start:end]
            gen = yield self.fit_prompt(st, lambda docs: ChatPrompt.of(self.messages(st.query, docs),
                                                                       add_special_tokens=self._add_special_tokens),
                                        [cut_words(st.texts[p], self.max_words) for p in cut])
            perm, status = parse_permutation(self._answer_text(gen.text), len(cut))
            order[start:end] = [cut[j] for j in perm]
            self._record(st, 'window', cut, gen, [st.docnos[cut[j]] for j in perm], status)
        return order


class RankGPT(_SlidingWindowListwise):
    """RankGPT: listwise reranking by generated permutations over sliding windows.

    Sun et al., "Is ChatGPT Good at Search? Investigating Large Language Models as Re-Ranking Agents", EMNLP 2023
    (sunnweiwei/RankGPT ``rank_gpt.py``).

    The top ``depth`` documents are reranked in windows of ``window`` documents moving up by ``step`` from the
    bottom of the list to the top (``depth=100, window=20, step=10``: 9 calls per query), each window a multi-turn
    chat (:data:`RANKGPT_SYSTEM`, one user turn ``[i] passage`` and one ``Received passage [i].`` per passage, last
    :data:`RANKGPT_POST`); passages are cut to their first 300 words. The answer is read by RankGPT's rule
    (:func:`~pyterrier_llmrank.listwise.parse_permutation`): non-digits become spaces, numbers are 1-based ids,
    duplicates are removed, out-of-range ids dropped and missing ids appended in their original order; a window
    whose answer needed any of this is counted ``repaired``, one with no valid id ``unparsable`` (it keeps its
    order). Score = -rank; documents below ``depth`` keep their first-stage order beneath the reranked ones.

    Decoding is greedy (the reference calls the API with ``temperature=0``). Windows of different queries are
    generated together in batches of ``batch_size``; the windows of one query run in sequence (each depends on
    the previous one).

    Args:
        model: a hub name / local folder / short name / ``(model, tokenizer)`` pair (Hugging Face ``generate``),
            or a :class:`~pyterrier_llmrank.GenerationBackend` (e.g. :class:`~pyterrier_llmrank.VLLMBackend`).
        window: documents per prompt (20).
        step: how far the window moves up (10).
        depth: documents reranked (100, as the reference's ``rank_end``; ``None``: all).
        max_words: words kept of each passage (300).
        max_new_tokens: the most tokens generated per window (200: enough for a permutation of 20 ids).
        title_field: column with a title; when the frame has it, a passage is written
            ``Title: {title} Content: {text}`` as the reference (:func:`rankgpt_content`).
        text_field, verbose, device, dtype: as every reranker.
        batch_size: prompts per model call (``None``: the backend's own, 8 for a model loaded here).
    """

    label = 'RankGPT'
    _prompt = dict(system=RANKGPT_SYSTEM, prefix_user=RANKGPT_PREFIX_USER, prefix_assistant=RANKGPT_PREFIX_ASSISTANT,
                   passage=RANKGPT_PASSAGE, received=RANKGPT_RECEIVED, post=RANKGPT_POST)

    def __init__(self, model: Any = 'smollm2-135m-instruct', *, window: int = 20, step: int = 10,
                 depth: Optional[int] = 100, max_words: int = 300, max_new_tokens: int = 200,
                 title_field: Optional[str] = 'title', text_field: str = 'text', batch_size: Optional[int] = None,
                 verbose: bool = False, device: Any = 'auto', dtype: Any = 'auto') -> None:
        super().__init__(model, window=window, step=step, depth=depth, max_words=max_words,
                         max_new_tokens=max_new_tokens, title_field=title_field, text_field=text_field,
                         batch_size=batch_size, verbose=verbose, device=device, dtype=dtype)


class DeARListwise(_SlidingWindowListwise):
    """DeAR stage 2: listwise reranking with a chain-of-thought instruction.

    Abdallah et al., "DeAR: Dual-Stage Document Reranking with Reasoning Agents via LLM Distillation", 2025
    (DataScienceUIBK/DeAR-Reranking ``listwise_rerank/prompts.py``, ``pipeline.py``). Meant for the DeAR listwise
    checkpoints (``abdoelsayed/dear-8b-reranker-listwise-v1``) behind a first stage such as DeAR's pointwise
    reranker; any chat model works.

    The RankGPT-style multi-turn chat with the RankLLM system prompt (:data:`DEAR_SYSTEM`) and a three-step
    chain-of-thought instruction (:data:`DEAR_POST`); the top 30 documents are reranked in windows of 20 moving
    up by 10 (2 calls per query: ``[10, 30)`` then ``[0, 20)``), passages cut to 300 words. The ranking is read
    from the text after ``</think>`` (the whole answer when there is none, as the reference), with RankGPT's
    repair rule (see :class:`RankGPT`). Score = -rank; documents below 30 keep their first-stage order.

    Decoding is greedy by default; ``sample=True`` uses the reference's sampling (temperature 0.5, top_p 0.9,
    seeded by ``seed``). Passages with a title are written as RankGPT's (:func:`rankgpt_content`), as the
    reference's ``prompts.py`` reads the same pyserini ``Title: ... Content: ...`` hits. The rendered chat is
    tokenized with the tokenizer's special tokens, as the reference's ``clients.py`` (``HFClient.chat``) does: on
    tokenizers that add a BOS (Llama-3), the model reads two, as DeAR's published runs did.

    Args:
        model: as :class:`RankGPT`.
        window, step, depth: 20, 10, 30 as the reference pipeline.
        max_words: words kept of each passage (300).
        max_new_tokens: the most tokens generated per window (1024 as the reference).
        sample: sample with temperature 0.5 and top_p 0.9 instead of greedy decoding.
        seed: seed of the sampler.
        title_field: column with a title (used when present, as :class:`RankGPT`).
        text_field, batch_size, verbose, device, dtype: as every reranker.
    """

    label = 'DeARListwise'
    _prompt = dict(system=DEAR_SYSTEM, prefix_user=DEAR_PREFIX_USER, prefix_assistant=RANKGPT_PREFIX_ASSISTANT,
                   passage=RANKGPT_PASSAGE, received=RANKGPT_RECEIVED, post=DEAR_POST)
    # DataScienceUIBK/DeAR-Reranking listwise_rerank/clients.py (HFClient.chat): self.tokenizer(prompt, ...)
    _add_special_tokens = True

    def __init__(self, model: Any = 'smollm2-135m-instruct', *, window: int = 20, step: int = 10,
                 depth: Optional[int] = 30, max_words: int = 300, max_new_tokens: int = 1024, sample: bool = False,
                 seed: int = 929, title_field: Optional[str] = 'title', text_field: str = 'text',
                 batch_size: Optional[int] = None, verbose: bool = False, device: Any = 'auto',
                 dtype: Any = 'auto') -> None:
        super().__init__(model, window=window, step=step, depth=depth, max_words=max_words,
                         max_new_tokens=max_new_tokens, temperature=0.5 if sample else 0.0,
                         top_p=0.9 if sample else 1.0, seed=seed, title_field=title_field, text_field=text_field,
                         batch_size=batch_size, verbose=verbose, device=device, dtype=dtype)
        self.sample = sample

    def _repr_args(self) -> str:
        return super()._repr_args() + (', sample=True' if self.sample else '')

    def _answer_text(self, text: str) -> str:
        m = re.search(DEAR_THINK_PATTERN, text, flags=re.DOTALL | re.IGNORECASE)
        return m.group(1).strip() if m else text.strip()
