"""LLM query understanding for retrieval-augmented generation, after Omni-RAG.

Omni-RAG ("Leveraging LLM-Assisted Query Understanding for Live Retrieval-Augmented Generation", Dong, Li, Zhang
and Deng, SIGIR 2025 LiveRAG workshop, arXiv:2506.21384) rewrites a noisy query, decomposes it into sub-queries,
retrieves for each sub-query, aggregates the lists, reranks them and generates the answer with a chain-of-thought
prompt. Here each step is a PyTerrier transformer:

.. code-block:: python

    from pyterrier_llmrank.query import QueryRewrite, QueryDecompose, SubQueryRetrieve, GenerateAnswer

    llm = llmrank.HFGenerationBackend('smollm2-135m-instruct')
    rag = (QueryRewrite(llm)                       # query -> rewritten query, original kept in query_0
           >> QueryDecompose(llm)                  # adds 'subqueries' (a list of strings)
           >> SubQueryRetrieve(collection.bm25(num_results=100))   # retrieve per sub-query, RRF per query
           % 20 >> collection.text_loader()
           >> llmrank.UPR('smollm2-135m-instruct')  # any reranker of the toolkit
           >> GenerateAnswer(llm, k=5))            # one row per query with 'qanswer'

The Omni-RAG paper does not print its prompts and no reference code was found, so the prompts of this module
(:data:`REWRITE_PROMPT`, :data:`DECOMPOSE_PROMPT`, :data:`ANSWER_PROMPT`) are this toolkit's own; the answer
prompt starts from pyterrier-rag's default reader prompt and adds the chain-of-thought instruction.

Every LLM transformer takes a model name/pair or a :class:`~pyterrier_llmrank.GenerationBackend` (share one backend
between steps to load the model once), decodes greedily, counts its cost in ``stats`` (an
:class:`~pyterrier_llmrank.EfficiencyStats`, with ``repaired`` and ``unparsable`` answers) and keeps every raw
answer in :meth:`trace`. A missing ``qid`` or ``query`` raises a ``ValueError`` naming the column and the rows (the
rerankers' rule, :func:`~pyterrier_llmrank.base.require_values`); a prompt longer than the model's context has its
passages cut further, and a query too long by itself raises a ``ValueError``
(:func:`~pyterrier_llmrank.generative.fit_chat_prompt`).
"""
from __future__ import annotations

import ast
import json
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta

from pyterrier_llmrank.base import (AtLeast, EfficiencyStats, check_arguments, empty_retrieval, first_stage_order,
                                    require_values)
from pyterrier_llmrank.backends import ChatPrompt, Generation, resolve_backend
from pyterrier_llmrank.generative import fit_chat_prompt, truncate_tokens
from pyterrier_llmrank.fusion import FUSION_METHODS, fuse

__all__ = ['REWRITE_SYSTEM', 'REWRITE_PROMPT', 'DECOMPOSE_SYSTEM', 'DECOMPOSE_PROMPT', 'ANSWER_SYSTEM',
           'ANSWER_PROMPT', 'ANSWER_PASSAGE', 'parse_rewrite', 'parse_subqueries', 'parse_answer', 'subquery_list',
           'QueryRewrite',
           'QueryDecompose', 'SubQueryRetrieve', 'GenerateAnswer']

# Prompts: this toolkit's own (Omni-RAG's are not published); see the module docstring.
REWRITE_SYSTEM = 'You are a search assistant. You fix search queries without changing what they ask for.'
REWRITE_PROMPT = ('Rewrite the following search query: correct its spelling mistakes and remove noise, but keep its '
                  'meaning and every intent it expresses. For example, "hart atack symtoms pls" becomes "heart attack '
                  'symptoms". Answer with the rewritten query only.\n\nQuery: {query}')
DECOMPOSE_SYSTEM = 'You are a search assistant. You split complex search queries into simple sub-queries.'
DECOMPOSE_PROMPT = ('Split the following search query into at most {max_subqueries} self-contained sub-queries, one '
                    'for each distinct information need it expresses; a query with a single intent gives a single '
                    'sub-query. Answer with a JSON list of strings only. For example, "symptoms of flu and how to '
                    'treat it" gives ["symptoms of flu", "treatment of flu"].\n\nQuery: {query}')
