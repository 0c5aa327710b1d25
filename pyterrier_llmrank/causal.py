"""Batched scoring with decoder-only LMs: the one scoring path of every pointwise LLM reranker of the toolkit.

* Sequences are **left-padded** so that every row ends at the last position, and position ids come from the
  attention mask, so a sequence's score does not depend on the batch it shares.
* Only what is read is computed: causal LMs are asked for the logits of the last positions only
  (``logits_to_keep``), never the full vocabulary at every position; classifier heads are applied to the one
  pooled hidden state.
* Everything runs under ``torch.inference_mode`` (except :func:`target_logprob_tensor`, the differentiable
  form the training recipes use).
* **Shared prefixes are computed once.** A prompt prefix common to many sequences (the system turn and chat
  header, and for rerankers that put the query first the query too) is run through the model once; its
  key/value states (:class:`PrefixKV`) are then laid in front of every batch row that starts with it, and
  only the rest of each sequence (its *suffix*) is fed to the model. Rows of one batch may have different
  prefixes: each row's prefix states are left-padded to the longest prefix of the batch and the padding is
  masked out, so a row sees exactly its own prefix, at its own positions. The scores equal those of the full
  sequences (up to float rounding; see ``tests/test_pointwise.py``).

Layout of one batch row with a prefix of length ``p`` and a suffix ``s`` (``.`` = masked padding)::

    cache slots:  . . . P0 P1 ... P(p-1)    input slots:  . . s0 s1 ... s(n-1)
    positions:          0  1  ...  p-1                        p  p+1 ... p+n-1
"""
from __future__ import annotations

from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple

import torch

__all__ = ['left_pad', 'target_logprobs', 'target_logprob_tensor', 'next_token_logits', 'last_hidden', 'pad_id', 'chat_parts', 'PrefixKV',
           'decoder_body', 'model_inputs', 'special_tokens_around',
           'shared_prefix_lengths']


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


def decoder_body(model: Any) -> Any:
    """The transformer body of a ``*ForCausalLM`` / ``*ForSequenceClassification`` (its ``base_model``)."""
    return getattr(model, 'base_model', model)


