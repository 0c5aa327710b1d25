"""Prompt prefill, one prompt at a time, with reuse of the key/value states of earlier prompts' shared prefixes.

The generation backend (:class:`~pyterrier_llmrank.backends.HFGenerationBackend`) uses this on the CPU, where a
left-padded batch is slower to prefill than its prompts one by one (the padding forces the masked attention path,
which cannot skip the upper triangle of the causal mask), while decoding many prompts together still pays:

* :class:`PromptKV` runs each prompt's prefill alone (no padding, causal attention without a mask) and keeps the
  per-layer key/value states of recent prompts (least recently used first out, within a byte budget). A new prompt
  starts from the stored prompt with which it shares the longest token prefix (the chat template and the
  instruction, a Setwise comparison whose parent is the previous comparison's parent, RankGPT's system and
  instruction turns): only the rest of it is computed. The rest attends to the reused prefix by blocks of queries
  (:func:`offset_causal_attention`), each block reading only the keys it may see.
* :func:`batch_cache` lays the states of several prompts side by side, left-padded, as the cache of one
  ``model.generate`` call over the left-padded prompts: ``generate`` then runs only the prompts' last tokens and the
  decoding steps, batched. Its layers have room for the tokens to come, written in place: ``DynamicCache``
  concatenates at every step, a copy of the whole cache per layer (a quarter of a decoding step's time with a
  2,500-token prompt on the CPU).

Reused states equal recomputed ones up to float rounding (the same operations, on other matrix shapes).
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Iterator, List, Sequence, Tuple

import numpy as np
import torch

from pyterrier_llmrank.causal import decoder_body

__all__ = ['PromptKV', 'batch_cache', 'offset_causal_attention', 'OFFSET_CAUSAL']

#: name under which :func:`offset_causal_attention` is registered in transformers' attention functions
OFFSET_CAUSAL = 'llmrank_offset_causal'
#: query rows per block of :func:`offset_causal_attention`
QUERY_BLOCK = 256

State = List[Tuple[torch.Tensor, torch.Tensor]]


def offset_causal_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: Any, **kwargs: Any) -> Tuple[torch.Tensor, None]:
    """Causal attention of ``q`` new positions over ``k >= q`` keys whose first ``k - q`` are a cached prefix.

    For one unpadded sequence only (no mask is built for it): without a prefix it is SDPA's causal kernel; with one,
    query blocks of :data:`QUERY_BLOCK` rows attend to the keys up to their own position, so that the masked-out
    upper triangle is never computed.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    q_len, k_len = query.shape[2], key.shape[2]
    if attention_mask is not None or query.shape[0] != 1:
        raise ValueError(f'{OFFSET_CAUSAL} attention takes one unpadded sequence (got batch {query.shape[0]})')
    if q_len == k_len or q_len == 1:
        return sdpa_attention_forward(module, query, key, value, None, is_causal=q_len > 1, **kwargs)
    off = k_len - q_len
    outs = []
    for a in range(0, q_len, QUERY_BLOCK):
        b = min(q_len, a + QUERY_BLOCK)
        mask = torch.ones((b - a, off + b), dtype=torch.bool, device=query.device)
        mask[:, off + a:] = torch.ones((b - a, b - a), dtype=torch.bool, device=query.device).tril()
        out, _ = sdpa_attention_forward(module, query[:, :, a:b], key[:, :, :off + b], value[:, :, :off + b],
                                        mask[None, None], is_causal=False, **kwargs)
        outs.append(out)
    return torch.cat(outs, 1), None


def _register() -> None:
    from transformers import AttentionInterface
    AttentionInterface.register(OFFSET_CAUSAL, offset_causal_attention)


@contextmanager
def _attention(config: Any, name: str) -> Iterator[None]:
    before = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if not n:
        return 0
    eq = a[:n] == b[:n]
    return n if eq.all() else int(np.argmin(eq))


