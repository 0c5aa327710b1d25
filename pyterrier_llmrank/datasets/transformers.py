"""The transformers a collection hands out: :class:`TextLoader` (texts by docno) and :class:`StoredRun`.

Both are obtained from a :class:`~pyterrier_llmrank.datasets.core.Collection`
(``collection.text_loader()``, ``collection.get_run(name)``) rather than built directly.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Optional

import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta

from pyterrier_llmrank.datasets.errors import preview

if TYPE_CHECKING:  # pragma: no cover
    from pyterrier_llmrank.datasets.core import Collection

__all__ = ['TextLoader', 'StoredRun', 'rank_run']


def rank_run(run: pd.DataFrame) -> pd.DataFrame:
    """Sorts a run (qid, docno, score, in file order) by qid (first appearance) then descending score.

    Ties keep their file order. Adds a 0-based ``rank``: the form :class:`StoredRun` serves.
    """
    run = run.reset_index(drop=True)
    run['_qorder'] = pd.factorize(run['qid'])[0]
    run['_pos'] = range(len(run))
    run = run.sort_values(['_qorder', 'score', '_pos'], ascending=[True, False, True], kind='stable')
    run = run.drop(columns=['_qorder', '_pos']).reset_index(drop=True)
    run['rank'] = run.groupby('qid', sort=False).cumcount().astype('int64')
    return run


class TextLoader(pt.Transformer):
    """Adds the ``text`` of each ``docno`` from a collection, keeping every other column.

    Raises :class:`~pyterrier_llmrank.datasets.errors.UnknownDocnoError` naming the docnos without text
    (rows are never dropped).
    """

    schematic = {'label': 'TextLoader'}

    def __init__(self, collection: 'Collection'):
        """
        Args:
            collection: The collection to read texts from.
        """
        self.collection = collection

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """Adds ``text`` to a frame with a ``docno`` column.

        Args:
            inp: A frame with ``docno`` (typically a result frame).

        Returns:
            The same rows and columns (an existing ``text`` is replaced) plus ``text``.
        """
        pta.validate.columns(inp, includes=['docno'])
        texts = self.collection.get_texts(inp['docno'].tolist()) if len(inp) else []
        out = inp.drop(columns=['text'], errors='ignore').copy()
        out['text'] = pd.Series(texts, index=out.index, dtype=object)
        return out

    def fuse_rank_cutoff(self, k: int) -> pt.Transformer:
        """Moves a rank cutoff before the loader, so fewer texts are loaded."""
        return pt.RankCutoff(k) >> self

    def __repr__(self) -> str:
        return f'TextLoader({self.collection!r})'


class StoredRun(pt.Transformer):
    """A stored first-stage run: returns its ranking for each topic of the input frame.

    Output: the input columns (``qid``, ``query`` and any extra ones), then ``docno``, ``score``,
    ``rank`` (0-based, by descending score, ties in file order) and ``text``. Topics absent from
    the run get no rows (a warning says how many).
    """

    schematic = {'label': 'StoredRun'}

    def __init__(self, collection: 'Collection', name: str, run: pd.DataFrame, num_results: Optional[int] = None):
        """
        Args:
            collection: The collection the run belongs to (for the texts).
            name: The run name.
            run: The run: columns ``qid``, ``docno``, ``score``, ``rank`` and ``text``, ranked (:func:`rank_run`).
            num_results: Keep the first ``num_results`` documents per topic (default all).
        """
        self.collection = collection
        self.name = name
        self.run = run
        self.num_results = num_results

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """Returns the stored results of the topics in ``inp``.

        Args:
            inp: A query frame (``qid``, ``query``, extra columns kept).

        Returns:
            A result frame, topics in input order, documents in ranking order.
        """
        pta.validate.query_frame(inp, extra_columns=['query'])
        run = self.run
        if self.num_results is not None:
            run = run[run['rank'] < self.num_results]
        topics = inp.drop(columns=[c for c in ('score', 'rank', 'text') if c in inp.columns]).reset_index(drop=True)
        given = topics['qid']  # matched by their text, given back in the input's own form (int qids stay ints)
        topics = topics.assign(qid=given.astype(str), _given_qid=given)
        out = topics.merge(run, on='qid', how='inner', sort=False)
        out = out.assign(qid=out.pop('_given_qid'))
        absent = sorted(set(topics['qid']) - set(run['qid']))
        if absent:
            warnings.warn(f'run {self.name!r} of {self.collection.name} has no results for '
                          f'{len(absent)} topic(s): {preview(absent)}')
        return out.reset_index(drop=True)

    def fuse_rank_cutoff(self, k: int) -> Optional['StoredRun']:
        """Applies a rank cutoff ``% k`` directly."""
        if self.num_results is not None and self.num_results <= k:
            return self
        return StoredRun(self.collection, self.name, self.run, num_results=k)

    def __repr__(self) -> str:
        cut = f', num_results={self.num_results}' if self.num_results is not None else ''
        return f'StoredRun({self.collection.name!r}, {self.name!r}{cut})'
