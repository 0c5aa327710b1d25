"""Test collections for evaluating rerankers: offline folders and ``ir_datasets``.

:func:`load` returns a collection object with the same interface whatever its source:

* a folder in the offline format of ``../shared/data`` (see :func:`find_shared`)::

      docs.jsonl.gz   one JSON object a line: {"docno": str, "text": str}
      topics.tsv      qid<TAB>query, no header
      qrels.txt       TREC qrels: qid 0 docno rel
      runs/*.run      TREC runs: qid Q0 docno rank score tag (optional)

  A sub-split folder (e.g. ``beir-scifact/train``) may hold only ``topics.tsv`` and
  ``qrels.txt``: its documents are then read from the parent folder's ``docs.jsonl.gz``;
* an ``ir_datasets`` id prefixed with ``irds:`` (e.g. ``irds:msmarco-passage/trec-dl-2019/judged``).

Example::

    import pyterrier as pt
    from pyterrier_llmrank import datasets

    dl19 = datasets.load('msmarco-passage-trec-dl-2019')   # looked up in ../shared/data
    pipeline = dl19.get_run('bm25')                        # stored first stage, with text
    pt.Experiment([pipeline], dl19.get_topics(), dl19.get_qrels(), ['nDCG@10'])

    vaswani = datasets.load('vaswani')
    bm25 = vaswani.bm25() % 100 >> vaswani.text_loader()  # PISA BM25, index cached on disk

Every malformed input raises :class:`DatasetFormatError` naming the file, the line number and
the line; nothing is silently dropped.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta

__all__ = [
    'load', 'find_shared', 'shared_data_dirs', 'SHARED_DATA', 'DATA_ENV',
    'Collection', 'FolderCollection', 'IRDSCollection', 'StoredRun', 'TextLoader',
    'DatasetFormatError', 'UnknownDocnoError',
]

DATA_ENV = 'PYTERRIER_LLMRANK_DATA'
"""Environment variable naming a folder of offline collections (overrides ``../shared/data``)."""

DOCS_FILE = 'docs.jsonl.gz'
TOPICS_FILE = 'topics.tsv'
QRELS_FILE = 'qrels.txt'
RUNS_DIR = 'runs'
RUN_SUFFIX = '.run'

_FORMAT_HELP = (f'the folder format needs {DOCS_FILE} (or in the parent folder for a sub-split such as '
                f'beir-scifact/train), {TOPICS_FILE} (qid<TAB>query), {QRELS_FILE} (qid 0 docno rel) '
                f'and optionally {RUNS_DIR}/<name>{RUN_SUFFIX} (qid Q0 docno rank score tag)')

_REPO = Path(__file__).resolve().parent.parent


class DatasetFormatError(ValueError):
    """A collection is missing, incomplete or malformed (the message names the file and line)."""


class UnknownDocnoError(DatasetFormatError, LookupError):
    """A docno has no text in the collection.

    Attributes:
        docnos: The docnos that were not found (at most the first few are named in the message).
    """

    def __init__(self, message: str, docnos: Sequence[str] = ()):
        super().__init__(message)
        self.docnos = list(docnos)


# ---------------------------------------------------------------------------------------------
# locating the shared offline collections


def shared_data_dirs() -> List[Path]:
    """The folders searched for offline collections by bare name, in order.

    These are ``$PYTERRIER_LLMRANK_DATA`` (if set), ``<d>/../shared/data`` for the current working
    directory and each of its parents ``<d>``, and ``../shared/data`` next to this repository.

    Returns:
        The candidate folders (existing or not), without duplicates.
    """
    candidates: List[Path] = []
    env = os.environ.get(DATA_ENV)
    if env:
        candidates.append(Path(env).expanduser())
    cwd = Path.cwd().resolve()
    for d in (cwd, *cwd.parents):
        if d.parent == d:  # the root's ../shared/data is itself
            break
        candidates.append(d.parent / 'shared' / 'data')
    candidates.append(_REPO.parent / 'shared' / 'data')
    seen, result = set(), []
    for c in candidates:
        key = str(c.resolve()) if c.exists() else str(c)
        if key not in seen:
            seen.add(key)
            result.append(c)
    return result


def _first_shared_dir() -> Optional[Path]:
    for d in shared_data_dirs():
        if d.is_dir():
            return d
    return None


SHARED_DATA: Optional[Path] = _first_shared_dir()
"""The offline collections folder found at import time (``None`` if none was found).

