"""Resumable runs: caches that keep every finished score, so that an interrupted run loses nothing and running
the same reranker again computes only what is missing.

One helper gives the cached form of any reranker of the toolkit::

    import pyterrier_llmrank as llmrank
    upr = llmrank.cached(llmrank.UPR('smollm2-135m-instruct'), 'cache/')        # a CachedScorer
    rankgpt = llmrank.cached(llmrank.RankGPT('smollm2-135m-instruct'), 'cache/')  # a CachedQueries
    pipeline = bm25 % 20 >> upr

Which cache a reranker gets depends on what its scores depend on:

* :class:`CachedScorer`, for rerankers whose document scores depend only on the query and the document
  (``scores_documents_independently``: UPR, MonoT5, YesNo, ProRank, DeARPointwise, IDCM; the expensive stage of
  a :func:`~pyterrier_llmrank.cascade.passage_cascade`): pyterrier-caching's ``Sqlite3ScorerCache``, one score
  per (query, document), so a deeper first stage or another pipeline reuses the pairs scored before. Scores are
  written after every ``queries_per_write`` queries.
* :class:`CachedQueries`, for rerankers whose scores depend on the whole candidate list (ICR, RankGPT,
  DeARListwise, Setwise, RankR1, DuoT5): a :class:`QueryCache`, one entry per query keyed on the query text, the
  candidates in first-stage order (docnos and a hash of their texts and titles); each query is written the
  moment its scores are final (for the lock-step generative rerankers: when its own algorithm completes), with
  its efficiency counters and trace.

Both keep one folder per reranker setting under ``path``: the folder's name is the start of the reranker's
:meth:`~pyterrier_llmrank.base.Reranker.cache_key` (:mod:`pyterrier_llmrank.fingerprint`: model identity and
weights, tokenizer, prompts and templates, truncation, dtype, versions) and its ``settings.json`` records the full
settings, so a changed setting never reads another setting's scores, and one ``path`` serves every reranker of an
experiment. Folders are built atomically (:func:`pyterrier_llmrank.folders.build_folder`); entries are SQLite
transactions, so a killed process leaves only whole entries, and several processes may fill the same cache at
once. A damaged database raises an error naming the file; a damaged entry (its checksum does not match) is
recomputed and replaced, never read.

When to use which: wrap a reranker with :func:`cached` for any run that takes longer than you would like to
repeat (a TREC run, a notebook whose kernel may restart, a sweep where several pipelines share a reranker); add
``pt.Experiment(..., save_dir=..., save_mode='reuse')`` so that finished systems are not even re-read. Leave a
reranker uncached to measure its speed (a cache hit costs no model call). A run that was resumed gives the same
scores as an uninterrupted one when decoding is greedy (``temperature=0``, the default): sampled decoding draws
per batch, and the batches of a resumed run differ.

The reranker's own ``stats`` count only the work actually done (a cache hit costs no model call). ``hits`` and
``misses`` count the rows (:class:`CachedScorer`) or queries (:class:`CachedQueries`) read from and added to the
cache; :class:`CachedQueries` also keeps ``stats`` and :meth:`~CachedQueries.trace` of the queries served, as
recorded when each was computed, for reporting the efficiency of a resumed run.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import sqlite3
import warnings
from contextlib import closing
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import pyterrier as pt

from pyterrier_llmrank.base import EfficiencyStats, QueryCandidates, QueryReranker, Reranker, validate_rerank_input
from pyterrier_llmrank.fingerprint import describe, fingerprint
from pyterrier_llmrank.folders import build_folder

__all__ = ['cached', 'CachedScorer', 'CachedQueries', 'QueryCache', 'settings_folder', 'SETTINGS_FILE',
           'KEY_COLUMN', 'document_keys']

PathLike = Union[str, Path]

#: The manifest of a cache folder: the full settings it was written with and their fingerprint.
SETTINGS_FILE = 'settings.json'

#: The column :class:`CachedScorer` keys pyterrier-caching's scorer cache on: the docno and a hash of the texts.
KEY_COLUMN = 'llmrank_cache_key'

#: Characters of the settings fingerprint used as a folder name.
FOLDER_CHARS = 20

_PICKLE_PROTOCOL = 4
_SQLITE_TIMEOUT = 120.0  # seconds a writer waits for another process's transaction


def _text_columns(reranker: Any, inp: pd.DataFrame) -> List[str]:
    cols = [getattr(reranker, 'text_field', 'text')]
    title = getattr(reranker, 'title_field', None)
    if title and title in inp.columns:
        cols.append(title)
    return [c for c in cols if c in inp.columns]


def _text_hash(values: Sequence[Any]) -> str:
    return hashlib.sha256('\x1f'.join('' if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                                       for v in values).encode()).hexdigest()[:32]


def document_keys(inp: pd.DataFrame, columns: Sequence[str]) -> List[str]:
    """One key per row: the docno and a hash of the row's text ``columns`` (a changed text is another key)."""
    docnos = inp['docno'].astype(str).tolist()
    texts = [inp[c].tolist() for c in columns]
    return [f'{d}\t{_text_hash([t[i] for t in texts])}' for i, d in enumerate(docnos)]


