"""Cascades over passages as PyTerrier pipelines: IDCM's idea for any pair of scorers.

IDCM (Hofstätter et al., SIGIR 2021; :mod:`pyterrier_llmrank.idcm`) cuts a long document into windows, lets a
cheap model pick the few windows worth an expensive model's time, and combines the expensive scores of the
picked windows into the document's score. The same cascade at the pipeline level, for any scorers::

    split_passages() >> cheap >> TopPassages(k) >> expensive >> aggregate_passages('max')

built by :func:`passage_cascade`. For example, MiniLM (a bi-encoder,
:func:`pyterrier_llmrank.dense.minilm_scorer`) choosing two passages per document for UPR on SmolLM2::

    import pyterrier_llmrank as llmrank
    cascade = llmrank.passage_cascade(llmrank.minilm_scorer(), llmrank.UPR('smollm2-135m-instruct'), k=2)
    pipeline = bm25 % 20 >> text_loader >> cascade

Passages follow PyTerrier's convention (``pt.text.sliding``): passage ``i`` of document ``d`` has docno
``d%p{i}``, so PyTerrier's own aggregators (``pt.text.max_passage()``, ``first_passage()``, ``mean_passage()``)
apply; ``aggregate_passages('max'|'first')`` uses them. The splitter is our own because
``pt.text.sliding`` drops the tokens after the last full window (``more_itertools.windowed`` pads the last
window, which ``slidingWindow`` then discards): here the last passage is shorter instead, and every token of
the document is in some passage.

The selection and aggregation steps take passage rows only: a docno without the ``%p<i>`` suffix (a document
that was not split) raises a ``ValueError`` naming the expected form. A NaN score counts as lower than every number
(the rule of :func:`pyterrier_llmrank.fusion.add_ranks`): such a passage is chosen last by :class:`TopPassages`,
and a document's aggregate that takes it in (its only passages for ``'max'``, its first for ``'first'``, any of
them for ``'mean'``, one of the ``k`` summed for ``'sum'``) is NaN and ranks last.

Duplicate docnos: the rerankers keep and score each row (:mod:`pyterrier_llmrank.base`), but a document's passages
are told apart from another document's only by the docno, so :func:`split_passages` refuses a docno that appears
twice for one query, and :func:`aggregate_passages` a passage docno that appears twice, with a ``ValueError`` naming
them (no copy is merged or dropped silently).
"""
from __future__ import annotations

import re
from typing import Any, List, Optional

import numpy as np
import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta

from pyterrier_llmrank.base import require_values
from pyterrier_llmrank.fusion import add_ranks

__all__ = ['split_passages', 'SplitPassages', 'TopPassages', 'aggregate_passages', 'SumPassages',
           'passage_cascade', 'PASSAGE_SEP']

#: Separator between a document's docno and its passage number (PyTerrier's ``pt.text`` convention).
PASSAGE_SEP = '%p'

_WS = re.compile(r'\s+')
_PASSAGE_DOCNO = re.compile('^(?P<doc>.*)' + re.escape(PASSAGE_SEP) + r'(?P<pid>\d+)$', re.DOTALL)


def _refuse_duplicates(inp: pd.DataFrame, who: str, what: str) -> None:
    """A ``ValueError`` naming the docnos that appear more than once for a query (see the module docstring)."""
    dup = inp.duplicated(['qid', 'docno'], keep=False).to_numpy()
    if dup.any():
        pairs = list(dict.fromkeys(zip(inp['qid'].to_numpy()[dup].tolist(), inp['docno'].astype(str).to_numpy()[dup])))
        raise ValueError(f'{who}: {len(pairs)} {what} docno(s) appear more than once for a query (duplicate rows), '
                         f'e.g. (qid, docno) {pairs[:3]}; their passages could not be told apart when aggregated. '
                         f'Drop or rename the duplicates first (inp.drop_duplicates(["qid", "docno"]))')


