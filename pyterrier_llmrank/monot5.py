"""MonoT5 and DuoT5: sequence-to-sequence relevance classifiers reading the logits of ``true``/``false``.

* MonoT5 (pointwise): Nogueira, Jiang, Pradeep, Lin: "Document Ranking with a Pretrained
  Sequence-to-Sequence Model", Findings of EMNLP 2020.
* DuoT5 (pairwise): Pradeep, Nogueira, Lin: "The Expando-Mono-Duo Design Pattern for Text Ranking with
  Pretrained Sequence-to-Sequence Models", arXiv 2101.05667, 2021.

Both give the same scores as pyterrier-t5's ``MonoT5ReRanker``/``DuoT5ReRanker`` at ``batch_size=1``
(terrierteam/pyterrier_t5 ``pyterrier_t5/__init__.py``, version 0.3.0), and the same scores at every batch
size: each input is encoded on its own and right-padded *after* its ``Relevant:`` suffix, whereas
pyterrier-t5 pads the query/document part of a batch and appends ``Relevant:`` after the padding, so that
its scores for a pair change with the pair's batch mates. Inputs are scored in batches of similar length
(sorted), under ``torch.inference_mode``, and only the two logits read are computed.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any, List, Sequence, Tuple

import numpy as np
import pandas as pd
import pyterrier as pt
import torch
from torch.nn import functional as F

from pyterrier_llmrank import models
from pyterrier_llmrank.base import MAX_PADDING, OneOf, PointwiseReranker, QueryCandidates, QueryReranker, length_batches

__all__ = ['MonoT5', 'DuoT5', 't5_tokenizer_source', 'load_t5_tokenizer', 'DEFAULT_T5_TOKENIZER', 'T5_TOKENIZER_FILES',
           'MONOT5_TEMPLATE', 'MONOT5_SUFFIX', 'DUOT5_QUERY_TEMPLATE', 'DUOT5_DOC0_TEMPLATE',
           'DUOT5_DOC1_TEMPLATE', 'DUOT5_SUFFIX', 'TRUE_TOKEN', 'FALSE_TOKEN', 't5_true_logprobs']

# Input templates and target words of castorini's monoT5/duoT5 checkpoints, as pyterrier-t5 writes them
# (terrierteam/pyterrier_t5 pyterrier_t5/__init__.py, MonoT5ReRanker.transform / DuoT5ReRanker.transform).
MONOT5_TEMPLATE = 'Query: {q} Document: {d}'
MONOT5_SUFFIX = 'Relevant:'
DUOT5_QUERY_TEMPLATE = 'Query: {q}'
DUOT5_DOC0_TEMPLATE = 'Document0: {d}'
DUOT5_DOC1_TEMPLATE = 'Document1: {d}'
DUOT5_SUFFIX = 'Relevant:'
TRUE_TOKEN = 'true'
FALSE_TOKEN = 'false'

#: pyterrier-t5 warns above this many documents per query (DuoT5 is quadratic in it).
DUOT5_WARN_DOCS = 50

#: pyterrier-t5's default tokenizer (``tok_model='t5-base'``), used when the model folder has none.
DEFAULT_T5_TOKENIZER = 't5-base'
#: Files that give a model folder its own tokenizer (castorini's monoT5/duoT5 folders ship only ``spiece.model``,
#: which transformers converts with its SentencePiece converter; that needs ``protobuf``).
T5_TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'spiece.model')


def t5_tokenizer_source(tok_model: Any, model: Any) -> str:
    """Where the tokenizer of a T5 reranker comes from: ``tok_model`` when given; else the model folder when it
    holds one of :data:`T5_TOKENIZER_FILES`; else :data:`DEFAULT_T5_TOKENIZER` (pyterrier-t5's default)."""
    if tok_model is not None:
        return models.resolve_model_path(tok_model)
    path = models.resolve_model_path(model)
    if os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in T5_TOKENIZER_FILES):
        return path
    return DEFAULT_T5_TOKENIZER


