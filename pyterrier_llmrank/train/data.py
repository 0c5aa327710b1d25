"""Training groups for the training recipes: a query, one relevant document and sampled negatives.

:func:`training_groups` turns any collection of :mod:`pyterrier_llmrank.datasets` (topics, qrels, documents)
into the groups every recipe of :mod:`pyterrier_llmrank.train` trains on::

    from pyterrier_llmrank.train.data import training_groups
    groups = training_groups('beir-scifact/train', n_negatives=7)
    groups[0]  # {'qid': ..., 'query': ..., 'positive': <text>, 'negatives': [<text>, ...],
               #  'positive_docno': ..., 'negative_docnos': [...]}

Rules (deterministic for a given collection, arguments and seed):

* one group per (topic, relevant document) pair, relevant meaning a qrels label > 0 (judged documents without
  a text in the collection, as in candidate-only collections, are left out and counted); topics in the order of
  the topics file, relevant documents in docno order; topics without a relevant document are skipped;
* ``max_queries`` keeps the first ``max_queries`` topics (in topics-file order) that have a relevant document;
* negatives ``'bm25'`` (default, hard negatives): ``n_negatives`` documents drawn without replacement from the
  top ``depth`` of ``dataset.bm25()`` (PISA BM25, see :meth:`~pyterrier_llmrank.datasets.Collection.bm25`),
  excluding every document judged relevant (label > 0) for the topic. When fewer than ``n_negatives``
  candidates remain, the missing ones are drawn uniformly from the rest of the corpus (same exclusions) and
  counted in :data:`LAST_STATS` (``'filled_from_corpus'``);
* negatives ``'random'``: ``n_negatives`` documents drawn uniformly from the corpus, same exclusions;
* negatives ``'judged'`` (for collections judged over a first-stage pool, such as TREC DL): ``n_negatives``
  documents drawn without replacement from those judged for the topic with a *lower* label than the positive
  (graded qrels: a label-3 positive is contrasted with documents judged 0, 1 or 2); missing ones are drawn from
  the BM25 pool as ``'bm25'``, then from the corpus;
* ``qids`` keeps only the listed topics (cross-validation folds: the topics of the test fold are never read);
* the draws of a group use a random generator seeded by ``(seed, qid, positive docno)`` only, so a group does
  not change when ``max_queries`` or the other topics change; the negatives keep the order they were drawn in.
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

__all__ = ['training_groups', 'group_lengths', 'groups_frame', 'LAST_STATS']

#: Counts of the last :func:`training_groups` call: ``groups``, ``queries``, ``skipped_queries`` (no relevant
#: document), ``filled_from_corpus`` (negatives drawn from the corpus because the BM25 pool was too small),
#: ``judged_without_text`` (judged documents left out: the collection has no text for them).
LAST_STATS: Dict[str, int] = {}


def _rng(seed: int, *keys: str) -> np.random.Generator:
    digest = hashlib.sha256('\x1f'.join([str(seed), *keys]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], 'little'))


def _without_text(coll: Any, docnos: List[str]) -> set:
    """Those of ``docnos`` that have no text in ``coll``."""
    from pyterrier_llmrank.datasets.errors import UnknownDocnoError
    try:
        coll.get_texts(docnos)
    except UnknownDocnoError as e:
        return set(e.docnos)
    return set()


def training_groups(dataset: Any, *, n_negatives: int, negatives: str = 'bm25', depth: int = 100, seed: int = 42,
                    max_queries: Optional[int] = None, qids: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Builds training groups (query, one positive, ``n_negatives`` negatives) from a collection.

    Args:
        dataset: A :class:`~pyterrier_llmrank.datasets.Collection` or a name / path accepted by
            :func:`pyterrier_llmrank.datasets.load` (e.g. ``'beir-scifact/train'``).
        n_negatives: Negatives per group (>= 0).
        negatives: ``'bm25'`` (hard negatives from the BM25 top ``depth``), ``'judged'`` (documents judged lower
            than the positive, then BM25) or ``'random'`` (from the corpus).
        depth: BM25 depth of the hard-negative pool.
        seed: Seed of the negative sampling.
        max_queries: Keep only the first ``max_queries`` topics having a relevant document (``None``: all).
        qids: Keep only these topics (``None``: all); applied before ``max_queries``.

    Returns:
        A list of dicts ``{'qid', 'query', 'positive' (text), 'negatives' (list of texts), 'positive_docno',
        'negative_docnos'}`` in the order described in the module documentation.

    Raises:
        ValueError: On an unknown ``negatives`` mode, a negative count, or a corpus too small to draw from.
    """
    from pyterrier_llmrank import datasets
    if negatives not in ('bm25', 'judged', 'random'):
        raise ValueError(f"negatives must be 'bm25', 'judged' or 'random', got {negatives!r}")
    if n_negatives < 0:
        raise ValueError('n_negatives must be >= 0')
    if depth < 1:
        raise ValueError('depth must be >= 1')
    coll = datasets.load(dataset)
    topics = coll.get_topics()
    qrels = coll.get_qrels()
    without_text = _without_text(coll, qrels['docno'].astype(str).unique().tolist())
    if without_text:  # candidate-only collections (TREC DL here) judged documents that have no text
        qrels = qrels[~qrels['docno'].astype(str).isin(without_text)]
    relevant = qrels[qrels['label'] > 0]
    rel_by_qid: Dict[str, List[str]] = {q: sorted(set(g['docno'].astype(str))) for q, g in relevant.groupby('qid')}
    label_of: Dict[str, Dict[str, int]] = {}
    for q, d, lab in zip(qrels['qid'].astype(str), qrels['docno'].astype(str), qrels['label']):
        label_of.setdefault(q, {})[d] = int(lab)
    if qids is not None:
        wanted = {str(q) for q in qids}
        unknown = wanted - set(coll.get_topics()['qid'].astype(str))
        if unknown:
            raise ValueError(f'qids: {len(unknown)} qid(s) are not topics of {coll.name}, e.g. {sorted(unknown)[:3]}')
        topics = topics[topics['qid'].astype(str).isin(wanted)]
    topics = topics[topics['qid'].isin(rel_by_qid)].reset_index(drop=True)
    skipped = len(coll.get_topics()) - len(topics)
    if max_queries is not None:
        topics = topics.iloc[:max_queries].reset_index(drop=True)

    pools: Dict[str, List[str]] = {}

    def pool_of(qid: str) -> List[str]:  # BM25 pools, retrieved for all topics at the first need
        if not pools:
            run = coll.bm25(num_results=depth)(topics[['qid', 'query']])
            run = run.sort_values(['qid', 'rank'] if 'rank' in run.columns else ['qid', 'score'],
                                  ascending=[True, True] if 'rank' in run.columns else [True, False])
            for q, g in run.groupby('qid', sort=False):
                excluded = set(rel_by_qid.get(str(q), ()))
                pools[str(q)] = [d for d in g['docno'].astype(str).tolist() if d not in excluded]
            pools.setdefault('', [])
        return pools.get(qid, [])

    all_docnos: Optional[List[str]] = None
    filled = 0
    groups: List[Dict[str, Any]] = []
    for qid, query in zip(topics['qid'].astype(str), topics['query']):
        excluded = set(rel_by_qid[qid])
        for pos in rel_by_qid[qid]:
            rng = _rng(seed, qid, pos)
            chosen: List[str] = []
            if negatives == 'judged':
                labels = label_of.get(qid, {})
                lower = sorted(d for d, lab in labels.items() if lab < labels[pos])
                take = min(n_negatives, len(lower))
                chosen = [lower[i] for i in rng.choice(len(lower), size=take, replace=False)] if take else []
            if negatives in ('bm25', 'judged') and len(chosen) < n_negatives:
                pool = [d for d in pool_of(qid) if d not in chosen]
                take = min(n_negatives - len(chosen), len(pool))
                chosen += [pool[i] for i in rng.choice(len(pool), size=take, replace=False)] if take else []
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
                if negatives != 'random':
                    filled += missing
            groups.append({'qid': qid, 'query': query, 'positive_docno': pos, 'negative_docnos': chosen})

    docnos = sorted({g['positive_docno'] for g in groups} | {d for g in groups for d in g['negative_docnos']})
    texts = dict(zip(docnos, coll.get_texts(docnos)))
    for g in groups:
        g['positive'] = texts[g['positive_docno']]
        g['negatives'] = [texts[d] for d in g['negative_docnos']]
    LAST_STATS.clear()
    LAST_STATS.update(groups=len(groups), queries=len(topics), skipped_queries=skipped, filled_from_corpus=filled,
                      judged_without_text=len(without_text))
    return [{k: g[k] for k in ('qid', 'query', 'positive', 'negatives', 'positive_docno', 'negative_docnos')}
            for g in groups]


def group_lengths(groups: List[Dict[str, Any]]) -> List[int]:
    """The length of each group (characters of its query times its documents, plus its documents' texts): what
    the training loop sorts by when ``group_by_length`` is on."""
    return [len(g['query']) * (1 + len(g['negatives'])) + sum(len(t) for t in [g['positive'], *g['negatives']])
            for g in groups]


def groups_frame(groups: List[Dict[str, Any]]) -> pd.DataFrame:
    """The groups as a long frame (qid, query, docno, text, label): one row per positive or negative."""
    rows = []
    for g in groups:
        rows.append((g['qid'], g['query'], g['positive_docno'], g['positive'], 1))
        rows += [(g['qid'], g['query'], d, t, 0) for d, t in zip(g['negative_docnos'], g['negatives'])]
    return pd.DataFrame(rows, columns=['qid', 'query', 'docno', 'text', 'label'])
