"""Test collections for evaluating rerankers: offline folders and ``ir_datasets``.

:func:`load` returns a collection object with the same interface whatever its source:

* a folder in the offline format of ``../shared/data`` (:mod:`~pyterrier_llmrank.datasets.folder`;
  a bare name is looked up with :func:`find_shared`);
* an ``ir_datasets`` id prefixed with ``irds:`` (e.g. ``irds:msmarco-passage/trec-dl-2019/judged``,
  :mod:`~pyterrier_llmrank.datasets.irds`).

Example::

    import pyterrier as pt
    from pyterrier_llmrank import datasets

    dl19 = datasets.load('msmarco-passage-trec-dl-2019')   # looked up in ../shared/data
    pipeline = dl19.get_run('bm25')                        # stored first stage, with text
    pt.Experiment([pipeline], dl19.get_topics(), dl19.get_qrels(), ['nDCG@10'])

    vaswani = datasets.load('vaswani')
    bm25 = vaswani.bm25() % 100 >> vaswani.text_loader()  # PISA BM25, index cached on disk

Every malformed input (a bad line, a corrupted or truncated gzip file, text that is not UTF-8) raises
:class:`DatasetFormatError` naming the file, and the line number and line where there is one; nothing is
silently dropped. Indexing with PISA refuses a document whose text is not a string (``None``, ``NaN``), naming
its docno (:mod:`~pyterrier_llmrank.datasets.pisa`).

Modules (the split of ``pyterrier/datasets/`` in terrier-org/pyterrier):

* :mod:`~pyterrier_llmrank.datasets.locate`: :func:`load`, the shared data folders, bare names;
* :mod:`~pyterrier_llmrank.datasets.core`: the :class:`Collection` interface and shared behaviour;
* :mod:`~pyterrier_llmrank.datasets.folder`: the offline folder format (:class:`FolderCollection`);
* :mod:`~pyterrier_llmrank.datasets.irds`: ``ir_datasets`` (:class:`IRDSCollection`);
* :mod:`~pyterrier_llmrank.datasets.pisa`: building and caching the PISA BM25 index;
* :mod:`~pyterrier_llmrank.datasets.transformers`: :class:`TextLoader` and :class:`StoredRun`;
* :mod:`~pyterrier_llmrank.datasets.multimodal`: page images (:func:`page_images`) and interleaved documents
  (:func:`interleaved_documents`) built from a text collection;
* :mod:`~pyterrier_llmrank.datasets.errors`: :class:`DatasetFormatError`, :class:`UnknownDocnoError`.
"""
from pyterrier_llmrank.datasets.core import Collection
from pyterrier_llmrank.datasets.errors import DatasetFormatError, UnknownDocnoError
from pyterrier_llmrank.datasets.folder import (DOCS_FILE, QRELS_FILE, RUN_SUFFIX, RUNS_DIR, TOPICS_FILE,
                                              FolderCollection)
from pyterrier_llmrank.datasets.irds import IRDSCollection
from pyterrier_llmrank.datasets.locate import DATA_ENV, SHARED_DATA, find_shared, load, shared_data_dirs
from pyterrier_llmrank.datasets.multimodal import (ImageLoader, InterleavedDocuments, PageImages, PageRun,
                                                  SectionsLoader, explode_sections, interleaved_documents,
                                                  page_images, render_page, render_table)
from pyterrier_llmrank.datasets.transformers import StoredRun, TextLoader

__all__ = [
    'load', 'find_shared', 'shared_data_dirs', 'SHARED_DATA', 'DATA_ENV',
    'Collection', 'FolderCollection', 'IRDSCollection', 'StoredRun', 'TextLoader',
    'DatasetFormatError', 'UnknownDocnoError',
    'DOCS_FILE', 'TOPICS_FILE', 'QRELS_FILE', 'RUNS_DIR', 'RUN_SUFFIX',
    'page_images', 'PageImages', 'PageRun', 'ImageLoader', 'render_page', 'render_table',
    'interleaved_documents', 'InterleavedDocuments', 'SectionsLoader', 'explode_sections',
]
