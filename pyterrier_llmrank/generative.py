"""The base of the rerankers that generate text (:mod:`~pyterrier_llmrank.listwise`,
:mod:`~pyterrier_llmrank.setwise`), and the prompt-text helpers they share.

Each query's algorithm is a Python generator that yields a prompt and receives the model's answer; the base runs
the generators of all queries in lock-step, so that the prompts that are ready at the same time (one window or one
comparison per query) go to the backend (:mod:`~pyterrier_llmrank.backends`) together, in batches of the
backend's ``batch_size``. The result of a query does not depend on the other queries of the frame.
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Generator, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import pandas as pd
import pyterrier as pt

from pyterrier_llmrank.backends import ChatPrompt, Generation, resolve_backend
from pyterrier_llmrank.base import AtLeast, EfficiencyStats, QueryCandidates, QueryReranker

__all__ = ['Algorithm', 'QueryState', 'GenerativeReranker', 'truncate_tokens', 'cut_words', 'fit_to_budget',
           'backend_budget', 'fit_chat_prompt']


def cut_words(text: Any, n: int) -> str:
    """The first ``n`` whitespace-separated words of ``text``, joined by single spaces (RankGPT's 300-word cut)."""
    text = text if isinstance(text, str) else ''
    return ' '.join(text.strip().split()[:n])


def truncate_tokens(tokenizer: Any, text: Any, n: Optional[int]) -> str:
    """The first ``n`` tokens of ``text`` turned back into a string, as llm-rankers' ``truncate``.

    Without a tokenizer (scripted tests) the first ``n`` words are kept. ``n=None`` keeps everything.
    """
    text = text if isinstance(text, str) else ''
    if n is None:
        return text
    if tokenizer is None:
        return ' '.join(text.split()[:n])
    toks = tokenizer.tokenize(text)
    if len(toks) <= n:
        return text
    return tokenizer.convert_tokens_to_string(toks[:n])


P = TypeVar('P')


def fit_to_budget(build: Callable[[Optional[int]], P], length: Callable[[P], int], budget: Optional[int],
                  hi: Callable[[], int], *,
                  who: str, qid: Any, room: str = '', stats: Optional[EfficiencyStats] = None) -> P:
    """A prompt that fits the model's context: cut the documents, never the instruction or the query.

    ``build(cap)`` makes the prompt with every document cut to its first ``cap`` tokens (``None``: the documents as
    the method writes them, already cut by its own settings); ``length`` counts a prompt's tokens. When
    ``build(None)`` fits ``budget`` tokens (or ``budget`` is ``None``: unknown context) it is returned as is, so
    normal inputs are untouched. Otherwise the largest ``cap <= hi()`` (the longest document's tokens, computed only
    then) whose prompt fits is found (binary search), a
    ``UserWarning`` names the query and the cap, and ``truncated_prompts`` is counted in ``stats`` for the query,
    as ICR does (:mod:`pyterrier_llmrank.icr`, overflow handling).

    Raises:
        ValueError: when the prompt without any document text (instruction, query, template) does not fit: the
            query is too long (the error names the query and the token counts; ``room`` says where the budget comes
            from).
    """
    prompt = build(None)
    if budget is None:
        return prompt
    n = length(prompt)
    if n <= budget:
        return prompt
    n0 = length(build(0))
    if n0 > budget:
        raise ValueError(f'{who}: query {qid!r} is too long: the prompt without any document text (instruction, query '
                         f'and template) takes {n0} tokens, more than the {budget} tokens available{room}; shorten the '
                         f'query')
    lo, hi_ = 0, hi()  # build(lo) fits; the largest cap in [lo, hi_] that fits
    while lo < hi_:
        mid = (lo + hi_ + 1) // 2
        if length(build(mid)) <= budget:
            lo = mid
        else:
            hi_ = mid - 1
    warnings.warn(f'{who}: query {qid!r}: the prompt ({n} tokens) exceeds the {budget} tokens available{room}; each '
                  f'document cut to {lo} tokens to fit (counted as truncated_prompts in stats)', UserWarning,
                  stacklevel=3)
    if stats is not None:
        stats.add(qid, truncated_prompts=1)
    return build(lo)


def backend_budget(backend: Any, max_new_tokens: int) -> Tuple[Optional[int], str]:
    """The prompt budget of a generation backend: its context less ``max_new_tokens`` (the answer needs positions
    too), and a note saying so for error messages; ``(None, '')`` when the backend has no tokenizer or no known
    context (the check is skipped)."""
    ctx = getattr(backend, 'context_length', None)
    if ctx is None or backend.tokenizer is None:
        return None, ''
    return ctx - max_new_tokens, f' (the context of {ctx} tokens less max_new_tokens={max_new_tokens})'


def fit_chat_prompt(backend: Any, make: Callable[[List[str]], ChatPrompt], docs: Sequence[str], max_new_tokens: int,
                    *, who: str, qid: Any, stats: Optional[EfficiencyStats] = None) -> ChatPrompt:
    """``make(docs)``, or ``make`` of the documents cut in the backend's tokens so that the prompt and
    ``max_new_tokens`` fit the backend's context (:func:`fit_to_budget`); untouched without a known context."""
    docs = list(docs)
    budget, room = backend_budget(backend, max_new_tokens)
    if budget is None:
        return make(docs)
    tok = backend.tokenizer
    pieces: List[List[str]] = []

    def tokens() -> List[List[str]]:
        if not pieces:
            pieces.extend(tok.tokenize(d) for d in docs)
        return pieces

    def build(cap: Optional[int]) -> ChatPrompt:
        if cap is None:
            return make(docs)
        return make([tok.convert_tokens_to_string(t[:cap]) if len(t) > cap else d for t, d in zip(tokens(), docs)])

    return fit_to_budget(build, backend.prompt_length, budget, lambda: max(map(len, tokens()), default=0), who=who,
                         qid=qid, room=room, stats=stats)


# the algorithm of one query: yields prompts, receives generations, returns the reranked order (row positions)
Algorithm = Generator[ChatPrompt, Generation, List[int]]


@dataclass
class QueryState:
    qid: Any
    query: str
    rows: List[int]                       # row positions of the frame, in first-stage order
    texts: List[str]                      # the documents as the method writes them (with their titles)
    docnos: List[str]
    rng: random.Random
    calls: int = 0
    trace: List[Dict[str, Any]] = field(default_factory=list)


class GenerativeReranker(QueryReranker):
    """Base of the rerankers that generate text (listwise and setwise).

    Subclasses implement :meth:`_algorithm`, a generator over one query that yields :class:`ChatPrompt` objects,
    receives the :class:`Generation` for each, records what it parsed with :meth:`_record` and returns the new
    order of the documents it ranked (positions in the query's first-stage list; positions it does not return
    keep their first-stage order beneath them). The output score is ``-rank``.

    First-stage order: by ``rank`` when the input has it, else by descending ``score``, else the input order.
    The generators of all queries run in lock-step (:meth:`_rerank_queries`), so that the prompts ready at the
    same time go to the backend together, ``batch_size`` prompts per model call.

    Context: every prompt is built with :meth:`fit_prompt`. When a prompt and ``max_new_tokens`` do not fit the
    model's context (the backend's ``context_length``, e.g. ``max_position_embeddings``), its documents are cut
    further in tokens (never the instruction or the query), with a ``UserWarning`` and the ``truncated_prompts``
    counter; a query too long by itself raises a ``ValueError`` naming it (the methods that cut the query, as
    Setwise's ``max_query_tokens``, do so first). A backend without a tokenizer or a known context skips the check.

    After a run, ``stats`` (an :class:`~pyterrier_llmrank.EfficiencyStats`) holds per query ``model_calls``
    (``generate`` calls, shared among the prompts of a batch), ``sequences`` (prompts, i.e. LLM calls in the
    papers' sense), ``input_tokens`` (prompt tokens), ``generated_tokens``, ``seconds``, ``repaired`` and
    ``unparsable`` (and ``truncated_prompts`` when prompts were cut to fit); :meth:`trace` gives each prompt's raw
    answer (the model's reasoning included) and what was read from it.
    """

    label = 'Generative'
    ARGUMENTS = {'max_new_tokens': AtLeast(1), 'temperature': AtLeast(0), 'batch_size': AtLeast(1, optional=True)}

    def __init__(self, model: Any, *, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 929, title_field: Optional[str] = 'title', text_field: str = 'text',
                 batch_size: Optional[int] = None, verbose: bool = False, device: Any = 'auto',
                 dtype: Any = 'auto') -> None:
        self.check_arguments(max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size)
        self.backend = resolve_backend(model, batch_size=batch_size, device=device, dtype=dtype)
        # batch_size: prompts per model call; None takes the backend's own
        super().__init__(text_field=text_field, batch_size=batch_size or self.backend.batch_size, verbose=verbose)
        self.title_field = title_field
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self._traces: List[Dict[str, Any]] = []

    # -- to implement -------------------------------------------------------------------------------------------

    def _algorithm(self, st: QueryState) -> Algorithm:
        raise NotImplementedError

    def document(self, text: str, title: Optional[str] = None) -> str:
        """A document as the method's reference writes it from its text and title (``None``: no title column)."""
        return text

    # -- helpers for subclasses ---------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The backend's tokenizer (``None`` for a scripted backend without one)."""
        return self.backend.tokenizer

    def _record(self, st: QueryState, kind: str, positions: Sequence[int], gen: Generation, answer: Any,
                status: str) -> None:
        st.calls += 1
        st.trace.append({'qid': st.qid, 'call': st.calls, 'kind': kind,
                         'docnos': [st.docnos[p] for p in positions], 'output': gen.text, 'answer': answer,
                         'status': status})
        self.stats.add(st.qid, repaired=float(status == 'repaired'), unparsable=float(status == 'unparsable'))

    def fit_prompt(self, st: QueryState, make: Callable[[List[str]], ChatPrompt], docs: Sequence[str]) -> ChatPrompt:
        """The prompt ``make(docs)`` made to fit the model's context with room for ``max_new_tokens``: when it is
        too long, the documents are cut further (never the instruction or the query), with a warning and the
        ``truncated_prompts`` counter; a query too long by itself raises a ``ValueError``
        (:func:`fit_chat_prompt`). Backends without a tokenizer or a known context skip the check."""
        return fit_chat_prompt(self.backend, make, docs, self.max_new_tokens, who=type(self).__name__, qid=st.qid,
                               stats=self.stats)

    # -- public -------------------------------------------------------------------------------------------------

    def trace(self) -> pd.DataFrame:
        """Every prompt answered so far, one row each: ``qid``, ``call`` (1-based per query and run), ``kind``,
        ``docnos`` (in the order shown to the model), ``output`` (the raw generated text, reasoning included),
        ``answer`` (what was read from it) and ``status`` (``ok``, ``repaired`` or ``unparsable``)."""
        return pd.DataFrame(self._traces, columns=['qid', 'call', 'kind', 'docnos', 'output', 'answer', 'status'])

    def reset(self) -> None:
        """Forget the efficiency counters and traces of earlier runs."""
        self.stats.reset()
        self._traces.clear()

    # -- driver -------------------------------------------------------------------------------------------------

    def _rerank_queries(self, queries: List[QueryCandidates]) -> List[np.ndarray]:
        states: List[QueryState] = []
        for q in queries:
            titles = q.column(self.title_field) if self.title_field else [None] * len(q)
            states.append(QueryState(qid=q.qid, query=q.query, rows=q.rows.tolist(),
                                     texts=[self.document(t, ti) for t, ti in zip(q.texts, titles)],
                                     docnos=list(q.docnos), rng=random.Random(self.seed)))
            self.stats.add(q.qid, repaired=0.0, unparsable=0.0)
        before = self.stats.per_query().set_index('qid')
        out: List[np.ndarray] = [np.zeros(0)] * len(states)
        pending: Dict[int, Tuple[Algorithm, ChatPrompt]] = {}

        def finish(i: int, order: List[int]) -> None:  # a query's algorithm is done: its scores are final
            out[i] = self._order_scores(order, len(states[i].rows))
            self._traces.extend(states[i].trace)
            self.query_finished(queries[i], out[i], states[i].trace)

        for i, st in enumerate(states):
            algo = self._algorithm(st)
            try:
                pending[i] = (algo, next(algo))
            except StopIteration as stop:
                finish(i, stop.value)
        bar = pt.tqdm(total=0, desc=repr(self), unit='prompt') if self.verbose else None
        rounds = 0
        while pending:
            keys = list(pending)
            if bar is not None:  # the algorithms decide the next prompts from the answers: the total grows by rounds
                bar.total += len(keys)
                bar.refresh()
            gens = self.backend.generate([pending[k][1] for k in keys], self.max_new_tokens,
                                         temperature=self.temperature, top_p=self.top_p, seed=self.seed,
                                         progress=bar.update if bar is not None else None, batch_size=self.batch_size)
            rounds += 1
            nxt: Dict[int, Tuple[Algorithm, ChatPrompt]] = {}
            for k, g in zip(keys, gens):
                st = states[k]
                self.stats.add(st.qid, model_calls=g.calls, sequences=1, input_tokens=g.prompt_tokens,
                               padded_tokens=g.padded_tokens, generated_tokens=g.generated_tokens, seconds=g.seconds)
                algo = pending[k][0]
                try:
                    nxt[k] = (algo, algo.send(g))
                except StopIteration as stop:
                    finish(k, stop.value)
            pending = nxt
        if bar is not None:
            bar.close()
        if self.verbose:
            self._print_summary(before, [st.qid for st in states])
        return out

    @staticmethod
    def _order_scores(order: Sequence[int], n: int) -> np.ndarray:
        """Scores ``-rank`` of the ``n`` positions: those of ``order`` first, the others beneath in first-stage order."""
        order = list(order)
        seen = set(order)
        order += [p for p in range(n) if p not in seen]
        scores = np.zeros(n, dtype='float64')
        for rank, p in enumerate(order):
            scores[p] = -(rank + 1.0)
        return scores

    def _print_summary(self, before: pd.DataFrame, qids: List[Any]) -> None:
        after = self.stats.per_query().set_index('qid').loc[qids]
        diff = after.sub(before.reindex(after.index).fillna(0.0), fill_value=0.0)
        n = len(diff)
        calls = diff['sequences'].sum()
        print(f'{self!r}: {n} queries, {calls / n:.1f} LLM calls/query ({diff["model_calls"].sum() / n:.1f} generate '
              f'calls), {diff["input_tokens"].sum() / n:.0f} prompt + {diff["generated_tokens"].sum() / n:.0f} '
              f'generated tokens/query, {diff["seconds"].sum() / n:.2f} s/query, repaired {int(diff["repaired"].sum())}'
              f'/{int(calls)}, unparsable {int(diff["unparsable"].sum())}/{int(calls)}')
