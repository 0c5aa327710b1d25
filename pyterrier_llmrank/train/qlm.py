"""Contrastive query-likelihood fine-tuning of UPR (recipe ``upr``): the reranker that already works zero-shot,
trained on a collection's judged pairs.

:class:`~pyterrier_llmrank.upr.UPR` scores a document by the log-likelihood of the query given the passage
prompt (Sachan et al., EMNLP 2022; DevSinghSachan/unsupervised-passage-reranking ``upr_gpt.py`` for decoder-only
LMs). This recipe trains that very score: for a group (the positive at index 0 and its negatives, all for the
same query) with UPR scores ``s`` (the summed log-probabilities of ``"Question: {query}"`` and EOS, computed by
:func:`pyterrier_llmrank.causal.target_logprob_tensor` from the ids :meth:`UPR.pair_ids` builds, so training
scores exactly what the reranker reads), the loss is::

    InfoNCE(s / tau) + lm_weight * (-s_0 / |query tokens|)

InfoNCE (``-log softmax(s / tau)[0]``) makes the query likelier under its relevant passage than under the
judged-lower or BM25 negatives; the optional second term is the plain query-generation loss of the positive
(the training objective of query-likelihood models such as Zhuang, Li and Zuccon, "Deep Query Likelihood Models
for Information Retrieval", ECIR 2021), 0 by default. This combination is our choice: UPR itself is
zero-shot and has no training code. The LM is adapted with LoRA (peft ``CAUSAL_LM``), and the output folder
holds the adapter, which ``UPR(folder)`` loads on its base model and merges.

Choose it when the zero-shot UPR of a model is already a useful reranker (it starts from there: a small learning
rate stays close to it), over the yes/no recipes (``sft``, ``contrastive``), whose untrained starting point is
a prompt a small LM barely follows.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from pyterrier_llmrank import models
from pyterrier_llmrank.causal import target_logprob_tensor
from pyterrier_llmrank.train.data import group_lengths
from pyterrier_llmrank.train.loop import train_loop
from pyterrier_llmrank.train.recipe import add_lora, finish, make_groups, prepare, resolve_config

__all__ = ['main', 'QLMStudent', 'qlm_loss', 'QLM_LORA', 'QLM_DEFAULTS']

#: Default LoRA of the ``upr`` recipe (as the yes/no recipes: all attention and MLP projections).
QLM_LORA = {'r': 16, 'alpha': 32, 'dropout': 0.05,
            'target_modules': ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
            'layers_to_transform': None}

QLM_DEFAULTS: Dict[str, Any] = {
    'lora': dict(QLM_LORA), 'max_passage_tokens': 512, 'max_query_tokens': 128, 'reduce': 'sum', 'tau': 1.0,
    'lm_weight': 0.0, 'lr': 1e-4,
}


def qlm_loss(scores: torch.Tensor, target_lengths: torch.Tensor, tau: float = 1.0,
             lm_weight: float = 0.0) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The ``upr`` loss of grouped UPR scores ``B x N`` (positive at index 0; ``target_lengths`` ``B``: the
    scored tokens of each group's query).

    Returns:
        ``(loss, {'infonce', 'lm', 'margin'})`` (``margin``: mean positive score minus mean negative score).
    """
    target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    nce = F.cross_entropy(scores.float() / tau, target)
    lm = (-scores[:, 0] / target_lengths.to(scores.dtype)).mean()
    loss = nce + lm_weight * lm if lm_weight else nce
    margin = float((scores[:, :1] - scores[:, 1:]).mean().detach()) if scores.shape[1] > 1 else float('nan')
    return loss, {'infonce': float(nce.detach()), 'lm': float(lm.detach()), 'margin': margin}


class QLMStudent:
    """A LoRA causal LM scoring pairs exactly as :class:`~pyterrier_llmrank.upr.UPR` (causal, plain form) does,
    with gradients."""

    def __init__(self, model: str, lora: Dict[str, Any], *, max_passage_tokens: int = 512, max_query_tokens: int = 128,
                 reduce: str = 'sum', device: Any = 'cpu', dtype: Any = 'float32') -> None:
        from pyterrier_llmrank.upr import UPR
        base, tok = models.load_causal_lm(model, device=device, dtype=dtype, shared=False)
        self.peft = add_lora(base, lora, 'CAUSAL_LM', model)
        self.model = self.peft.get_base_model()
        self.tokenizer = tok
        self.scorer = UPR((self.model, tok), kind='causal', reduce=reduce, max_passage_tokens=max_passage_tokens,
                          max_query_tokens=max_query_tokens, device=device, dtype=dtype)
        self.reduce = reduce
        self.reranker_kwargs: Dict[str, Any] = {'kind': 'causal', 'reduce': reduce,
                                                'max_passage_tokens': max_passage_tokens,
                                                'max_query_tokens': max_query_tokens}

    def scores(self, pairs: Sequence[Tuple[str, str]]) -> Tuple[torch.Tensor, List[int]]:
        """Differentiable UPR scores of ``(query, text)`` pairs, and the number of scored tokens of each."""
        items = [self.scorer.pair_ids(q, t) for q, t in pairs]
        s = target_logprob_tensor(self.model, [c for c, _ in items], [t for _, t in items], self.scorer.pad,
                                  self.reduce)
        return s, [len(t) for _, t in items]


def main(config: Dict[str, Any]) -> str:
    """Runs the ``upr`` recipe; returns the output folder (loads with ``UPR(folder)`` or ``load_reranker``)."""
    cfg = resolve_config(config, 'upr', QLM_DEFAULTS)
    prepare(cfg)
    t_start = time.time()
    groups = make_groups(cfg)
    prepare(cfg)
    student = QLMStudent(cfg['model'], cfg['lora'], max_passage_tokens=int(cfg['max_passage_tokens']),
                         max_query_tokens=int(cfg['max_query_tokens']), reduce=cfg['reduce'], device=cfg['device'],
                         dtype=cfg['dtype'])
    tau, lm_weight = float(cfg['tau']), float(cfg['lm_weight'])

    def loss_fn(batch: List[Dict[str, Any]]) -> Tuple[torch.Tensor, Dict[str, float]]:
        n = 1 + len(batch[0]['negatives'])
        pairs = [(g['query'], t) for g in batch for t in [g['positive'], *g['negatives']]]
        s, lengths = student.scores(pairs)
        return qlm_loss(s.view(len(batch), n), torch.tensor(lengths[::n], dtype=torch.float32), tau, lm_weight)

    summary = train_loop(student.model, groups, loss_fn, output_dir=cfg['output_dir'], cfg=cfg, seed=int(cfg['seed']),
                         log_columns=['infonce', 'lm', 'margin'], desc='upr', verbose=bool(cfg['verbose']),
                         lengths=group_lengths(groups))
    summary.update(groups=len(groups), total_seconds=round(time.time() - t_start, 2))
    if not summary['finished']:
        return str(cfg['output_dir'])
    return finish(student.peft, student.tokenizer, cfg, summary, 'UPR', student.reranker_kwargs)
