"""What every reranker of the toolkit shares: argument checks, input validation, empty frames, model handles,
length-sorted batching (:class:`PointwiseReranker`), per-query grouping (:class:`QueryReranker`), efficiency
accounting and truncation that never cuts a template's instruction.

Choosing a base for a new reranker:

* :class:`PointwiseReranker` when each (query, document) pair is scored on its own: the base batches pairs of
  all queries together, sorted by length.
* :class:`QueryReranker` when a query's scores depend on its whole candidate list (listwise, setwise, pairwise,
  attention-based): the base groups the frame by query in first-stage order and assembles the output; the
  subclass scores one query at a time (or overrides :meth:`QueryReranker._rerank_queries` to batch across
  queries).

Rules on the input, the same for every reranker: a missing ``qid`` or ``query`` raises a ``ValueError`` naming the
column and the rows, a missing text (or title) is the empty string (:func:`require_values`, :func:`text_values`);
duplicate docnos within a query are kept and each row is scored on its own (the output has every input row once,
no copy merged, summed or dropped). The passage helpers of :mod:`~pyterrier_llmrank.cascade`, which tell a
document's passages apart by docno, refuse duplicates with an error naming them instead.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta

from pyterrier_llmrank.models import restore_weights, state_without_weights
from pyterrier_llmrank.fingerprint import fingerprint

__all__ = ['EfficiencyStats', 'Reranker', 'PointwiseReranker', 'QueryReranker', 'QueryCandidates', 'fit_pieces',
           'validate_rerank_input', 'empty_result', 'empty_retrieval', 'require_values', 'text_values', 'missing_rows',
           'first_stage_order', 'check_arguments', 'OneOf', 'AtLeast', 'length_batches', 'MAX_PADDING']


class EfficiencyStats:
    """Efficiency counters of a reranker, per query, accumulated over its runs.

    Counters (per query):

    * ``model_calls``: forward passes (or ``generate`` calls) of the model. A batch that holds sequences of
      several queries is shared among them in proportion to the sequences each contributed, so the column
      sums to the number of calls actually made.
    * ``sequences``: sequences (prompts) fed to the model.
    * ``input_tokens``: non-padding input tokens; ``padded_tokens``: tokens including padding.
    * ``generated_tokens``: tokens generated (generative rerankers only).
    * ``seconds``: wall-clock seconds, a batch's time shared in proportion to each sequence's tokens.

    Read them with :meth:`per_query` (a DataFrame, one row per qid), :meth:`summary` (means per query and
    totals) or ``print(stats)``. Counters accumulate over ``transform`` calls until :meth:`reset`.

    Parallel runs (``pipeline.parallel(n)``, joblib or Ray): the counters are per worker. Each worker runs a
    pickled copy of the reranker, which counts in its own ``stats`` and is discarded with the task; the
    reranker of the calling process records nothing for the queries the workers ran. Measure efficiency on
    a serial run (or a serial run of one shard).
    """

    COLUMNS = ('model_calls', 'sequences', 'input_tokens', 'padded_tokens', 'generated_tokens', 'seconds')

    def __init__(self) -> None:
        self._data: Dict[Any, Dict[str, float]] = {}
        self._extra: set = set()

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self._data.clear()
        self._extra.clear()

    def add(self, qid: Any, **counters: float) -> None:
        """Add counters for one query (unknown counter names become extra columns)."""
        row = self._data.setdefault(qid, defaultdict(float))
        for k, v in counters.items():
            row[k] += float(v)
            if k not in self.COLUMNS:
                self._extra.add(k)

    def add_batch(self, qids: Sequence[Any], input_tokens: Sequence[int], padded_len: int, seconds: float,
                  calls: float = 1.0, generated_tokens: Optional[Sequence[int]] = None) -> None:
        """Record one batched model call over sequences belonging to ``qids`` (one entry per sequence)."""
        n = len(qids)
        if n == 0:
            return
        tok = np.asarray(input_tokens, dtype=float)
        total = float(tok.sum()) or 1.0
        for i, qid in enumerate(qids):
            self.add(qid, model_calls=calls / n, sequences=1, input_tokens=tok[i], padded_tokens=padded_len,
                     seconds=seconds * tok[i] / total,
                     **({'generated_tokens': generated_tokens[i]} if generated_tokens is not None else {}))

    def row(self, qid: Any) -> Dict[str, float]:
        """The counters of one query so far (an empty dict for a query not seen)."""
        return dict(self._data.get(qid, {}))

    def per_query(self) -> pd.DataFrame:
        """One row per qid with every counter."""
        cols = list(self.COLUMNS) + sorted(self._extra)
        if not self._data:
            return pd.DataFrame(columns=['qid'] + cols)
        rows = [{'qid': qid, **{c: row.get(c, 0.0) for c in cols}} for qid, row in self._data.items()]
        return pd.DataFrame(rows, columns=['qid'] + cols)

    def summary(self) -> Dict[str, float]:
        """Means per query of every counter, plus the number of queries and total seconds."""
        df = self.per_query()
        out: Dict[str, float] = {'queries': float(len(df))}
        if len(df):
            for c in df.columns[1:]:
                out[c + '_per_query'] = float(df[c].mean())
            out['seconds_total'] = float(df['seconds'].sum())
        return out

    def __repr__(self) -> str:
        s = self.summary()
        if not s['queries']:
            return 'EfficiencyStats(no queries yet)'
        parts = [f"{int(s['queries'])} queries"]
        for key, fmt in [('model_calls', '.1f'), ('input_tokens', '.0f'), ('generated_tokens', '.0f'), ('seconds', '.3f')]:
            v = s.get(key + '_per_query', 0.0)
            if v or key in ('model_calls', 'seconds'):
                parts.append(f'{key.replace("_", " ")}/query {v:{fmt}}')
        return 'EfficiencyStats(' + ', '.join(parts) + ')'


def validate_rerank_input(inp: pd.DataFrame, text_field: str, extra: Iterable[str] = ()) -> None:
    """Check a result frame for re-ranking; the error names the missing columns."""
    pta.validate.result_frame(inp, extra_columns=['query', text_field, *extra])


def missing_rows(inp: pd.DataFrame, column: str) -> List[int]:
    """Positions of the rows whose ``column`` is missing (NaN / None / NA)."""
    return np.flatnonzero(inp[column].isna().to_numpy()).tolist()


def require_values(inp: pd.DataFrame, columns: Iterable[str], who: str) -> None:
    """Raise a ``ValueError`` naming the column and rows when a required column has missing values."""
    for column in columns:
        if column in inp.columns:
            rows = missing_rows(inp, column)
            if rows:
                raise ValueError(f'{who}: column {column!r} is missing (NaN/None) in {len(rows)} row(s) '
                                 f'(positions {rows[:10]}{" ..." if len(rows) > 10 else ""}); every row needs a '
                                 f'{column}')


def text_values(inp: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """``inp`` with the text ``columns`` made strings: a missing value (NaN/None) becomes ``''``, any other
    non-string its ``str``. The toolkit's rule for missing texts: a document without text is scored as an empty
    document; no model ever reads the word "nan"."""
    out = None
    for column in columns:
        if column not in inp.columns:
            continue
        values = inp[column]
        bad = values.map(lambda v: not isinstance(v, str)).to_numpy()
        if bad.any():
            out = inp.copy() if out is None else out
            out[column] = [v if isinstance(v, str) else ('' if pd.isna(v) else str(v)) if np.ndim(v) == 0 else str(v)
                           for v in values]
    return inp if out is None else out


def empty_result(inp: pd.DataFrame) -> pd.DataFrame:
    """The output of a reranker for an empty input: the input's columns plus ``score`` and ``rank``."""
    out = inp.drop(columns=['score', 'rank'], errors='ignore').copy()
    out['score'] = pd.Series(dtype='float64')
    out['rank'] = pd.Series(dtype='int64')
    return out


