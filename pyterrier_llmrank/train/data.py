"""Training groups for the training recipes: a query, one relevant document and sampled negatives.

:func:`training_groups` turns any collection of :mod:`pyterrier_llmrank.datasets` (topics, qrels, documents)
into the groups every recipe of :mod:`pyterrier_llmrank.train` trains on::

    from pyterrier_llmrank.train.data import training_groups
    groups = training_groups('beir-scifact/train', n_negatives=7)
    groups[0]  # {'qid': ..., 'query': ..., 'positive': <text>, 'negatives': [<text>, ...],
               #  'positive_docno': ..., 'negative_docnos': [...]}

Rules (deterministic for a given collection, arguments and seed):

* one group per (topic, relevant document) pair, relevant meaning a qrels label > 0; topics in the order of
  the topics file, relevant documents in docno order; topics without a relevant document are skipped;
* ``max_queries`` keeps the first ``max_queries`` topics (in topics-file order) that have a relevant document;
* negatives ``'bm25'`` (default, hard negatives): ``n_negatives`` documents drawn without replacement from the
  top ``depth`` of ``dataset.bm25()`` (PISA BM25, see :meth:`~pyterrier_llmrank.datasets.Collection.bm25`),
  excluding every document judged relevant (label > 0) for the topic. When fewer than ``n_negatives``
  candidates remain, the missing ones are drawn uniformly from the rest of the corpus (same exclusions) and
  counted in :data:`LAST_STATS` (``'filled_from_corpus'``);
* negatives ``'random'``: ``n_negatives`` documents drawn uniformly from the corpus, same exclusions;
* the draws of a group use a random generator seeded by ``(seed, qid, positive docno)`` only, so a group does
  not change when ``max_queries`` or the other topics change; the negatives keep the order they were drawn in.
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

__all__ = ['training_groups', 'LAST_STATS']

#: Counts of the last :func:`training_groups` call: ``groups``, ``queries``, ``skipped_queries`` (no relevant
#: document), ``filled_from_corpus`` (negatives drawn from the corpus because the BM25 pool was too small).
LAST_STATS: Dict[str, int] = {}


def _rng(seed: int, *keys: str) -> np.random.Generator:
    digest = hashlib.sha256('\x1f'.join([str(seed), *keys]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], 'little'))


def training_groups(dataset: Any, *, n_negatives: int, negatives: str = 'bm25', depth: int = 100, seed: int = 42,
                    max_queries: Optional[int] = None) -> List[Dict[str, Any]]:
    """Builds training groups (query, one positive, ``n_negatives`` negatives) from a collection.

    Args:
        dataset: A :class:`~pyterrier_llmrank.datasets.Collection` or a name / path accepted by
            :func:`pyterrier_llmrank.datasets.load` (e.g. ``'beir-scifact/train'``).
        n_negatives: Negatives per group (>= 0).
        negatives: ``'bm25'`` (hard negatives from the BM25 top ``depth``) or ``'random'`` (from the corpus).
        depth: BM25 depth of the hard-negative pool.
        seed: Seed of the negative sampling.
        max_queries: Keep only the first ``max_queries`` topics having a relevant document (``None``: all).

    Returns:
        A list of dicts ``{'qid', 'query', 'positive' (text), 'negatives' (list of texts), 'positive_docno',
        'negative_docnos'}`` in the order described in the module documentation.

    Raises:
        ValueError: On an unknown ``negatives`` mode, a negative count, or a corpus too small to draw from.
    """
    from pyterrier_llmrank import datasets
    if negatives not in ('bm25', 'random'):
        raise ValueError(f"negatives must be 'bm25' or 'random', got {negatives!r}")
    if n_negatives < 0:
        raise ValueError('n_negatives must be >= 0')
    if depth < 1:
        raise ValueError('depth must be >= 1')
    coll = datasets.load(dataset)
    topics = coll.get_topics()
    qrels = coll.get_qrels()
    relevant = qrels[qrels['label'] > 0]
    rel_by_qid: Dict[str, List[str]] = {q: sorted(set(g['docno'].astype(str))) for q, g in relevant.groupby('qid')}
    topics = topics[topics['qid'].isin(rel_by_qid)].reset_index(drop=True)
    skipped = len(coll.get_topics()) - len(topics)
    if max_queries is not None:
        topics = topics.iloc[:max_queries].reset_index(drop=True)

    pools: Dict[str, List[str]] = {}
    if negatives == 'bm25' and n_negatives > 0 and len(topics):
        run = coll.bm25(num_results=depth)(topics[['qid', 'query']])
        run = run.sort_values(['qid', 'rank'] if 'rank' in run.columns else ['qid', 'score'],
                              ascending=[True, True] if 'rank' in run.columns else [True, False])
        for qid, g in run.groupby('qid', sort=False):
            excluded = set(rel_by_qid.get(str(qid), ()))
            pools[str(qid)] = [d for d in g['docno'].astype(str).tolist() if d not in excluded]

    all_docnos: Optional[List[str]] = None
    filled = 0
    groups: List[Dict[str, Any]] = []
    for qid, query in zip(topics['qid'].astype(str), topics['query']):
        excluded = set(rel_by_qid[qid])
        for pos in rel_by_qid[qid]:
            rng = _rng(seed, qid, pos)
            chosen: List[str] = []
            if negatives == 'bm25':
                pool = pools.get(qid, [])
                take = min(n_negatives, len(pool))
                chosen = [pool[i] for i in rng.choice(len(pool), size=take, replace=False)] if take else []
            missing = n_negatives - len(chosen)
            if missing:
                if all_docnos is None:
                    all_docnos = sorted(d['docno'] for d in coll.get_corpus_iter())
                taken = set(chosen) | excluded
                rest = [d for d in all_docnos if d not in taken]
                if len(rest) < missing:
                    raise ValueError(f'collection {coll.name} has too few documents to draw {n_negatives} '
                                     f'negatives for topic {qid}')
                chosen += [rest[i] for i in rng.choice(len(rest), size=missing, replace=False)]
                if negatives == 'bm25':
                    filled += missing
            groups.append({'qid': qid, 'query': query, 'positive_docno': pos, 'negative_docnos': chosen})

    docnos = sorted({g['positive_docno'] for g in groups} | {d for g in groups for d in g['negative_docnos']})
    texts = dict(zip(docnos, coll.get_texts(docnos)))
    for g in groups:
        g['positive'] = texts[g['positive_docno']]
        g['negatives'] = [texts[d] for d in g['negative_docnos']]
    LAST_STATS.clear()
    LAST_STATS.update(groups=len(groups), queries=len(topics), skipped_queries=skipped, filled_from_corpus=filled)
    return [{k: g[k] for k in ('qid', 'query', 'positive', 'negatives', 'positive_docno', 'negative_docnos')}
            for g in groups]


def groups_frame(groups: List[Dict[str, Any]]) -> pd.DataFrame:
    """The groups as a long frame (qid, query, docno, text, label): one row per positive or negative."""
    rows = []
    for g in groups:
        rows.append((g['qid'], g['query'], g['positive_docno'], g['positive'], 1))
        rows += [(g['qid'], g['query'], d, t, 0) for d, t in zip(g['negative_docnos'], g['negatives'])]
    return pd.DataFrame(rows, columns=['qid', 'query', 'docno', 'text', 'label'])
