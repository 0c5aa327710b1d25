"""PISA BM25 indexes of collections, built once into the cache and reused.

:func:`build_index` builds the index of a collection's documents with ``pyterrier_pisa`` (porter2 stemming,
Terrier stopwords) through :func:`pyterrier_llmrank.folders.build_folder`, so an interrupted or concurrent build
never leaves a folder that looks finished. A build is refused (and nothing is kept) when

* a docno is empty or contains whitespace (PISA's indexer writes ``docno text`` lines, so it would be split);
* a document's ``text`` is not a string: ``None``, ``NaN`` or a number raise
  :class:`~pyterrier_llmrank.datasets.errors.DatasetFormatError` naming the docno. An empty string is a
  valid (empty) document: a missing text is an error, never silently indexed as empty;
* fewer documents reached the index than the collection yielded.

Used by :meth:`~pyterrier_llmrank.datasets.core.Collection.pisa_index` and
:meth:`~pyterrier_llmrank.datasets.core.Collection.bm25`; see ``terrier-org/pyterrier-pisa``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, Optional

from pyterrier_llmrank.datasets.errors import DatasetFormatError
from pyterrier_llmrank.folders import build_folder, is_built

__all__ = ['MARKER', 'index_class', 'is_index_built', 'open_index', 'build_index', 'IndexFeed']

MARKER = 'pt_meta.json'
"""The file ``pyterrier_pisa`` writes last in a finished index."""

INDEX_OPTIONS = {'text_field': 'text', 'stemmer': 'porter2', 'stops': 'terrier'}
"""The ``PisaIndex`` options of every collection index."""


def index_class() -> Any:
    """``pyterrier_pisa.PisaIndex``.

    Raises:
        ImportError: If ``pyterrier-pisa`` is not installed, saying how to install it.
    """
    try:
        from pyterrier_pisa import PisaIndex
    except ImportError as e:
        raise ImportError('BM25 needs pyterrier-pisa: pip install "pyterrier-llmrank[pisa]" '
                          '(or pip install pyterrier-pisa)') from e
    return PisaIndex


def is_index_built(path: Path) -> bool:
    """Whether ``path`` holds a finished index."""
    return is_built(path, MARKER)


def open_index(path: Path, threads: int = 1) -> Any:
    """The ``PisaIndex`` at ``path`` with the collection index options."""
    return index_class()(str(path), threads=threads, **INDEX_OPTIONS)


class IndexFeed:
    """Feeds documents to PISA's indexer, checking them and recording an error instead of losing it.

    ``pyterrier_pisa`` reads the documents in a thread: an exception there only ends the input early, and PISA
    would then mark a partial index as finished. So the feed keeps the error (``error``), counts the documents
    (``count``) and says whether it reached the end (``done``); :func:`build_index` re-raises the error.
    """

    def __init__(self, docs: Iterable[Dict[str, Any]], name: str):
        """
        Args:
            docs: The documents, ``{'docno': str, 'text': str}`` dicts.
            name: The collection name, for the messages.
        """
        self.docs, self.name = docs, name
        self.count, self.done = 0, False
        self.error: Optional[BaseException] = None

    def check(self, doc: Dict[str, Any]) -> None:
        """Raises :class:`DatasetFormatError` naming the docno if PISA cannot index ``doc`` faithfully."""
        docno = doc.get('docno')
        if not isinstance(docno, str) or not docno or any(c.isspace() for c in docno):
            raise DatasetFormatError(f'collection {self.name}: docno {docno!r} is empty or contains whitespace, '
                                     f'which PISA cannot index')
        text = doc.get('text')
        if not isinstance(text, str):
            raise DatasetFormatError(f'collection {self.name}: document {docno!r} has no text string '
                                     f'(text is {text!r}); every document needs a text ("" for an empty one) '
                                     f'to be indexed with PISA')

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        try:
            for doc in self.docs:
                self.check(doc)
                self.count += 1
                yield doc
        except Exception as e:  # re-raised by build_index once PISA has stopped
            self.error = e
            return
        self.done = True


def build_index(path: Path, corpus: Callable[[], Iterable[Dict[str, Any]]], name: str, threads: int = 1) -> Path:
    """Builds the PISA index of ``corpus()`` at ``path`` unless it is already built; returns ``path``.

    Args:
        path: The index folder (see :meth:`~pyterrier_llmrank.datasets.core.Collection.cache_path`).
        corpus: Returns the documents; called only when the index must be built.
        name: The collection name, for the messages.
        threads: Indexing threads.

    Raises:
        DatasetFormatError: If a document cannot be indexed (see the module documentation).
        RuntimeError: If PISA did not index every document.
        ImportError: If ``pyterrier-pisa`` is not installed.
    """
    PisaIndex = index_class()

    def write(tmp: Path) -> None:
        feed = IndexFeed(corpus(), name)
        try:
            PisaIndex(str(tmp), threads=threads, **INDEX_OPTIONS).index(iter(feed))
        except Exception:  # e.g. PISA finding no first document after the feed stopped on an error
            if feed.error is not None:
                raise feed.error from None
            raise
        if feed.error is not None:
            raise feed.error
        if not feed.done or not is_index_built(tmp) or PisaIndex(str(tmp)).num_docs() != feed.count:
            raise RuntimeError(f'PISA indexing of {name} did not complete in {tmp}')

    return build_folder(path, write, MARKER, create=False)