def empty_retrieval(inp: pd.DataFrame) -> pd.DataFrame:
    """The output of a retriever for an empty query frame: the input's columns plus ``docno``, ``score`` and
    ``rank``."""
    return inp.drop(columns=['docno', 'score', 'rank'], errors='ignore').assign(
        docno=pd.Series(dtype=object), score=pd.Series(dtype='float64'), rank=pd.Series(dtype='int64'))


def fit_pieces(pieces: Sequence[List[int]], max_len: Optional[int], cut: Sequence[int]) -> List[List[int]]:
    """Make token pieces fit ``max_len`` by cutting only the pieces whose indices are in ``cut``.

    Pieces listed in ``cut`` are shortened from their end, in the order given (the first one until it is
    empty, then the next); every other piece (instruction, query, template suffix) is kept whole.

    Raises:
        ValueError: when the pieces that may not be cut are longer than ``max_len`` by themselves.
    """
    pieces = [list(p) for p in pieces]
    if max_len is None:
        return pieces
    excess = sum(len(p) for p in pieces) - max_len
    for idx in cut:
        if excess <= 0:
            break
        take = min(excess, len(pieces[idx]))
        if take:
            pieces[idx] = pieces[idx][:len(pieces[idx]) - take]
            excess -= take
    if excess > 0:
        raise ValueError(f'the parts of the prompt that may not be cut (instruction, query, template) are {excess} tokens '
                         f'longer than the maximum length {max_len}; shorten the query or raise max_length')
    return pieces


