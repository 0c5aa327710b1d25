"""Fusion of several result lists into one: reciprocal rank fusion and linear fusion of normalised scores, as a
function (:func:`fuse`) and as transformers (:class:`Fusion` for any retrievers, :class:`Hybrid` for sparse + dense).

As in "From Retrieval to Generation: Comparing Different Approaches" (Abdallah, Mozafari, Piryani and Jatowt,
2025), BM25 and a bi-encoder each retrieve a list and the two lists are fused, before an LLM reranker:

.. code-block:: python

    import pyterrier_llmrank as llmrank
    from pyterrier_llmrank.dense import DenseRetriever
    from pyterrier_llmrank.fusion import Hybrid

    scifact = llmrank.datasets.load('beir-scifact')
    bm25 = scifact.bm25(num_results=100)
    dense = DenseRetriever(scifact, 'all-minilm-l6-v2', num_results=100)   # index built once, cached
    hybrid = Hybrid(bm25, dense, fusion='rrf')                              # or 'minmax', 'zscore'
    pipeline = hybrid % 20 >> scifact.text_loader() >> llmrank.UPR('smollm2-135m-instruct')

Reciprocal rank fusion reuses pyterrier-alpha's :func:`pyterrier_alpha.fusion.rr_fusion`.

Rules on the input lists, the same for every method:

* **qids** are matched by their text, so a list with ``int`` qids and one with ``str`` qids (e.g. a stored run,
  whose qids are strings, and a retriever that keeps the topics' ``int`` qids) fuse as the same queries; the output
  keeps the qid as the input has it (for :class:`Fusion`, as in its topics; for :func:`fuse`, as in the first list
  holding the query).
* **duplicates**: when a list returns a document twice for a query, only its best-scored copy counts (the first of
  equal copies), so a document is never fused twice from one list.
* **NaN scores** rank below every number (:func:`add_ranks`): a NaN-scored row takes the last ranks of its list in
  reciprocal rank fusion, and the score of a document its list did not return (the list's floor) in the linear
  fusions. The fused scores are numbers.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta

from pyterrier_llmrank.base import require_values

__all__ = ['FUSION_METHODS', 'add_ranks', 'normalise_scores', 'fuse', 'Fusion', 'Hybrid']

#: Fusion methods of :func:`fuse`: reciprocal rank fusion and linear interpolation of normalised scores.
FUSION_METHODS = ('rrf', 'minmax', 'zscore')

RESULT_COLUMNS = ['qid', 'query', 'docno', 'score', 'rank']


def add_ranks(res: pd.DataFrame) -> pd.DataFrame:
    """``res`` (a copy, in the same row order) with a 0-based ``rank`` per ``qid`` by decreasing ``score``, where a
    NaN score ranks below every number and ties keep the rows' order.

    Like ``pt.model.add_ranks``, which fails on NaN scores.
    """
    out = res.drop(columns=['rank'], errors='ignore')
    if len(out) == 0:
        return out.assign(rank=pd.Series(index=out.index, dtype='int64'))
    key = pd.Series(out['score'].to_numpy(dtype='float64'), index=out.index).fillna(-np.inf)
    ranks = key.groupby(out['qid'].to_numpy(), sort=False).rank(ascending=False, method='first')
    return out.assign(rank=(ranks - 1).astype('int64'))


def normalise_scores(res: pd.DataFrame, method: str) -> pd.Series:
    """Scores normalised per query: ``'minmax'`` maps to ``(s - min) / (max - min)`` (1 when all scores of the query
    are equal, e.g. a single document, as OpenSearch's min-max normaliser), ``'zscore'`` to ``(s - mean) / std``
    (population std; 0 when all are equal). NaN scores are left out of the statistics and stay NaN."""
    s = res['score'].astype('float64')
    g = s.groupby(res['qid'].to_numpy(), sort=False)
    if method == 'minmax':
        lo, hi = g.transform('min'), g.transform('max')
        out = ((s - lo) / (hi - lo).where(hi > lo, 1.0)).where(hi > lo, 1.0)
    elif method == 'zscore':
        mean, std = g.transform('mean'), g.transform(lambda x: x.std(ddof=0))
        out = ((s - mean) / std.where(std > 0, 1.0)).where(std > 0, 0.0)
    else:
        raise ValueError(f'unknown normalisation {method!r}; use "minmax" or "zscore"')
    return out.where(s.notna())


def _best_copies(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with one row per (qid, docno): the best-scored (NaN lowest; the first of equals), in frame order."""
    key = frame['score'].fillna(-np.inf)
    best = frame.assign(_key=key).sort_values('_key', ascending=False, kind='stable')
    kept = best.index[~best.duplicated(['qid', 'docno'])]
    return frame.loc[np.sort(kept.to_numpy())].reset_index(drop=True)


def _prepare(results: Sequence[pd.DataFrame]) -> tuple:
    """The lists with text qids, one query text per qid and no duplicates; and the qids' original forms."""
    frames: List[pd.DataFrame] = []
    forms: Dict[str, object] = {}
    for r in results:
        pta.validate.result_frame(r, extra_columns=['query', 'score'])
        f = r[['qid', 'query', 'docno', 'score']].reset_index(drop=True)
        text = f['qid'].astype(str)
        first = text.drop_duplicates()
        for t, q in zip(first, f['qid'][first.index]):
            forms.setdefault(t, q)
        frames.append(f.assign(qid=text, score=f['score'].astype('float64')))
    if frames:
        queries = pd.concat([f[['qid', 'query']] for f in frames]).drop_duplicates('qid').set_index('qid')['query']
        frames = [_best_copies(f.assign(query=f['qid'].map(queries))) for f in frames]
    return frames, forms


def fuse(results: Sequence[pd.DataFrame], method: str = 'rrf', *, k: int = 60,
         weights: Optional[Sequence[float]] = None, num_results: Optional[int] = 1000) -> pd.DataFrame:
    """Fuse result frames query by query.

    Args:
        results: result frames (``qid``, ``query``, ``docno``, ``score``); qids are matched by their text, a
            duplicated document counts with its best score, NaN scores rank last (see the module's rules); the
            output's ``query`` of a qid is the one of the first frame holding the qid.
        method: ``'rrf'``: reciprocal rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009),
            ``score(d) = sum over lists of 1 / (k + r(d))`` with 1-based ranks ``r`` (ranks from each list's scores);
            computed by pyterrier-alpha's ``rr_fusion``, whose ranks are 0-based, called with ``k + 1``.
            ``'minmax'`` or ``'zscore'``: ``score(d) = sum_i w_i * norm_i(d)`` with the list's scores normalised per
            query (:func:`normalise_scores`); a document that a list did not return (or returned with a NaN score)
            gets 0 from it under min-max (the bottom of the range) and the list's lowest z-score for the query under
            z-score; a list without the query adds nothing.
        k: the RRF constant.
        weights: one weight per list for the linear methods (default all 1; ``Hybrid`` uses ``alpha, 1 - alpha``).
        num_results: documents kept per query (``None``: all).

    Returns:
        ``qid`` (as in the first frame holding the query), ``query``, ``docno``, ``score``, ``rank``; ties broken by
        first appearance in the lists.
    """
    if not results:
        raise ValueError('fuse needs at least one result frame')
    if method not in FUSION_METHODS:
        raise ValueError(f'unknown fusion method {method!r}; use one of {FUSION_METHODS}')
    if method == 'rrf' and weights is not None:
        raise ValueError('weights apply to the linear fusions (minmax, zscore), not to rrf')
    if weights is not None and len(weights) != len(results):
        raise ValueError(f'{len(weights)} weights for {len(results)} result lists')
    frames, forms = _prepare(results)
    if sum(len(f) for f in frames) == 0:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                             zip(RESULT_COLUMNS, [object, object, object, 'float64', 'int64'])})
    out = _rrf(frames, k, num_results) if method == 'rrf' else \
        _linear(frames, method, [1.0] * len(frames) if weights is None else weights, num_results)
    return out.assign(qid=out['qid'].map(forms))[RESULT_COLUMNS]


