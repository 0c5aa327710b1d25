"""Batched scoring with causal LMs: log-probabilities of target tokens and logits of chosen next tokens.

Sequences are left-padded so that every row ends at the last position; the model is asked for the logits
of the last positions only (``logits_to_keep``), never the full vocabulary at every position. Position ids
come from the attention mask, so a sequence's score does not depend on the batch it shares.
"""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import torch

__all__ = ['left_pad', 'target_logprobs', 'next_token_logits', 'pad_id']


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id, else 0 (pads are masked out either way)."""
    for tid in (getattr(tokenizer, 'pad_token_id', None), getattr(tokenizer, 'eos_token_id', None)):
        if tid is not None:
            return int(tid)
    return 0


def left_pad(seqs: Sequence[Sequence[int]], pad: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token id lists; returns ``input_ids``, ``attention_mask`` and mask-derived ``position_ids``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def target_logprobs(model: Any, contexts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], pad: int,
                    reduce: str = 'sum') -> List[float]:
    """Log-probability of each ``targets[i]`` following ``contexts[i]``, in one forward pass over the batch.

    Args:
        model: a causal LM (any ``*ForCausalLM`` that accepts ``logits_to_keep``).
        contexts: token ids of each prompt (non-empty).
        targets: token ids to score after each prompt (non-empty).
        pad: the id used for padding (masked out).
        reduce: ``'sum'`` (log-likelihood) or ``'mean'`` (per target token).
    """
    if reduce not in ('sum', 'mean'):
        raise ValueError("reduce must be 'sum' or 'mean'")
    seqs = []
    for c, t in zip(contexts, targets):
        if not len(c) or not len(t):
            raise ValueError('contexts and targets must be non-empty')
        seqs.append(list(c) + list(t)[:-1])  # the last target token is predicted, never fed
    keep = max(len(t) for t in targets)
    ids, mask, pos = left_pad(seqs, pad, _device(model))
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep, use_cache=False).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [B, keep, V]
    out = []
    for i, t in enumerate(targets):
        tt = torch.as_tensor(list(t), dtype=torch.long, device=logprobs.device)
        lp = logprobs[i, keep - len(t):].gather(-1, tt[:, None]).squeeze(-1)
        out.append(float(lp.sum() if reduce == 'sum' else lp.mean()))
    return out


@torch.inference_mode()
def next_token_logits(model: Any, prompts: Sequence[Sequence[int]], token_ids: Sequence[int], pad: int) -> torch.Tensor:
    """Logits of the chosen ``token_ids`` at the position after each prompt: a float32 ``[B, len(token_ids)]``."""
    ids, mask, pos = left_pad(prompts, pad, _device(model))
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1, use_cache=False).logits
    return logits[:, -1, list(token_ids)].float().cpu()


_MARK_USER = '\u2063USER\u2063'
_MARK_ASSISTANT = '\u2063ASSISTANT\u2063'


def chat_parts(tokenizer: Any, system: Any = None) -> Tuple[str, str, str]:
    """Split the tokenizer's chat template around one user turn.

    Returns ``(before_user, after_user, end_of_assistant)`` strings such that
    ``before_user + USER + after_user`` is the template's rendering of a user message followed by the
    assistant header (``add_generation_prompt=True``), and ``end_of_assistant`` is what the template writes
    after an assistant message's content (e.g. ``<|im_end|>\\n``). ``system``: an optional system message;
    without it, whatever default the template inserts is kept.

    Raises:
        ValueError: when the tokenizer has no chat template.
    """
    if not getattr(tokenizer, 'chat_template', None):
        raise ValueError('this tokenizer has no chat template; use the model\'s plain (non-chat) prompt form')
    msgs = ([{'role': 'system', 'content': system}] if system is not None else [])
    user = tokenizer.apply_chat_template(msgs + [{'role': 'user', 'content': _MARK_USER}], tokenize=False,
                                         add_generation_prompt=True)
    before, after = user.split(_MARK_USER)
    full = tokenizer.apply_chat_template(msgs + [{'role': 'user', 'content': _MARK_USER},
                                                 {'role': 'assistant', 'content': _MARK_ASSISTANT}], tokenize=False)
    end = full.split(_MARK_ASSISTANT, 1)[1]
    return before, after, end