class OneOf:
    """Argument rule: the value is one of ``choices``."""

    def __init__(self, *choices: Any) -> None:
        self.choices = choices

    def problem(self, value: Any) -> Optional[str]:  # noqa: D102
        return None if value in self.choices else f'must be one of {", ".join(repr(c) for c in self.choices)}'


class AtLeast:
    """Argument rule: a number ``>= minimum`` (and ``<= maximum`` when given; ``None`` allowed when ``optional``)."""

    def __init__(self, minimum: float, optional: bool = False, maximum: Optional[float] = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.optional = optional

    def problem(self, value: Any) -> Optional[str]:  # noqa: D102
        rule = f'>= {self.minimum}' if self.maximum is None else f'between {self.minimum} and {self.maximum}'
        rule += ' (or None)' if self.optional else ''
        if value is None:
            return None if self.optional else f'must be a number {rule}'
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            return f'must be a number {rule}'
        if value < self.minimum or (self.maximum is not None and value > self.maximum):
            return f'must be {rule}'
        return None


def check_arguments(owner: str, rules: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """Check constructor arguments against declarative ``rules`` (name -> :class:`OneOf` / :class:`AtLeast`).

    Raises:
        ValueError: naming the class, the argument, the rule and the value given.
    """
    for name, rule in rules.items():
        if name in values:
            problem = rule.problem(values[name])
            if problem:
                raise ValueError(f'{owner}: {name} {problem}, got {values[name]!r}')


class Reranker(pt.Transformer):
    """Base of every reranker: common arguments, validation, empty input, repr and efficiency stats.

    Subclasses implement :meth:`_rerank` over a validated, non-empty frame and return the frame with a
    ``score`` column; the base adds ranks.

    Pickling (``pipeline.parallel(n)`` with joblib or Ray): a reranker pickles through its model handle
    ``lm`` (:class:`~pyterrier_llmrank.models.LoadedModel`), never through the raw ``model``/``tokenizer``
    attributes: a model loaded by name travels as its load spec and is loaded once per worker process; a model
    given as an in-memory pair travels with its weights. Shared-prefix stores are recreated empty. The
    efficiency counters of a worker stay in the worker (see :class:`EfficiencyStats`).
    """

    label = 'Reranker'
    #: declarative checks of constructor arguments (see :func:`check_arguments`), merged along the class hierarchy
    ARGUMENTS: Dict[str, Any] = {'batch_size': AtLeast(1)}

    def __init__(self, *, text_field: str = 'text', batch_size: int = 16, verbose: bool = False) -> None:
        self.check_arguments(batch_size=batch_size)
        self.text_field = text_field
        self.batch_size = batch_size
        self.verbose = verbose
        self.stats = EfficiencyStats()

    def __getstate__(self) -> Dict[str, Any]:
        return state_without_weights(self.__dict__)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(restore_weights(dict(state)))

    @classmethod
    def check_arguments(cls, **values: Any) -> None:
        """Check constructor arguments against the ``ARGUMENTS`` rules of the class and its bases."""
        rules: Dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            rules.update(getattr(klass, 'ARGUMENTS', {}) or {})
        check_arguments(cls.__name__, rules, values)

    def _use_model(self, loader: Callable[..., Any], model: Any, **kwargs: Any) -> Any:
        """Load (or take) the model through ``loader`` (one of :mod:`pyterrier_llmrank.models`' loaders) and set
        ``lm`` (the :class:`~pyterrier_llmrank.models.LoadedModel`), ``model``, ``tokenizer`` and ``model_name``."""
        self.lm = loader(model, **kwargs)
        self.model, self.tokenizer = self.lm.model, self.lm.tokenizer
        self.model_name = self.lm.name
        return self.lm

    @property
    def schematic(self) -> Dict[str, str]:  # noqa: D102
        return {'label': self.label}

    def _repr_args(self) -> str:
        return ''

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self._repr_args()})'

    __str__ = __repr__

    def _extra_columns(self) -> List[str]:
        return []

    def _text_columns(self) -> List[str]:
        """The columns read as text: ``text_field`` and, when the reranker has one, ``title_field``."""
        cols = [self.text_field]
        title = getattr(self, 'title_field', None)
        if title:
            cols.append(title)
        return cols

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """Re-rank ``inp``: every input row once, with a new ``score`` and ``rank``; the other columns kept.

        Missing values: a missing ``qid`` or ``query`` raises a ``ValueError`` naming the column and the rows; a
        missing text (or title) is read as the empty string (see :func:`text_values`). Duplicate docnos within a
        query: each row is kept and scored on its own.
        """
        validate_rerank_input(inp, self.text_field, self._extra_columns())
        if len(inp) == 0:
            return empty_result(inp)
        inp = inp.reset_index(drop=True)
        require_values(inp, ['qid', 'query'], type(self).__name__)
        texts = self._text_columns()
        clean = text_values(inp, texts)
        out = self._rerank(clean)
        if clean is not inp:  # give back the input's own values of the text columns
            for column in texts:
                if column in inp.columns:
                    out[column] = inp[column].to_numpy()[out.index.to_numpy()]
        return pt.model.add_ranks(out.reset_index(drop=True))

    def _rerank(self, inp: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError

    # -- caching (see pyterrier_llmrank.caching) ----------------------------------------------------------------
    #: whether a document's score depends only on its query and itself, not on the other candidates: such
    #: rerankers are cached per (query, document), the others per query
    scores_documents_independently = False

    def cache_key(self) -> str:
        """The fingerprint of every setting that decides the scores (model and weights, tokenizer, prompts,
        templates, truncation, dtype, ...; see :mod:`pyterrier_llmrank.fingerprint`): the caches of
        :mod:`pyterrier_llmrank.caching` are keyed on it, so a changed setting never reuses stale scores."""
        return fingerprint(self)


#: Default padding budget of :func:`length_batches`: a batch takes no row that would make its padding tokens
#: exceed this fraction of its real tokens (measured in ``benchmarks/bench_pointwise.py``; see docs/efficiency.md).
MAX_PADDING = 0.1


def length_batches(order: Sequence[int], lengths: Sequence[int], batch_size: int,
                   max_padding: float = MAX_PADDING) -> List[np.ndarray]:
    """Cut ``order`` (positions sorted by descending ``lengths``) into consecutive batches.

    A batch holds at most ``batch_size`` rows, and takes the next (shorter) row only while the padding of the
    batch (every row padded to its first, longest row) stays within ``max_padding`` times its real tokens. A
    batch always holds at least one row. ``max_padding=float('inf')`` gives plain slices of ``batch_size``.

    Why: padding is work thrown away, and on a CPU a batch of many rows runs no faster per token than one row,
    so rows of very different lengths are better run apart; on an accelerator a full batch matters more, and
    a frame of many queries has enough rows of nearly the same length to fill batches within the budget.
    """
    order = np.asarray(order)
    lengths = np.asarray(lengths)
    batches: List[np.ndarray] = []
    start, n = 0, len(order)
    while start < n:
        width = int(lengths[order[start]])
        real = width
        end = start + 1
        while end < n and end - start < batch_size:
            grown = real + int(lengths[order[end]])
            if width * (end - start + 1) - grown > max_padding * grown:
                break
            real = grown
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


class PointwiseReranker(Reranker):
    """Base of rerankers that score each (query, document) pair on its own.

    Subclasses implement:

    * :meth:`_encode` -- one encoded item per row (anything; its length by :meth:`_length`), built once;
    * :meth:`_score_batch` -- a list of scores for a list of encoded items.

    The base sorts all pairs of the frame by length (longest first, so memory peaks at once) and scores them
    in batches of at most ``batch_size`` whose padding stays within ``max_padding`` of their real tokens
    (:func:`length_batches`). A pair's score does not depend on which pairs share its batch (the subclasses
    pad so that it cannot) beyond floating-point rounding (matrix kernels of other shapes sum in another
    order; the tests allow 1e-5).
    """

    scores_documents_independently = True
    #: padding budget of a batch (:func:`length_batches`); set on an instance to change it
    max_padding: float = MAX_PADDING

    def _encode(self, inp: pd.DataFrame) -> List[Any]:
        raise NotImplementedError

    def _length(self, item: Any) -> int:
        return len(item)

    def _score_batch(self, items: List[Any]) -> Sequence[float]:
        raise NotImplementedError

    def _rerank(self, inp: pd.DataFrame) -> pd.DataFrame:
        items = self._encode(inp)
        lengths = np.array([self._length(x) for x in items])
        order = np.argsort(-lengths, kind='stable')
        scores = np.zeros(len(items), dtype='float64')
        qids = inp['qid'].to_numpy()
        batches = length_batches(order, lengths, self.batch_size, self.max_padding)
        it: Iterable = batches
        if self.verbose:
            it = pt.tqdm(batches, desc=self.label, unit='batch')
        for batch in it:
            start = time.perf_counter()
            out = self._score_batch([items[i] for i in batch])
            scores[batch] = np.asarray(out, dtype='float64')
            self.stats.add_batch([qids[i] for i in batch], lengths[batch], int(lengths[batch].max()),
                                 time.perf_counter() - start)
        return inp.drop(columns=['score', 'rank'], errors='ignore').assign(score=scores)


def first_stage_order(df: pd.DataFrame) -> np.ndarray:
    """Positions of ``df``'s rows in first-stage order: by ``rank`` when present, else by descending ``score``,
    else the input order (stable)."""
    if 'rank' in df.columns:
        return np.argsort(df['rank'].to_numpy(), kind='stable')
    if 'score' in df.columns:
        return np.argsort(-df['score'].to_numpy(dtype='float64'), kind='stable')
    return np.arange(len(df))


@dataclass
class QueryCandidates:
    """One query's candidates, in first-stage order.

    Attributes:
        qid: the query id.
        query: the query text.
        rows: positions of the candidates in the (re-indexed) input frame, in first-stage order.
        texts: the candidates' texts (``text_field``), in the same order.
        docnos: their docnos (the row positions as strings when the frame has no ``docno``).
        frame: the whole input frame, for other columns (titles, images).
    """

    qid: Any
    query: str
    rows: np.ndarray
    texts: List[Any]
    docnos: List[str]
    frame: pd.DataFrame

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> List[Any]:
        """The values of column ``name`` for the candidates (``None`` each when the frame has no such column)."""
        if name not in self.frame.columns:
            return [None] * len(self.rows)
        return self.frame[name].to_numpy()[self.rows].tolist()


class QueryReranker(Reranker):
    """Base of rerankers that work a query at a time (listwise, setwise, pairwise, attention-based).

    The base groups the validated frame by ``qid`` (queries in input order), puts each query's candidates in
    first-stage order (:func:`first_stage_order`), shows a progress bar over queries when ``verbose``, and
    assembles the output: every input row once, with its score, rows of a query sorted by descending score and
    ties broken towards the better first-stage rank. Subclasses implement :meth:`_rerank_query` (the scores of
    one query's candidates, higher is better, in the order of ``q.rows``), or override :meth:`_rerank_queries`
    to work on several queries at once (e.g. to batch model calls across queries).
    """

    def query_groups(self, inp: pd.DataFrame) -> List[QueryCandidates]:
        """The queries of ``inp`` (re-indexed 0..n-1), each with its candidates in first-stage order."""
        out = []
        texts = inp[self.text_field].to_numpy()
        docnos = inp['docno'].astype(str).to_numpy() if 'docno' in inp.columns else None
        queries = inp['query'].to_numpy()
        for qid, idx in inp.groupby('qid', sort=False).indices.items():
            idx = np.asarray(idx)
            idx = idx[first_stage_order(inp.iloc[idx])]
            query = queries[idx[0]]
            out.append(QueryCandidates(qid=qid, query=query if isinstance(query, str) else '', rows=idx,
                                       texts=texts[idx].tolist(),
                                       docnos=docnos[idx].tolist() if docnos is not None else [str(r) for r in idx],
                                       frame=inp))
        return out

    def _rerank_query(self, q: QueryCandidates) -> Sequence[float]:
        raise NotImplementedError

    def _rerank_queries(self, queries: List[QueryCandidates]) -> List[Sequence[float]]:
        """Scores of every query's candidates (one sequence per query, aligned with its ``rows``); an override
        calls :meth:`query_finished` as each query's scores become final."""
        it: Iterable = queries
        if self.verbose:
            it = pt.tqdm(queries, desc=self.label, unit='query')
        out = []
        for q in it:
            out.append(self._rerank_query(q))
            self.query_finished(q, out[-1])
        return out

    # -- the per-query cache (pyterrier_llmrank.caching.QueryCache) ---------------------------------------------
    #: the per-query cache of the running ``transform`` (set by :class:`pyterrier_llmrank.caching.CachedQueries`)
    query_cache: Any = None

    def rerank_queries(self, queries: List[QueryCandidates]) -> List[Sequence[float]]:
        """Scores of every query's candidates; through :attr:`query_cache` when one is set (cached queries are
        read, only the others are computed)."""
        if self.query_cache is None:
            return self._rerank_queries(queries)
        return self.query_cache.rerank(self, queries, self._rerank_queries)

    def query_finished(self, q: QueryCandidates, scores: Sequence[float], trace: Sequence[Mapping[str, Any]] = ()) -> None:
        """Report that the scores of ``q`` are final (with the query's trace rows, if any): the per-query cache
        writes the query at once, so that an interrupted run keeps it."""
        if self.query_cache is not None:
            self.query_cache.finished(self, q, scores, trace)

    def _rerank(self, inp: pd.DataFrame) -> pd.DataFrame:
        queries = self.query_groups(inp)
        scores = np.zeros(len(inp), dtype='float64')
        rows: List[int] = []
        for q, s in zip(queries, self.rerank_queries(queries)):
            s = np.asarray(s, dtype='float64')
            if s.shape != (len(q.rows),):
                raise RuntimeError(f'{type(self).__name__} returned {s.shape} scores for {len(q.rows)} candidates')
            scores[q.rows] = s
            rows.extend(q.rows[np.argsort(-s, kind='stable')].tolist())
        out = inp.drop(columns=['score', 'rank'], errors='ignore').assign(score=scores)
        return out.iloc[rows]