def _passage_parts(docnos: pd.Series, who: str) -> pd.DataFrame:
    """``doc`` and ``pid`` (int) of passage docnos ``<docno>%p<i>``; a ValueError naming the form otherwise."""
    parts = docnos.astype(str).str.extract(_PASSAGE_DOCNO)
    bad = parts['pid'].isna()
    if bad.any():
        examples = docnos[bad].astype(str).unique()[:3].tolist()
        raise ValueError(f'{who} takes passages, whose docno is "<docno>{PASSAGE_SEP}<i>" (from split_passages or '
                         f'pt.text.sliding); {int(bad.sum())} row(s) have document docnos such as {examples}: '
                         f'split the documents with split_passages() first')
    return pd.DataFrame({'doc': parts['doc'], 'pid': parts['pid'].astype(int)}, index=docnos.index)


class SplitPassages(pt.Transformer):
    """Split each document's text into passages of ``length`` tokens every ``stride`` tokens.

    Tokens are whitespace-separated words (or a tokenizer's tokens, as ``pt.text.sliding``). Passage ``i``
    holds tokens ``i * stride .. i * stride + length - 1``; passages start while the previous one did not reach
    the end, so the last may be shorter and every token is covered. A document of at most ``length`` tokens
    (including an empty one, or a missing text) is one passage. Docnos become ``docno%p{i}``; every other column is
    kept (a document's score and rank are copied to its passages). The input is a result frame to re-rank
    (``qid``, ``query``, ``docno`` and the text); a docno twice for one query raises a ``ValueError`` (see the
    module docstring).

    Args:
        length, stride: passage length and step in tokens (``stride <= length``).
        text_field: the column to split.
        title_field: a column prepended to each passage (``title + ' ' + passage``), or ``None``.
        tokenizer: an object with ``tokenize`` and ``convert_tokens_to_string`` (default: whitespace words).
    """

    def __init__(self, length: int = 128, stride: int = 64, *, text_field: str = 'text',
                 title_field: Optional[str] = None, tokenizer: Any = None) -> None:
        if length < 1 or stride < 1 or stride > length:
            raise ValueError('need length >= 1 and 1 <= stride <= length')
        self.length = length
        self.stride = stride
        self.text_field = text_field
        self.title_field = title_field
        self.tokenizer = tokenizer

    def __repr__(self) -> str:
        return f'SplitPassages(length={self.length}, stride={self.stride})'

    def _tokens(self, text: Any) -> List[str]:
        text = text if isinstance(text, str) else ''
        if self.tokenizer is not None:
            return self.tokenizer.tokenize(text)
        return [t for t in _WS.split(text) if t]

    def _join(self, tokens: List[str]) -> str:
        if self.tokenizer is not None:
            return self.tokenizer.convert_tokens_to_string(tokens)
        return ' '.join(tokens)

    def spans(self, n_tokens: int) -> List[tuple]:
        """``(start, end)`` token spans of the passages of a document of ``n_tokens`` tokens."""
        spans = [(0, min(self.length, n_tokens))]
        while spans[-1][1] < n_tokens:
            start = spans[-1][0] + self.stride
            spans.append((start, min(start + self.length, n_tokens)))
        return spans

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:  # noqa: D102
        cols = [self.text_field] + ([self.title_field] if self.title_field else [])
        pta.validate.result_frame(inp, extra_columns=['query', *cols])
        if len(inp) == 0:
            return inp.copy()
        require_values(inp, ['qid', 'docno'], 'split_passages')
        _refuse_duplicates(inp, 'split_passages', 'document')
        rows = []
        for rec in inp.to_dict('records'):
            toks = self._tokens(rec[self.text_field])
            for i, (a, b) in enumerate(self.spans(len(toks))):
                new = dict(rec)
                new['docno'] = f"{rec['docno']}{PASSAGE_SEP}{i}"
                text = self._join(toks[a:b])
                if self.title_field:
                    title = rec[self.title_field]
                    text = f'{title if isinstance(title, str) else ""} {text}'
                new[self.text_field] = text
                rows.append(new)
        return pd.DataFrame(rows, columns=inp.columns)