ANSWER_SYSTEM = 'You are a helpful assistant that answers questions from the context passages given to you.'
# The first sentence and the Context/Question layout are pyterrier-rag's default reader prompt
# (terrierteam/pyterrier_rag, pyterrier_rag/prompt/default.py: "Use the context information to answer the Question").
ANSWER_PROMPT = ('Use the context information to answer the question.\n\nContext:\n{passages}\n\nQuestion: {query}\n\n'
                 'Think step by step: first say which passages are relevant and what they state, then write the final '
                 'answer on a last line starting with "Answer:".')
ANSWER_PASSAGE = '[{i}] {text}'


# ---------------------------------------------------------------------------------------------------------------
# parsing (each returns the parsed value and a status: 'ok', 'repaired' or 'unparsable')

_LABEL = re.compile(r'^\s*(?:the\s+)?(?:(?:rewritten|corrected)\s+query|query|rewrite|correct(?:ed)?|answer)\s*:\s*',
                    re.IGNORECASE)


def parse_rewrite(text: str, original: str) -> Tuple[str, str]:
    """Read a rewritten query from an answer.

    Rule: the first non-empty line; a leading label (``Rewritten query:``, ``Query:``, ``Corrected:``...) and
    enclosing quotes or backticks are removed. ``'ok'`` when the answer was that line alone, ``'repaired'`` when
    something was removed, ``'unparsable'`` when nothing is left: the original query is kept.
    """
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return original, 'unparsable'
    first = lines[0]
    cleaned = _LABEL.sub('', first).strip()
    while len(cleaned) >= 2 and cleaned[0] == cleaned[-1] and cleaned[0] in '"\'`':
        cleaned = cleaned[1:-1].strip()
    if not cleaned:
        return original, 'unparsable'
    return cleaned, 'ok' if (cleaned == first and len(lines) == 1) else 'repaired'


_ITEM = re.compile(r'^\s*(?:\d+\s*[.):]|[-*\u2022])\s+(.+?)\s*$')
# a string item of a JSON list: right after "[" or ",", and not an object key (not followed by ":")
_LIST_ITEM = re.compile(r'[\[,]\s*"((?:[^"\\]|\\.)*)"(?!\s*:)')
_KEYS = ('sub_queries', 'subqueries', 'sub-queries', 'queries', 'questions', 'sub_questions')


def _strings(value: Any) -> Optional[List[str]]:
    """Strings of a parsed JSON value: a list of strings, a list of objects with one string field, or an object
    with a list under a sub-query key."""
    if isinstance(value, dict):
        for key in list(_KEYS) + list(value):
            if isinstance(value.get(key), list):
                return _strings(value[key])
        return None
    if not isinstance(value, list):
        return None
    out = []
    for v in value:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            s = next((x for k, x in v.items() if isinstance(x, str) and k.lower() in
                      ('query', 'sub_query', 'subquery', 'question', 'text')), None)
            if s is None:
                s = next((x for x in v.values() if isinstance(x, str)), None)
            if s is not None:
                out.append(s)
    return out


def _clean_list(items: Sequence[str], max_items: int) -> Tuple[List[str], bool]:
    out: List[str] = []
    seen = set()
    for s in items:
        s = ' '.join(str(s).split()).strip()
        if s and s.lower() not in seen:
            seen.add(s.lower())
            out.append(s)
    changed = len(out) != len(items) or len(out) > max_items
    return out[:max_items], changed


def _unescape(item: str) -> str:
    """A JSON string item's text: its escapes decoded, or the item as written when one is invalid (``\\q``)."""
    if '\\' not in item:
        return item
    try:
        return json.loads(f'"{item}"')
    except ValueError:
        return item


