"""IDCM training (recipe ``idcm``): the ETM on all windows, then the ESM distilled from the frozen ETM.

Hofstätter, Mitra, Zamani, Craswell, Hanbury: "Intra-Document Cascading: Learning to Select Passages for Neural
Document Ranking", SIGIR 2021 (arXiv 2105.09816). Reference code: sebastian-hofstaetter/matchmaker
``matchmaker/models/published/sigir21_idcm.py`` (the model and its training losses) and
``matchmaker/losses/lambdarank.py`` (LambdaLoss). The model and the reranker are :mod:`pyterrier_llmrank.idcm`.

The paper's two stages, as functions and as a recipe:

1. :func:`train_etm`: the ETM (encoder, classification layer and the aggregation weights ``top_k_scoring``) is
   trained on all windows of a document (``sample_n = -1``) with a document ranking loss over
   ``(query, positive, negative)`` triples: pairwise softmax cross-entropy (``'ranknet'``) or Margin-MSE against
   teacher margins (``'margin_mse'``, the paper's knowledge distillation);
2. :func:`distill_esm`: the CK student (ESM) alone, the ETM frozen, learns to reproduce the ETM's ranking of a
   document's windows (:func:`lambda_loss`, NDCG-Loss2 scheme, with the reference's gains: the ETM's top
   ``sample_n`` windows get gains ``sample_n, sample_n - 1, ..., 1``, every other window 0; or ``'mse'`` /
   ``'kl'``).

The recipe (``python -m pyterrier_llmrank.train idcm --config examples/train/idcm-cpu.yaml``, :func:`main`) builds
the triples and pairs from :func:`~pyterrier_llmrank.train.data.training_groups` (each group's positive with each
of its ``n_negatives`` negatives; the ESM learns on every document of the groups), starts from an IDCM checkpoint
folder (``model``, e.g. the published one) or a fresh IDCM around an encoder (``encoder``: a folder, a Hugging
Face name, or ``all-minilm-l6-v2``), and writes to ``output_dir``: ``etm/`` (the model after stage 1, reused by a
restart with the same settings), ``log.csv`` (``step``, ``stage``, ``loss``: one row per optimizer step of both
stages), ``train_config.json``, ``summary.json``, ``reranker.json`` and the final model in the reference's
checkpoint layout (``config.json``, ``pytorch_model.bin``, the tokenizer): ``IDCM('<output_dir>')`` loads it.

The real recipe (paper, Section 4): DistilBERT ETM, first trained as a passage model on MS MARCO passage, then on
MS MARCO documents with all windows (knowledge distillation from a BERT ensemble, Margin-MSE); then the CK ESM
distilled from the frozen ETM on the document training queries with LambdaLoss, sample_n 4, top_k_chunks 3. The
paper's optimiser settings are not given in the reference code; the defaults here (:data:`IDCM_DEFAULTS`) are
choices.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from pyterrier_llmrank.idcm import (IDCM_CHUNK_SIZE, IDCM_MAX_DOC_TOKENS, IDCM_MAX_QUERY_TOKENS, IDCM_OVERLAP,
                                    IDCM_SAMPLE_N, IDCM_TOP_K_CHUNKS, IDCMModel, load_idcm_model, save_idcm,
                                    split_windows)
from pyterrier_llmrank.train.common import (CSVLogger, check_run_config, read_log, set_seed, set_threads,
                                            staged_config, write_json)

__all__ = ['train_etm', 'distill_esm', 'lambda_loss', 'main', 'IDCM_DEFAULTS', 'IDCM_PADDED', 'idcm_triples']

#: The reference's marker of a padded (empty) window in LambdaLoss.
IDCM_PADDED = -9000.0

#: Defaults of the ``idcm`` recipe (``etm`` and ``esm`` are mappings of their own keys).
IDCM_DEFAULTS: Dict[str, Any] = {
    'model': None,                     # an IDCM checkpoint folder to start from; None: a fresh IDCM around `encoder`
    'encoder': 'distilbert-base-uncased',  # the paper's ETM encoder (a folder, a hub name or all-minilm-l6-v2)
    'dataset': 'beir-scifact/train',
    'output_dir': None,
    'seed': 42,
    'n_negatives': 1,
    'negatives': 'bm25',
    'depth': 100,
    'max_queries': None,
    'sample_n': IDCM_SAMPLE_N,
    'top_k_chunks': IDCM_TOP_K_CHUNKS,
    'chunk_size': IDCM_CHUNK_SIZE,
    'overlap': IDCM_OVERLAP,
    'max_query_tokens': IDCM_MAX_QUERY_TOKENS,
    'max_doc_tokens': IDCM_MAX_DOC_TOKENS,
    'device': 'cpu',
    'threads': None,
    'resume': True,
    'verbose': True,
    'etm': {'enabled': True, 'epochs': 1, 'lr': 3e-5, 'batch_size': 8, 'loss': 'ranknet'},
    'esm': {'enabled': True, 'epochs': 1, 'lr': 1e-3, 'batch_size': 8, 'loss': 'lambdaloss'},
}


def lambda_loss(pred: torch.Tensor, gains: torch.Tensor, padded: float = IDCM_PADDED, eps: float = 1e-6,
                sigma: float = 1.0) -> torch.Tensor:
    """LambdaLoss with the NDCG-Loss2 weighting (Wang et al., CIKM 2018), as matchmaker's ``LambdaLoss``.

    matchmaker ``matchmaker/losses/lambdarank.py`` (from allegro/allRank): items are sorted by ``pred``; for every
    pair (i, j) of ranks with gain_i > gain_j the loss adds ``-log2(sigmoid(sigma (s_i - s_j)) ** w_ij)`` with
    ``w_ij = |1/D(|i-j|) - 1/D(|i-j|+1)| * |G_i - G_j|``, ``D(r) = log2(1 + r)`` and
    ``G = (2^gain - 1) / maxDCG``; entries whose gain equals ``padded`` are ignored; sum reduction.

    Args:
        pred: ``[batch, slate]`` scores.
        gains: ``[batch, slate]`` gains, ``padded`` where the item does not exist.
    """
    pred = pred.clone()
    gains = gains.clone().float()
    mask = gains == padded
    pred[mask] = float('-inf')
    gains[mask] = float('-inf')
    pred_sorted, order = pred.sort(descending=True, dim=-1)
    true_sorted = gains.sort(descending=True, dim=-1).values
    true_by_pred = torch.gather(gains, 1, order)
    diffs = true_by_pred[:, :, None] - true_by_pred[:, None, :]
    pair_mask = torch.isfinite(diffs) & (diffs > 0)
    true_by_pred = true_by_pred.clamp(min=0.)
    true_sorted = true_sorted.clamp(min=0.)
    pos = torch.arange(1, pred.shape[1] + 1, device=pred.device)
    disc = torch.log2(1. + pos.float())[None, :]
    max_dcg = ((torch.pow(2, true_sorted) - 1) / disc).sum(-1).clamp(min=eps)
    g = (torch.pow(2, true_by_pred) - 1) / max_dcg[:, None]
    delta = torch.abs(pos[:, None] - pos[None, :])
    # |1/D(|i-j|) - 1/D(|i-j| + 1)| off the diagonal (the reference's D[0, delta - 1] and D[0, delta])
    d_lo = torch.log2(1. + delta.clamp(min=1).float())
    d_hi = torch.log2(2. + delta.float())
    weights = torch.abs(1. / d_lo - 1. / d_hi)
    weights.fill_diagonal_(0.)
    weights = weights[None] * torch.abs(g[:, :, None] - g[:, None, :])
    score_diffs = (pred_sorted[:, :, None] - pred_sorted[:, None, :]).clamp(min=-1e4, max=1e4)
    score_diffs = torch.nan_to_num(score_diffs, nan=0.)
    probas = (torch.sigmoid(sigma * score_diffs).clamp(min=eps) ** weights).clamp(min=eps)
    return -torch.log2(probas)[pair_mask].sum()


def _encode_pairs(tokenizer: Any, model: IDCMModel, query: str, text: str, max_q: int, max_d: int,
                  dev: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    q = torch.as_tensor(tokenizer(query, truncation=True, max_length=max_q)['input_ids'], device=dev)
    ids = tokenizer(text if isinstance(text, str) else '', truncation=True, max_length=max_d)['input_ids'][1:]
    w = torch.as_tensor(split_windows(ids, model.chunk_size, model.overlap, model.padding_idx), device=dev)
    return q, w


def train_etm(model: IDCMModel, tokenizer: Any, triples: Sequence[Tuple[str, str, str]], *, epochs: int = 1,
              lr: float = 3e-5, batch_size: int = 8, loss: str = 'ranknet',
              teacher_margins: Optional[Sequence[float]] = None, max_query_tokens: int = IDCM_MAX_QUERY_TOKENS,
              max_doc_tokens: int = IDCM_MAX_DOC_TOKENS, seed: int = 0) -> List[float]:
    """Stage 1: train the ETM (encoder, classification layer and ``top_k_scoring``) on all windows.

    Each triple ``(query, positive document, negative document)`` is scored with ``sample_n = -1``; the loss is
    the pairwise softmax cross-entropy (``'ranknet'``) or Margin-MSE against ``teacher_margins`` (``'margin_mse'``,
    the paper's knowledge distillation). AdamW, shuffled with ``seed``, one step per ``batch_size`` triples.

    Returns:
        the mean loss of each step.
    """
    if loss not in ('ranknet', 'margin_mse'):
        raise ValueError("loss must be 'ranknet' or 'margin_mse'")
    if loss == 'margin_mse' and (teacher_margins is None or len(teacher_margins) != len(triples)):
        raise ValueError("loss='margin_mse' needs one teacher margin per triple")
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.etm_parameters(), lr=lr)
    encoded = [(_encode_pairs(tokenizer, model, q, p, max_query_tokens, max_doc_tokens, dev),
                _encode_pairs(tokenizer, model, q, n, max_query_tokens, max_doc_tokens, dev)) for q, p, n in triples]
    model.train()
    losses: List[float] = []
    try:
        for _ in range(epochs):
            perm = torch.randperm(len(encoded), generator=gen).tolist()
            for b in range(0, len(perm), batch_size):
                opt.zero_grad()
                total = 0.
                idx = perm[b:b + batch_size]
                for i in idx:
                    (q, wp), (_, wn) = encoded[i]
                    sp = model.score_document(q, wp, sample_n=-1)['score']
                    sn = model.score_document(q, wn, sample_n=-1)['score']
                    if loss == 'ranknet':
                        li = -torch.log_softmax(torch.stack([sp, sn]), 0)[0]
                    else:
                        li = (sp - sn - float(teacher_margins[i])) ** 2
                    (li / len(idx)).backward()
                    total += float(li)
                opt.step()
                losses.append(total / len(idx))
    finally:
        model.eval()
    return losses


def _esm_targets(model: IDCMModel, q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.etm_scores(q, w).float()


def distill_esm(model: IDCMModel, tokenizer: Any, pairs: Sequence[Tuple[str, str]], *, epochs: int = 1,
                lr: float = 1e-3, batch_size: int = 8, loss: str = 'lambdaloss', sample_n: Optional[int] = None,
                max_query_tokens: int = IDCM_MAX_QUERY_TOKENS, max_doc_tokens: int = IDCM_MAX_DOC_TOKENS,
                seed: int = 0) -> List[float]:
    """Stage 2: train the CK student to reproduce the frozen ETM's ranking of each document's windows.

    For each ``(query, document)`` the ETM scores all windows (no gradient; cached once). Losses:

    * ``'lambdaloss'`` (default, the reference's): :func:`lambda_loss` of the ESM scores against gains
      ``sample_n - i`` for the ETM's i-th best window (i < ``sample_n``) and 0 for the others;
    * ``'mse'``: mean squared error between ESM and ETM scores over the document's windows;
    * ``'kl'``: KL(softmax(ETM) || softmax(ESM)) over the document's windows.

    Only the student's parameters change (:meth:`IDCMModel.esm_parameters`). AdamW, shuffled with ``seed``.

    Returns:
        the mean loss of each step.
    """
    if loss not in ('lambdaloss', 'mse', 'kl'):
        raise ValueError("loss must be 'lambdaloss', 'mse' or 'kl'")
    n_gain = model.sample_n if sample_n is None else sample_n
    if n_gain < 1:
        raise ValueError('the LambdaLoss gains need sample_n >= 1')
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.eval()  # the teacher's dropout stays off (as the reference's bert_model.eval())
    data = []
    for query, text in pairs:
        q, w = _encode_pairs(tokenizer, model, query, text, max_query_tokens, max_doc_tokens, dev)
        data.append((q, w, _esm_targets(model, q, w)))
    opt = torch.optim.AdamW(model.esm_parameters(), lr=lr)
    losses: List[float] = []
    for _ in range(epochs):
        perm = torch.randperm(len(data), generator=gen).tolist()
        for b in range(0, len(perm), batch_size):
            idx = perm[b:b + batch_size]
            opt.zero_grad()
            width = max(data[i][1].shape[0] for i in idx)
            teach = torch.full((len(idx), width), IDCM_PADDED, device=dev)
            rows = []
            for j, i in enumerate(idx):
                q, w, t = data[i]
                rows.append(model.esm_scores(q, w))
                teach[j, :len(t)] = t
            preds = torch.stack([torch.cat([r, r.new_full((width - len(r),), IDCM_PADDED)]) for r in rows])
            valid = teach != IDCM_PADDED
            if loss == 'lambdaloss':
                gains = torch.zeros_like(teach)
                ranked = torch.sort(teach.masked_fill(~valid, float('-inf')), descending=True, stable=True).indices
                for i in range(min(n_gain, width)):
                    gains.scatter_(1, ranked[:, i:i + 1], float(n_gain - i))
                gains[~valid] = IDCM_PADDED
                value = lambda_loss(preds, gains)
            elif loss == 'mse':
                value = ((preds - teach) ** 2)[valid].mean()
            else:
                lp = torch.log_softmax(preds.masked_fill(~valid, float('-inf')), -1)
                lt = torch.log_softmax(teach.masked_fill(~valid, float('-inf')), -1)
                value = (lt.exp() * (lt - lp)).masked_fill(~valid, 0.).sum(-1).mean()
            value.backward()
            opt.step()
            losses.append(float(value))
    return losses


# ------------------------------------------------------------------------------------------------------ recipe

def idcm_triples(groups: Sequence[Dict[str, Any]]) -> List[Tuple[str, str, str]]:
    """``(query, positive, negative)`` for each negative of each training group, in the groups' order."""
    return [(g['query'], g['positive'], n) for g in groups for n in g['negatives']]


def _config(config: Dict[str, Any]) -> Dict[str, Any]:
    cfg = staged_config(config, IDCM_DEFAULTS, 'idcm', ('etm', 'esm'))
    if not cfg['output_dir']:
        raise ValueError("recipe 'idcm' needs output_dir")
    if not cfg['etm']['enabled'] and not cfg['esm']['enabled']:
        raise ValueError('idcm: both stages (etm, esm) are disabled')
    return cfg


def _encoder_path(name: str) -> str:
    from pyterrier_llmrank import models
    from pyterrier_llmrank.dense import MINILM_SHORT_NAME, minilm_path
    if str(name) == MINILM_SHORT_NAME:
        return minilm_path()
    return models.resolve_model_path(name)


def _initial_model(cfg: Dict[str, Any]) -> Tuple[IDCMModel, Any]:
    if cfg['model']:
        model, tok = load_idcm_model(cfg['model'])
        model.sample_n = int(cfg['sample_n'])
        return model, tok
    from transformers import AutoModel, AutoTokenizer
    path = _encoder_path(cfg['encoder'])
    set_seed(int(cfg['seed']))  # the new layers' initialisation
    bert = AutoModel.from_pretrained(path)
    model = IDCMModel(bert, sample_n=int(cfg['sample_n']), top_k_chunks=int(cfg['top_k_chunks']),
                      chunk_size=int(cfg['chunk_size']), overlap=int(cfg['overlap']),
                      padding_idx=int(bert.config.pad_token_id or 0), bert_model_name=str(cfg['encoder']))
    return model, AutoTokenizer.from_pretrained(path)


def main(config: Dict[str, Any]) -> str:
    """The ``idcm`` recipe (see the module documentation); returns the output folder (``IDCM(folder)`` loads it)."""
    from pyterrier_llmrank.train.data import training_groups
    cfg = _config(config)
    set_threads(cfg['threads'])
    out = Path(cfg['output_dir'])
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    groups = training_groups(cfg['dataset'], n_negatives=int(cfg['n_negatives']), negatives=cfg['negatives'],
                             depth=int(cfg['depth']), seed=int(cfg['seed']), max_queries=cfg['max_queries'])
    if not groups:
        raise ValueError(f'idcm: no training groups in {cfg["dataset"]!r}')
    lengths = {'max_query_tokens': int(cfg['max_query_tokens']), 'max_doc_tokens': int(cfg['max_doc_tokens'])}
    summary: Dict[str, Any] = {'groups': len(groups)}
    etm_dir = out / 'etm'
    settings1 = {k: v for k, v in cfg.items() if k != 'esm'}  # what the ETM stage depends on
    reuse = cfg['etm']['enabled'] and cfg['resume'] and (etm_dir / 'config.json').exists()
    if reuse:
        check_run_config(etm_dir, settings1, resuming=True)
        model, tok = load_idcm_model(etm_dir)
        etm_rows = [r for r in read_log(out / 'log.csv') if r['stage'] == 'etm'] if (out / 'log.csv').exists() else []
        step = max((int(r['step']) for r in etm_rows), default=0)
        log = CSVLogger(out / 'log.csv', ['stage', 'loss'], resume_step=step)
    else:
        model, tok = _initial_model(cfg)
        log = CSVLogger(out / 'log.csv', ['stage', 'loss'])
        step = 0
    model = model.to(cfg['device'])
    if cfg['etm']['enabled'] and not reuse:
        e = cfg['etm']
        t0 = time.time()
        losses = train_etm(model, tok, idcm_triples(groups), epochs=int(e['epochs']), lr=float(e['lr']),
                           batch_size=int(e['batch_size']), loss=e['loss'], seed=int(cfg['seed']), **lengths)
        for value in losses:
            step += 1
            log.log(step, stage='etm', loss=float(value))
        save_idcm(model, tok, etm_dir)
        check_run_config(etm_dir, settings1, resuming=False)
        summary.update(etm_steps=len(losses), etm_seconds=round(time.time() - t0, 2))
    if cfg['esm']['enabled']:
        e = cfg['esm']
        t0 = time.time()
        pairs = [(g['query'], d) for g in groups for d in [g['positive'], *g['negatives']]]
        losses = distill_esm(model, tok, pairs, epochs=int(e['epochs']), lr=float(e['lr']),
                             batch_size=int(e['batch_size']), loss=e['loss'], seed=int(cfg['seed']), **lengths)
        for value in losses:
            step += 1
            log.log(step, stage='esm', loss=float(value))
        summary.update(esm_steps=len(losses), esm_seconds=round(time.time() - t0, 2))
    model.eval()
    save_idcm(model.cpu(), tok, out)
    write_json(out / 'train_config.json', cfg)
    write_json(out / 'reranker.json', {'class': 'IDCM', 'kwargs': lengths})
    summary['total_seconds'] = round(time.time() - t_start, 2)
    write_json(out / 'summary.json', summary)
    return str(out)