def load_t5_tokenizer(tok_model: Any, model: Any) -> Any:
    """The tokenizer chosen by :func:`t5_tokenizer_source`, with an error that says what was looked for."""
    from transformers import AutoTokenizer
    source = t5_tokenizer_source(tok_model, model)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        if tok_model is not None:
            looked = f'tok_model={str(tok_model)!r}'
        else:
            looked = (f'the model {str(model)!r} has none of {", ".join(T5_TOKENIZER_FILES)}, so the default '
                      f'tok_model={DEFAULT_T5_TOKENIZER!r} was tried')
        raise OSError(f'no T5 tokenizer could be loaded: {looked} (a hub name needs the network or the Hugging Face '
                      f'cache; pass tok_model= a local folder with a tokenizer); cause: {e}') from e


def _chop_eos(ids: List[int], eos: Any) -> List[int]:
    """Drop the trailing EOS the tokenizer adds (pyterrier-t5: ``enc[:, :-1]``)."""
    return ids[:-1] if ids and ids[-1] == eos else ids


def _right_pad(seqs: Sequence[Sequence[int]], pad: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def t5_true_logprobs(model: Any, seqs: Sequence[Sequence[int]], rel: int, nrel: int, pad: int) -> List[float]:
    """``log_softmax`` over the logits of (``rel``, ``nrel``) at the first decoder step, taken at ``rel``.

    The sequences are right-padded (pads masked), so a sequence's score does not depend on the others.
    For T5-family models only the two rows of the output projection that are read are computed; any other
    encoder-decoder model goes through its full forward pass.
    """
    dev = next(model.parameters()).device
    ids, mask = _right_pad(seqs, pad, dev)
    dec = torch.full((len(seqs), 1), model.config.decoder_start_token_id, dtype=torch.long, device=dev)
    head = getattr(model, 'lm_head', None)
    if (isinstance(head, torch.nn.Linear) and hasattr(model.config, 'scale_decoder_outputs')
            and hasattr(model, 'model_dim') and hasattr(model, 'get_encoder') and hasattr(model, 'get_decoder')):
        enc = model.get_encoder()(input_ids=ids, attention_mask=mask)
        hidden = model.get_decoder()(input_ids=dec, encoder_hidden_states=enc[0], encoder_attention_mask=mask,
                                     use_cache=False)[0][:, 0]
        if model.config.scale_decoder_outputs:  # as T5ForConditionalGeneration.forward (tied head)
            hidden = hidden * (model.model_dim ** -0.5)
        logits = F.linear(hidden, head.weight[[rel, nrel]], None if head.bias is None else head.bias[[rel, nrel]])
    else:
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=False).logits[:, 0, [rel, nrel]]
    return F.log_softmax(logits.float(), dim=1)[:, 0].cpu().tolist()


class _T5Mixin:
    """Model loading, target ids and repr shared by MonoT5 and DuoT5."""

    def _load(self, tok_model: Any, model: Any, device: Any, dtype: Any) -> None:
        given = isinstance(model, (tuple, models.LoadedModel))
        tokenizer = None if given else load_t5_tokenizer(tok_model, model)
        self._use_model(models.load_seq2seq_lm, model, device=device, dtype=dtype, tokenizer=tokenizer)
        self.tok_model = None if given else t5_tokenizer_source(tok_model, model)
        # pyterrier-t5: self.REL = tokenizer.encode('true')[0]; self.NREL = tokenizer.encode('false')[0]
        self.REL = self.tokenizer.encode(TRUE_TOKEN)[0]
        self.NREL = self.tokenizer.encode(FALSE_TOKEN)[0]
        self.eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        self.pad = int(pad if pad is not None else (self.model.config.pad_token_id or 0))
        # pyterrier-t5 uses config.n_positions (T5: 512) and falls back to 512 for mT5, whose config lacks it
        self.max_length = int(getattr(self.model.config, 'n_positions', None) or 512)

    def _repr_args(self) -> str:
        return self.model_name

    def _ids(self, texts: List[str]) -> List[List[int]]:
        if not texts:
            return []
        return [_chop_eos(list(x), self.eos) for x in self.tokenizer(texts)['input_ids']]