class PromptKV:
    """Key/value states of recent prompts of one causal LM, for prefilling new prompts from their longest shared
    prefix.

    Args:
        model: a ``*ForCausalLM`` whose layers all use a plain key/value cache (full attention).
        budget_bytes: the most bytes of states kept (least recently used prompts are dropped first).
        min_shared: the fewest shared tokens worth reusing (fewer: the prompt is computed from its start).

    Counters: ``computed_tokens`` (prompt tokens run through the model), ``reused_tokens`` (tokens served from
    stored states) and ``calls`` (forward passes).
    """

    def __init__(self, model: Any, budget_bytes: int = 1 << 30, min_shared: int = 16) -> None:
        _register()
        self.model = model
        self.body = decoder_body(model)
        self.budget_bytes = int(budget_bytes)
        self.min_shared = int(min_shared)
        self._store: 'OrderedDict[Tuple[int, ...], Tuple[np.ndarray, State]]' = OrderedDict()
        self._bytes = 0
        self.computed_tokens = 0
        self.reused_tokens = 0
        self.calls = 0

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        """Forget every stored state."""
        self._store.clear()
        self._bytes = 0

    @staticmethod
    def _nbytes(state: State) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in state)

    def _longest(self, ids: np.ndarray) -> Tuple[Any, int]:
        best, n = None, 0
        for key, (arr, _) in self._store.items():
            m = _common_prefix(arr, ids)
            if m > n:
                best, n = key, m
        return best, n

    def _keep(self, key: Tuple[int, ...], arr: np.ndarray, state: State) -> None:
        for old in [k for k in self._store if len(k) <= len(key) and key[:len(k)] == k]:
            self._bytes -= self._nbytes(self._store.pop(old)[1])  # the new prompt holds it
        size = self._nbytes(state)
        if size > self.budget_bytes:
            return
        self._store[key] = (arr, state)
        self._bytes += size
        while self._bytes > self.budget_bytes:
            self._bytes -= self._nbytes(self._store.popitem(last=False)[1][1])

    @torch.inference_mode()
    def prefill(self, ids: Sequence[int]) -> State:
        """Per-layer ``(keys, values)`` of the tokens ``ids`` (each ``[1, kv_heads, len(ids), head_dim]``)."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer
        key = tuple(int(t) for t in ids)
        arr = np.asarray(key, dtype=np.int64)
        hit, n = self._longest(arr) if self._store else (None, 0)
        if hit is not None:
            self._store.move_to_end(hit)
        if n < self.min_shared and n < len(key):
            hit, n = None, 0
        if hit is not None and n == len(key):
            self.reused_tokens += n
            return [(k[:, :, :n], v[:, :, :n]) for k, v in self._store[hit][1]]
        dev = next(self.model.parameters()).device
        if hit is not None:
            cache = DynamicCache(ddp_cache_data=[(k[:, :, :n], v[:, :, :n]) for k, v in self._store[hit][1]])
        else:
            cache = DynamicCache(config=self.body.config)
        rest = torch.tensor([key[n:]], dtype=torch.long, device=dev)
        with _attention(self.body.config, OFFSET_CAUSAL):
            out = self.body(input_ids=rest, position_ids=torch.arange(n, len(key), device=dev)[None], cache=cache,
                            use_cache=True)
        cache = getattr(out, 'cache', None) or cache
        layers = getattr(cache, 'layers', None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            raise ValueError(f'prompt prefill needs a plain full-attention key/value cache; '
                             f'{type(self.model).__name__} uses another kind (sliding window, hybrid)')
        state = [(layer.keys, layer.values) for layer in layers]
        self.calls += 1
        self.computed_tokens += len(key) - n
        self.reused_tokens += n
        self._keep(key, arr, state)
        return state


@functools.lru_cache(maxsize=None)
def _growing_layer_class() -> Any:
    """The class, made once (transformers is imported only when a cache is built)."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values are views of buffers with room to grow: a decoding step writes its
        states in place, where ``DynamicLayer`` concatenates (a copy of the layer's whole cache at every step)."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
            super().__init__()
            self.lazy_initialization(keys, values)
            self._kbuf, self._vbuf = keys, values
            self.keys, self.values = keys[:, :, :length], values[:, :, :length]

        def _in_buffer(self) -> bool:
            return (self.keys is not None and self.keys.numel() > 0 and self.keys.data_ptr() == self._kbuf.data_ptr()
                    and self.keys.shape[:2] == self._kbuf.shape[:2])

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> Tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            inside = self._in_buffer()
            n = self.keys.shape[-2] if inside or (self.keys is not None and self.keys.numel()) else 0
            new = key_states.shape[-2]
            if not inside or n + new > self._kbuf.shape[-2]:
                # reassigned (crop, beam selection, reset) or full: a new buffer with room for half as much again
                cap = n + new + max(n // 2, 64)
                kb = key_states.new_empty(key_states.shape[:2] + (cap, key_states.shape[3]))
                vb = value_states.new_empty(value_states.shape[:2] + (cap, value_states.shape[3]))
                if n:
                    kb[:, :, :n] = self.keys
                    vb[:, :, :n] = self.values
                self._kbuf, self._vbuf = kb, vb
            self._kbuf[:, :, n:n + new] = key_states
            self._vbuf[:, :, n:n + new] = value_states
            self.keys, self.values = self._kbuf[:, :, :n + new], self._vbuf[:, :, :n + new]
            return self.keys, self.values

    return GrowingLayer


def batch_cache(states: Sequence[State], width: int, room: int = 0) -> Any:
    """A ``DynamicCache`` of ``width`` positions holding each row's states at its right end (left padding of zeros,
    to be masked out by the attention mask of the padded prompts).

    Its layers keep ``room`` more positions free behind the states, for the tokens ``generate`` will add (its
    first step's prompt tail and the decoding steps): they are written in place rather than concatenated.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import Cache
    layer_class = _growing_layer_class()
    layers = []
    for layer in range(len(states[0])):
        k0, v0 = states[0][layer]
        kk = k0.new_empty((len(states), k0.shape[1], width + room, k0.shape[3]))
        vv = v0.new_empty((len(states), v0.shape[1], width + room, v0.shape[3]))
        for i, st in enumerate(states):  # the room is written before it is read: only the padding is zeroed
            k, v = st[layer]
            pad = width - k.shape[2]
            kk[i, :, :pad] = 0
            vv[i, :, :pad] = 0
            kk[i, :, pad:width] = k[0]
            vv[i, :, pad:width] = v[0]
        layers.append(layer_class(kk, vv, width))
    cache = DynamicCache.__new__(DynamicCache)  # DynamicCache.__init__ would make plain DynamicLayers from data;
    Cache.__init__(cache, layers=layers)  # this is what it does with ready layers
    return cache
