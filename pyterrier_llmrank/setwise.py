"""Setwise rerankers: heapsort driven by "which of these documents is the most relevant?" choices.

* Setwise: Zhuang, Zhuang, Koopman, Zuccon: "A Setwise Approach for Effective and Highly Efficient Zero-shot
  Ranking with Large Language Models", SIGIR 2024. Reference code: ielab/llm-rankers ``llmrankers/setwise.py``
  (``SetwiseLlmRanker``, generation scoring on a causal chat model).
* Rank-R1: Zhuang, Ma, Koopman, Zuccon: "Rank-R1: Enhancing Reasoning in LLM-based Document Rerankers via
  Reinforcement Learning", 2025. Reference code: ielab/llm-rankers ``llmrankers/setwise.py``
  (``RankR1SetwiseLlmRanker``), ``Rank-R1/run_setwise.py`` and ``Rank-R1/prompts/prompt_setwise-R1.toml`` (v0.1).
"""
from __future__ import annotations

import re
from typing import Any, Generator, List, Optional, Sequence

from pyterrier_llmrank.backends import ChatPrompt, Generation
from pyterrier_llmrank.base import AtLeast
from pyterrier_llmrank.generative import Algorithm, GenerativeReranker, QueryState, truncate_tokens

__all__ = ['Setwise', 'RankR1', 'SETWISE_LABELS', 'SETWISE_PASSAGE', 'SETWISE_PASSAGE_SEPARATOR', 'SETWISE_PROMPT',
           'SETWISE_ASSISTANT_PREFIX', 'RANKR1_LABELS', 'RANKR1_SYSTEM', 'RANKR1_USER', 'RANKR1_DOC',
           'RANKR1_DOC_SEPARATOR', 'RANKR1_PATTERN', 'RANKR1_SEED']

# ielab/llm-rankers llmrankers/setwise.py (commit b36517b): SetwiseLlmRanker.CHARACTERS and compare() (llama path:
# the prompt is one user turn; " Passage:" is appended after the generation prompt; one token is generated)
SETWISE_LABELS = ['A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L',
                  'M', 'N', 'O', 'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W']
SETWISE_PASSAGE = 'Passage {label}: "{text}"'
SETWISE_PASSAGE_SEPARATOR = '\n\n'
SETWISE_PROMPT = ('Given a query "{query}", which of the following passages is the most relevant one to the query?'
                  '\n\n{passages}\n\nOutput only the passage label of the most relevant passage:')
SETWISE_ASSISTANT_PREFIX = ' Passage:'

# ielab/llm-rankers Rank-R1/prompts/prompt_setwise-R1.toml at the v0.1 commit a5ee1a9 (prompt_system, prompt_user,
# pattern; no doc_prefix: the documents are labelled "[i] " and joined by "\n" in R1SetwiseLlmRanker.compare of
# Rank-R1/run_setwise.py at a5ee1a9 and RankR1SetwiseLlmRanker.compare of llmrankers/setwise.py; the doc_prefix
# "[{num}]: " of the later TOML, commit b36517b, is not v0.1)
RANKR1_SYSTEM = ('A conversation between User and Assistant. The user asks a question, and the Assistant solves it. '
                 'The assistant first thinks about the reasoning process in the mind and then provides the user with '
                 'the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> '
                 '</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here '
                 '</answer>.')
RANKR1_USER = ('Given the query: "{query}", which of the following documents is most relevant?\n'
               '{docs}\n'
               'After completing the reasoning process, please provide only the label of the most relevant document '
               'to the query, enclosed in square brackets, within the answer tags. For example, if the third document '
               'is the most relevant, the answer should be: <think> reasoning process here </think> '
               '<answer>[3]</answer>.')
RANKR1_DOC = '[{num}] {text}'
RANKR1_DOC_SEPARATOR = '\n'
RANKR1_PATTERN = r'<think>.*?</think>\s*<answer>(.*?)</answer>'
# ielab/llm-rankers RankR1SetwiseLlmRanker.CHARACTERS
RANKR1_LABELS = [f'[{i + 1}]' for i in range(20)]
# ielab/llm-rankers llmrankers/setwise.py and Rank-R1/run_setwise.py: random.seed(929)
RANKR1_SEED = 929