def settings_folder(path: PathLike, transformer: Any) -> Tuple[Path, Dict[str, Any]]:
    """The folder of ``transformer``'s current settings under ``path``, and its manifest (not built here)."""
    description = describe(transformer)
    key = fingerprint(transformer, description)
    manifest = {'fingerprint': key, 'transformer': repr(transformer), **description}
    return Path(path) / key[:FOLDER_CHARS], manifest


def _check_manifest(folder: Path, manifest: Dict[str, Any]) -> None:
    file = folder / SETTINGS_FILE
    try:
        found = json.loads(file.read_text(encoding='utf-8'))['fingerprint']
    except (OSError, ValueError, KeyError) as e:
        raise RuntimeError(f'{file}: the manifest of the cache folder cannot be read ({e}); delete {folder} to '
                           'rebuild the cache') from e
    if found != manifest['fingerprint']:
        raise RuntimeError(f'{file}: the cache folder holds other settings (fingerprint {found}, expected '
                           f'{manifest["fingerprint"]}); delete {folder} or use another cache path')


def _write_manifest(tmp: Path, manifest: Dict[str, Any]) -> None:
    (tmp / SETTINGS_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False),
                                     encoding='utf-8')


def _damaged(file: Path, folder: Path, e: Exception) -> RuntimeError:
    return RuntimeError(f'{file}: the cache database is damaged or unreadable ({e}); delete the folder {folder} to '
                        'rebuild it (its scores are then computed again)')


# ---------------------------------------------------------------------------------------------------------------
# per (query, document): pyterrier-caching's scorer cache

class _Counting(pt.Transformer):
    """The scorer behind a scorer cache, counting the rows it is asked to score (the cache's misses)."""

    def __init__(self, scorer: pt.Transformer, owner: 'CachedScorer') -> None:
        self.scorer = scorer
        self.owner = owner

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:  # noqa: D102
        self.owner.misses += len(inp)
        return self.scorer(inp)

    def __repr__(self) -> str:
        return repr(self.scorer)