def parse_subqueries(text: str, query: str, max_subqueries: int = 5) -> Tuple[List[str], str]:
    """Read sub-queries from an answer, robustly.

    Rule, in order:

    1. JSON: the text from the first ``[`` (or ``{``) to the last ``]`` (or ``}``), code fences ignored, read with
       ``json.loads``: a list of strings, a list of objects (their ``query``/``question``/... string), or an object
       holding such a list (``{"sub_queries": [...]}``).
    2. Truncated or malformed JSON (a ``[`` is present): every complete double-quoted string that is a list item
       (right after ``[`` or ``,``, and not an object key followed by ``:``).
    3. A numbered or bulleted list: the items of the lines ``1. ...``, ``2) ...``, ``- ...``, ``* ...``.

    Items are whitespace-normalised; empty items and case-insensitive duplicates are dropped (first kept) and at most
    ``max_subqueries`` are kept. Status: ``'ok'`` when step 1 or 3 read the whole answer and nothing was dropped;
    ``'repaired'`` when text around the JSON was ignored, step 2 was needed or items were dropped; ``'unparsable'`` when
    no sub-query was found: the query itself is the only sub-query.

    Never raises on the answer's text: JSON that cannot be read (invalid escapes, nesting too deep for the JSON
    reader) goes on to the next step, and a string item with an invalid escape is kept as written.
    """
    body = re.sub(r'```(?:json)?', '', text).strip()
    candidates = []
    for open_, close in (('[', ']'), ('{', '}')):
        i, j = body.find(open_), body.rfind(close)
        if i >= 0 and j > i:
            candidates.append((i, body[i:j + 1]))
    for i, chunk in sorted(candidates):
        try:
            value = json.loads(chunk)
        except (ValueError, RecursionError):  # malformed, or nested deeper than the JSON reader goes
            continue
        items = _strings(value)
        if items:
            cleaned, changed = _clean_list(items, max_subqueries)
            if cleaned:
                whole = chunk.strip() == body
                return cleaned, 'ok' if whole and not changed else 'repaired'
    i = body.find('[')
    if i >= 0:
        items = [_unescape(m) for m in _LIST_ITEM.findall(body[i:])]
        cleaned, _ = _clean_list(items, max_subqueries)
        if cleaned:
            return cleaned, 'repaired'
    lines = [ln for ln in body.splitlines() if ln.strip()]
    items = [m.group(1) for m in (_ITEM.match(ln) for ln in lines) if m]
    if items:
        items = [s.strip().strip('"').strip() for s in items]
        cleaned, changed = _clean_list(items, max_subqueries)
        if cleaned:
            return cleaned, 'ok' if len(items) == len(lines) and not changed else 'repaired'
    return [query], 'unparsable'


def parse_answer(text: str) -> Tuple[str, str]:
    """The final answer of a chain-of-thought output.

    Rule: the text after the last ``Answer:`` marker (case-insensitive), stripped; ``'ok'`` when an answer with at least
    one letter or digit follows the marker. Without a marker, or with no such answer after it, the whole output
    stripped is the answer (``'repaired'``); an empty output gives ``''`` (``'unparsable'``).
    """
    matches = list(re.finditer(r'answer\s*:', text, re.IGNORECASE))
    if matches:
        ans = text[matches[-1].end():].strip()
        if re.search(r'\w', ans):
            return ans, 'ok'
    whole = text.strip()
    return (whole, 'repaired') if whole else ('', 'unparsable')


# ---------------------------------------------------------------------------------------------------------------
# transformers

