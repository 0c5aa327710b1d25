"""Collections read through ``ir_datasets``: :class:`IRDSCollection` (``load('irds:<id>')``)."""
from __future__ import annotations

import hashlib
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import pandas as pd
import pyterrier as pt

from pyterrier_llmrank.datasets.core import Collection
from pyterrier_llmrank.datasets.errors import DatasetFormatError
from pyterrier_llmrank.datasets.transformers import rank_run

__all__ = ['IRDSCollection', 'QUERY_FIELDS', 'BODY_FIELDS']

QUERY_FIELDS = ('text', 'query', 'title')
"""The query fields tried in order when ``get_topics`` is given no variant."""

BODY_FIELDS = ('text', 'body', 'contents', 'abstract')
"""The document fields tried in order for the body; a ``title`` field, if any, is put before it."""


class IRDSCollection(Collection):
    """A collection read through ``ir_datasets`` (downloads happen on first use of each part).

    Choose it (``load('irds:<id>')``) for a collection that is not in the offline folder format. A document's
    text is its ``title`` (if the dataset has one) then its body; a field that is ``None`` counts as empty.

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
            variant = next((f for f in QUERY_FIELDS if f in fields), None)
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
        body = next((f for f in BODY_FIELDS if f in fields), None)
        if body is None:
            raise DatasetFormatError(f'{self.name}: documents have no text field among {fields}')
        title = 'title' if 'title' in fields else None
        return title, body

    def _field(self, doc: Any, field: str) -> str:
        value = getattr(doc, field)
        if value is None:
            return ''
        if not isinstance(value, str):
            raise DatasetFormatError(f'{self.name}: document {str(doc.doc_id)!r} has a {field!r} that is not a '
                                     f'string: {value!r}')
        return value

    def _doc_text(self, doc: Any, title: Optional[str], body: str) -> str:
        text = self._field(doc, body)
        if title:
            t = self._field(doc, title)
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
            run = rank_run(run)
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