class CachedScorer(pt.Transformer):
    """A reranker whose (query, document) scores are kept in pyterrier-caching's ``Sqlite3ScorerCache``.

    For rerankers that score each document on its own (``scores_documents_independently``); see the module's
    docstring. The input is scored ``queries_per_write`` queries at a time, each group written to the cache when
    scored, so an interrupted run keeps the groups it finished. The cache is keyed on the query text and
    :data:`KEY_COLUMN` (the docno and a hash of the text and title), in the folder of the reranker's current
    settings (:func:`settings_folder`).

    Args:
        scorer: the reranker (any of the toolkit with ``scores_documents_independently``).
        path: the cache root (one sub-folder per setting).
        queries_per_write: queries scored per write (more batch across queries; fewer are lost to a kill).
        verbose: print hits and misses per call.
    """

    def __init__(self, scorer: Reranker, path: PathLike, *, queries_per_write: int = 1, verbose: bool = False) -> None:
        if not getattr(scorer, 'scores_documents_independently', False):
            raise ValueError(f'CachedScorer: {scorer!r} scores a document against the other candidates; cache it '
                             'with CachedQueries (or cached(), which chooses)')
        if queries_per_write < 1:
            raise ValueError(f'CachedScorer: queries_per_write must be >= 1, got {queries_per_write!r}')
        self.scorer = scorer
        self.path = Path(path)
        self.queries_per_write = queries_per_write
        self.verbose = verbose
        self.hits = 0
        self.misses = 0
        self._caches: Dict[Path, Any] = {}

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state['_caches'] = {}
        return state

    def close(self) -> None:
        """Close the cache databases."""
        for cache in self._caches.values():
            cache.close()
        self._caches.clear()

    def cache_folder(self) -> Path:
        """The folder of the scorer's current settings (built when missing)."""
        from pyterrier_caching import Sqlite3ScorerCache
        folder, manifest = settings_folder(self.path, self.scorer)

        def write(tmp: Path) -> None:
            Sqlite3ScorerCache(tmp, None, group='query', key=KEY_COLUMN, value='score').close()
            _write_manifest(tmp, manifest)

        build_folder(folder, write, marker='pt_meta.json', create=False)
        _check_manifest(folder, manifest)
        return folder

    def _open(self, folder: Path) -> Any:
        from pyterrier_caching import Sqlite3ScorerCache
        if folder not in self._caches:
            try:
                cache = Sqlite3ScorerCache(folder, _Counting(self.scorer, self))
                cache.db.close()
                cache.db = sqlite3.connect(folder / 'db.sqlite3', timeout=_SQLITE_TIMEOUT)
                cache.db.execute('SELECT COUNT(*) FROM cache').fetchone()
            except sqlite3.DatabaseError as e:
                raise _damaged(folder / 'db.sqlite3', folder, e) from e
            self._caches[folder] = cache
        return self._caches[folder]

    def _score(self, cache: Any, folder: Path, part: pd.DataFrame) -> pd.DataFrame:
        unique = part.drop_duplicates(['query', KEY_COLUMN]).reset_index(drop=True)
        for attempt in range(3):
            try:
                before = self.misses
                scored = cache(unique)
                break
            except sqlite3.IntegrityError as e:
                cache.db.rollback()
                self.misses = before
                if 'UNIQUE' not in str(e) or attempt == 2:
                    raise RuntimeError(f'{folder / "db.sqlite3"}: the scores could not be written ({e})') from e
                # another process wrote some of these pairs meanwhile: read them this time
            except sqlite3.OperationalError:
                raise
            except sqlite3.DatabaseError as e:
                raise _damaged(folder / 'db.sqlite3', folder, e) from e
        self.hits += len(unique) - (self.misses - before)
        found = dict(zip(zip(scored['query'], scored[KEY_COLUMN]), scored['score'].astype('float64')))
        return part.assign(score=[found[k] for k in zip(part['query'], part[KEY_COLUMN])])

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """Scores of ``inp``: read from the cache, the missing pairs scored by the reranker and written."""
        validate_rerank_input(inp, getattr(self.scorer, 'text_field', 'text'))
        if len(inp) == 0:
            return self.scorer(inp)
        folder = self.cache_folder()
        cache = self._open(folder)
        inp = inp.reset_index(drop=True)
        keyed = inp.drop(columns=['score', 'rank'], errors='ignore')
        keyed[KEY_COLUMN] = document_keys(inp, _text_columns(self.scorer, inp))
        qids = pd.unique(keyed['qid'])
        parts = []
        start = (self.hits, self.misses)
        for i in range(0, len(qids), self.queries_per_write):
            part = keyed[keyed['qid'].isin(qids[i:i + self.queries_per_write])]
            parts.append(self._score(cache, folder, part))
        out = pd.concat(parts).sort_index().drop(columns=[KEY_COLUMN])
        if self.verbose:
            print(f'{self!r}: {self.hits - start[0]} hit(s), {self.misses - start[1]} miss(es)')
        return pt.model.add_ranks(out.reset_index(drop=True))

    def __repr__(self) -> str:
        return f'cached({self.scorer!r}, {str(self.path)!r})'


# ---------------------------------------------------------------------------------------------------------------
# per query

