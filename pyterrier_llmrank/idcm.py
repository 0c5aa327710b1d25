"""IDCM: intra-document cascading for long documents.

Hofstätter, Mitra, Zamani, Craswell, Hanbury: "Intra-Document Cascading: Learning to Select Passages for Neural
Document Ranking", SIGIR 2021 (arXiv 2105.09816). Reference code: sebastian-hofstaetter/matchmaker
``matchmaker/models/published/sigir21_idcm.py`` (classes ``IDCM`` with its training losses and
``IDCM_InferenceOnly``, the layout of the published checkpoint), sebastian-hofstaetter/intra-document-cascade
``minimal_idcm_usage_example.ipynb`` (tokenisation: query at most 30 tokens, document at most 2000) and the
published checkpoint ``sebastian-hofstaetter/idcm-distilbert-msmarco_doc`` (``config.json``: ``bert_model``
``distilbert-base-uncased``, ``sample_n`` 4, ``top_k_chunks`` 3, ``chunk_size`` 50, ``overlap`` 7,
``sample_context`` ``ck``, ``padding_idx`` 0).

How a document is scored (as the reference's forward pass):

1. The document is tokenised once (``[CLS] d [SEP]``, at most 2000 tokens) and its ``[CLS]`` dropped. The
   token sequence is padded with ``overlap`` pad ids on the left and cut into windows of
   ``chunk_size + 2 * overlap`` tokens (64) every ``chunk_size`` tokens (50): window ``i`` holds the document's
   tokens ``50 i - 7 .. 50 i + 56``, padded where the document does not reach. Windows whose middle 50 tokens
   are all padding are dropped.
2. ESM, the efficient student model (CK): the ETM's word(+position) embeddings of the query
   (``[CLS] q [SEP]``, at most 30 tokens) and of each window, detached, go through a Conv1d (kernel 3,
   right zero padding) and ReLU, are L2-normalised, and their cosine match matrix is pooled by 11 RBF kernels
   (:data:`IDCM_KERNEL_MU`, :data:`IDCM_KERNEL_SIGMA`): kernel sums over the window's non-pad tokens, scaled
   by a learned ``kernel_alpha_scaler``, clamped at 1e-4, logged, summed over the query's tokens, and a
   linear layer (11 -> 1) gives one score per window.
3. Cascade: the ``sample_n`` windows with the highest ESM scores (``sample_n = -1``: all windows, no
   cascade) go to the ETM, the effective teacher model (BERT_cat): the input is the query ids followed by the
   64 window ids (pad ids masked), the ``[CLS]`` vector goes through a linear layer.
4. The ``top_k_chunks`` highest ETM scores, sorted, are combined with learned weights ``top_k_scoring``
   (a document with fewer selected windows counts 0 for the missing ones).

Differences from the reference, all deliberate and documented:

* The reference scores a batch of documents of several queries at once, padding queries to the batch's
  longest, so that a window's positions, and the ESM's convolution at the query's last token, depend on the
  batch. Here the windows of one query are scored together and the query is never padded: a document's
  score equals the reference's for a batch holding that query alone, whatever else is re-ranked.
* The reference treats a window score of exactly 0.0 as "not selected" (and any score <= -8900 as 0); here
  selection is explicit. Ties in ESM scores are broken by window position (stable sort).
* ``kldivloss`` in the reference feeds probabilities where ``KLDivLoss`` expects log-probabilities; the
  ``'kl'`` option here computes KL(teacher || student) over the window distribution properly.

Training (:mod:`pyterrier_llmrank.train.idcm`: :func:`~pyterrier_llmrank.train.idcm.train_etm`,
:func:`~pyterrier_llmrank.train.idcm.distill_esm`, recipe ``python -m pyterrier_llmrank.train idcm``) follows the
paper's two stages: the ETM (with the
aggregation weights) is trained on all windows (``sample_n = -1``) with a document ranking loss; then the
ESM is trained alone, the ETM frozen, to reproduce the ETM's ranking of a document's windows (LambdaLoss,
NDCG-Loss2 scheme, with the reference's gains: the ETM's top ``sample_n`` windows get gains
``sample_n, sample_n - 1, ..., 1``, every other window 0).

The real recipe (paper, Section 4): DistilBERT ETM, first trained as a passage model on MS MARCO passage,
then on MS MARCO documents with all windows (knowledge distillation from a BERT ensemble, Margin-MSE);
then the CK ESM distilled from the frozen ETM on the document training queries with LambdaLoss, sample_n 4,
top_k_chunks 3. The functions here run that recipe on any scale; the tests run it on tiny models.
"""
from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from pyterrier_llmrank import models
from pyterrier_llmrank.base import QueryCandidates, QueryReranker

