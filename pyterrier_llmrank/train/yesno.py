"""SFT vs contrastive training of the yes/no relevance scorer (:class:`~pyterrier_llmrank.pointwise.YesNo`).

The comparison of Dai et al., "Supervised Fine-Tuning or Contrastive Learning? Towards Better Multimodal LLM
Reranking", arXiv 2510.14824, 2025, in text form: the same causal LM, prompt and answer position, trained
either

* ``sft``: with supervised fine-tuning, the language-modelling cross-entropy (over the whole vocabulary) of the
  answer token: the first token of ``"Yes"`` for a positive pair, of ``"No"`` for a negative one; every pair of
  a group counts once (mean over pairs);
* ``contrastive``: with InfoNCE over each group (the positive at index 0 and its negatives) on the relevance
  logit ``r = z_Yes - z_No`` read at the answer position: ``-log softmax(r / tau)[0]``, ``tau`` 1 by default.

``r`` is the quantity :class:`YesNo` ranks by (its score ``log_softmax([z_Yes, z_No])[0] = -softplus(-r)`` is
increasing in ``r``), so both recipes train what the reranker reads. The prompt and token ids come from
``YesNo`` itself (``YesNo.prompt_ids``), the LM is adapted with LoRA (peft ``CAUSAL_LM``; r 16, alpha 32,
dropout 0.05 on q/k/v/o and the MLP projections by default) and the output folder holds the adapter, which
``YesNo(folder)`` loads on its base model and merges (:func:`pyterrier_llmrank.models.load_causal_lm`).
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from pyterrier_llmrank import models
from pyterrier_llmrank.causal import model_inputs
from pyterrier_llmrank.pointwise import YESNO_NO, YESNO_PROMPT, YESNO_YES
from pyterrier_llmrank.train.data import group_lengths
from pyterrier_llmrank.train.loop import train_loop
from pyterrier_llmrank.train.recipe import add_lora, finish, make_groups, prepare, resolve_config

__all__ = ['main_sft', 'main_contrastive', 'YesNoStudent', 'sft_loss', 'infonce_loss', 'yesno_objectives', 'YESNO_LORA', 'YESNO_DEFAULTS']

#: Default LoRA of the yes/no recipes.
YESNO_LORA = {'r': 16, 'alpha': 32, 'dropout': 0.05,
              'target_modules': ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
              'layers_to_transform': None}

YESNO_DEFAULTS: Dict[str, Any] = {
    'lora': dict(YESNO_LORA), 'prompt': YESNO_PROMPT, 'system': None, 'yes': YESNO_YES, 'no': YESNO_NO,
    'max_text_tokens': 512, 'tau': 1.0, 'lr': 1e-4,
}


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """Cross-entropy over the vocabulary of the answer token: ``yes_id`` where ``labels`` is 1, else ``no_id``.

    Args:
        logits: Next-token logits at the answer position, ``P x V``.
        labels: 1 for positive pairs, 0 for negative ones (``P``).
    """
    target = torch.where(labels > 0, torch.full_like(labels, yes_id), torch.full_like(labels, no_id))
    return F.cross_entropy(logits.float(), target)


def infonce_loss(relevance: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """InfoNCE over groups of relevance logits ``B x N`` with the positive at index 0."""
    target = torch.zeros(relevance.shape[0], dtype=torch.long, device=relevance.device)
    return F.cross_entropy(relevance.float() / tau, target)


def yesno_objectives(logits: torch.Tensor, groups: int, yes_id: int, no_id: int,
                     tau: float) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """Both objectives over the answer logits of ``groups`` groups of a positive followed by its negatives
    (``logits``: ``groups * n`` rows in that order): the SFT loss (:func:`sft_loss`, label 1 for each group's first
    row), InfoNCE (:func:`infonce_loss` over ``yes - no`` per group) and the mean margin of the positive over the
    negatives. The recipes train one of the two losses and log both."""
    rel = (logits[:, yes_id] - logits[:, no_id]).float().view(groups, -1)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[::rel.shape[1]] = 1
    margin = float((rel[:, :1] - rel[:, 1:]).mean().detach())
    return sft_loss(logits, labels, yes_id, no_id), infonce_loss(rel, tau), margin


class YesNoStudent:
    """A LoRA causal LM reading the answer-position logits of :class:`YesNo`'s prompts, with gradients."""

    def __init__(self, model: str, lora: Dict[str, Any], *, prompt: str = YESNO_PROMPT, system: Any = None,
                 yes: str = YESNO_YES, no: str = YESNO_NO, max_text_tokens: int = 512, device: Any = 'cpu',
                 dtype: Any = 'float32') -> None:
        from pyterrier_llmrank.pointwise import YesNo
        base, tok = models.load_causal_lm(model, device=device, dtype=dtype, shared=False)
        self.peft = add_lora(base, lora, 'CAUSAL_LM', model)
        self.model = self.peft.get_base_model()
        self.tokenizer = tok
        self.scorer = YesNo((self.model, tok), prompt=prompt, system=system, yes=yes, no=no,
                            max_text_tokens=max_text_tokens, prefix_reuse=False, device=device, dtype=dtype)
        self.yes_id, self.no_id = self.scorer._pos_id, self.scorer._neg_id
        self.reranker_kwargs: Dict[str, Any] = {'max_text_tokens': max_text_tokens}
        if prompt != YESNO_PROMPT:
            self.reranker_kwargs['prompt'] = prompt
        if system is not None:
            self.reranker_kwargs['system'] = system
        if (yes, no) != (YESNO_YES, YESNO_NO):
            self.reranker_kwargs.update(yes=yes, no=no)

    def answer_logits(self, pairs: Sequence[Tuple[str, str]]) -> torch.Tensor:
        """Next-token logits (``P x V``) at the answer position of each ``(query, text)`` pair."""
        seqs = [self.scorer.prompt_ids(q, t) for q, t in pairs]
        return self.model(**model_inputs(self.model, seqs, self.scorer.pad, None, None), logits_to_keep=1).logits[:, -1]

    def relevance(self, pairs: Sequence[Tuple[str, str]]) -> torch.Tensor:
        """``z_Yes - z_No`` of each pair."""
        logits = self.answer_logits(pairs)
        return (logits[:, self.yes_id] - logits[:, self.no_id]).float()