def _rrf(frames: List[pd.DataFrame], k: int, num_results: Optional[int]) -> pd.DataFrame:
    # each list's ranks (NaN last) as its scores, so that rr_fusion's ranks are ours
    lists = [f.assign(score=-add_ranks(f)['rank'].to_numpy(dtype='float64')) for f in frames if len(f)]
    limit = num_results if num_results is not None else sum(len(f) for f in lists)
    out = pta.fusion.rr_fusion(*lists, k=k + 1, num_results=limit)
    return out[RESULT_COLUMNS].reset_index(drop=True)


def _linear(frames: List[pd.DataFrame], method: str, weights: Sequence[float],
            num_results: Optional[int]) -> pd.DataFrame:
    parts = []
    for i, (f, w) in enumerate(zip(frames, weights)):
        if not len(f):
            continue
        f = f.assign(norm=normalise_scores(f, method).to_numpy(), run=i, pos=np.arange(len(f)))
        parts.append((f, float(w)))
    union = pd.concat([f[['qid', 'query', 'docno', 'run', 'pos']] for f, _ in parts], ignore_index=True)
    union['order'] = union['run'] * (len(union) + 1) + union['pos']
    union = union.sort_values('order', kind='stable').drop_duplicates(['qid', 'docno'])
    union = union[['qid', 'query', 'docno', 'order']]
    score = np.zeros(len(union))
    for f, w in parts:
        floor = f.groupby('qid', sort=False)['norm'].min() if method == 'zscore' else \
            pd.Series(0.0, index=f['qid'].unique())
        merged = union[['qid', 'docno']].merge(f[['qid', 'docno', 'norm']], on=['qid', 'docno'], how='left')
        fill = merged['qid'].map(floor)                         # NaN where this list lacks the query
        val = merged['norm'].fillna(fill).fillna(0.0).to_numpy(dtype='float64')
        score += w * val
    out = union.assign(score=score).sort_values(['qid', 'score', 'order'], ascending=[True, False, True],
                                                kind='stable').drop(columns='order').reset_index(drop=True)
    out['rank'] = out.groupby('qid', sort=False).cumcount().astype('int64')
    if num_results is not None:
        out = out[out['rank'] < num_results].reset_index(drop=True)
    return out