def split_passages(length: int = 128, stride: int = 64, *, text_field: str = 'text', title_field: Optional[str] = None,
                   tokenizer: Any = None) -> SplitPassages:
    """A :class:`SplitPassages` transformer (see there)."""
    return SplitPassages(length, stride, text_field=text_field, title_field=title_field, tokenizer=tokenizer)


class TopPassages(pt.Transformer):
    """Keep the ``k`` best-scored passages of each document (``per='document'``, IDCM's selection) or of each
    query (``per='query'``, the same as ``% k`` on the passages).

    With ``per='query'``, a document none of whose passages is among the query's top ``k`` leaves the
    pipeline (as with ``% k`` anywhere in PyTerrier). Ties are broken by the passages' order in the input.
    """

    def __init__(self, k: int, per: str = 'document') -> None:
        if k < 1:
            raise ValueError('k must be >= 1')
        if per not in ('document', 'query'):
            raise ValueError("per must be 'document' or 'query'")
        self.k = k
        self.per = per

    def __repr__(self) -> str:
        return f'TopPassages({self.k}, per={self.per!r})'

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:  # noqa: D102
        pta.validate.result_frame(inp, extra_columns=['score'])
        if len(inp) == 0:
            return inp.copy()
        frame = inp.reset_index(drop=True)
        parts = _passage_parts(frame['docno'], 'TopPassages')
        tmp = pd.DataFrame({'qid': frame['qid'], '_doc': parts['doc'], '_pid': parts['pid'],
                            'score': frame['score'].astype('float64').fillna(-np.inf), '_pos': np.arange(len(frame))})
        order = tmp.sort_values(['score', '_pid', '_pos'], ascending=[False, True, True], kind='stable')
        keys = ['qid'] if self.per == 'query' else ['qid', '_doc']
        ranks = order.groupby(keys, sort=False).cumcount()
        keep = np.sort(ranks[ranks < self.k].index.to_numpy())
        return add_ranks(frame.iloc[keep].reset_index(drop=True))


class SumPassages(pt.Transformer):
    """A document's score: the sum of its ``k`` best passage scores (``k=None``: all; fewer when it has fewer).

    A NaN passage score is lower than every number: the sum is NaN (ranked last) when one is among the summed.
    Output: one row per (qid, document) with the query columns, ``docno``, ``score`` and ``rank``.
    """

    def __init__(self, k: Optional[int] = None) -> None:
        if k is not None and k < 1:
            raise ValueError('k must be >= 1 or None')
        self.k = k

    def __repr__(self) -> str:
        return f'SumPassages({self.k})'

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:  # noqa: D102
        pta.validate.result_frame(inp, extra_columns=['score'])
        qcols = [c for c in pt.model.query_columns(inp) if c in inp.columns]
        if len(inp) == 0:
            return pd.DataFrame(columns=[*qcols, 'docno', 'score', 'rank'])
        frame = inp.assign(docno=_passage_parts(inp['docno'], 'SumPassages')['doc'])
        k = self.k

        def agg(s: pd.Series) -> float:
            v = np.sort(np.nan_to_num(s.to_numpy(dtype='float64'), nan=-np.inf, posinf=np.inf, neginf=-np.inf))[::-1]
            total = float(v[:k].sum() if k else v.sum())
            return total if total != -np.inf else float('nan')

        scores = frame.groupby(['qid', 'docno'], sort=False)['score'].agg(agg).reset_index()
        out = scores.merge(frame[qcols].drop_duplicates('qid'), on='qid')[[*qcols, 'docno', 'score']]
        return add_ranks(out)


