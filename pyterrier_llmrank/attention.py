"""Attention rows of a query span, computed beside PyTorch's SDPA: the measurement ICR scores documents with.

The model runs with SDPA through an attention function (:func:`row_capturing_sdpa`) registered in
``transformers.AttentionInterface`` under :data:`ATTENTION_NAME` (set on a model only inside
:func:`attn_implementation`). Besides SDPA's output, while a :class:`RowCapture` is active (:func:`capturing`),
that function takes the post-RoPE query states of the last rows of the pass (the query span) and all key states
(cache included), expands the GQA heads, and computes ``softmax(q k^T * scale + causal mask)`` in float32 for
those rows only, reducing them at once to one number per key position (mean over the span rows, sum over heads,
accumulated over the chosen layers). Memory is ``heads x span x length`` per layer; the ``layers x heads x L x L``
matrices of ``output_attentions=True`` are never built.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Optional

import torch

__all__ = ['ATTENTION_NAME', 'RowCapture', 'row_capturing_sdpa', 'register', 'attn_implementation', 'capturing']

#: Name under which the row-capturing attention function is registered in ``transformers.AttentionInterface``.
ATTENTION_NAME = 'pyterrier_llmrank_icr_sdpa'




class RowCapture:
    """Accumulates, for one forward pass, the attention of the last ``rows`` query positions to every key.

    ``scores[j]`` = sum over layers in ``[start, end]`` and heads of the mean over the captured rows of the
    attention probability to key position ``j`` (softmax in float32, causal, post-RoPE, GQA heads expanded).
    """

    def __init__(self, rows: int, start: int, end: int) -> None:
        self.rows = rows
        self.start = start
        self.end = end
        self.scores: Optional[torch.Tensor] = None

    @torch.no_grad()
    def add(self, query: torch.Tensor, key: torch.Tensor, scaling: float) -> None:
        # query: [1, H, Lq, d] (the rows fed in this pass); key: [1, KVH, Lk, d] (cache + this pass)
        _, n_heads, lq, dim = query.shape
        kv_heads, lk = key.shape[1], key.shape[2]
        groups = n_heads // kv_heads
        s = min(self.rows, lq)
        # query heads h = kv * groups + g share key head kv (transformers' repeat_kv): group them per key head
        q = query[0, :, lq - s:, :].float().reshape(kv_heads, groups * s, dim)
        k = key[0].float()
        logits = torch.bmm(q, k.transpose(1, 2)).mul_(scaling).view(kv_heads, groups, s, lk)
        # the span's rows are the last s positions of the sequence: row i sits at absolute position lk - s + i
        pos = torch.arange(lk - s, lk, device=logits.device)
        future = torch.arange(lk, device=logits.device)[None, :] > pos[:, None]
        logits.masked_fill_(future, float('-inf'))
        probs = torch.softmax(logits, dim=-1)
        per_key = probs.mean(dim=2).sum(dim=(0, 1))  # mean over span rows, sum over heads -> [lk]
        self.scores = per_key if self.scores is None else self.scores + per_key


_STATE = threading.local()


def row_capturing_sdpa(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: Optional[torch.Tensor], *args: Any, **kwargs: Any):
    """SDPA for the model's output; in addition, the query-span rows for ICR when a capture is active."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    out = sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    cap: Optional[RowCapture] = getattr(_STATE, 'capture', None)
    layer = getattr(module, 'layer_idx', None)
    if cap is not None and layer is not None and cap.start <= layer <= cap.end:
        scaling = kwargs.get('scaling')
        if scaling is None:
            scaling = getattr(module, 'scaling', None) or 1.0 / math.sqrt(query.shape[-1])
        cap.add(query, key, scaling)
    return out


_REGISTERED = False


def register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    AttentionInterface.register(ATTENTION_NAME, row_capturing_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)  # the same masks as SDPA
    _REGISTERED = True


@contextlib.contextmanager
def attn_implementation(model: Any, name: str):
    """Run the model with attention implementation ``name``, restoring the previous one afterwards.

    :data:`ATTENTION_NAME` is registered first when needed (a reranker unpickled in a parallel worker process
    never ran the constructor that registers it)."""
    if name == ATTENTION_NAME:
        register()
    old = model.config._attn_implementation
    if old != name:
        model.set_attn_implementation(name)
    try:
        yield
    finally:
        if model.config._attn_implementation != old:
            model.set_attn_implementation(old)


@contextlib.contextmanager
def capturing(cap: RowCapture):
    prev = getattr(_STATE, 'capture', None)
    _STATE.capture = cap
    try:
        yield cap
    finally:
        _STATE.capture = prev