def _query_columns(inp: pd.DataFrame) -> pd.DataFrame:
    """The query-level columns of ``inp`` (one row per qid), other than ``query`` and result columns."""
    drop = {'query', 'docno', 'docid', 'score', 'rank', 'text', 'query_vec', 'doc_vec'}
    cols = ['qid'] + [c for c in inp.columns if c not in drop and c != 'qid']
    return inp[cols].drop_duplicates('qid')


class Fusion(pt.Transformer):
    """Runs several retrievers on the same topics and fuses their lists with :func:`fuse`.

    Choose it to combine any retrievers (or stored runs) by rank or by normalised score; for the two-list
    sparse + dense case with a single weight, :class:`Hybrid`.

    Args:
        *transformers: retrievers (topics in, result frames out).
        method: ``'rrf'`` (default), ``'minmax'`` or ``'zscore'``.
        k: the RRF constant (60, as Cormack et al.).
        weights: one weight per retriever for the linear methods (default all 1).
        num_results: documents kept per query.

    The output carries the input's query-level columns (e.g. ``query_0``) besides ``qid``, ``query``, ``docno``,
    ``score`` and ``rank``; its ``qid`` is as in the input topics even when a retriever changes its type (a stored
    run gives ``str`` qids for ``int`` topics). Duplicates and NaN scores follow the rules of the module.
    """

    schematic = {'inner_pipelines_mode': 'combine', 'label': 'Fusion'}

    def __init__(self, *transformers: pt.Transformer, method: str = 'rrf', k: int = 60,
                 weights: Optional[Sequence[float]] = None, num_results: Optional[int] = 1000) -> None:
        if not transformers:
            raise ValueError('Fusion needs at least one transformer')
        if method not in FUSION_METHODS:
            raise ValueError(f'unknown fusion method {method!r}; use one of {FUSION_METHODS}')
        if weights is not None and method == 'rrf':
            raise ValueError('weights apply to the linear fusions (minmax, zscore), not to rrf')
        if weights is not None and len(weights) != len(transformers):
            raise ValueError(f'{len(weights)} weights for {len(transformers)} transformers')
        self.transformers = list(transformers)
        self.method = method
        self.k = k
        self.weights = None if weights is None else [float(w) for w in weights]
        self.num_results = num_results

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:  # noqa: D102
        pta.validate.query_frame(inp, extra_columns=['query'])
        require_values(inp, ['qid'], type(self).__name__)
        results = [t(inp) for t in self.transformers]
        out = fuse(results, self.method, k=self.k, weights=self.weights, num_results=self.num_results)
        topics = inp.drop_duplicates('qid')
        forms = dict(zip(topics['qid'].astype(str), topics['qid']))
        text = out['qid'].astype(str)
        out = out.assign(qid=text.map(forms).where(text.isin(list(forms)), out['qid']))
        extra = _query_columns(inp)
        if extra.shape[1] > 1:
            out = out.merge(extra, on='qid', how='left')
            out = out[[c for c in out.columns if c not in ('docno', 'score', 'rank')] + ['docno', 'score', 'rank']]
        return out

    def _args(self) -> str:
        args = f'method={self.method!r}'
        if self.method == 'rrf':
            args += f', k={self.k}'
        elif self.weights is not None:
            args += f', weights={self.weights}'
        return args

    def __repr__(self) -> str:
        return f'Fusion({", ".join(map(repr, self.transformers))}, {self._args()})'

    __str__ = __repr__


