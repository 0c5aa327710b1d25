"""The collection interface: :class:`Collection`, whatever the source of its files.

A source (:class:`~pyterrier_llmrank.datasets.folder.FolderCollection`,
:class:`~pyterrier_llmrank.datasets.irds.IRDSCollection`) implements the reading methods; the shared behaviour
(texts by docno, stored runs, a text loader, a cached PISA BM25 first stage) is written once here.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import pandas as pd
import pyterrier as pt

from pyterrier_llmrank.datasets import pisa
from pyterrier_llmrank.datasets.errors import UnknownDocnoError, preview
from pyterrier_llmrank.datasets.transformers import StoredRun, TextLoader
from pyterrier_llmrank.folders import cache_dir

__all__ = ['Collection']


class Collection:
    """A test collection: topics, qrels, documents, stored runs and a PISA BM25 first stage.

    Use :func:`~pyterrier_llmrank.datasets.locate.load` to obtain one. Documents are read once, when first
    needed, and kept in memory.

    Attributes:
        name: A short name of the collection (``'vaswani'``, ``'beir-scifact/train'``,
            ``'irds:vaswani'``).
    """

    name: str

    def __init__(self, name: str):
        self.name = name
        self._pisa_index = None

    # -- to implement -----------------------------------------------------------------------

    def get_topics(self, variant: Optional[str] = None) -> pd.DataFrame:
        """The topics.

        Args:
            variant: Only for ``ir_datasets``: the query field to use (default ``text``/``query``).

        Returns:
            A frame with columns ``qid`` (str) and ``query``.
        """
        raise NotImplementedError

    def get_qrels(self, variant: Optional[str] = None) -> pd.DataFrame:
        """The relevance judgements.

        Args:
            variant: Only for ``ir_datasets``: the relevance field to use (default ``relevance``).

        Returns:
            A frame with columns ``qid`` (str), ``docno`` (str) and ``label`` (int).
        """
        raise NotImplementedError

    def get_corpus_iter(self, verbose: bool = False) -> Iterator[Dict[str, str]]:
        """Iterates over the documents.

        Args:
            verbose: Show a progress bar.

        Returns:
            An iterator of ``{'docno': str, 'text': str}`` dicts.
        """
        raise NotImplementedError

    def runs(self) -> List[str]:
        """The names of the stored first-stage runs available to :meth:`get_run`."""
        raise NotImplementedError

    def _load_run(self, name: str) -> pd.DataFrame:
        """The run ``name`` as a frame (qid, docno, score, rank, text) in ranking order, validated."""
        raise NotImplementedError

    def _lookup_texts(self, docnos: Iterable[str]) -> Dict[str, str]:
        """The texts of those of ``docnos`` present in the collection."""
        raise NotImplementedError

    def _index_key(self) -> Tuple[str, str]:
        """(readable name, fingerprint) identifying the documents, for the PISA cache folder."""
        raise NotImplementedError

    # -- shared behaviour -------------------------------------------------------------------

    def get_texts(self, docnos: Sequence[str]) -> List[str]:
        """The texts of ``docnos``, in order.

        Args:
            docnos: Document ids.

        Returns:
            One text per docno.

        Raises:
            UnknownDocnoError: If a docno has no text in the collection.
        """
        docnos = [str(d) for d in docnos]
        texts = self._lookup_texts(set(docnos))
        missing = [d for d in dict.fromkeys(docnos) if d not in texts]
        if missing:
            raise UnknownDocnoError(
                f'{len(missing)} docno(s) not in collection {self.name}: {preview(missing)}', missing)
        return [texts[d] for d in docnos]

    def get_run(self, name: str, num_results: Optional[int] = None) -> StoredRun:
        """A transformer returning a stored first-stage run for the topics it is given.

        Args:
            name: The run name (see :meth:`runs`), e.g. ``'bm25'``.
            num_results: Keep only the first ``num_results`` documents per topic (default all).

        Returns:
            A :class:`~pyterrier_llmrank.datasets.transformers.StoredRun` mapping a topics frame (``qid``,
            ``query``, any extra columns) to a result frame with ``docno``, ``score``, ``rank`` (0-based) and
            ``text``.

        Raises:
            DatasetFormatError: If the run is unknown, malformed, or names a docno without text.
        """
        run = self._load_run(name)
        return StoredRun(self, name, run, num_results=num_results)

    def text_loader(self, fields: Union[str, List[str]] = '*', *, verbose: bool = False) -> TextLoader:
        """A transformer adding the ``text`` column by ``docno`` (e.g. after PISA, which keeps no text).

        Follows PyTerrier's ``HasTextLoader`` protocol, so ``pt.text.get_text(collection)`` works too.

        Args:
            fields: ``'*'``, ``'text'`` or ``['text']``: the only field of these collections.
            verbose: Accepted for protocol compatibility; loading is in memory.

        Returns:
            A :class:`~pyterrier_llmrank.datasets.transformers.TextLoader`.
        """
        if fields != '*':
            requested = [fields] if isinstance(fields, str) else list(fields)
            if requested != ['text']:
                raise ValueError(f'collection {self.name} only provides the field "text", not {requested}')
        return TextLoader(self)

    def cache_path(self) -> Path:
        """The folder of this collection's PISA index: ``cache_dir()/pisa/<name>-<hash>``."""
        label, fingerprint = self._index_key()
        label = re.sub(r'[^A-Za-z0-9._-]+', '_', label).strip('_') or 'collection'
        return cache_dir() / 'pisa' / f'{label}-{fingerprint}'

    def pisa_index(self, threads: int = 1) -> Any:
        """The PISA index of the documents (porter2 stemming), built on first use and cached on disk.

        Built by :func:`~pyterrier_llmrank.datasets.pisa.build_index` (see there which documents are refused),
        atomically: an interrupted build is never reused.

        Args:
            threads: Threads for indexing and retrieval.

        Returns:
            A ``pyterrier_pisa.PisaIndex``.

        Raises:
            ImportError: If ``pyterrier-pisa`` is not installed (``pip install pyterrier-llmrank[pisa]``).
            DatasetFormatError: If a document cannot be indexed (a docno with whitespace, a text that is not
                a string), naming the docno.
        """
        path = self.cache_path()
        if (self._pisa_index is not None and Path(self._pisa_index.path) == path
                and pisa.is_index_built(path)):
            return self._pisa_index
        pisa.build_index(path, self.get_corpus_iter, self.name, threads=threads)
        self._pisa_index = pisa.open_index(path, threads=threads)
        return self._pisa_index

    def bm25(self, num_results: int = 1000, k1: float = 0.9, b: float = 0.4, threads: int = 1,
             verbose: bool = False, **kwargs: Any) -> pt.Transformer:
        """A PISA BM25 retriever over the collection (porter2 stemming, Terrier stopwords).

        The result frame has no ``text``: add it with :meth:`text_loader`, e.g.
        ``collection.bm25() % 100 >> collection.text_loader()``.

        Args:
            num_results: Documents per query.
            k1: BM25 k1.
            b: BM25 b.
            threads: Threads for indexing and retrieval.
            verbose: Show a progress bar while retrieving.
            **kwargs: Further arguments of ``PisaIndex.bm25`` (e.g. ``query_algorithm``).

        Returns:
            The ``PisaIndex(...).bm25(...)`` transformer.
        """
        index = self.pisa_index(threads=threads)
        return index.bm25(k1=k1, b=b, num_results=num_results, verbose=verbose, threads=threads, **kwargs)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.name!r})'