def shared_prefix_lengths(seqs: Sequence[Sequence[int]], groups: Sequence[Hashable], reserve: Sequence[int],
                          min_shared: int = 2) -> List[int]:
    """Length of the prefix each sequence shares with the other sequences of its group (0 when it shares none).

    The prefix of a group is the longest common token prefix of its sequences, capped so that sequence ``i``
    keeps at least ``reserve[i]`` tokens of its own (the positions whose outputs are read must be in the
    suffix). Groups with fewer than ``min_shared`` sequences get 0: a prefix of its own saves nothing.
    """
    members: Dict[Hashable, List[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out = [0] * len(seqs)
    for idx in members.values():
        if len(idx) < min_shared:
            continue
        first = seqs[idx[0]]
        lcp = min(len(seqs[i]) for i in idx)
        for i in idx[1:]:
            s = seqs[i]
            j = 0
            while j < lcp and s[j] == first[j]:
                j += 1
            lcp = j
            if not lcp:
                break
        cap = min(len(seqs[i]) - reserve[i] for i in idx)
        lcp = max(0, min(lcp, cap))
        for i in idx:
            out[i] = lcp
    return out


class PrefixKV:
    """Key/value states of shared prompt prefixes of one model, each computed once and reused.

    ``get(prefix)`` runs the model's decoder once over ``prefix`` (a tuple of token ids) and keeps its
    per-layer key/value states; :meth:`batch` lays the states of the prefixes of a batch's rows side by side
    (left-padded) as the ``cache`` of a forward pass over the rows' suffixes. Counters: ``computed_tokens`` and
    ``calls`` (forward passes spent on prefixes). Call :meth:`clear` to free the states.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self._store: Dict[Tuple[int, ...], List[Tuple[torch.Tensor, torch.Tensor]]] = {}
        self.computed_tokens = 0
        self.calls = 0

    def __contains__(self, prefix: Tuple[int, ...]) -> bool:
        return tuple(prefix) in self._store

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        """Forget every prefix state."""
        self._store.clear()

    @torch.inference_mode()
    def get(self, prefix: Sequence[int]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer ``(keys, values)`` of ``prefix`` (each ``[1, kv_heads, len(prefix), head_dim]``)."""
        key = tuple(int(t) for t in prefix)
        if not key:
            raise ValueError('a prefix must hold at least one token')
        state = self._store.get(key)
        if state is None:
            from transformers import DynamicCache
            from transformers.cache_utils import DynamicLayer
            body = decoder_body(self.model)
            ids = torch.tensor([key], dtype=torch.long, device=_device(self.model))
            cache = DynamicCache(config=body.config)
            out = body(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(len(key), device=ids.device)[None],
                       cache=cache, use_cache=True)
            cache = getattr(out, 'cache', None) or cache
            layers = getattr(cache, 'layers', None)
            if not layers or any(type(layer) is not DynamicLayer for layer in layers):
                raise ValueError(f'prefix reuse needs a plain full-attention key/value cache; {type(self.model).__name__} '
                                 'uses another kind (sliding window, hybrid): pass prefix_reuse=False')
            state = [(layer.keys, layer.values) for layer in layers]
            self._store[key] = state
            self.computed_tokens += len(key)
            self.calls += 1
        return state

    def batch(self, prefixes: Sequence[Sequence[int]]) -> Tuple[Any, torch.Tensor]:
        """A cache holding each row's prefix states, left-padded to the longest, and its ``[B, P]`` attention mask.

        Rows with an empty prefix get only (masked) padding.
        """
        from transformers import DynamicCache
        keys = [tuple(int(t) for t in p) for p in prefixes]
        width = max(len(k) for k in keys)
        uniq: Dict[Tuple[int, ...], int] = {}
        rows = [uniq.setdefault(k, len(uniq)) for k in keys]
        states = {k: self.get(k) for k in uniq if k}
        ref = next(iter(states.values()))
        index = torch.tensor(rows, dtype=torch.long, device=ref[0][0].device)
        data = []
        for layer, (k0, v0) in enumerate(ref):
            kk = k0.new_zeros((len(uniq), k0.shape[1], width, k0.shape[3]))
            vv = v0.new_zeros((len(uniq), v0.shape[1], width, v0.shape[3]))
            for key, u in uniq.items():
                if key:
                    k, v = states[key][layer]
                    kk[u, :, width - len(key):] = k[0]
                    vv[u, :, width - len(key):] = v[0]
            data.append((kk.index_select(0, index), vv.index_select(0, index)))
        mask = torch.zeros((len(keys), width), dtype=torch.long, device=index.device)
        for i, k in enumerate(keys):
            if k:
                mask[i, width - len(k):] = 1
        return DynamicCache(ddp_cache_data=data), mask


def model_inputs(model: Any, seqs: Sequence[Sequence[int]], pad: int, prefix_lens: Optional[Sequence[int]],
            prefix_kv: Optional[PrefixKV], extra_token: Optional[Tuple[int, int]] = None) -> Dict[str, Any]:
    """Model inputs for ``seqs``: left-padded suffixes behind the cached prefixes of their first ``prefix_lens`` tokens.

    ``extra_token=(token_id, position)`` appends one more token to every row, at the given absolute position,
    that attends to the whole row but is masked out as a key (so it does not see itself): what a right-padded
    sequence computes at its last padding position.
    """
    dev = _device(model)
    plens = [0] * len(seqs) if prefix_lens is None else [int(p) for p in prefix_lens]
    if len(plens) != len(seqs):
        raise ValueError('prefix_lens must hold one length per sequence')
    if any(plens) and prefix_kv is None:
        raise ValueError('prefix_lens given without a PrefixKV')
    suffixes = [list(s)[p:] for s, p in zip(seqs, plens)]
    if any(not s for s in suffixes):
        raise ValueError('every sequence needs at least one token after its prefix')
    ids, mask, pos = left_pad(suffixes, pad, dev)
    pos = pos + torch.tensor(plens, dtype=torch.long, device=dev)[:, None]
    if extra_token is not None:
        tok, where = extra_token
        n = len(seqs)
        ids = torch.cat([ids, torch.full((n, 1), int(tok), dtype=torch.long, device=dev)], 1)
        mask = torch.cat([mask, torch.zeros((n, 1), dtype=torch.long, device=dev)], 1)
        pos = torch.cat([pos, torch.full((n, 1), int(where), dtype=torch.long, device=dev)], 1)
    kwargs: Dict[str, Any] = {'input_ids': ids, 'position_ids': pos, 'use_cache': False}
    if any(plens):
        cache, pmask = prefix_kv.batch([list(s)[:p] for s, p in zip(seqs, plens)])
        mask = torch.cat([pmask, mask], 1)
        kwargs['cache'] = cache
    kwargs['attention_mask'] = mask
    return kwargs


@torch.inference_mode()
def target_logprobs(model: Any, contexts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], pad: int,
                    reduce: str = 'sum', *, prefix_lens: Optional[Sequence[int]] = None,
                    prefix_kv: Optional[PrefixKV] = None) -> List[float]:
    """Log-probability of each ``targets[i]`` following ``contexts[i]``, in one forward pass over the batch.

    Args:
        model: a causal LM (any ``*ForCausalLM`` that accepts ``logits_to_keep``).
        contexts: token ids of each prompt (non-empty).
        targets: token ids to score after each prompt (non-empty).
        pad: the id used for padding (masked out).
        reduce: ``'sum'`` (log-likelihood) or ``'mean'`` (per target token).
        prefix_lens: optional, per context: how many of its first tokens are served from ``prefix_kv``
            (at most ``len(context) - 1``).
        prefix_kv: the :class:`PrefixKV` of ``model`` holding (or computing) those prefixes.
    """
    return target_logprob_tensor(model, contexts, targets, pad, reduce, prefix_lens=prefix_lens,
                                 prefix_kv=prefix_kv).tolist()


def target_logprob_tensor(model: Any, contexts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], pad: int,
                          reduce: str = 'sum', *, prefix_lens: Optional[Sequence[int]] = None,
                          prefix_kv: Optional[PrefixKV] = None) -> torch.Tensor:
    """:func:`target_logprobs` as a float32 tensor ``[B]``, outside ``inference_mode`` (differentiable when the
    model has trainable parameters: the training recipes score with it exactly as the rerankers do)."""
    if reduce not in ('sum', 'mean'):
        raise ValueError("reduce must be 'sum' or 'mean'")
    seqs = []
    for c, t in zip(contexts, targets):
        if not len(c) or not len(t):
            raise ValueError('contexts and targets must be non-empty')
        seqs.append(list(c) + list(t)[:-1])  # the last target token is predicted, never fed
    if prefix_lens is not None and any(p > len(c) - 1 for p, c in zip(prefix_lens, contexts)):
        raise ValueError('a prefix must leave the last context token to the suffix')
    keep = max(len(t) for t in targets)
    logits = model(**model_inputs(model, seqs, pad, prefix_lens, prefix_kv), logits_to_keep=keep).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [B, keep, V]
    out = []
    for i, t in enumerate(targets):
        tt = torch.as_tensor(list(t), dtype=torch.long, device=logprobs.device)
        lp = logprobs[i, keep - len(t):].gather(-1, tt[:, None]).squeeze(-1)
        out.append(lp.sum() if reduce == 'sum' else lp.mean())
    return torch.stack(out)


