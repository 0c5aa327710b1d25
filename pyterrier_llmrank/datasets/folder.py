"""The offline folder format of ``../shared/data``: :class:`FolderCollection` and its line readers.

A collection folder holds::

    docs.jsonl.gz   one JSON object a line: {"docno": str, "text": str}
    topics.tsv      qid<TAB>query, no header
    qrels.txt       TREC qrels: qid 0 docno rel
    runs/*.run      TREC runs: qid Q0 docno rank score tag (optional)

A sub-split folder (e.g. ``beir-scifact/train``) may hold only ``topics.tsv`` and ``qrels.txt``: its documents
are then read from the parent folder's ``docs.jsonl.gz``.

Every malformed input raises :class:`~pyterrier_llmrank.datasets.errors.DatasetFormatError` naming the file, and
the line number and line where there is one: a malformed or duplicate line, text that is not UTF-8 or holds NUL
bytes (a corrupted file), and a gzip file whose compressed data is corrupted or truncated. Nothing is silently
dropped.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

import pandas as pd
import pyterrier as pt

from pyterrier_llmrank.datasets.core import Collection
from pyterrier_llmrank.datasets.errors import DatasetFormatError
from pyterrier_llmrank.datasets.transformers import rank_run

__all__ = ['FolderCollection', 'DOCS_FILE', 'TOPICS_FILE', 'QRELS_FILE', 'RUNS_DIR', 'RUN_SUFFIX', 'FORMAT_HELP',
           'line_error', 'text_lines']

DOCS_FILE = 'docs.jsonl.gz'
TOPICS_FILE = 'topics.tsv'
QRELS_FILE = 'qrels.txt'
RUNS_DIR = 'runs'
RUN_SUFFIX = '.run'

FORMAT_HELP = (f'the folder format needs {DOCS_FILE} (or in the parent folder for a sub-split such as '
               f'beir-scifact/train), {TOPICS_FILE} (qid<TAB>query), {QRELS_FILE} (qid 0 docno rel) '
               f'and optionally {RUNS_DIR}/<name>{RUN_SUFFIX} (qid Q0 docno rank score tag)')
"""What a collection folder must hold, appended to the errors about missing files."""


def line_error(path: Path, lineno: int, line: str, problem: str) -> DatasetFormatError:
    """The error for a bad line: ``path:lineno: problem: 'line'`` (the line cut at 200 characters)."""
    shown = line.rstrip('\r\n')
    if len(shown) > 200:
        shown = shown[:200] + '...'
    return DatasetFormatError(f'{path}:{lineno}: {problem}: {shown!r}')


def text_lines(path: Path) -> Iterator[Tuple[int, str]]:
    """(line number, line without its end) for each non-blank line of a UTF-8 text or gzip (``.gz``) file.

    Raises:
        DatasetFormatError: Naming the file and line, for a line that is not UTF-8 or holds NUL bytes; naming
            the file and the last line read, for gzip data that is corrupted or truncated, or a read error.
    """
    gzipped = path.suffix == '.gz'
    opener = gzip.open if gzipped else open
    lineno = 0
    try:
        with opener(path, 'rb') as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode('utf-8').rstrip('\r\n')
                except UnicodeDecodeError as e:
                    raise line_error(path, lineno, repr(raw),
                                     f'not UTF-8 ({e.reason}); is the file corrupted?') from None
                if '\x00' in line:
                    raise line_error(path, lineno, line, 'contains NUL bytes; is the file corrupted?')
                if line.strip():
                    yield lineno, line
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        # EOFError: the compressed stream ends early; zlib.error / BadGzipFile: corrupted bytes or no gzip header
        where = f'after line {lineno}' if lineno else 'before the first line'
        raise DatasetFormatError(f'{path}: corrupted or truncated gzip file ({where}): '
                                 f'{type(e).__name__}: {e}') from e
    except OSError as e:
        raise DatasetFormatError(f'{path}: cannot be read after line {lineno}: {e}') from e


class FolderCollection(Collection):
    """A collection in the offline folder format (see the module documentation).

    Choose it (through :func:`~pyterrier_llmrank.datasets.locate.load`) for the offline collections of
    ``../shared/data`` or any folder written in the same format.

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
            raise DatasetFormatError(f'collection folder not found: {path} ({FORMAT_HELP})')
        if not path.is_dir():
            raise DatasetFormatError(f'not a collection folder: {path} ({FORMAT_HELP})')
        self.path = path
        # the parent as written (a symlinked data folder stays as given), else the parent of the real folder
        absolute = Path(os.path.abspath(path))
        parent_docs = next((p / DOCS_FILE for p in (absolute.parent, path.resolve().parent)
                            if (p / DOCS_FILE).exists()), None)
        if (path / DOCS_FILE).exists():
            self.docs_path = path / DOCS_FILE
            name = absolute.name
        elif parent_docs is not None:
            self.docs_path = parent_docs
            name = f'{parent_docs.parent.name}/{absolute.name}'
        else:
            raise DatasetFormatError(f'{path} has no {DOCS_FILE} (nor has its parent folder); {FORMAT_HELP}')
        if not (path / TOPICS_FILE).exists():
            raise DatasetFormatError(f'{path} has no {TOPICS_FILE}; {FORMAT_HELP}')
        super().__init__(name)
        self._docs: Optional[Dict[str, str]] = None
        self._runs: Dict[str, pd.DataFrame] = {}

    def _file(self, filename: str) -> Path:
        p = self.path / filename
        if not p.exists():
            raise DatasetFormatError(f'{self.path} has no {filename}; {FORMAT_HELP}')
        return p

    def get_topics(self, variant: Optional[str] = None) -> pd.DataFrame:
        if variant is not None:
            raise ValueError(f'{self.name} has a single topics variant; got variant={variant!r}')
        path = self._file(TOPICS_FILE)
        rows, seen = [], {}
        for lineno, line in text_lines(path):
            parts = line.split('\t')
            if len(parts) != 2:
                raise line_error(path, lineno, line,
                                 f'expected "qid<TAB>query", found {len(parts)} tab-separated fields')
            qid, query = parts[0].strip(), parts[1].strip()
            if not qid or not query:
                raise line_error(path, lineno, line, 'empty qid or query')
            if qid in seen:
                raise line_error(path, lineno, line, f'duplicate qid {qid!r} (first on line {seen[qid]})')
            seen[qid] = lineno
            rows.append((qid, query))
        return pd.DataFrame(rows, columns=['qid', 'query'])

    def get_qrels(self, variant: Optional[str] = None) -> pd.DataFrame:
        if variant is not None:
            raise ValueError(f'{self.name} has a single qrels variant; got variant={variant!r}')
        path = self._file(QRELS_FILE)
        rows, seen = [], {}
        for lineno, line in text_lines(path):
            parts = line.split()
            if len(parts) != 4:
                raise line_error(path, lineno, line, f'expected "qid 0 docno rel", found {len(parts)} fields')
            qid, _, docno, rel = parts
            try:
                label = int(rel)
            except ValueError:
                raise line_error(path, lineno, line, f'relevance {rel!r} is not an integer') from None
            if (qid, docno) in seen:
                raise line_error(path, lineno, line,
                                 f'duplicate judgement of {qid!r}/{docno!r} (first on line {seen[qid, docno]})')
            seen[qid, docno] = lineno
            rows.append((qid, docno, label))
        df = pd.DataFrame(rows, columns=['qid', 'docno', 'label'])
        df['label'] = df['label'].astype('int64')
        return df

    def _iter_docs_file(self) -> Iterator[Dict[str, str]]:
        path, seen = self.docs_path, {}
        for lineno, line in text_lines(path):
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise line_error(path, lineno, line, f'invalid JSON ({e.msg})') from None
            if not (isinstance(doc, dict) and isinstance(doc.get('docno'), str) and isinstance(doc.get('text'), str)):
                problem = 'expected a JSON object with string "docno" and "text"'
                if isinstance(doc, dict) and isinstance(doc.get('docno'), str):
                    problem += f' (document {doc["docno"]!r} has text {doc.get("text")!r})'
                raise line_error(path, lineno, line, problem)
            docno = doc['docno']
            if not docno:
                raise line_error(path, lineno, line, 'empty docno')
            if docno in seen:
                raise line_error(path, lineno, line, f'duplicate docno {docno!r} (first on line {seen[docno]})')
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
        for lineno, line in text_lines(path):
            parts = line.split()
            if len(parts) != 6:
                raise line_error(path, lineno, line,
                                 f'expected "qid Q0 docno rank score tag", found {len(parts)} fields')
            qid, _, docno, rank, score, _ = parts
            try:
                int(rank)
                score_f = float(score)
            except ValueError:
                raise line_error(path, lineno, line, 'rank must be an integer and score a number') from None
            if (qid, docno) in seen:
                raise line_error(path, lineno, line,
                                 f'duplicate document {docno!r} for topic {qid!r} (first on line {seen[qid, docno]})')
            if docno not in docs:
                raise line_error(path, lineno, line, f'docno {docno!r} has no text in {self.docs_path}')
            seen[qid, docno] = lineno
            rows.append((qid, docno, score_f))
        run = rank_run(pd.DataFrame(rows, columns=['qid', 'docno', 'score']))
        run['text'] = [docs[d] for d in run['docno']]
        self._runs[name] = run
        return run

    def _index_key(self) -> Tuple[str, str]:
        st = self.docs_path.stat()
        key = f'{self.docs_path.resolve()}|{st.st_size}|{st.st_mtime_ns}'
        return self.docs_path.resolve().parent.name, hashlib.sha256(key.encode()).hexdigest()[:12]

    def __repr__(self) -> str:
        return f'FolderCollection({self.name!r}, path={str(self.path)!r})'