class Setwise(GenerativeReranker):
    """Setwise heapsort reranking (Zhuang et al., SIGIR 2024; ielab/llm-rankers ``llmrankers/setwise.py``).

    The documents form a heap in which each node has ``num_child`` children; a node is compared with its children
    in one prompt ("which of these passages is the most relevant?") and swapped with the winner. After the heap is
    built, the top is taken out ``k`` times, so the top ``k`` are fully sorted; the other documents keep their
    first-stage order beneath them. Score = -rank. This is the reference's ``heapSort``/``heapify`` step for step
    (same comparisons in the same order).

    Prompt (:data:`SETWISE_PROMPT`): one user turn with the passages labelled ``Passage A: "..."`` ...; the
    assistant's answer is started with ``" Passage:"`` and one token is generated, as the reference's causal
    (Llama) path. Defaults are those of the reference's ``run.py`` for Setwise (ielab/llm-rankers @b36517b:
    ``--num_child 3``, ``--k 10``, ``--passage_length 128``, ``--query_length 128``): 3 children per node (4
    documents per prompt), passages cut to ``max_passage_tokens`` tokens (128) and the query to
    ``max_query_tokens`` (128). :class:`RankR1` keeps Rank-R1's own (19 children, 512 and 32 tokens).

    Tokenization (a quirk kept on purpose): the reference renders the chat template to text and tokenizes that
    text with the tokenizer's default settings (``tokenizer(prompt)``), so a tokenizer that adds BOS
    (Llama-2/3, Mistral) puts a second BOS in front of the one the template writes. The prompts here are
    tokenized the same way (``ChatPrompt.add_special_tokens=True``), so that the model reads the reference's
    token ids and gives its answers; the doubled BOS is what the published Setwise runs fed their models, and
    removing it would change the answers of those models. Tokenizers that add no BOS (SmolLM2, Qwen) are not
    affected.

    Parse rule (the reference's): the answer, stripped and upper-cased, must be one of the labels shown; otherwise
    it is counted ``unparsable`` and the parent stays in place (no swap). Nothing is ever "repaired".

    .. warning::
        The parent-stays rule does not leave the first-stage order in place when answers fail: each extraction
        still moves the heap's last leaf to the root. When no answer parses (SmolLM2-135M answers ``"\\n"`` or a
        quote, never a label), the top 10 of 20 become first-stage #1, then #20, #19, ... #12. Check the
        ``unparsable`` counter of :attr:`stats` before reading the results.

    With ``shuffle=True`` the documents of every comparison are shown in an order drawn from a generator seeded
    with ``seed`` (929, the reference's ``random.seed``; one generator per query, so a query's shuffles do not
    depend on the other queries of the frame); the labels stay in order. The reference shuffles only when it
    votes over several permutations, so ``shuffle`` is off here by default (:class:`RankR1` turns it on).

    Comparisons of different queries are generated together (batches of ``batch_size``); those of one query run
    in sequence.

    Args:
        model: a hub name / local folder / short name / ``(model, tokenizer)`` pair, or a
            :class:`~pyterrier_llmrank.GenerationBackend`.
        num_child: children per heap node (3; a prompt holds up to ``num_child + 1`` documents; at most 22).
        k: documents fully sorted at the top (10).
        shuffle: shuffle the documents of every comparison (seeded).
        seed: seed of the shuffles.
        max_passage_tokens, max_query_tokens: truncation in the model's tokens (128, 128; ``None``: none).
        max_new_tokens: tokens generated per comparison (1, as the reference).
        title_field: column with a title; a document with a non-empty title is written ``"{title} {text}"``, as
            the reference's ``run.py`` (and Rank-R1's ``run_setwise.py`` / ``create_dataset.py``) write it.
        text_field, batch_size, verbose, device, dtype: as every reranker.
    """

    label = 'Setwise'
    _labels: Sequence[str] = SETWISE_LABELS
    ARGUMENTS = {'num_child': AtLeast(1, maximum=len(SETWISE_LABELS) - 1), 'k': AtLeast(1),
                 'max_passage_tokens': AtLeast(1, optional=True), 'max_query_tokens': AtLeast(1, optional=True)}

    def __init__(self, model: Any = 'smollm2-135m-instruct', *, num_child: int = 3, k: int = 10,
                 shuffle: bool = False, seed: int = RANKR1_SEED, max_passage_tokens: Optional[int] = 128,
                 max_query_tokens: Optional[int] = 128, max_new_tokens: int = 1,
                 title_field: Optional[str] = 'title', text_field: str = 'text', batch_size: Optional[int] = None,
                 verbose: bool = False, device: Any = 'auto', dtype: Any = 'auto') -> None:
        self.check_arguments(num_child=num_child, k=k, max_passage_tokens=max_passage_tokens,
                             max_query_tokens=max_query_tokens)
        super().__init__(model, max_new_tokens=max_new_tokens, seed=seed, title_field=title_field,
                         text_field=text_field, batch_size=batch_size, verbose=verbose, device=device, dtype=dtype)
        self.num_child = num_child
        self.k = k
        self.shuffle = shuffle
        self.max_passage_tokens = max_passage_tokens
        self.max_query_tokens = max_query_tokens

    def _repr_args(self) -> str:
        return f'{self.backend.name!r}, num_child={self.num_child}, k={self.k}, shuffle={self.shuffle}'

    def document(self, text: str, title: Optional[str] = None) -> str:
        """``"{title} {text}"`` when the title is not empty (ielab/llm-rankers ``run.py``), else the text."""
        if title is not None and title.strip():
            return f'{title} {text}'
        return text

    # -- prompt and answer --------------------------------------------------------------------------------------

    def prompt(self, query: str, texts: Sequence[str]) -> ChatPrompt:
        """The prompt of one comparison (query and passages already truncated), labels in order."""
        passages = SETWISE_PASSAGE_SEPARATOR.join(
            SETWISE_PASSAGE.format(label=self._labels[i], text=t) for i, t in enumerate(texts))
        return ChatPrompt.of([{'role': 'user', 'content': SETWISE_PROMPT.format(query=query, passages=passages)}],
                             prefix=SETWISE_ASSISTANT_PREFIX, add_special_tokens=True)

    def parse(self, text: str, n: int) -> Optional[int]:
        """The 0-based position chosen by an answer, or ``None`` when it is not one of the ``n`` labels shown."""
        out = text.strip().upper()
        labels = list(self._labels[:n])
        return labels.index(out) if out in labels else None

    # -- algorithm ----------------------------------------------------------------------------------------------

    def _compare(self, st: QueryState, query: str, texts: List[str],
                 docs: List[int]) -> Generator[ChatPrompt, Generation, int]:
        """One comparison of the documents at positions ``docs`` (parent first); returns the winner's index in
        ``docs`` (0, the parent, when the answer does not parse)."""
        perm = list(range(len(docs)))
        if self.shuffle:
            perm = st.rng.sample(perm, len(perm))
        shown = [docs[j] for j in perm]
        gen = yield self.fit_prompt(st, lambda docs: self.prompt(query, docs), [texts[p] for p in shown])
        choice = self.parse(gen.text, len(docs))
        if choice is None:
            self._record(st, 'compare', shown, gen, None, 'unparsable')
            return 0
        self._record(st, 'compare', shown, gen, st.docnos[shown[choice]], 'ok')
        return perm[choice]

    def _algorithm(self, st: QueryState) -> Algorithm:
        tok = self.tokenizer
        query = truncate_tokens(tok, st.query, self.max_query_tokens)
        texts = [truncate_tokens(tok, t, self.max_passage_tokens) for t in st.texts]
        arr = list(range(len(st.rows)))
        c = self.num_child

        def heapify(n: int, i: int) -> Generator[ChatPrompt, Generation, None]:
            while c * i + 1 < n:  # the node has children
                inds = [i] + list(range(c * i + 1, min(c * (i + 1) + 1, n)))
                best = yield from self._compare(st, query, texts, [arr[j] for j in inds])
                largest = inds[best]
                if largest == i:
                    return
                arr[i], arr[largest] = arr[largest], arr[i]
                i = largest

        n = len(arr)
        for i in range(n // c, -1, -1):  # build the max-heap
            yield from heapify(n, i)
        ranked = 0
        for i in range(n - 1, 0, -1):
            arr[i], arr[0] = arr[0], arr[i]
            ranked += 1
            if ranked == self.k:
                break
            yield from heapify(i, 0)
        return list(reversed(arr))[:self.k]


class RankR1(Setwise):
    """Rank-R1: setwise heapsort with a reasoning prompt (Zhuang et al., 2025; ielab/llm-rankers ``Rank-R1/``).

    The heapsort of :class:`Setwise` with Rank-R1's settings (``Rank-R1/README.md``: ``--num_child 19``, up to 20
    documents per prompt, ``--k 10``, ``--passage_length 512``, ``--query_length 32``) and the v0.1
    Rank-R1 prompts (:data:`RANKR1_SYSTEM`, :data:`RANKR1_USER`; documents labelled ``[1] text`` ... joined by
    newlines). The model is asked to reason in ``<think> </think>`` and answer ``<answer>[i]</answer>``; the answer
    is read with the reference's regex :data:`RANKR1_PATTERN` on the lower-cased completion and must be exactly
    one of the labels shown, otherwise it is counted ``unparsable`` and the parent stays in place (the reference's
    rule). The documents of every comparison are shuffled (seeded with 929 per query, as the reference's
    ``random.sample`` under ``random.seed(929)``); labels stay in order. Greedy decoding, up to
    ``max_new_tokens`` (2048 as the reference's ``SamplingParams``). The model's reasoning is kept in
    :meth:`trace` (``output``).

    Meant for the ``ielabgroup/Rank-R1-*-v0.1`` checkpoints (LoRA adapters on Qwen2.5-Instruct; merge or serve them
    with :class:`~pyterrier_llmrank.VLLMBackend` and ``enable_lora``); any chat model works.

    Args:
        model: as :class:`Setwise`.
        num_child, k, seed, max_passage_tokens, max_query_tokens: as :class:`Setwise` (19, 10, 929, 512, 32).
        shuffle: shuffle the documents of every comparison (True, as the reference).
        max_new_tokens: the most tokens generated per comparison (2048).
        title_field: as :class:`Setwise` (``"{title} {text}"``, as ``run_setwise.py``).
        text_field, batch_size, verbose, device, dtype: as every reranker.
    """

    label = 'RankR1'
    _labels = RANKR1_LABELS
    ARGUMENTS = {'num_child': AtLeast(1, maximum=len(RANKR1_LABELS) - 1)}

    def __init__(self, model: Any = 'smollm2-135m-instruct', *, num_child: int = 19, k: int = 10,
                 shuffle: bool = True, seed: int = RANKR1_SEED, max_passage_tokens: Optional[int] = 512,
                 max_query_tokens: Optional[int] = 32, max_new_tokens: int = 2048,
                 title_field: Optional[str] = 'title', text_field: str = 'text', batch_size: Optional[int] = None,
                 verbose: bool = False, device: Any = 'auto', dtype: Any = 'auto') -> None:
        super().__init__(model, num_child=num_child, k=k, shuffle=shuffle, seed=seed,
                         max_passage_tokens=max_passage_tokens, max_query_tokens=max_query_tokens,
                         max_new_tokens=max_new_tokens, title_field=title_field, text_field=text_field,
                         batch_size=batch_size, verbose=verbose, device=device, dtype=dtype)

    def prompt(self, query: str, texts: Sequence[str]) -> ChatPrompt:
        """The Rank-R1 v0.1 prompt of one comparison: system and user turns, documents ``[i] text``."""
        docs = RANKR1_DOC_SEPARATOR.join(RANKR1_DOC.format(num=i + 1, text=t) for i, t in enumerate(texts))
        return ChatPrompt.of([{'role': 'system', 'content': RANKR1_SYSTEM},
                              {'role': 'user', 'content': RANKR1_USER.format(query=query, docs=docs)}])

    def parse(self, text: str, n: int) -> Optional[int]:
        """The 0-based position in the ``<answer>`` tag, or ``None`` when the completion does not match
        :data:`RANKR1_PATTERN` or the answer is not one of the ``n`` labels shown."""
        m = re.search(RANKR1_PATTERN, text.lower(), re.DOTALL)
        if not m:
            return None
        ans = m.group(1).strip()
        labels = list(self._labels[:n])
        return labels.index(ans) if ans in labels else None