@torch.inference_mode()
def next_token_logits(model: Any, prompts: Sequence[Sequence[int]], token_ids: Sequence[int], pad: int, *,
                      prefix_lens: Optional[Sequence[int]] = None, prefix_kv: Optional[PrefixKV] = None) -> torch.Tensor:
    """Logits of the chosen ``token_ids`` at the position after each prompt: a float32 ``[B, len(token_ids)]``.

    ``prefix_lens``/``prefix_kv``: as :func:`target_logprobs` (a prefix leaves at least one prompt token).
    """
    logits = model(**model_inputs(model, prompts, pad, prefix_lens, prefix_kv), logits_to_keep=1).logits
    return logits[:, -1, list(token_ids)].float().cpu()


@torch.inference_mode()
def last_hidden(model: Any, seqs: Sequence[Sequence[int]], pad: int, *, prefix_lens: Optional[Sequence[int]] = None,
                prefix_kv: Optional[PrefixKV] = None, extra_token: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Final hidden state (after the body's last norm) of each sequence's last token, ``[B, hidden]``.

    With ``extra_token=(token_id, position)``: the hidden state of that token appended to every sequence at
    absolute ``position``, attending to the sequence but not to itself -- exactly what a sequence
    right-padded with ``token_id`` up to ``position + 1`` tokens computes at its last padding position (the
    padding in between is masked out and invisible). ``model`` may be a ``*ForSequenceClassification`` or
    ``*ForCausalLM`` (its decoder body is run) or a bare decoder.
    """
    body = decoder_body(model)
    if extra_token is not None and any(len(s) > extra_token[1] for s in seqs):
        raise ValueError('extra_token position must come after every sequence')
    out = body(**model_inputs(model, seqs, pad, prefix_lens, prefix_kv, extra_token))
    return out.last_hidden_state[:, -1]


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


def special_tokens_around(tokenizer: Any) -> Tuple[List[int], List[int]]:
    """The special tokens the tokenizer adds before and after a text (e.g. ``[BOS]``, ``[EOS]``)."""
    probe = tokenizer('a', add_special_tokens=False)['input_ids']
    full = tokenizer('a', add_special_tokens=True)['input_ids']
    for i in range(len(full) - len(probe) + 1):
        if full[i:i + len(probe)] == probe:
            return full[:i], full[i + len(probe):]
    raise ValueError('cannot locate the special tokens this tokenizer adds')
