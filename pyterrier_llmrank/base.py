"""What every reranker of the toolkit shares: input validation, empty frames, length-sorted batching,
efficiency accounting and truncation that never cuts a template's instruction."""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta

__all__ = ['EfficiencyStats', 'Reranker', 'PointwiseReranker', 'fit_pieces', 'validate_rerank_input', 'empty_result']


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


def empty_result(inp: pd.DataFrame) -> pd.DataFrame:
    """The output of a reranker for an empty input: the input's columns plus ``score`` and ``rank``."""
    out = inp.drop(columns=['score', 'rank'], errors='ignore').copy()
    out['score'] = pd.Series(dtype='float64')
    out['rank'] = pd.Series(dtype='int64')
    return out


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


class Reranker(pt.Transformer):
    """Base of every reranker: common arguments, validation, empty input, repr and efficiency stats.

    Subclasses implement :meth:`_rerank` over a validated, non-empty frame and return the frame with a
    ``score`` column; the base adds ranks.
    """

    label = 'Reranker'

    def __init__(self, *, text_field: str = 'text', batch_size: int = 16, verbose: bool = False) -> None:
        if batch_size < 1:
            raise ValueError('batch_size must be >= 1')
        self.text_field = text_field
        self.batch_size = batch_size
        self.verbose = verbose
        self.stats = EfficiencyStats()

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

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:  # noqa: D102
        validate_rerank_input(inp, self.text_field, self._extra_columns())
        if len(inp) == 0:
            return empty_result(inp)
        out = self._rerank(inp.reset_index(drop=True))
        return pt.model.add_ranks(out)

    def _rerank(self, inp: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError


class PointwiseReranker(Reranker):
    """Base of rerankers that score each (query, document) pair on its own.

    Subclasses implement:

    * :meth:`_encode` -- one encoded item per row (anything; its length by :meth:`_length`), built once;
    * :meth:`_score_batch` -- a list of scores for a list of encoded items.

    The base sorts all pairs of the frame by length (longest first, so memory peaks at once) and scores them
    in batches of ``batch_size``: padding is limited, and a pair's score does not depend on which pairs share
    its batch (the subclasses pad so that it cannot).
    """

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
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
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