class _LLMStep(pt.Transformer):
    """Shared by the LLM steps: backend, decoding settings, accounting and traces."""

    label = 'LLM'

    ARGUMENTS = {'max_new_tokens': AtLeast(1), 'batch_size': AtLeast(1, optional=True)}

    def __init__(self, model: Any, *, max_new_tokens: int, batch_size: Optional[int], verbose: bool, device: Any,
                 dtype: Any, **arguments: Any) -> None:
        rules: Dict[str, Any] = {}
        for klass in reversed(type(self).__mro__):
            rules.update(getattr(klass, 'ARGUMENTS', {}) or {})
        check_arguments(type(self).__name__, rules, dict(max_new_tokens=max_new_tokens, batch_size=batch_size,
                                                         **arguments))
        self.backend = resolve_backend(model, batch_size=batch_size, device=device, dtype=dtype)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size or self.backend.batch_size  # prompts per model call; None: the backend's
        self.verbose = verbose
        self.stats = EfficiencyStats()
        self._traces: List[Dict[str, Any]] = []

    @property
    def schematic(self) -> Dict[str, str]:  # noqa: D102
        return {'label': self.label}

    def _generate(self, qids: Sequence[Any], prompts: Sequence[ChatPrompt]) -> List[Generation]:
        bar = pt.tqdm(total=len(prompts), desc=self.label, unit='prompt') if self.verbose else None
        try:
            gens = self.backend.generate(list(prompts), self.max_new_tokens, temperature=0.0,
                                         progress=bar.update if bar is not None else None, batch_size=self.batch_size)
        finally:
            if bar is not None:
                bar.close()
        for qid, g in zip(qids, gens):
            self.stats.add(qid, model_calls=g.calls, sequences=1, input_tokens=g.prompt_tokens,
                           padded_tokens=g.padded_tokens, generated_tokens=g.generated_tokens, seconds=g.seconds)
        return gens

    def _record(self, qid: Any, prompt: ChatPrompt, gen: Generation, answer: Any, status: str) -> None:
        self.stats.add(qid, repaired=float(status == 'repaired'), unparsable=float(status == 'unparsable'))
        self._traces.append({'qid': qid, 'prompt': prompt.last_user, 'output': gen.text, 'answer': answer,
                             'status': status})

    def trace(self) -> pd.DataFrame:
        """Every prompt answered so far: ``qid``, ``prompt`` (the user message), ``output`` (raw text), ``answer``
        (what was read from it) and ``status`` (``ok``, ``repaired`` or ``unparsable``)."""
        return pd.DataFrame(self._traces, columns=['qid', 'prompt', 'output', 'answer', 'status'])

    def reset(self) -> None:
        """Forget the counters and traces of earlier runs."""
        self.stats.reset()
        self._traces.clear()

    def _queries(self, inp: pd.DataFrame) -> pd.DataFrame:
        """One row per qid (the first), in input order."""
        return inp.drop_duplicates('qid')[['qid', 'query']].reset_index(drop=True)

    def _fit(self, qid: Any, make: Any, docs: Sequence[str] = ()) -> ChatPrompt:
        """``make(docs)`` fitted to the model's context with room for ``max_new_tokens`` (passages cut further,
        never the query; a query too long by itself raises a ``ValueError``; see
        :func:`~pyterrier_llmrank.generative.fit_chat_prompt`)."""
        return fit_chat_prompt(self.backend, make, docs, self.max_new_tokens, who=type(self).__name__, qid=qid,
                               stats=self.stats)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.backend!r})'

    __str__ = __repr__


class QueryRewrite(_LLMStep):
    """LLM query rewriting (Omni-RAG's denoising step): spelling and noise fixed, meaning kept.

    The input's ``query`` moves to ``query_0`` (earlier ``query_0``... shift to ``query_1``..., as PyTerrier's query
    rewriters do with :func:`pyterrier.model.push_queries`) and ``query`` becomes the rewritten text. Works on query
    frames and on result frames (one prompt per qid). An answer is read with :func:`parse_rewrite`; an unusable one
    keeps the original query and is counted (``stats``: ``unparsable``).

    Args:
        model: a model name/path/pair (``'smollm2-135m-instruct'``) or a generation backend.
        max_new_tokens: the most tokens generated per query.
        batch_size: prompts per backend call.
        verbose: progress bar.
        device, dtype: for a model name (see :mod:`pyterrier_llmrank.models`).
    """

    label = 'QueryRewrite'

    def __init__(self, model: Any = 'smollm2-135m-instruct', *, max_new_tokens: int = 48, batch_size: Optional[int] = None,
                 verbose: bool = False, device: Any = 'auto', dtype: Any = 'auto') -> None:
        super().__init__(model, max_new_tokens=max_new_tokens, batch_size=batch_size, verbose=verbose,
                         device=device, dtype=dtype)

    @staticmethod
    def prompt(query: str) -> ChatPrompt:
        """The chat prompt for one query."""
        return ChatPrompt((('system', REWRITE_SYSTEM), ('user', REWRITE_PROMPT.format(query=query))))

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:  # noqa: D102
        pta.validate.columns(inp, includes=['qid', 'query'])
        require_values(inp, ['qid', 'query'], type(self).__name__)
        out = pt.model.push_queries(inp, keep_original=False, inplace=False)
        if len(inp) == 0:
            return out
        qs = self._queries(inp)
        prompts = [self._fit(qid, lambda _, q=q: self.prompt(str(q))) for qid, q in zip(qs['qid'], qs['query'])]
        gens = self._generate(qs['qid'].tolist(), prompts)
        new = {}
        for qid, q, p, g in zip(qs['qid'], qs['query'], prompts, gens):
            text, status = parse_rewrite(g.text, str(q))
            new[qid] = text
            self._record(qid, p, g, text, status)
        out['query'] = out['qid'].map(new)
        return out