:func:`find_shared` searches again at each call, so it honours later changes of
``$PYTERRIER_LLMRANK_DATA`` or of the working directory.
"""


def find_shared(name: str) -> Path:
    """Locates an offline collection folder by name, e.g. ``'vaswani'`` or ``'beir-scifact/train'``.

    Args:
        name: The folder name relative to the shared data folder.

    Returns:
        The path of the collection folder.

    Raises:
        DatasetFormatError: If no searched folder holds ``name``; the message lists where it looked.
    """
    looked = []
    for base in shared_data_dirs():
        candidate = base / name
        if candidate.is_dir():
            return candidate
        looked.append(str(candidate))
    raise DatasetFormatError(
        f'collection {name!r} not found: it is not an existing folder and none of these exist: '
        f'{", ".join(looked)} (set ${DATA_ENV} to the folder of the offline collections, '
        f'or use an "irds:<id>" name for ir_datasets)')


def load(path_or_name: Union[str, os.PathLike, 'Collection']) -> 'Collection':
    """Loads a test collection.

    Args:
        path_or_name: One of

            * a folder in the offline format (``str`` or :class:`~pathlib.Path`);
            * ``'irds:<id>'``, an ``ir_datasets`` id such as ``'irds:vaswani'``;
            * a bare name such as ``'msmarco-passage-trec-dl-2019'`` or ``'beir-scifact/train'``
              that is not an existing path, looked up with :func:`find_shared`;
            * an already loaded :class:`Collection` (returned as is).

    Returns:
        The collection. Files are read lazily, when first needed.

    Raises:
        DatasetFormatError: If the folder is missing or lacks required files.
        KeyError: If an ``irds:`` id is unknown to ``ir_datasets``.
    """
    if isinstance(path_or_name, Collection):
        return path_or_name
    if isinstance(path_or_name, str) and path_or_name.startswith('irds:'):
        return IRDSCollection(path_or_name[len('irds:'):])
    if not isinstance(path_or_name, (str, os.PathLike)):
        raise TypeError(f'expected a path, a collection name or "irds:<id>", got {type(path_or_name).__name__}')
    path = Path(path_or_name).expanduser()
    if path.exists():
        return FolderCollection(path)
    if isinstance(path_or_name, str) and _is_bare_name(path_or_name):
        return FolderCollection(find_shared(path_or_name))
    raise DatasetFormatError(f'collection folder not found: {path} ({_FORMAT_HELP})')


def _is_bare_name(name: str) -> bool:
    return bool(name) and not os.path.isabs(name) and not name.startswith(('.', '~'))


# ---------------------------------------------------------------------------------------------
# the collection interface


class Collection:
    """A test collection: topics, qrels, documents, stored runs and a PISA BM25 first stage.

    Use :func:`load` to obtain one. Documents are read once, when first needed, and kept in memory.

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
        """The run ``name`` as a frame (qid, docno, score) in ranking order, validated."""
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
                f'{len(missing)} docno(s) not in collection {self.name}: {_preview(missing)}', missing)
        return [texts[d] for d in docnos]

    def get_run(self, name: str, num_results: Optional[int] = None) -> 'StoredRun':
        """A transformer returning a stored first-stage run for the topics it is given.

        Args:
            name: The run name (see :meth:`runs`), e.g. ``'bm25'``.
            num_results: Keep only the first ``num_results`` documents per topic (default all).

        Returns:
            A :class:`StoredRun` mapping a topics frame (``qid``, ``query``, any extra columns) to a
            result frame with ``docno``, ``score``, ``rank`` (0-based) and ``text``.

        Raises:
            DatasetFormatError: If the run is unknown, malformed, or names a docno without text.
        """
        run = self._load_run(name)
        return StoredRun(self, name, run, num_results=num_results)

    def text_loader(self, fields: Union[str, List[str]] = '*', *, verbose: bool = False) -> 'TextLoader':
        """A transformer adding the ``text`` column by ``docno`` (e.g. after PISA, which keeps no text).

        Follows PyTerrier's ``HasTextLoader`` protocol, so ``pt.text.get_text(collection)`` works too.

        Args:
            fields: ``'*'``, ``'text'`` or ``['text']``: the only field of these collections.
            verbose: Accepted for protocol compatibility; loading is in memory.

        Returns:
            A :class:`TextLoader`.
        """
        if fields != '*':
            requested = [fields] if isinstance(fields, str) else list(fields)
            if requested != ['text']:
                raise ValueError(f'collection {self.name} only provides the field "text", not {requested}')
        return TextLoader(self)

    def cache_path(self) -> Path:
        """The folder of this collection's PISA index: ``cache_dir()/pisa/<name>-<hash>``."""
        from pyterrier_llmrank.models import cache_dir
        label, fingerprint = self._index_key()
        label = re.sub(r'[^A-Za-z0-9._-]+', '_', label).strip('_') or 'collection'
        return cache_dir() / 'pisa' / f'{label}-{fingerprint}'

    def pisa_index(self, threads: int = 1) -> Any:
        """The PISA index of the documents (porter2 stemming), built on first use and cached on disk.

        The index is built in a temporary folder next to :meth:`cache_path` and renamed into place
        when complete, so an interrupted build is never reused.

        Args:
            threads: Threads for indexing and retrieval.

        Returns:
            A ``pyterrier_pisa.PisaIndex``.

        Raises:
            ImportError: If ``pyterrier-pisa`` is not installed (``pip install pyterrier-llmrank[pisa]``).
        """
        PisaIndex = _pisa_index_class()
        path = self.cache_path()
        if self._pisa_index is not None and Path(self._pisa_index.path) == path and _pisa_built(path):
            return self._pisa_index
        if not _pisa_built(path):
            self._build_pisa(path, threads)
        self._pisa_index = PisaIndex(str(path), text_field='text', stemmer='porter2', stops='terrier',
                                     threads=threads)
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

    def _build_pisa(self, path: Path, threads: int) -> None:
        PisaIndex = _pisa_index_class()
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_builds(path)
        tmp = path.parent / f'.{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
        try:
            index = PisaIndex(str(tmp), text_field='text', stemmer='porter2', stops='terrier', threads=threads)
            docs = _IndexFeed(self.get_corpus_iter(), self.name)
            index.index(iter(docs))
            # pyterrier_pisa feeds the documents from a thread: an error there only ends the input
            # early and PISA would mark a partial index as built, so check that all documents went in
            if docs.error is not None:
                raise docs.error
            if not docs.done or not _pisa_built(tmp) or PisaIndex(str(tmp)).num_docs() != docs.count:
                raise RuntimeError(f'PISA indexing of {self.name} did not complete in {tmp}')
            try:
                os.rename(tmp, path)
            except OSError:
                if not _pisa_built(path):  # not a concurrent build that finished first
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.name!r})'