class _Aggregate(pt.Transformer):
    """Passages back to documents (see :func:`aggregate_passages`)."""

    def __init__(self, method: str, k: Optional[int]) -> None:
        self.method = method
        self.k = k
        if method == 'max':
            self.inner = pt.text.max_passage()
        elif method == 'first':
            self.inner = pt.text.first_passage()
        elif method == 'mean':  # the best passage's row (as 'max'), with the mean score: extra columns kept
            self.inner = pt.text.max_passage()
        else:
            self.inner = SumPassages(k)

    def __repr__(self) -> str:
        return f'aggregate_passages({self.method!r}' + (f', k={self.k})' if self.method == 'sum' else ')')

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:  # noqa: D102
        pta.validate.result_frame(inp, extra_columns=['score'])
        if len(inp) == 0:
            qcols = [c for c in pt.model.query_columns(inp) if c in inp.columns]
            return pd.DataFrame(columns=[*qcols, 'docno', 'score', 'rank'])
        who = f'aggregate_passages({self.method!r})'
        parts = _passage_parts(inp['docno'], who)
        _refuse_duplicates(inp, who, 'passage')
        frame = inp.drop(columns=['olddocno', 'pid'], errors='ignore')
        nan = frame['score'].isna().any()
        if nan:  # pt.text's aggregators fail on NaN: a NaN is lower than every number
            frame = frame.assign(score=frame['score'].astype('float64').fillna(-np.inf))
        out = self.inner(frame).drop(columns=['olddocno', 'pid'], errors='ignore').reset_index(drop=True)
        if self.method == 'mean':
            means = frame['score'].astype('float64').groupby([frame['qid'], parts['doc']], sort=False).mean()
            out['score'] = [means[(q, d)] for q, d in zip(out['qid'], out['docno'])]
        if nan:
            out['score'] = out['score'].astype('float64').replace(-np.inf, np.nan)
        return add_ranks(out)


def aggregate_passages(method: str = 'max', k: Optional[int] = None) -> pt.Transformer:
    """Passage scores back to document scores.

    * ``'max'``: the best passage's score (``pt.text.max_passage()``; the row of that passage is kept);
    * ``'first'``: the score of the document's first passage among those present (``pt.text.first_passage()``);
    * ``'mean'``: the mean of its passages' scores (as ``pt.text.mean_passage()``), on the row of its best passage as
      ``'max'``, so that the other columns are kept;
    * ``'sum'``: the sum of its ``k`` best passage scores (:class:`SumPassages`; ``k=None`` sums all), IDCM's
      top-k combination with equal weights.
    """
    if method not in ('max', 'first', 'mean', 'sum'):
        raise ValueError("method must be 'max', 'first', 'mean' or 'sum'")
    return _Aggregate(method, k)


def passage_cascade(cheap: Optional[pt.Transformer], expensive: pt.Transformer, k: int = 2, *, per: str = 'document',
                    length: int = 128, stride: int = 64, aggregate: str = 'max', aggregate_k: Optional[int] = None,
                    text_field: str = 'text', title_field: Optional[str] = None) -> pt.Transformer:
    """Split documents into passages, let ``cheap`` pick ``k`` passages, score them with ``expensive``, aggregate.

    The pipeline is ``split_passages(length, stride) >> cheap >> TopPassages(k, per) >> expensive >>
    aggregate_passages(aggregate, aggregate_k)``; with ``cheap=None`` the expensive scorer sees every passage
    (``split_passages >> expensive >> aggregate``), the baseline a cascade is compared with.

    Args:
        cheap: a scorer of (query, passage) rows (a bi-encoder:
            :func:`pyterrier_llmrank.dense.minilm_scorer`; BM25 text scoring; ...).
        expensive: a reranker of (query, passage) rows (any reranker of this toolkit).
        k: passages kept per document (``per='document'``, as IDCM's ``sample_n``) or per query (``per='query'``).
        length, stride: passage length and step in words (see :class:`SplitPassages`).
        aggregate, aggregate_k: see :func:`aggregate_passages`.
        text_field, title_field: the text column, and a column prepended to every passage (or ``None``).
    """
    split = split_passages(length, stride, text_field=text_field, title_field=title_field)
    agg = aggregate_passages(aggregate, aggregate_k)
    if cheap is None:
        return split >> expensive >> agg
    return split >> cheap >> TopPassages(k, per) >> expensive >> agg