class QueryDecompose(_LLMStep):
    """LLM query decomposition (Omni-RAG): a multi-intent query split into sub-queries, asked for as a JSON list.

    Adds a ``subqueries`` column (a list of strings per row); ``query`` is unchanged. Answers are read with
    :func:`parse_subqueries` (JSON, truncated JSON or a numbered list; repairs and failures counted in ``stats``);
    when nothing can be read, the query itself is the only sub-query.

    Args:
        model: a model name/path/pair or a generation backend.
        max_subqueries: the most sub-queries kept (also stated in the prompt).
        max_new_tokens: the most tokens generated per query.
        batch_size, verbose, device, dtype: as :class:`QueryRewrite`.
    """

    label = 'QueryDecompose'
    ARGUMENTS = {'max_subqueries': AtLeast(1)}

    def __init__(self, model: Any = 'smollm2-135m-instruct', *, max_subqueries: int = 4, max_new_tokens: int = 96,
                 batch_size: Optional[int] = None, verbose: bool = False, device: Any = 'auto', dtype: Any = 'auto') -> None:
        super().__init__(model, max_new_tokens=max_new_tokens, batch_size=batch_size, verbose=verbose,
                         device=device, dtype=dtype, max_subqueries=max_subqueries)
        self.max_subqueries = max_subqueries

    def prompt(self, query: str) -> ChatPrompt:
        """The chat prompt for one query."""
        return ChatPrompt((('system', DECOMPOSE_SYSTEM),
                           ('user', DECOMPOSE_PROMPT.format(query=query, max_subqueries=self.max_subqueries))))

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:  # noqa: D102
        pta.validate.columns(inp, includes=['qid', 'query'])
        require_values(inp, ['qid', 'query'], type(self).__name__)
        out = inp.copy()
        if len(inp) == 0:
            out['subqueries'] = pd.Series(dtype=object)
            return out
        qs = self._queries(inp)
        prompts = [self._fit(qid, lambda _, q=q: self.prompt(str(q))) for qid, q in zip(qs['qid'], qs['query'])]
        gens = self._generate(qs['qid'].tolist(), prompts)
        subs: Dict[Any, List[str]] = {}
        for qid, q, p, g in zip(qs['qid'], qs['query'], prompts, gens):
            items, status = parse_subqueries(g.text, str(q), self.max_subqueries)
            subs[qid] = items
            self._record(qid, p, g, items, status)
        out['subqueries'] = [list(subs[q]) for q in out['qid']]
        return out

    def __repr__(self) -> str:
        return f'QueryDecompose({self.backend!r}, max_subqueries={self.max_subqueries})'

    __str__ = __repr__


def subquery_list(value: Any, qid: Any = None) -> List[str]:
    """The sub-queries of one row's ``subqueries`` value: a list (tuple, array) of strings, or a string holding one
    as JSON (``'["a", "b"]'``) or as Python writes it (``"['a', 'b']"``, what ``DataFrame.to_csv`` leaves of a list).

    Raises:
        ValueError: naming the column and the qid, for a missing value, a string that is not such a list, or any
            other type.
    """
    where = f"column 'subqueries' of qid {qid!r}"
    if isinstance(value, str):
        parsed: Any = None
        for read in (json.loads, ast.literal_eval):
            try:
                parsed = read(value)
                break
            except (ValueError, SyntaxError, RecursionError, MemoryError):
                continue
        if not isinstance(parsed, (list, tuple)) or not all(isinstance(v, str) for v in parsed):
            raise ValueError(f'{where} is the string {value[:80]!r}, not a list of sub-queries (nor a string holding '
                             f'one, such as \'["first", "second"]\'); give a list of strings per row')
        return list(parsed)
    if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        return [str(v) for v in value]
    raise ValueError(f'{where} is {value!r} ({type(value).__name__}), not a list of sub-queries; give a list of '
                     f'strings per row')