class MonoT5(_T5Mixin, PointwiseReranker):
    """MonoT5 pointwise reranker: score = log P(``true``) against ``false`` after ``Query: q Document: d Relevant:``.

    Nogueira, Jiang, Pradeep, Lin: "Document Ranking with a Pretrained Sequence-to-Sequence Model",
    Findings of EMNLP 2020. Checkpoints: ``castorini/monot5-{small,base,large,3b}-msmarco[-10k]``.

    The input is built as pyterrier-t5 does for one pair: the ids of ``MONOT5_TEMPLATE`` without EOS, cut
    to ``n_positions - len(ids('Relevant:'))`` tokens (the document, at the end, loses its tail), then the
    ids of ``Relevant:`` with EOS, which always survive. The decoder gets the start token and the score is
    ``log_softmax(logits[true, false])[true]``. Scores equal pyterrier-t5's ``MonoT5ReRanker`` at
    ``batch_size=1`` and do not depend on the batch size (see the module docstring).

    Args:
        tok_model: tokenizer name or folder; ``None``: the model folder's own tokenizer when it has one
            (``tokenizer.json``, ``tokenizer_config.json`` or ``spiece.model``), else ``'t5-base'`` as pyterrier-t5
            (ignored when ``model`` is a ``(model, tokenizer)`` pair).
        model: hub name, local folder or ``(model, tokenizer)`` pair.
        batch_size: the most sequences per forward pass (sorted by length; a batch is cut where its padding would
            pass ``max_padding``, 10% of its tokens: see :func:`~pyterrier_llmrank.base.length_batches`).
        text_field: column holding the document text.
        device: ``'auto'`` (cuda if available), ``'cpu'``, ``'cuda:0'``, ... (``None``: auto, as pyterrier-t5).
        verbose: show a progress bar over batches.
        dtype: ``'auto'`` (bfloat16 on capable GPUs, float32 on the CPU), a ``torch.dtype`` or its name.

    Example::

        bm25 = pt.terrier.Retriever(index, wmodel='BM25') >> pt.text.get_text(dataset, 'text')
        pipeline = bm25 % 100 >> MonoT5()
    """

    label = 'MonoT5'

    def __init__(self, tok_model: Any = None, model: Any = 'castorini/monot5-base-msmarco', batch_size: int = 16,
                 text_field: str = 'text', device: Any = 'auto', verbose: bool = False, dtype: Any = 'auto') -> None:
        super().__init__(text_field=text_field, batch_size=batch_size, verbose=verbose)
        self._load(tok_model, model, device, dtype)
        self.suffix = list(self.tokenizer(MONOT5_SUFFIX)['input_ids'])  # 'Relevant:' and EOS
        self.max_prefix = self.max_length - len(self.suffix)

    def encode(self, query: str, text: str) -> List[int]:
        """Encoder input ids of one pair (what the model reads)."""
        return self._encode_texts([query], [text])[0]

    def _encode_texts(self, queries: Sequence[Any], texts: Sequence[Any]) -> List[List[int]]:
        prompts = [MONOT5_TEMPLATE.format(q=q, d=d) for q, d in zip(queries, texts)]
        return [ids[:self.max_prefix] + self.suffix for ids in self._ids(prompts)]

    def _encode(self, inp: pd.DataFrame) -> List[List[int]]:
        return self._encode_texts(inp['query'].tolist(), inp[self.text_field].tolist())

    def _score_batch(self, items: List[List[int]]) -> Sequence[float]:
        return t5_true_logprobs(self.model, items, self.REL, self.NREL, self.pad)