__all__ = ['IDCM', 'IDCMModel', 'split_windows',
           'IDCM_KERNEL_MU', 'IDCM_KERNEL_SIGMA', 'IDCM_CHUNK_SIZE', 'IDCM_OVERLAP', 'IDCM_SAMPLE_N',
           'IDCM_TOP_K_CHUNKS', 'IDCM_MAX_QUERY_TOKENS', 'IDCM_MAX_DOC_TOKENS', 'IDCM_PUBLISHED']

# --- Constants: sebastian-hofstaetter/matchmaker matchmaker/models/published/sigir21_idcm.py (IDCM.__init__
# defaults and the ``mu``/``sigma`` buffers), and the published checkpoint's config.json.
#: RBF kernel centres of the CK student (``mu`` buffer).
IDCM_KERNEL_MU = (1.0, 0.9, 0.7, 0.5, 0.3, 0.1, -0.1, -0.3, -0.5, -0.7, -0.9)
#: RBF kernel width, the same for all 11 kernels (``sigma`` buffer).
IDCM_KERNEL_SIGMA = 0.1
#: Window stride (``chunk_size``) and the context added on each side (``overlap``): windows of 64 tokens.
IDCM_CHUNK_SIZE = 50
IDCM_OVERLAP = 7
#: Windows scored by the ETM (``sample_n``; -1: all) and ETM scores combined (``top_k_chunks``), as published.
IDCM_SAMPLE_N = 4
IDCM_TOP_K_CHUNKS = 3
#: Tokenisation limits of intra-document-cascade minimal_idcm_usage_example.ipynb (``max_length=30`` for the
#: query, ``max_length=2000`` for the document).
IDCM_MAX_QUERY_TOKENS = 30
IDCM_MAX_DOC_TOKENS = 2000
#: The published checkpoint (DistilBERT ETM, CK ESM, trained on MS MARCO documents).
IDCM_PUBLISHED = 'sebastian-hofstaetter/idcm-distilbert-msmarco_doc'

_WEIGHT_FILES = ('pytorch_model.bin', 'model.safetensors')