class SubQueryRetrieve(pt.Transformer):
    """Intent-aware retrieval (Omni-RAG): ``retriever`` runs once per sub-query and the lists of a query are fused.

    The input is a query frame with a ``subqueries`` column (from :class:`QueryDecompose`: a list of strings per
    row; a string holding such a list, as a CSV round trip leaves it, is read back with :func:`subquery_list`); each
    sub-query is
    retrieved as its own query (``qid`` kept, ``query`` the sub-query), then the lists of each qid are fused with
    :func:`~pyterrier_llmrank.fusion.fuse` (reciprocal rank fusion by default). The output is a result frame for the
    original queries: ``query`` is the query of the input (e.g. the rewritten one) so that the reranker after it
    scores against it, and the input's other columns (``query_0``, ``subqueries``...) are kept.

    Args:
        retriever: any retriever (topics in, results out): BM25, :class:`~pyterrier_llmrank.dense.DenseRetriever`,
            a :class:`~pyterrier_llmrank.fusion.Hybrid`...
        fusion: ``'rrf'`` (default), ``'minmax'`` or ``'zscore'``.
        k: the RRF constant.
        include_query: also retrieve with the query itself, as one more list.
        num_results: documents kept per query after fusion.
    """

    def __init__(self, retriever: pt.Transformer, *, fusion: str = 'rrf', k: int = 60, include_query: bool = False,
                 num_results: Optional[int] = 1000) -> None:
        if fusion not in FUSION_METHODS:
            raise ValueError(f'unknown fusion method {fusion!r}; use one of {FUSION_METHODS}')
        self.retriever = retriever
        self.fusion = fusion
        self.k = k
        self.include_query = include_query
        self.num_results = num_results

    schematic = {'label': 'SubQueryRetrieve'}

    def subqueries(self, inp: pd.DataFrame) -> pd.DataFrame:
        """The sub-query frame that is given to the retriever: ``qid``, ``query`` (the sub-query), ``subquery_idx``
        (0-based; -1 for the query itself when ``include_query``)."""
        rows = []
        for row in inp.drop_duplicates('qid').itertuples(index=False):
            subs = subquery_list(getattr(row, 'subqueries'), row.qid)
            if self.include_query:
                rows.append((row.qid, str(row.query), -1))
            rows.extend((row.qid, str(s), i) for i, s in enumerate(subs))
        return pd.DataFrame(rows, columns=['qid', 'query', 'subquery_idx'])

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:  # noqa: D102
        pta.validate.query_frame(inp, extra_columns=['query', 'subqueries'])
        require_values(inp, ['qid'], 'SubQueryRetrieve')
        base_cols = [c for c in inp.columns if c not in ('docno', 'score', 'rank')]
        if len(inp) == 0:
            return empty_retrieval(inp)
        subs = self.subqueries(inp)
        # each sub-query is retrieved under a temporary qid of its own, so that retrievers keyed by qid see
        # distinct queries; the lists are then mapped back to their qid
        tmp = [f'{i}' for i in range(len(subs))]
        back = dict(zip(tmp, subs['qid']))
        which = dict(zip(tmp, subs['subquery_idx']))
        res = self.retriever(pd.DataFrame({'qid': tmp, 'query': subs['query'].to_numpy()}))
        pta.validate.result_frame(res, extra_columns=['score'])
        res = res.assign(_sub=res['qid'].astype(str).map(which), qid=res['qid'].astype(str).map(back))
        queries = inp.drop_duplicates('qid').set_index('qid')['query']
        res = res.assign(query=res['qid'].map(queries))
        lists = [g[['qid', 'query', 'docno', 'score']] for _, g in res.groupby('_sub', sort=True)]
        fused = fuse(lists, self.fusion, k=self.k, num_results=self.num_results) if lists else \
            pd.DataFrame(columns=['qid', 'query', 'docno', 'score', 'rank'])
        extra = inp.drop_duplicates('qid')[base_cols].drop(columns=['query'])
        out = extra.merge(fused, on='qid', how='inner')
        return out[base_cols + ['docno', 'score', 'rank']]

    def __repr__(self) -> str:
        return (f'SubQueryRetrieve({self.retriever!r}, fusion={self.fusion!r}'
                + (f', k={self.k}' if self.fusion == 'rrf' else '') + (', include_query=True' if self.include_query
                                                                        else '') + ')')

    __str__ = __repr__


