"""Hybrid sparse + dense first-stage retrieval: a cached dense index over a collection and rank/score fusion.

As in "From Retrieval to Generation: Comparing Different Approaches" (Abdallah, Mozafari, Piryani and Jatowt,
2025), BM25 and a bi-encoder each retrieve a list and the two lists are fused, before an LLM reranker:

.. code-block:: python

    import pyterrier_llmrank as llmrank
    from pyterrier_llmrank.hybrid import DenseRetriever, Hybrid

    scifact = llmrank.datasets.load('beir-scifact')
    bm25 = scifact.bm25(num_results=100)
    dense = DenseRetriever(scifact, 'all-minilm-l6-v2', num_results=100)   # index built once, cached
    hybrid = Hybrid(bm25, dense, fusion='rrf')                              # or 'minmax', 'zscore'
    pipeline = hybrid % 20 >> scifact.text_loader() >> llmrank.UPR('smollm2-135m-instruct')

Dense retrieval uses `pyterrier-dr <https://github.com/terrierteam/pyterrier_dr>`_: a sentence-transformers
bi-encoder (:class:`pyterrier_dr.SBertBiEncoder`) encodes the collection once into a
:class:`pyterrier_dr.FlexIndex` under ``cache_dir()/dense/<collection>/<model>``, searched exhaustively with NumPy.
Reciprocal rank fusion reuses pyterrier-alpha's :func:`pyterrier_alpha.fusion.rr_fusion`.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta

from pyterrier_llmrank import models
from pyterrier_llmrank.base import EfficiencyStats
from pyterrier_llmrank.dense_models import MINILM_SHORT_NAME, minilm_path

__all__ = ['DENSE_SHORT_NAMES', 'bi_encoder', 'dense_index', 'dense_index_path', 'DenseRetriever', 'fuse',
           'normalise_scores', 'Fusion', 'Hybrid', 'FUSION_METHODS']

#: Short names of bi-encoders usable offline, mapped to a function returning their local folder.
DENSE_SHORT_NAMES = {MINILM_SHORT_NAME: minilm_path}

#: Fusion methods of :func:`fuse`: reciprocal rank fusion and linear interpolation of normalised scores.
FUSION_METHODS = ('rrf', 'minmax', 'zscore')

RESULT_COLUMNS = ['qid', 'query', 'docno', 'score', 'rank']


# ---------------------------------------------------------------------------------------------------------------
# dense retrieval

def _model_path(model: Union[str, os.PathLike]) -> str:
    name = str(model)
    fn = DENSE_SHORT_NAMES.get(name.lower())
    return fn() if fn is not None else name


def bi_encoder(model: Any = MINILM_SHORT_NAME, *, batch_size: int = 32, device: Any = 'auto',
               verbose: bool = False) -> Any:
    """A pyterrier-dr bi-encoder.

    Args:
        model: a :class:`pyterrier_dr.BiEncoder` (returned as is), the short name ``'all-minilm-l6-v2'`` (offline), or
            any sentence-transformers hub name or local folder (loaded with :class:`pyterrier_dr.SBertBiEncoder`).
        batch_size: texts per encoder call.
        device: ``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda:0'``...
        verbose: progress bars while encoding.
    """
    import pyterrier_dr
    if isinstance(model, pyterrier_dr.BiEncoder):
        return model
    dev = models.resolve_device(device)
    return pyterrier_dr.SBertBiEncoder(_model_path(model), batch_size=batch_size, verbose=verbose, device=str(dev))


def _model_label(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        name = str(model)
        if name.lower() in DENSE_SHORT_NAMES:
            return name.lower()
        key = name
    else:
        name = getattr(model, 'model_name', None) or type(model).__name__
        key = repr(model)
    slug = re.sub(r'[^A-Za-z0-9._-]+', '_', str(name).rstrip('/').split('/')[-1]).strip('_') or 'model'
    return f'{slug}-{hashlib.sha256(str(key).encode()).hexdigest()[:8]}'


def dense_index_path(collection: Any, model: Any = MINILM_SHORT_NAME) -> Path:
    """The cache folder of the dense index of ``collection`` under ``model``:
    ``cache_dir()/dense/<collection>/<model>``.

    ``collection`` is a :class:`~pyterrier_llmrank.datasets.Collection` (or a name/path for
    :func:`~pyterrier_llmrank.datasets.load`); the collection part of the path is the one its PISA index uses, so it
    changes when the documents file changes.
    """
    from pyterrier_llmrank import datasets
    collection = datasets.load(collection)
    return models.cache_dir() / 'dense' / collection.cache_path().name / _model_label(model)


def dense_index(collection: Any, model: Any = MINILM_SHORT_NAME, *, batch_size: int = 32, device: Any = 'auto',
                verbose: bool = False) -> Any:
    """The :class:`pyterrier_dr.FlexIndex` of ``collection`` encoded by ``model``, built on first use and cached.

    The documents are encoded in a temporary folder next to :func:`dense_index_path`, which is renamed into place
    only when every document is in, so an interrupted build is never reused. The similarity is the encoder's
    (dot product for MiniLM, whose embeddings are unit-normalised, i.e. cosine).

    Args:
        collection: a collection or a name/path for :func:`pyterrier_llmrank.datasets.load`.
        model: see :func:`bi_encoder`.
        batch_size: documents per encoder call while building.
        device: see :func:`bi_encoder`.
        verbose: progress bars while building.
    """
    import pyterrier_dr
    from pyterrier_llmrank import datasets
    collection = datasets.load(collection)
    path = dense_index_path(collection, model)
    if (path / 'pt_meta.json').exists():
        return pyterrier_dr.FlexIndex(str(path), verbose=False)
    encoder = bi_encoder(model, batch_size=batch_size, device=device, verbose=verbose)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f'.{path.name}.tmp-*'):
        m = re.match(r'.*\.tmp-(\d+)-[0-9a-f]+$', stale.name)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = path.parent / f'.{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    try:
        index = pyterrier_dr.FlexIndex(str(tmp), sim_fn=encoder.sim_fn, verbose=verbose)
        count = 0

        def docs():
            nonlocal count
            for d in collection.get_corpus_iter():
                count += 1
                yield {'docno': d['docno'], 'text': d['text']}

        (encoder.doc_encoder(verbose=False) >> index.indexer()).index(docs())
        if len(pyterrier_dr.FlexIndex(str(tmp))) != count:
            raise RuntimeError(f'dense indexing of {collection.name} did not complete in {tmp}')
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / 'pt_meta.json').exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return pyterrier_dr.FlexIndex(str(path), verbose=False)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DenseRetriever(pt.Transformer):
    """Dense first-stage retrieval: encode the query with a bi-encoder, exhaustive dot-product search of the
    collection's cached :func:`dense_index` (pyterrier-dr's NumPy retriever).

    Args:
        collection: a collection or a name/path for :func:`pyterrier_llmrank.datasets.load`.
        model: see :func:`bi_encoder` (default: the offline all-MiniLM-L6-v2).
        num_results: documents per query.
        batch_size: texts per encoder call.
        device: see :func:`bi_encoder`.
        verbose: progress bars.

    The output has the input's columns, then ``docno``, ``score`` (the similarity) and ``rank``; like pyterrier-pisa's
    BM25 it has no ``text`` (add it with ``collection.text_loader()``). ``stats`` counts the query encodings
    (``model_calls``, ``sequences``, ``seconds``; search time is included in ``seconds``).
    """

    def __init__(self, collection: Any, model: Any = MINILM_SHORT_NAME, *, num_results: int = 1000,
                 batch_size: int = 32, device: Any = 'auto', verbose: bool = False) -> None:
        from pyterrier_llmrank import datasets
        if num_results < 1:
            raise ValueError('num_results must be >= 1')
        self.collection = datasets.load(collection)
        self.model = model
        self.num_results = num_results
        self.batch_size = batch_size
        self.device = device
        self.verbose = verbose
        self.stats = EfficiencyStats()
        self._encoder: Any = None
        self._index: Any = None

    @property
    def encoder(self) -> Any:
        """The pyterrier-dr bi-encoder (loaded on first use)."""
        if self._encoder is None:
            self._encoder = bi_encoder(self.model, batch_size=self.batch_size, device=self.device, verbose=False)
        return self._encoder

    @property
    def index(self) -> Any:
        """The collection's :class:`pyterrier_dr.FlexIndex` (built on first use, then read from the cache)."""
        if self._index is None:
            self._index = dense_index(self.collection, self.model, batch_size=self.batch_size, device=self.device,
                                      verbose=self.verbose)
        return self._index

    def fuse_rank_cutoff(self, k: int) -> Optional['DenseRetriever']:  # noqa: D102
        if k >= self.num_results:
            return None
        out = DenseRetriever(self.collection, self.model, num_results=k, batch_size=self.batch_size,
                             device=self.device, verbose=self.verbose)
        out._encoder, out._index, out.stats = self._encoder, self._index, self.stats
        return out

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:  # noqa: D102
        pta.validate.query_frame(inp, extra_columns=['query'])
        if len(inp) == 0:
            return inp.assign(docno=pd.Series(dtype=object), score=pd.Series(dtype='float64'),
                              rank=pd.Series(dtype='int64'))
        inp = inp.reset_index(drop=True)
        index = self.index
        queries = inp['query'].astype(str).tolist()
        start = time.perf_counter()
        vecs = self.encoder.encode_queries(queries, batch_size=self.batch_size)
        res = index.np_retriever(num_results=self.num_results, drop_query_vec=True)(inp.assign(query_vec=list(vecs)))
        seconds = time.perf_counter() - start
        n = len(inp)
        calls = -(-n // self.batch_size)
        for qid in inp['qid']:
            self.stats.add(qid, model_calls=calls / n, sequences=1, seconds=seconds / n)
        res = res.drop(columns=['docid'], errors='ignore')
        res['docno'] = res['docno'].astype(str)
        return res

    def __repr__(self) -> str:
        model = self.model if isinstance(self.model, (str, os.PathLike)) else repr(self.model)
        return f'DenseRetriever({self.collection.name!r}, {str(model)!r}, num_results={self.num_results})'

    __str__ = __repr__


# ---------------------------------------------------------------------------------------------------------------
# fusion

def normalise_scores(res: pd.DataFrame, method: str) -> pd.Series:
    """Scores normalised per query: ``'minmax'`` maps to ``(s - min) / (max - min)`` (1 when all scores of the query
    are equal, e.g. a single document, as OpenSearch's min-max normaliser), ``'zscore'`` to ``(s - mean) / std``
    (population std; 0 when all are equal)."""
    g = res.groupby('qid', sort=False)['score']
    s = res['score'].astype('float64')
    if method == 'minmax':
        lo, hi = g.transform('min').astype('float64'), g.transform('max').astype('float64')
        rng = (hi - lo).where(hi > lo, 1.0)
        return ((s - lo) / rng).where(hi > lo, 1.0)
    if method == 'zscore':
        mean, std = g.transform('mean').astype('float64'), g.transform(lambda x: x.std(ddof=0)).astype('float64')
        return ((s - mean) / std.where(std > 0, 1.0)).where(std > 0, 0.0)
    raise ValueError(f'unknown normalisation {method!r}; use "minmax" or "zscore"')


def fuse(results: Sequence[pd.DataFrame], method: str = 'rrf', *, k: int = 60,
         weights: Optional[Sequence[float]] = None, num_results: Optional[int] = 1000) -> pd.DataFrame:
    """Fuse result frames query by query.

    Args:
        results: result frames (``qid``, ``query``, ``docno``, ``score``); the ``query`` of a qid must be the same in
            every frame.
        method: ``'rrf'``: reciprocal rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009),
            ``score(d) = sum over lists of 1 / (k + r(d))`` with 1-based ranks ``r`` (ranks from each list's scores);
            computed by pyterrier-alpha's ``rr_fusion``, whose ranks are 0-based, called with ``k + 1``.
            ``'minmax'`` or ``'zscore'``: ``score(d) = sum_i w_i * norm_i(d)`` with the list's scores normalised per
            query (:func:`normalise_scores`); a document that a list did not return gets 0 from it under min-max (the
            bottom of the range) and the list's lowest z-score for the query under z-score; a list without the query
            adds nothing.
        k: the RRF constant.
        weights: one weight per list for the linear methods (default all 1; ``Hybrid`` uses ``alpha, 1 - alpha``).
        num_results: documents kept per query (``None``: all).

    Returns:
        ``qid``, ``query``, ``docno``, ``score``, ``rank``; ties broken by first appearance in the lists.
    """
    if not results:
        raise ValueError('fuse needs at least one result frame')
    if method not in FUSION_METHODS:
        raise ValueError(f'unknown fusion method {method!r}; use one of {FUSION_METHODS}')
    frames = []
    for r in results:
        pta.validate.result_frame(r, extra_columns=['query', 'score'])
        frames.append(r[['qid', 'query', 'docno', 'score']].copy())
    if sum(len(f) for f in frames) == 0:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                             zip(RESULT_COLUMNS, [object, object, object, 'float64', 'int64'])})
    if method == 'rrf':
        if weights is not None:
            raise ValueError('weights apply to the linear fusions (minmax, zscore), not to rrf')
        nonempty = [f for f in frames if len(f)]
        out = pta.fusion.rr_fusion(*nonempty, k=k + 1, num_results=num_results if num_results is not None
                                   else max(len(f) for f in nonempty) * len(nonempty))
        out = out[RESULT_COLUMNS].reset_index(drop=True)
        return out
    if weights is None:
        weights = [1.0] * len(frames)
    if len(weights) != len(frames):
        raise ValueError(f'{len(weights)} weights for {len(frames)} result lists')
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
    return out[RESULT_COLUMNS]


def _query_columns(inp: pd.DataFrame) -> pd.DataFrame:
    """The query-level columns of ``inp`` (one row per qid), other than ``query`` and result columns."""
    drop = {'query', 'docno', 'docid', 'score', 'rank', 'text', 'query_vec', 'doc_vec'}
    cols = ['qid'] + [c for c in inp.columns if c not in drop and c != 'qid']
    return inp[cols].drop_duplicates('qid')


class Fusion(pt.Transformer):
    """Runs several retrievers on the same topics and fuses their lists with :func:`fuse`.

    Args:
        *transformers: retrievers (topics in, result frames out).
        method: ``'rrf'`` (default), ``'minmax'`` or ``'zscore'``.
        k: the RRF constant (60, as Cormack et al.).
        weights: one weight per retriever for the linear methods (default all 1).
        num_results: documents kept per query.

    The output carries the input's query-level columns (e.g. ``query_0``) besides ``qid``, ``query``, ``docno``,
    ``score`` and ``rank``.
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
        results = [t(inp) for t in self.transformers]
        out = fuse(results, self.method, k=self.k, weights=self.weights, num_results=self.num_results)
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
        dense: the dense retriever (e.g. :class:`DenseRetriever`).
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