class Hybrid(Fusion):
    """Hybrid sparse + dense retrieval: ``sparse`` and ``dense`` each retrieve, and their lists are fused.

    From Abdallah et al., "From Retrieval to Generation: Comparing Different Approaches" (2025): BM25 and a dense
    bi-encoder fused before reranking and generation.

    Args:
        sparse: the sparse retriever (e.g. ``collection.bm25(num_results=100)``).
        dense: the dense retriever (e.g. :class:`pyterrier_llmrank.dense.DenseRetriever`).
        fusion: ``'rrf'`` (default), ``'minmax'`` or ``'zscore'`` (linear interpolation of normalised scores).
        alpha: weight of the sparse list in the linear fusions, ``alpha * sparse + (1 - alpha) * dense``.
        k: the RRF constant.
        num_results: documents kept per query.
    """

    def __init__(self, sparse: pt.Transformer, dense: pt.Transformer, *, fusion: str = 'rrf', alpha: float = 0.5,
                 k: int = 60, num_results: Optional[int] = 1000) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError('alpha must be in [0, 1]')
        super().__init__(sparse, dense, method=fusion, k=k,
                         weights=None if fusion == 'rrf' else [alpha, 1.0 - alpha], num_results=num_results)
        self.alpha = alpha
        self.schematic = {'inner_pipelines_mode': 'combine', 'label': f'Hybrid ({fusion})'}

    def __repr__(self) -> str:
        args = f'fusion={self.method!r}' + (f', k={self.k}' if self.method == 'rrf' else f', alpha={self.alpha}')
        return f'Hybrid({self.transformers[0]!r}, {self.transformers[1]!r}, {args})'

    __str__ = __repr__