def split_windows(doc_ids: Sequence[int], chunk_size: int = IDCM_CHUNK_SIZE, overlap: int = IDCM_OVERLAP,
                  pad_id: int = 0) -> np.ndarray:
    """The windows of one document, as the reference's pad-and-unfold computes them.

    Args:
        doc_ids: the document's token ids without the leading ``[CLS]`` (its ``[SEP]`` kept).
        chunk_size, overlap: window stride and the context on each side; windows have
            ``chunk_size + 2 * overlap`` tokens.
        pad_id: the padding id (the reference's ``padding_idx``).

    Returns:
        ``int64`` array ``[n_windows, chunk_size + 2 * overlap]``; window ``i`` holds tokens
        ``i * chunk_size - overlap`` to ``(i + 1) * chunk_size + overlap - 1`` (pad ids outside the document).
        Windows whose middle ``chunk_size`` tokens are all pad ids are dropped.
    """
    ids = np.asarray(list(doc_ids), dtype=np.int64)
    length = len(ids)
    width = chunk_size + 2 * overlap
    n = max(1, -(-length // chunk_size))  # ceil; an empty sequence still gives one (dropped) window
    padded = np.full(overlap + n * chunk_size + overlap, pad_id, dtype=np.int64)
    padded[overlap:overlap + length] = ids
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)[::chunk_size][:n]
    keep = (windows[:, overlap:overlap + chunk_size] != pad_id).any(-1)
    return np.ascontiguousarray(windows[keep])


class IDCMModel(nn.Module):
    """The IDCM network: an encoder (the ETM's backbone) with the CK student and the aggregation weights.

    Parameter and buffer names are those of the reference (``bert_model.*``, ``_classification_layer``,
    ``top_k_scoring``, ``sample_cnn3``, ``sampling_binweights``, ``kernel_alpha_scaler``, ``mu``, ``sigma``),
    so the published ``pytorch_model.bin`` loads as it is.

    Args:
        bert_model: the encoder (``DistilBertModel``, ``BertModel``, ...).
        sample_n, top_k_chunks, chunk_size, overlap, padding_idx: as in the reference's config.
        sample_context: ``'ck'`` (the published student; the only one implemented).
    """

    def __init__(self, bert_model: nn.Module, *, sample_n: int = IDCM_SAMPLE_N, top_k_chunks: int = IDCM_TOP_K_CHUNKS,
                 chunk_size: int = IDCM_CHUNK_SIZE, overlap: int = IDCM_OVERLAP, padding_idx: int = 0,
                 sample_context: str = 'ck', bert_model_name: Optional[str] = None) -> None:
        super().__init__()
        if sample_context != 'ck':
            raise ValueError(f"sample_context {sample_context!r} is not implemented; only 'ck' (the published ESM)")
        if top_k_chunks < 1 or chunk_size < 1 or overlap < 0 or sample_n < -1:
            raise ValueError('need top_k_chunks >= 1, chunk_size >= 1, overlap >= 0 and sample_n >= -1')
        self.bert_model = bert_model
        dim = bert_model.config.hidden_size
        self._classification_layer = nn.Linear(dim, 1)
        self.top_k_chunks = top_k_chunks
        self.top_k_scoring = nn.Parameter(torch.ones(1, top_k_chunks))
        self.sample_n = sample_n
        self.chunk_size = chunk_size
        self.overlap = overlap
        self.padding_idx = padding_idx
        self.sample_context = sample_context
        self.bert_model_name = bert_model_name or getattr(bert_model.config, '_name_or_path', '') or ''
        self.sample_cnn3 = nn.Sequential(nn.ConstantPad1d((0, 2), 0), nn.Conv1d(dim, dim, kernel_size=3), nn.ReLU())
        self.sampling_binweights = nn.Linear(11, 1, bias=True)
        nn.init.uniform_(self.sampling_binweights.weight, -0.01, 0.01)
        self.kernel_alpha_scaler = nn.Parameter(torch.ones(1, 1, 11))
        self.register_buffer('mu', torch.tensor(IDCM_KERNEL_MU).view(1, 1, 1, -1))
        self.register_buffer('sigma', torch.full((11,), IDCM_KERNEL_SIGMA).view(1, 1, 1, -1))

    # -- configuration ------------------------------------------------------------------------------------
    def config_dict(self) -> Dict[str, Any]:
        """The reference's ``config.json`` keys, plus ``bert_config`` (the encoder's config, for offline loading)."""
        return {'architectures': ['IDCM_InferenceOnly'], 'model_type': 'IDCM', 'bert_model': self.bert_model_name,
                'sample_n': self.sample_n, 'sample_context': self.sample_context, 'top_k_chunks': self.top_k_chunks,
                'chunk_size': self.chunk_size, 'overlap': self.overlap, 'padding_idx': self.padding_idx,
                'bert_config': self.bert_model.config.to_dict()}

    def esm_parameters(self) -> List[nn.Parameter]:
        """The student's parameters (trained in the distillation stage)."""
        return [*self.sample_cnn3.parameters(), *self.sampling_binweights.parameters(), self.kernel_alpha_scaler]

    def etm_parameters(self) -> List[nn.Parameter]:
        """The teacher's parameters with the aggregation weights (trained in the first stage)."""
        return [*self.bert_model.parameters(), *self._classification_layer.parameters(), self.top_k_scoring]

    # -- the two scorers ----------------------------------------------------------------------------------
    def _ck(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.bert_model.embeddings(ids).detach()
        return nn.functional.normalize(self.sample_cnn3(emb.transpose(1, 2)).transpose(1, 2), p=2, dim=-1)

    def esm_scores(self, query_ids: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """CK student scores ``[n]`` of ``windows`` ``[n, W]`` for one unpadded query ``[Lq]``.

        The query ids include its ``[CLS]`` and ``[SEP]``, as the reference's.
        """
        q = self._ck(query_ids[None])  # [1, Lq, d]
        d = self._ck(windows)  # [n, W, d]
        cos = torch.matmul(q, d.transpose(1, 2)).unsqueeze(-1)  # [n, Lq, W, 1]
        doc_mask = (windows != self.padding_idx).to(cos.dtype)
        act = torch.exp(-torch.pow(cos - self.mu, 2) / (2 * torch.pow(self.sigma, 2))) * doc_mask[:, None, :, None]
        pooled = torch.log(torch.clamp(act.sum(2) * self.kernel_alpha_scaler, min=1e-4))  # [n, Lq, 11]
        return self.sampling_binweights(pooled.sum(1)).squeeze(-1)

    def etm_scores(self, query_ids: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """BERT_cat teacher scores ``[n]``: query ids then window ids (pad ids masked), ``[CLS]`` -> linear layer."""
        n = windows.shape[0]
        ids = torch.cat([query_ids[None].expand(n, -1), windows], dim=1)
        mask = torch.cat([torch.ones(n, query_ids.shape[0], dtype=torch.long, device=ids.device),
                          (windows != self.padding_idx).long()], dim=1)
        if self.bert_model.base_model_prefix == 'distilbert':
            vec = self.bert_model(input_ids=ids, attention_mask=mask)[0][:, 0, :]
        else:  # BERT-style encoders: the pooled output, as the reference (token types all 0)
            vec = self.bert_model(input_ids=ids, attention_mask=mask).pooler_output
        return self._classification_layer(vec).squeeze(-1)

    def aggregate(self, scores: torch.Tensor) -> torch.Tensor:
        """Document score from the ETM scores of its selected windows: sorted top ``top_k_chunks`` x weights."""
        k = min(self.top_k_chunks, scores.shape[0])
        top = torch.sort(scores, descending=True).values[:k]
        return (top * self.top_k_scoring[0, :k]).sum()

    def select(self, esm: torch.Tensor, sample_n: Optional[int] = None) -> torch.Tensor:
        """Indices (in window order) of the windows the ETM scores: the top ``sample_n`` by ESM score."""
        sample_n = self.sample_n if sample_n is None else sample_n
        if sample_n == -1 or sample_n >= esm.shape[0]:
            return torch.arange(esm.shape[0], device=esm.device)
        order = torch.sort(esm, descending=True, stable=True).indices[:sample_n]
        return torch.sort(order).values

    def score_document(self, query_ids: torch.Tensor, windows: torch.Tensor, sample_n: Optional[int] = None
                       ) -> Dict[str, torch.Tensor]:
        """Score one document (differentiable); returns ``score``, ``selected``, ``etm`` and (if run) ``esm``."""
        sample_n = self.sample_n if sample_n is None else sample_n
        out: Dict[str, torch.Tensor] = {}
        if sample_n == -1:
            sel = torch.arange(windows.shape[0], device=windows.device)
        else:
            out['esm'] = self.esm_scores(query_ids, windows)
            sel = self.select(out['esm'], sample_n)
        out['selected'] = sel
        out['etm'] = self.etm_scores(query_ids, windows[sel])
        out['score'] = self.aggregate(out['etm'])
        return out


# ------------------------------------------------------------------------------------------------ loading

def _read_state_dict(folder: Path) -> Dict[str, torch.Tensor]:
    """The weights of a checkpoint folder; a ``ValueError`` naming the file when it cannot be read (truncated or
    corrupted)."""
    from safetensors import SafetensorError
    for name in ('model.safetensors', 'pytorch_model.bin'):  # safetensors first
        file = folder / name
        if not file.exists():
            continue
        try:
            if name.endswith('.safetensors'):
                from safetensors.torch import load_file
                return load_file(str(file))
            return torch.load(str(file), map_location='cpu', weights_only=True)
        except (SafetensorError, RuntimeError, EOFError, pickle.UnpicklingError, OSError) as e:
            raise ValueError(f'cannot read the weights file {file} (truncated or corrupted?): {type(e).__name__}: '
                             f'{e}') from e
    raise FileNotFoundError(f'no weights in {folder} (expected one of {", ".join(_WEIGHT_FILES)})')


def _resolve_folder(path: Union[str, os.PathLike]) -> Path:
    folder = Path(path)
    if folder.is_dir():
        return folder
    if os.environ.get('HF_HUB_OFFLINE') == '1':
        raise FileNotFoundError(f'{path!r} is not a folder and the Hugging Face hub is offline (HF_HUB_OFFLINE=1); '
                                f'download the checkpoint into a folder and pass its path')
    from huggingface_hub import snapshot_download
    return Path(snapshot_download(str(path)))


def backbone_config(cfg: Dict[str, Any], bert_config: Any = None) -> Any:
    """The encoder's config for an IDCM ``config.json`` (see :func:`load_idcm_model` for the order of sources)."""
    from transformers import AutoConfig
    if bert_config is None and cfg.get('bert_config'):
        bc = dict(cfg['bert_config'])
        bert_config = AutoConfig.for_model(bc.pop('model_type'), **bc)
    elif bert_config is None and cfg['bert_model'] == 'distilbert-base-uncased':
        # the published checkpoint's encoder: distilbert-base-uncased's config.json equals DistilBertConfig's
        # defaults (vocabulary 30522, dim 768, 6 layers, 12 heads, FFN 3072, GELU, 512 positions, pad id 0)
        from transformers import DistilBertConfig
        bert_config = DistilBertConfig()
    elif bert_config is None:
        bert_config = AutoConfig.from_pretrained(models.resolve_model_path(cfg['bert_model']))
    return bert_config


def load_idcm_model(path: Union[str, os.PathLike], bert_config: Any = None) -> Tuple[IDCMModel, Any]:
    """Load an IDCM checkpoint folder in the reference layout; returns ``(model, tokenizer)``.

    The folder holds ``config.json`` with the reference's keys (``bert_model``, ``sample_n``, ``top_k_chunks``,
    ``chunk_size``, ``overlap``, ``padding_idx``, ``sample_context``), the weights (``pytorch_model.bin`` as
    published, or ``model.safetensors``) with the reference's parameter names, and usually the tokenizer
    files (the published checkpoint has DistilBERT's ``vocab.txt``).

    The encoder is built from ``bert_config`` (argument), else the config's ``bert_config`` entry (written by
    :meth:`IDCM.save_pretrained`), else, for the published ``bert_model`` ``distilbert-base-uncased``,
    ``DistilBertConfig()`` (whose defaults are that model's config, so the published folder loads offline), else
    ``AutoConfig.from_pretrained(bert_model)``. Weights are loaded strictly, except for ``position_ids`` buffers
    that older transformers versions saved (ignored). The tokenizer comes from the folder (the published one
    has DistilBERT's ``vocab.txt``), else from ``bert_model``.
    """
    from transformers import AutoModel, AutoTokenizer
    folder = _resolve_folder(path)
    try:
        with open(folder / 'config.json', encoding='utf-8') as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f'{folder / "config.json"} is not valid JSON (truncated or corrupted?): {e}') from e
    if not isinstance(cfg, dict):
        raise ValueError(f'{folder / "config.json"} holds a {type(cfg).__name__}, not the IDCM config object')
    missing = [k for k in ('bert_model', 'sample_n', 'top_k_chunks', 'chunk_size', 'overlap') if k not in cfg]
    if missing:
        raise ValueError(f'{folder / "config.json"} lacks the IDCM keys {missing}')
    bert_config = backbone_config(cfg, bert_config)
    bert = AutoModel.from_config(bert_config)
    model = IDCMModel(bert, sample_n=int(cfg['sample_n']), top_k_chunks=int(cfg['top_k_chunks']),
                      chunk_size=int(cfg['chunk_size']), overlap=int(cfg['overlap']),
                      padding_idx=int(cfg.get('padding_idx', 0)), sample_context=cfg.get('sample_context', 'ck'),
                      bert_model_name=cfg['bert_model'])
    state = {k: v for k, v in _read_state_dict(folder).items() if not k.endswith('position_ids')}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f'checkpoint {folder} does not match IDCM: missing {result.missing_keys[:8]}, '
                         f'unexpected {result.unexpected_keys[:8]}')
    has_tok = any((folder / n).exists() for n in ('tokenizer.json', 'vocab.txt', 'tokenizer_config.json'))
    tok = AutoTokenizer.from_pretrained(str(folder) if has_tok else models.resolve_model_path(cfg['bert_model']))
    return model, tok


# ----------------------------------------------------------------------------------------------- reranker

class IDCM(QueryReranker):
    """IDCM (Hofstätter et al., SIGIR 2021): re-rank long documents with an intra-document cascade.

    Each document is cut into 64-token windows; the cheap CK student (ESM) scores every window, the
    ``sample_n`` best go to the BERT_cat teacher (ETM), and the best ``top_k_chunks`` teacher scores are
    combined with learned weights. See the module docstring for the exact computation.

    Args:
        model: a checkpoint folder in the reference's layout (default: the published
            ``sebastian-hofstaetter/idcm-distilbert-msmarco_doc``, downloaded when the hub is reachable), an
            :class:`IDCMModel`, or an ``(IDCMModel, tokenizer)`` pair.
        tokenizer: the tokenizer (required with a bare :class:`IDCMModel`; overrides the checkpoint's).
        sample_n: windows scored by the ETM per document; default from the checkpoint (4 as published);
            ``-1`` scores all windows (no cascade).
        max_query_tokens, max_doc_tokens: tokenisation limits (30 and 2000, as the reference).
        batch_size: windows per ETM forward pass (the ESM scores ``8 * batch_size`` windows at a time).
        text_field, verbose, device, dtype: as every reranker of the toolkit.

    Efficiency counters (``stats``): ``model_calls``/``sequences``/``input_tokens`` count the ETM; extra
    counters ``windows`` (all windows), ``etm_windows`` (windows the ETM scored) and ``esm_seconds``.
    """

    label = 'IDCM'
    scores_documents_independently = True  # each document's windows are selected and scored on their own

    def __init__(self, model: Any = IDCM_PUBLISHED, *, tokenizer: Any = None, sample_n: Optional[int] = None,
                 max_query_tokens: int = IDCM_MAX_QUERY_TOKENS, max_doc_tokens: int = IDCM_MAX_DOC_TOKENS,
                 text_field: str = 'text', batch_size: int = 32, verbose: bool = False, device: Any = 'auto',
                 dtype: Any = 'auto') -> None:
        super().__init__(text_field=text_field, batch_size=batch_size, verbose=verbose)
        if isinstance(model, tuple):
            model, tok = model
            tokenizer = tokenizer if tokenizer is not None else tok
            self.model_name = model.bert_model_name or type(model).__name__
        elif isinstance(model, IDCMModel):
            if tokenizer is None:
                raise ValueError('an IDCMModel needs its tokenizer: IDCM(model, tokenizer=...)')
            self.model_name = model.bert_model_name or type(model).__name__
        else:
            self.model_name = str(model)
            model, tok = load_idcm_model(model)
            tokenizer = tokenizer if tokenizer is not None else tok
        self._sample_n = model.sample_n
        if sample_n is not None:
            self.sample_n = sample_n
        dev = models.resolve_device(device)
        self.model = model.to(dev)
        if dtype is not None and dtype != 'auto':
            self.model = self.model.to(models.resolve_dtype(dtype, dev))
        elif dev.type == 'cuda':
            self.model = self.model.to(models.resolve_dtype('auto', dev))
        self.model.eval()
        self.tokenizer = tokenizer
        self.max_query_tokens = max_query_tokens
        self.max_doc_tokens = max_doc_tokens

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike], **kwargs: Any) -> 'IDCM':
        """Load a checkpoint folder in the reference layout (see :func:`load_idcm_model`); kwargs as :class:`IDCM`."""
        return cls(path, **kwargs)

    def save_pretrained(self, path: Union[str, os.PathLike]) -> None:
        """Write the reference layout: ``config.json`` (with this reranker's ``sample_n``), ``pytorch_model.bin``
        and the tokenizer files."""
        save_idcm(self.model, self.tokenizer, path, sample_n=self.sample_n)

    @property
    def sample_n(self) -> int:
        """Windows the ETM scores per document (``-1``: all); this reranker's own, the model is not changed."""
        return self._sample_n

    @sample_n.setter
    def sample_n(self, value: int) -> None:
        if value < -1 or value == 0:
            raise ValueError('sample_n must be -1 (all windows) or >= 1')
        self._sample_n = int(value)

    def _repr_args(self) -> str:
        return f'{self.model_name!r}, sample_n={self.sample_n}, top_k_chunks={self.model.top_k_chunks}'

    # -- tokenisation ---------------------------------------------------------------------------------------
    def query_ids(self, query: str) -> List[int]:
        """``[CLS] q [SEP]``, at most ``max_query_tokens`` tokens."""
        return self.tokenizer(query, truncation=True, max_length=self.max_query_tokens)['input_ids']

    def document_windows(self, text: str) -> np.ndarray:
        """The windows of one document (``[CLS] d [SEP]`` at most ``max_doc_tokens`` tokens, ``[CLS]`` dropped)."""
        text = text if isinstance(text, str) else ''
        ids = self.tokenizer(text, truncation=True, max_length=self.max_doc_tokens)['input_ids'][1:]
        return split_windows(ids, self.model.chunk_size, self.model.overlap, self.model.padding_idx)

    # -- scoring --------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _rerank_query(self, q: QueryCandidates) -> np.ndarray:
        dev = next(self.model.parameters()).device
        qid = q.qid
        qt = torch.as_tensor(self.query_ids(q.query), device=dev)
        wins = [self.document_windows(t) for t in q.texts]
        n_docs = len(wins)
        counts = np.array([len(w) for w in wins])
        allw = torch.as_tensor(np.concatenate(wins), device=dev)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        # stage 1: the student on every window (unless no cascade)
        # (documents with at most sample_n windows send them all to the ETM: their ESM scores are not needed)
        selected = [np.arange(offsets[i], offsets[i + 1]) for i in range(n_docs)]
        cascade = [i for i in range(n_docs) if 0 < self.sample_n < counts[i]]
        esm_seconds = 0.0
        if cascade:
            start = time.perf_counter()
            cw = torch.cat([allw[offsets[i]:offsets[i + 1]] for i in cascade])
            step = 8 * self.batch_size
            esm = torch.cat([self.model.esm_scores(qt, cw[j:j + step]) for j in range(0, len(cw), step)])
            pos = 0
            for i in cascade:
                selected[i] = offsets[i] + self.model.select(esm[pos:pos + counts[i]], self.sample_n).cpu().numpy()
                pos += counts[i]
            esm_seconds = time.perf_counter() - start
        # stage 2: the teacher on the selected windows, in batches of equal length (no padding)
        sel = np.concatenate(selected)
        etm = torch.empty(len(sel), dtype=torch.float32)
        seq_len = len(qt) + allw.shape[1]
        for i in range(0, len(sel), self.batch_size):
            start = time.perf_counter()
            idx = torch.as_tensor(sel[i:i + self.batch_size], device=dev)
            etm[i:i + len(idx)] = self.model.etm_scores(qt, allw[idx]).float().cpu()
            tokens = (len(qt) + (allw[idx] != self.model.padding_idx).sum(-1)).cpu().numpy()
            self.stats.add_batch([qid] * len(idx), tokens, seq_len, time.perf_counter() - start)
        scores = np.zeros(n_docs, dtype='float64')
        pos = 0
        for i in range(n_docs):
            n = len(selected[i])
            scores[i] = float(self.model.aggregate(etm[pos:pos + n].to(self.model.top_k_scoring.dtype).to(dev)))
            pos += n
        self.stats.add(qid, windows=int(counts.sum()), etm_windows=len(sel), esm_seconds=esm_seconds,
                       seconds=esm_seconds)
        return scores


def save_idcm(model: IDCMModel, tokenizer: Any, path: Union[str, os.PathLike], sample_n: Optional[int] = None) -> None:
    """Write ``model`` (and ``tokenizer``) in the reference's checkpoint layout (see :func:`load_idcm_model`)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config_dict()
    if sample_n is not None:
        cfg['sample_n'] = int(sample_n)
    with open(folder / 'config.json', 'w', encoding='utf-8') as f:
        json.dump(cfg, f, indent=2, sort_keys=True, default=str)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, str(folder / 'pytorch_model.bin'))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