class DuoT5(_T5Mixin, QueryReranker):
    """DuoT5 pairwise reranker: every ordered pair of a query's documents is compared by the model.

    Pradeep, Nogueira, Lin: "The Expando-Mono-Duo Design Pattern for Text Ranking with Pretrained
    Sequence-to-Sequence Models", arXiv 2101.05667, 2021. Checkpoints: ``castorini/duot5-{base,3b}-msmarco[-10k]``.

    The input of a pair is ``Query: q Document0: d0 Document1: d1 Relevant:``, built from the three parts
    tokenized separately (EOS chopped) as pyterrier-t5 does; when the parts exceed the budget
    ``n_positions - len(ids('Relevant:'))``, ``ceil(excess / 2)`` tokens are cut from the end of each
    document (per pair; pyterrier-t5 decides it per batch, on padded widths). Where that rule cannot fit the
    budget (one document shorter than the cut, or a long query), pyterrier-t5 runs the model past
    ``n_positions`` (a 50k-word document or a 2k-word query exhausts memory); here, a deviation from
    pyterrier-t5 in those cases only, every input fits: the query is cut to what the documents leave of the
    budget but keeps at least half of it, the shorter document keeps up to half of the rest and the longer one
    the remainder. With ``s`` the log-probability
    of ``true`` (d0 more relevant than d1), the aggregation is pyterrier-t5's ``sum``:
    ``score[d0] += s; score[d1] += 1 - s`` (mixing a log-probability with ``1 - s``, kept as is so that
    figures match pyterrier-t5 and its regression tests). A query with ``n`` documents costs ``n (n - 1)``
    sequences: rerank a short list (``% 10`` to ``% 50``), e.g. after MonoT5.

    Pairs of a few queries at a time are sorted by length and scored in batches of at most ``batch_size`` whose
    padding stays within ``max_padding`` of their tokens (:func:`~pyterrier_llmrank.base.length_batches`). Each input row
    is scored on its own: two rows with the same docno (a duplicate in the input) get their own scores, where
    pyterrier-t5 would add the copies' scores together.

    Args:
        tok_model: tokenizer name or folder; ``None``: the model folder's own tokenizer when it has one
            (``tokenizer.json``, ``tokenizer_config.json`` or ``spiece.model``), else ``'t5-base'`` as pyterrier-t5
            (ignored when ``model`` is a ``(model, tokenizer)`` pair).
        model: hub name, local folder or ``(model, tokenizer)`` pair.
        batch_size: the most pairs per forward pass (batches are cut by padding, as MonoT5's).
        text_field: column holding the document text.
        device: ``'auto'`` (cuda if available), ``'cpu'``, ``'cuda:0'``, ... (``None``: auto).
        verbose: show a progress bar over pairs.
        agg: aggregation of pair scores; only ``'sum'`` (as pyterrier-t5).
        dtype: ``'auto'``, a ``torch.dtype`` or its name.

    Example::

        pipeline = bm25 % 100 >> MonoT5() % 10 >> DuoT5()
    """

    label = 'DuoT5'
    ARGUMENTS = {'agg': OneOf('sum')}
    #: padding budget of a batch (:func:`~pyterrier_llmrank.base.length_batches`); set on an instance to change it
    max_padding: float = MAX_PADDING

    def __init__(self, tok_model: Any = None, model: Any = 'castorini/duot5-base-msmarco', batch_size: int = 16,
                 text_field: str = 'text', device: Any = 'auto', verbose: bool = False, agg: str = 'sum',
                 dtype: Any = 'auto') -> None:
        super().__init__(text_field=text_field, batch_size=batch_size, verbose=verbose)
        self.check_arguments(agg=agg)
        self.agg = agg
        self._load(tok_model, model, device, dtype)
        self.suffix = list(self.tokenizer(DUOT5_SUFFIX)['input_ids'])
        self.max_prefix = self.max_length - len(self.suffix)
        self.chunk_pairs = max(1024, 64 * batch_size)  # pairs encoded and sorted at once (bounds memory)

    def pair_ids(self, query: List[int], doc0: List[int], doc1: List[int]) -> List[int]:
        """Encoder input of one pair from the parts' ids (EOS chopped), always within ``n_positions``: trimmed as
        pyterrier-t5 does when that fits, else within the budget described in the class docstring."""
        budget = self.max_prefix
        excess = len(query) + len(doc0) + len(doc1) - budget
        if excess <= 0:
            return query + doc0 + doc1 + self.suffix
        cut = math.ceil(excess / 2)
        if cut <= len(doc0) and cut <= len(doc1):  # pyterrier-t5's rule fits: the same input as pyterrier-t5
            return query + doc0[:len(doc0) - cut] + doc1[:len(doc1) - cut] + self.suffix
        # one document shorter than the cut, or a long query: the query keeps what the documents leave of the
        # budget, at least half of it; the shorter document keeps up to half of the rest, the longer the remainder
        query = query[:max(budget - len(doc0) - len(doc1), budget // 2)]
        room = budget - len(query)
        short = min(len(doc0), len(doc1), room // 2)
        keep0, keep1 = (short, room - short) if len(doc0) <= len(doc1) else (room - short, short)
        return query + doc0[:keep0] + doc1[:keep1] + self.suffix

    def encode(self, query: str, text0: str, text1: str) -> List[int]:
        """Encoder input ids of one pair (what the model reads)."""
        q, = self._ids([DUOT5_QUERY_TEMPLATE.format(q=query)])
        d0, = self._ids([DUOT5_DOC0_TEMPLATE.format(d=text0)])
        d1, = self._ids([DUOT5_DOC1_TEMPLATE.format(d=text1)])
        return self.pair_ids(q, d0, d1)

    def _rerank_queries(self, queries: List[QueryCandidates]) -> List[np.ndarray]:
        big = max(len(q) for q in queries)
        if big > DUOT5_WARN_DOCS:
            warnings.warn(f'A large number of results per query was detected ({big}). Since DuoT5 is an O(n^2) '
                          'operation, this will take a considerable amount of time to process. Consider first '
                          'reducing the size of the results using the % operator.')
        scores = [np.zeros(len(q), dtype='float64') for q in queries]
        total = sum(len(q) * (len(q) - 1) for q in queries)
        bar = pt.tqdm(total=total, desc=self.label, unit='pairs') if self.verbose else None
        chunk: List[int] = []
        n_chunk = 0
        for i, q in enumerate(queries):
            chunk.append(i)
            n_chunk += len(q) * (len(q) - 1)
            if n_chunk >= self.chunk_pairs:
                self._score_chunk([queries[k] for k in chunk], [scores[k] for k in chunk], bar)
                for k in chunk:
                    self.query_finished(queries[k], scores[k])
                chunk, n_chunk = [], 0
        if chunk:
            self._score_chunk([queries[k] for k in chunk], [scores[k] for k in chunk], bar)
            for k in chunk:
                self.query_finished(queries[k], scores[k])
        if bar is not None:
            bar.close()
        return scores

    def _score_chunk(self, chunk: List[QueryCandidates], scores: List[np.ndarray], bar: Any) -> None:
        """Score every ordered pair of the chunk's queries, adding pyterrier-t5's aggregation into ``scores``."""
        q_ids = {}
        for q in chunk:
            if q.query not in q_ids:
                q_ids[q.query], = self._ids([DUOT5_QUERY_TEMPLATE.format(q=q.query)])
        pairs: List[Tuple[int, int, int]] = []  # (query in chunk, position a, position b), ordered pairs
        seqs: List[List[int]] = []
        for c, q in enumerate(chunk):
            texts = [t if isinstance(t, str) else '' for t in q.texts]
            d0 = self._ids([DUOT5_DOC0_TEMPLATE.format(d=t) for t in texts])
            d1 = self._ids([DUOT5_DOC1_TEMPLATE.format(d=t) for t in texts])
            for a in range(len(q)):
                for b in range(len(q)):
                    if a != b:
                        pairs.append((c, a, b))
                        seqs.append(self.pair_ids(q_ids[q.query], d0[a], d1[b]))
        lengths = np.array([len(s) for s in seqs])
        order = np.argsort(-lengths, kind='stable')
        pair_scores = np.zeros(len(seqs), dtype='float64')
        for batch in length_batches(order, lengths, self.batch_size, self.max_padding):
            start = time.perf_counter()
            pair_scores[batch] = t5_true_logprobs(self.model, [seqs[j] for j in batch], self.REL, self.NREL, self.pad)
            self.stats.add_batch([chunk[pairs[j][0]].qid for j in batch], lengths[batch], int(lengths[batch].max()),
                                 time.perf_counter() - start)
            if bar is not None:
                bar.update(len(batch))
        for (c, a, b), s in zip(pairs, pair_scores.tolist()):  # pyterrier-t5's aggregation, in its order
            scores[c][a] += s
            scores[c][b] += 1 - s