def _pisa_index_class() -> Any:
    try:
        from pyterrier_pisa import PisaIndex
    except ImportError as e:
        raise ImportError('BM25 needs pyterrier-pisa: pip install "pyterrier-llmrank[pisa]" '
                          '(or pip install pyterrier-pisa)') from e
    return PisaIndex


def _pisa_built(path: Path) -> bool:
    return (path / 'pt_meta.json').exists() or (path / 'pt_pisa_config.json').exists()


def _remove_stale_builds(path: Path) -> None:
    """Removes temporary build folders of ``path`` left by processes that no longer run."""
    for tmp in path.parent.glob(f'.{path.name}.tmp-*'):
        m = re.match(r'.*\.tmp-(\d+)-[0-9a-f]+$', tmp.name)
        pid = int(m.group(1)) if m else None
        alive = False
        if pid is not None and pid != os.getpid():
            try:
                os.kill(pid, 0)
                alive = True
            except ProcessLookupError:
                alive = False
            except PermissionError:
                alive = True
        if not alive:
            shutil.rmtree(tmp, ignore_errors=True)


class _IndexFeed:
    """Feeds documents to PISA's indexer, recording an error instead of losing it in its thread."""

    def __init__(self, docs: Iterable[Dict[str, str]], name: str):
        self.docs, self.name = docs, name
        self.count, self.done, self.error = 0, False, None

    def __iter__(self) -> Iterator[Dict[str, str]]:
        try:
            for doc in self.docs:
                # PISA's indexer writes "docno text" lines: a docno with whitespace would be split
                if not doc['docno'] or any(c.isspace() for c in doc['docno']):
                    raise DatasetFormatError(f'collection {self.name}: docno {doc["docno"]!r} is empty or '
                                             f'contains whitespace, which PISA cannot index')
                self.count += 1
                yield doc
        except Exception as e:  # re-raised by Collection._build_pisa once PISA has stopped
            self.error = e
            return
        self.done = True