def _run(config: Dict[str, Any], recipe: str) -> str:
    cfg = resolve_config(config, recipe, YESNO_DEFAULTS)
    prepare(cfg)
    t_start = time.time()
    groups = make_groups(cfg)
    prepare(cfg)
    student = YesNoStudent(cfg['model'], cfg['lora'], prompt=cfg['prompt'], system=cfg['system'], yes=cfg['yes'],
                           no=cfg['no'], max_text_tokens=int(cfg['max_text_tokens']), device=cfg['device'],
                           dtype=cfg['dtype'])
    tau = float(cfg['tau'])

    def loss_fn(batch: List[Dict[str, Any]]) -> Tuple[torch.Tensor, Dict[str, float]]:
        pairs = [(g['query'], t) for g in batch for t in [g['positive'], *g['negatives']]]
        logits = student.answer_logits(pairs)
        # both objectives are logged, one is trained
        sft, nce, margin = yesno_objectives(logits, len(batch), student.yes_id, student.no_id, tau)
        loss = sft if recipe == 'sft' else nce
        return loss, {'sft': float(sft.detach()), 'infonce': float(nce.detach()), 'margin': margin}

    summary = train_loop(student.model, groups, loss_fn, output_dir=cfg['output_dir'], cfg=cfg, seed=int(cfg['seed']),
                         log_columns=['sft', 'infonce', 'margin'], desc=recipe, verbose=bool(cfg['verbose']),
                         lengths=group_lengths(groups))
    summary.update(groups=len(groups), total_seconds=round(time.time() - t_start, 2))
    if not summary['finished']:
        return str(cfg['output_dir'])
    return finish(student.peft, student.tokenizer, cfg, summary, 'YesNo',
                  student.reranker_kwargs)


def main_sft(config: Dict[str, Any]) -> str:
    """Runs the ``sft`` recipe; returns the output folder (loads with ``YesNo(folder)``)."""
    return _run(config, 'sft')


def main_contrastive(config: Dict[str, Any]) -> str:
    """Runs the ``contrastive`` recipe; returns the output folder (loads with ``YesNo(folder)``)."""
    return _run(config, 'contrastive')