class GenerateAnswer(_LLMStep):
    """Answer generation from the top-``k`` passages with a chain-of-thought prompt (Omni-RAG's last step).

    Input: a result frame (``qid``, ``query``, ``docno``, ``text``, ``score``/``rank``), e.g. the output of a
    reranker; the top ``k`` documents of each query (by ``rank``, else by ``score``) are numbered in the prompt
    (:data:`ANSWER_PROMPT`), each cut to ``max_passage_tokens`` tokens. Output: one row per query with ``qid``,
    ``query``, the input's other query-level columns and ``qanswer`` (pyterrier-rag's answer column): the text after
    the last ``Answer:`` of the output (:func:`parse_answer`; the whole output when the marker is missing, counted
    as repaired). The reasoning stays in :meth:`trace`.

    Args:
        model: a model name/path/pair or a generation backend.
        k: passages per prompt.
        max_passage_tokens: tokens kept per passage (words with a backend without tokenizer).
        max_new_tokens: the most tokens generated per query (reasoning included).
        text_field: the passage column.
        batch_size, verbose, device, dtype: as :class:`QueryRewrite`.
    """

    label = 'GenerateAnswer'
    ARGUMENTS = {'k': AtLeast(1), 'max_passage_tokens': AtLeast(1)}

    def __init__(self, model: Any = 'smollm2-135m-instruct', *, k: int = 5, max_passage_tokens: int = 128,
                 max_new_tokens: int = 192, text_field: str = 'text', batch_size: Optional[int] = None, verbose: bool = False,
                 device: Any = 'auto', dtype: Any = 'auto') -> None:
        super().__init__(model, max_new_tokens=max_new_tokens, batch_size=batch_size, verbose=verbose,
                         device=device, dtype=dtype, k=k, max_passage_tokens=max_passage_tokens)
        self.k = k
        self.max_passage_tokens = max_passage_tokens
        self.text_field = text_field

    def prompt(self, query: str, texts: Sequence[str]) -> ChatPrompt:
        """The chat prompt for a query and its passages (in order; cut to ``max_passage_tokens``)."""
        tok = self.backend.tokenizer
        passages = '\n'.join(ANSWER_PASSAGE.format(i=i + 1, text=truncate_tokens(tok, t, self.max_passage_tokens)
                                                   .strip()) for i, t in enumerate(texts))
        return ChatPrompt((('system', ANSWER_SYSTEM), ('user', ANSWER_PROMPT.format(passages=passages, query=query))))

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:  # noqa: D102
        pta.validate.result_frame(inp, extra_columns=['query', self.text_field])
        require_values(inp, ['qid', 'query'], type(self).__name__)
        drop = {'docno', 'docid', 'score', 'rank', self.text_field, 'query_vec', 'doc_vec'}
        qcols = ['qid', 'query'] + [c for c in inp.columns if c not in drop and c not in ('qid', 'query')]
        if len(inp) == 0:
            return inp[qcols].assign(qanswer=pd.Series(dtype=object))
        qids, prompts, heads = [], [], []
        for qid, grp in inp.groupby('qid', sort=False):
            grp = grp.iloc[first_stage_order(grp)]
            top = grp.head(self.k)
            qids.append(qid)
            heads.append(grp.iloc[0][qcols])
            query = str(grp['query'].iloc[0])
            tok = self.backend.tokenizer
            docs = [truncate_tokens(tok, t if isinstance(t, str) else '', self.max_passage_tokens)
                    for t in top[self.text_field]]
            prompts.append(self._fit(qid, lambda ds, q=query: self.prompt(q, ds), docs))
        gens = self._generate(qids, prompts)
        answers = []
        for qid, p, g in zip(qids, prompts, gens):
            ans, status = parse_answer(g.text)
            answers.append(ans)
            self._record(qid, p, g, ans, status)
        out = pd.DataFrame(heads).reset_index(drop=True)
        out['qanswer'] = answers
        return out

    def __repr__(self) -> str:
        return f'GenerateAnswer({self.backend!r}, k={self.k})'

    __str__ = __repr__