class QueryCache:
    """The store of one setting's per-query results: a folder with ``pt_meta.json``, :data:`SETTINGS_FILE` and
    ``db.sqlite3`` (table ``queries``: ``key``, ``qid``, the pickled entry and its SHA-256).

    An entry is a dict: ``scores`` (float64, in the query's first-stage order), ``stats`` (the efficiency counters
    of its computation) and ``trace`` (its trace rows). Each :meth:`put` is its own transaction.
    """

    ARTIFACT_TYPE = 'query_cache'
    ARTIFACT_FORMAT = 'sqlite3'

    def __init__(self, folder: PathLike) -> None:
        self.folder = Path(folder)
        self.file = self.folder / 'db.sqlite3'
        try:
            self.db = sqlite3.connect(self.file, timeout=_SQLITE_TIMEOUT)
            self.db.execute('SELECT COUNT(*) FROM queries').fetchone()
        except sqlite3.DatabaseError as e:
            raise _damaged(self.file, self.folder, e) from e

    @classmethod
    def build(cls, folder: PathLike, manifest: Dict[str, Any]) -> 'QueryCache':
        """Open the store in ``folder``, creating it (atomically) when missing."""
        def write(tmp: Path) -> None:
            with closing(sqlite3.connect(tmp / 'db.sqlite3')) as db:
                db.execute('CREATE TABLE queries (key TEXT PRIMARY KEY, qid TEXT, value BLOB NOT NULL, '
                           'sha256 TEXT NOT NULL)')
                db.commit()
            _write_manifest(tmp, manifest)
            meta = {'type': cls.ARTIFACT_TYPE, 'format': cls.ARTIFACT_FORMAT, 'package_hint': 'pyterrier_llmrank'}
            (tmp / 'pt_meta.json').write_text(json.dumps(meta), encoding='utf-8')

        build_folder(folder, write, marker='pt_meta.json')
        _check_manifest(Path(folder), manifest)
        return cls(folder)

    def get(self, keys: Sequence[str]) -> Dict[str, Dict[str, Any]]:
        """The entries of ``keys`` that are in the store; a damaged entry is left out (with a warning naming the
        file and the query), so that it is computed again and replaced."""
        out: Dict[str, Dict[str, Any]] = {}
        try:
            for i in range(0, len(keys), 500):
                chunk = list(keys[i:i + 500])
                rows = self.db.execute(f'SELECT key, qid, value, sha256 FROM queries WHERE key IN '
                                       f'({", ".join("?" * len(chunk))})', chunk).fetchall()
                for key, qid, value, sha in rows:
                    try:
                        if hashlib.sha256(value).hexdigest() != sha:
                            raise ValueError('checksum mismatch')
                        out[key] = pickle.loads(value)
                    except Exception as e:  # noqa: BLE001 -- any damage means: compute it again
                        warnings.warn(f'{self.file}: the entry of query {qid!r} is damaged ({e}); it is computed '
                                      'again and replaced')
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as e:
            raise _damaged(self.file, self.folder, e) from e
        return out

    def put(self, key: str, qid: Any, entry: Dict[str, Any]) -> None:
        """Write one entry (replacing any entry of the same key) and commit."""
        value = pickle.dumps(entry, protocol=_PICKLE_PROTOCOL)
        try:
            with self.db:
                self.db.execute('INSERT OR REPLACE INTO queries (key, qid, value, sha256) VALUES (?, ?, ?, ?)',
                                (key, str(qid), value, hashlib.sha256(value).hexdigest()))
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as e:
            raise _damaged(self.file, self.folder, e) from e

    def __len__(self) -> int:
        return int(self.db.execute('SELECT COUNT(*) FROM queries').fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        self.db.close()


def query_key(reranker: Any, q: QueryCandidates) -> str:
    """The key of one query's entry: its text and its candidates in first-stage order (docnos, texts, titles)."""
    title = getattr(reranker, 'title_field', None)
    titles = q.column(title) if title else []
    data = json.dumps([q.query, list(map(str, q.docnos)), _text_hash(q.texts), _text_hash(titles)],
                      ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()


class CachedQueries(pt.Transformer):
    """A per-query reranker whose finished queries are kept in a :class:`QueryCache`.

    For rerankers whose scores depend on the whole candidate list (a :class:`~pyterrier_llmrank.base.QueryReranker`
    without ``scores_documents_independently``); see the module's docstring. During a run the wrapper is the
    reranker's ``query_cache``: the queries found in the cache are not computed, the others are computed together
    (as the reranker batches them) and each is written as soon as the reranker reports it finished.

    Args:
        reranker: the reranker.
        path: the cache root (one sub-folder per setting).
        verbose: print hits and misses per call.
    """

    def __init__(self, reranker: QueryReranker, path: PathLike, *, verbose: bool = False) -> None:
        if not isinstance(reranker, QueryReranker):
            raise TypeError(f'CachedQueries: {reranker!r} is not a per-query reranker (QueryReranker)')
        self.reranker = reranker
        self.path = Path(path)
        self.verbose = verbose
        self.hits = 0
        self.misses = 0
        self.stats = EfficiencyStats()
        self._traces: List[Dict[str, Any]] = []
        self._store: Optional[QueryCache] = None
        self._pending: Dict[int, Tuple[str, Dict[str, float]]] = {}

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state['_store'] = None
        return state

    def trace(self) -> pd.DataFrame:
        """The trace rows of the queries served (read from the cache or computed), for rerankers with a trace."""
        return pd.DataFrame(self._traces)

    def cache_folder(self) -> Path:
        """The folder of the reranker's current settings (built when missing)."""
        folder, manifest = settings_folder(self.path, self.reranker)
        if self._store is None or self._store.folder != folder:
            if self._store is not None:
                self._store.close()
            self._store = QueryCache.build(folder, manifest)
        return folder

    def close(self) -> None:
        """Close the cache database."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """The reranker's output for ``inp``, its finished queries read from the cache."""
        self.cache_folder()
        start = (self.hits, self.misses)
        self.reranker.query_cache = self
        try:
            out = self.reranker(inp)
        finally:
            self.reranker.query_cache = None
            self._pending.clear()
        if self.verbose:
            print(f'{self!r}: {self.hits - start[0]} hit(s), {self.misses - start[1]} miss(es)')
        return out

    def _restore(self, q: QueryCandidates, entry: Dict[str, Any]) -> None:
        self.stats.add(q.qid, **entry['stats'])
        self._traces.extend({**row, 'qid': q.qid} for row in entry['trace'])

    def rerank(self, reranker: QueryReranker, queries: List[QueryCandidates],
               compute: Callable[[List[QueryCandidates]], List[Sequence[float]]]) -> List[Sequence[float]]:
        """Called by the reranker (:meth:`~pyterrier_llmrank.base.QueryReranker.rerank_queries`): the scores of
        every query, those in the cache read, the others computed by ``compute`` (``batch_size`` queries at a time)
        and written as they finish."""
        assert self._store is not None
        keys = [query_key(reranker, q) for q in queries]
        found = self._store.get(keys)
        results: List[Any] = [None] * len(queries)
        todo = []
        for i, (q, key) in enumerate(zip(queries, keys)):
            entry = found.get(key)
            if entry is not None and len(entry['scores']) == len(q):
                results[i] = np.asarray(entry['scores'], dtype='float64')
                self._restore(q, entry)
                self.hits += 1
            else:
                todo.append(i)
                self._pending[id(q)] = (key, reranker.stats.row(q.qid))
        # computed in chunks of batch_size queries: enough to fill the batches of lock-step rerankers (one prompt per
        # query per round), and each chunk is written before the next one starts, so an interruption loses little
        chunk = max(1, int(getattr(reranker, 'batch_size', 1) or 1))
        for c in range(0, len(todo), chunk):
            part = todo[c:c + chunk]
            computed = compute([queries[i] for i in part])
            for i, scores in zip(part, computed):
                results[i] = scores
                if id(queries[i]) in self._pending:  # the reranker did not report it: write it now
                    self.finished(reranker, queries[i], scores, ())
        return results

    def finished(self, reranker: QueryReranker, q: QueryCandidates, scores: Sequence[float],
                 trace: Sequence[Dict[str, Any]] = ()) -> None:
        """Called by the reranker (:meth:`~pyterrier_llmrank.base.QueryReranker.query_finished`) when the scores of
        ``q`` are final: the query is written to the cache with its counters and trace."""
        pending = self._pending.pop(id(q), None)
        if pending is None or self._store is None:
            return
        key, before = pending
        now = reranker.stats.row(q.qid)
        counters = {c: float(v) - float(before.get(c, 0.0)) for c, v in now.items()}
        entry = {'qid': q.qid, 'scores': np.asarray(scores, dtype='float64'), 'stats': counters,
                 'trace': [dict(row) for row in trace]}
        self._store.put(key, q.qid, entry)
        self.misses += 1
        self._restore(q, entry)

    def __repr__(self) -> str:
        return f'cached({self.reranker!r}, {str(self.path)!r})'


def cached(reranker: Reranker, path: PathLike, *, verbose: bool = False, **kwargs: Any) -> pt.Transformer:
    """The cached form of ``reranker``: a :class:`CachedScorer` for rerankers that score each document on its own
    (UPR, MonoT5, YesNo, ProRank, DeARPointwise, IDCM), a :class:`CachedQueries` for the others (ICR, RankGPT,
    DeARListwise, Setwise, RankR1, DuoT5). ``path`` is a folder (one sub-folder per setting; see the module's
    docstring for when to cache); ``kwargs`` go to the wrapper (``queries_per_write`` of :class:`CachedScorer`)."""
    if getattr(reranker, 'scores_documents_independently', False):
        return CachedScorer(reranker, path, verbose=verbose, **kwargs)
    if isinstance(reranker, QueryReranker):
        return CachedQueries(reranker, path, verbose=verbose, **kwargs)
    raise TypeError(f'cached: {reranker!r} is not a reranker of pyterrier_llmrank (Reranker); wrap a pipeline\'s '
                    'rerankers one by one, e.g. passage_cascade(cheap, cached(expensive, path))')