def _preview(items: Sequence[str], n: int = 5) -> str:
    shown = ', '.join(repr(x) for x in items[:n])
    return shown + (f', ... ({len(items) - n} more)' if len(items) > n else '')


def _ranked(run: pd.DataFrame) -> pd.DataFrame:
    """Sorts a run (qid, docno, score, in file order) by qid (first appearance) then score.

    Ties keep their file order. Adds a 0-based ``rank``.
    """
    run = run.reset_index(drop=True)
    run['_qorder'] = pd.factorize(run['qid'])[0]
    run['_pos'] = range(len(run))
    run = run.sort_values(['_qorder', 'score', '_pos'], ascending=[True, False, True], kind='stable')
    run = run.drop(columns=['_qorder', '_pos']).reset_index(drop=True)
    run['rank'] = run.groupby('qid', sort=False).cumcount().astype('int64')
    return run


# ---------------------------------------------------------------------------------------------
# transformers


class TextLoader(pt.Transformer):
    """Adds the ``text`` of each ``docno`` from a collection, keeping every other column.

    Raises :class:`UnknownDocnoError` naming the docnos without text (rows are never dropped).
    """

    schematic = {'label': 'TextLoader'}

    def __init__(self, collection: Collection):
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

    def __init__(self, collection: Collection, name: str, run: pd.DataFrame, num_results: Optional[int] = None):
        """
        Args:
            collection: The collection the run belongs to (for the texts).
            name: The run name.
            run: The run: columns ``qid``, ``docno``, ``score``, ``rank`` and ``text``, ranked.
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
        topics = inp.drop(columns=[c for c in ('score', 'rank', 'text') if c in inp.columns])
        topics = topics.assign(qid=topics['qid'].astype(str)).reset_index(drop=True)
        out = topics.merge(run, on='qid', how='inner', sort=False)
        absent = sorted(set(topics['qid']) - set(run['qid']))
        if absent:
            warnings.warn(f'run {self.name!r} of {self.collection.name} has no results for '
                          f'{len(absent)} topic(s): {_preview(absent)}')
        return out.reset_index(drop=True)

    def fuse_rank_cutoff(self, k: int) -> Optional['StoredRun']:
        """Applies a rank cutoff ``% k`` directly."""
        if self.num_results is not None and self.num_results <= k:
            return self
        return StoredRun(self.collection, self.name, self.run, num_results=k)

    def __repr__(self) -> str:
        cut = f', num_results={self.num_results}' if self.num_results is not None else ''
        return f'StoredRun({self.collection.name!r}, {self.name!r}{cut})'


# ---------------------------------------------------------------------------------------------
# the offline folder format


def _line_error(path: Path, lineno: int, line: str, problem: str) -> DatasetFormatError:
    shown = line.rstrip('\r\n')
    if len(shown) > 200:
        shown = shown[:200] + '...'
    return DatasetFormatError(f'{path}:{lineno}: {problem}: {shown!r}')


def _text_lines(path: Path) -> Iterator[Tuple[int, str]]:
    """(line number, line without its end) for each non-blank line of a UTF-8 text or gzip file."""
    opener = gzip.open if path.suffix == '.gz' else open
    lineno = 0
    try:
        with opener(path, 'rb') as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode('utf-8').rstrip('\r\n')
                except UnicodeDecodeError as e:
                    raise _line_error(path, lineno, repr(raw), f'not UTF-8 ({e.reason})') from None
                if line.strip():
                    yield lineno, line
    except (OSError, EOFError) as e:
        raise DatasetFormatError(f'{path}: cannot be read after line {lineno}: {e}') from e


class FolderCollection(Collection):
    """A collection in the offline folder format (see the module documentation).

    Attributes:
        name: The folder name, or ``parent/folder`` for a sub-split reading the parent's documents.
        path: The collection folder.
        docs_path: The documents file (the parent's for a sub-split).
    """

    def __init__(self, path: Union[str, os.PathLike]):
        """
        Args:
            path: The collection folder.

        Raises:
            DatasetFormatError: If the folder or its documents or topics file is missing.
        """
        path = Path(path).expanduser()
        if not path.exists():
            raise DatasetFormatError(f'collection folder not found: {path} ({_FORMAT_HELP})')
        if not path.is_dir():
            raise DatasetFormatError(f'not a collection folder: {path} ({_FORMAT_HELP})')
        self.path = path
        own_docs, parent_docs = path / DOCS_FILE, path.resolve().parent / DOCS_FILE
        if own_docs.exists():
            self.docs_path = own_docs
            name = path.resolve().name
        elif parent_docs.exists():
            self.docs_path = parent_docs
            name = f'{path.resolve().parent.name}/{path.resolve().name}'
        else:
            raise DatasetFormatError(f'{path} has no {DOCS_FILE} (nor has its parent folder); {_FORMAT_HELP}')
        if not (path / TOPICS_FILE).exists():
            raise DatasetFormatError(f'{path} has no {TOPICS_FILE}; {_FORMAT_HELP}')
        super().__init__(name)
        self._docs: Optional[Dict[str, str]] = None
        self._runs: Dict[str, pd.DataFrame] = {}

    def _file(self, filename: str) -> Path:
        p = self.path / filename
        if not p.exists():
            raise DatasetFormatError(f'{self.path} has no {filename}; {_FORMAT_HELP}')
        return p

    def get_topics(self, variant: Optional[str] = None) -> pd.DataFrame:
        if variant is not None:
            raise ValueError(f'{self.name} has a single topics variant; got variant={variant!r}')
        path = self._file(TOPICS_FILE)
        rows, seen = [], {}
        for lineno, line in _text_lines(path):
            parts = line.split('\t')
            if len(parts) != 2:
                raise _line_error(path, lineno, line,
                                  f'expected "qid<TAB>query", found {len(parts)} tab-separated fields')
            qid, query = parts[0].strip(), parts[1].strip()
            if not qid or not query:
                raise _line_error(path, lineno, line, 'empty qid or query')
            if qid in seen:
                raise _line_error(path, lineno, line, f'duplicate qid {qid!r} (first on line {seen[qid]})')
            seen[qid] = lineno
            rows.append((qid, query))
        return pd.DataFrame(rows, columns=['qid', 'query'])

    def get_qrels(self, variant: Optional[str] = None) -> pd.DataFrame:
        if variant is not None:
            raise ValueError(f'{self.name} has a single qrels variant; got variant={variant!r}')
        path = self._file(QRELS_FILE)
        rows, seen = [], {}
        for lineno, line in _text_lines(path):
            parts = line.split()
            if len(parts) != 4:
                raise _line_error(path, lineno, line, f'expected "qid 0 docno rel", found {len(parts)} fields')
            qid, _, docno, rel = parts
            try:
                label = int(rel)
            except ValueError:
                raise _line_error(path, lineno, line, f'relevance {rel!r} is not an integer') from None
            if (qid, docno) in seen:
                raise _line_error(path, lineno, line,
                                  f'duplicate judgement of {qid!r}/{docno!r} (first on line {seen[qid, docno]})')
            seen[qid, docno] = lineno
            rows.append((qid, docno, label))
        df = pd.DataFrame(rows, columns=['qid', 'docno', 'label'])
        df['label'] = df['label'].astype('int64')
        return df

    def _iter_docs_file(self) -> Iterator[Dict[str, str]]:
        path, seen = self.docs_path, {}
        for lineno, line in _text_lines(path):
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise _line_error(path, lineno, line, f'invalid JSON ({e.msg})') from None
            if not (isinstance(doc, dict) and isinstance(doc.get('docno'), str) and isinstance(doc.get('text'), str)):
                raise _line_error(path, lineno, line, 'expected a JSON object with string "docno" and "text"')
            docno = doc['docno']
            if not docno:
                raise _line_error(path, lineno, line, 'empty docno')
            if docno in seen:
                raise _line_error(path, lineno, line, f'duplicate docno {docno!r} (first on line {seen[docno]})')
            seen[docno] = lineno
            yield {'docno': docno, 'text': doc['text']}

    def docs(self) -> Dict[str, str]:
        """All documents as a dict docno -> text, read once and kept in memory."""
        if self._docs is None:
            docs = {d['docno']: d['text'] for d in self._iter_docs_file()}
            if not docs:
                raise DatasetFormatError(f'{self.docs_path}: no documents')
            self._docs = docs
        return self._docs

    def get_corpus_iter(self, verbose: bool = False) -> Iterator[Dict[str, str]]:
        docs = self.docs()
        it = ({'docno': k, 'text': v} for k, v in docs.items())
        if verbose:
            it = pt.tqdm(it, total=len(docs), desc=f'{self.name} documents', unit='d')
        return it

    def _lookup_texts(self, docnos: Iterable[str]) -> Dict[str, str]:
        docs = self.docs()
        return {d: docs[d] for d in docnos if d in docs}

    def runs(self) -> List[str]:
        d = self.path / RUNS_DIR
        if not d.is_dir():
            return []
        return sorted(p.name[:-len(RUN_SUFFIX)] for p in d.glob(f'*{RUN_SUFFIX}') if p.is_file())

    def _load_run(self, name: str) -> pd.DataFrame:
        if name in self._runs:
            return self._runs[name]
        path = self.path / RUNS_DIR / f'{name}{RUN_SUFFIX}'
        if not path.exists():
            available = self.runs()
            raise DatasetFormatError(f'no run {name!r} in {self.name}: {path} does not exist; '
                                     f'available runs: {available if available else "none"}')
        docs = self.docs()
        rows, seen = [], {}
        for lineno, line in _text_lines(path):
            parts = line.split()
            if len(parts) != 6:
                raise _line_error(path, lineno, line,
                                  f'expected "qid Q0 docno rank score tag", found {len(parts)} fields')
            qid, _, docno, rank, score, _ = parts
            try:
                int(rank)
                score_f = float(score)
            except ValueError:
                raise _line_error(path, lineno, line, 'rank must be an integer and score a number') from None
            if (qid, docno) in seen:
                raise _line_error(path, lineno, line,
                                  f'duplicate document {docno!r} for topic {qid!r} (first on line {seen[qid, docno]})')
            if docno not in docs:
                raise _line_error(path, lineno, line, f'docno {docno!r} has no text in {self.docs_path}')
            seen[qid, docno] = lineno
            rows.append((qid, docno, score_f))
        run = _ranked(pd.DataFrame(rows, columns=['qid', 'docno', 'score']))
        run['text'] = [docs[d] for d in run['docno']]
        self._runs[name] = run
        return run

    def _index_key(self) -> Tuple[str, str]:
        st = self.docs_path.stat()
        key = f'{self.docs_path.resolve()}|{st.st_size}|{st.st_mtime_ns}'
        return self.docs_path.resolve().parent.name, hashlib.sha256(key.encode()).hexdigest()[:12]

    def __repr__(self) -> str:
        return f'FolderCollection({self.name!r}, path={str(self.path)!r})'


# ---------------------------------------------------------------------------------------------
# ir_datasets


class IRDSCollection(Collection):
    """A collection read through ``ir_datasets`` (downloads happen on first use of each part).

    Attributes:
        name: ``'irds:<id>'``.
        irds_id: The ``ir_datasets`` id.
    """

    def __init__(self, irds_id: str):
        """
        Args:
            irds_id: An ``ir_datasets`` id, e.g. ``'msmarco-passage/trec-dl-2019/judged'``.

        Raises:
            KeyError: If ``ir_datasets`` does not know the id.
        """
        import ir_datasets
        if not irds_id:
            raise KeyError('empty ir_datasets id: use "irds:<id>", e.g. "irds:vaswani"')
        try:
            self._ds = ir_datasets.load(irds_id)
        except KeyError:
            raise KeyError(f'ir_datasets has no dataset {irds_id!r} (see https://ir-datasets.com/)') from None
        self.irds_id = irds_id
        super().__init__(f'irds:{irds_id}')
        self._texts: Dict[str, str] = {}
        self._runs: Dict[str, pd.DataFrame] = {}

    def irds_ref(self) -> Any:
        """The underlying ``ir_datasets`` dataset object."""
        return self._ds

    def _require(self, part: str) -> None:
        if not getattr(self._ds, f'has_{part}')():
            raise DatasetFormatError(f'ir_datasets dataset {self.irds_id!r} provides no {part}')

    def get_topics(self, variant: Optional[str] = None) -> pd.DataFrame:
        self._require('queries')
        fields = self._ds.queries_cls()._fields
        if variant is None:
            variant = next((f for f in ('text', 'query', 'title') if f in fields), None)
            if variant is None:
                raise DatasetFormatError(f'{self.name}: no text/query field among the query fields {fields}; '
                                         f'pass variant=<field>')
        elif variant not in fields:
            raise ValueError(f'{self.name}: no query field {variant!r}; fields are {fields}')
        rows = [(str(q.query_id), getattr(q, variant)) for q in self._ds.queries_iter()]
        return pd.DataFrame(rows, columns=['qid', 'query'])

    def get_qrels(self, variant: Optional[str] = None) -> pd.DataFrame:
        self._require('qrels')
        fields = self._ds.qrels_cls()._fields
        variant = variant or 'relevance'
        if variant not in fields:
            raise ValueError(f'{self.name}: no qrels field {variant!r}; fields are {fields}')
        rows = [(str(q.query_id), str(q.doc_id), int(getattr(q, variant))) for q in self._ds.qrels_iter()]
        df = pd.DataFrame(rows, columns=['qid', 'docno', 'label'])
        df['label'] = df['label'].astype('int64')
        return df

    def _doc_text_fields(self) -> Tuple[Optional[str], str]:
        fields = self._ds.docs_cls()._fields
        body = next((f for f in ('text', 'body', 'contents', 'abstract') if f in fields), None)
        if body is None:
            raise DatasetFormatError(f'{self.name}: documents have no text field among {fields}')
        title = 'title' if 'title' in fields else None
        return title, body

    def _doc_text(self, doc: Any, title: Optional[str], body: str) -> str:
        text = getattr(doc, body) or ''
        if title:
            t = getattr(doc, title) or ''
            text = f'{t} {text}' if t else text
        return text

    def get_corpus_iter(self, verbose: bool = False) -> Iterator[Dict[str, str]]:
        self._require('docs')
        title, body = self._doc_text_fields()
        it = self._ds.docs_iter()
        if verbose:
            it = pt.tqdm(it, total=self._ds.docs_count(), desc=f'{self.name} documents', unit='d')
        return ({'docno': str(d.doc_id), 'text': self._doc_text(d, title, body)} for d in it)

    def _lookup_texts(self, docnos: Iterable[str]) -> Dict[str, str]:
        self._require('docs')
        docnos = set(docnos)
        needed = docnos - self._texts.keys()
        if needed:
            title, body = self._doc_text_fields()
            found = self._ds.docs_store().get_many(needed)
            for docno, doc in found.items():
                self._texts[str(docno)] = self._doc_text(doc, title, body)
        return {d: self._texts[d] for d in docnos if d in self._texts}

    def runs(self) -> List[str]:
        """``['scoreddocs']`` when the dataset provides scored documents, else ``[]``."""
        return ['scoreddocs'] if self._ds.has_scoreddocs() else []

    def _load_run(self, name: str) -> pd.DataFrame:
        if name not in ('scoreddocs', 'default'):
            raise DatasetFormatError(f'{self.name}: ir_datasets provides a single run, "scoreddocs"; got {name!r}')
        if not self._ds.has_scoreddocs():
            raise DatasetFormatError(f'ir_datasets dataset {self.irds_id!r} provides no scoreddocs, so it has '
                                     f'no stored run; use bm25() for a first stage')
        if 'scoreddocs' not in self._runs:
            rows = [(str(s.query_id), str(s.doc_id), float(s.score)) for s in self._ds.scoreddocs_iter()]
            run = pd.DataFrame(rows, columns=['qid', 'docno', 'score'])
            dup = run.duplicated(['qid', 'docno'])
            if dup.any():
                q, d = run.loc[dup.idxmax(), ['qid', 'docno']]
                raise DatasetFormatError(f'{self.name}: scoreddocs list document {d!r} twice for topic {q!r}')
            run = _ranked(run)
            run['text'] = self.get_texts(run['docno'].tolist())
            self._runs['scoreddocs'] = run
        return self._runs['scoreddocs']

    def _index_key(self) -> Tuple[str, str]:
        import ir_datasets
        try:
            docs_id = ir_datasets.docs_parent_id(self.irds_id)
        except Exception:  # pragma: no cover - depends on the ir_datasets version
            docs_id = self.irds_id
        key = f'irds:{docs_id}|{ir_datasets.__version__}'
        return f'irds-{docs_id}', hashlib.sha256(key.encode()).hexdigest()[:12]
