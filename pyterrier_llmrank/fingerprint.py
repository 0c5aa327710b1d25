"""What decides a transformer's output, as JSON data and a key: the fingerprint the caches of
:mod:`pyterrier_llmrank.caching` are keyed on.

:func:`describe` walks a transformer's attributes (constructor settings such as prompts, templates, truncation
lengths, windows, decoding settings, token ids derived from them) and describes

* a model (``torch.nn.Module``) by its class, its config, its dtype and device type, and the names, shapes and a
  fixed sample of values (:data:`WEIGHT_SAMPLE` values at an even stride) of every parameter and buffer, so
  two checkpoints of the same architecture (a fine-tune, a merged LoRA adapter, another revision) differ;
* a tokenizer by its class, vocabulary (hashed), special tokens, chat template and padding side;
* a nested transformer, backend or loaded-model handle by its own attributes, recursively;
* ``torch``, ``transformers`` and this toolkit's versions, which may change a score too.

Left out: attributes named in :data:`NOT_SETTINGS` (progress, batch sizes, counters: a score does not depend on
them, the bases guarantee it), and private attributes (caches and state) unless the class exposes them as a
public property of the same name. :func:`fingerprint` is the SHA-256 of the description.

Edits of the toolkit's code that keep its version are not seen: clear the cache folder after changing a
reranker's code.
"""
from __future__ import annotations

import hashlib
import json
import weakref
from typing import Any, Dict, Optional, Set

import numpy as np

__all__ = ['NOT_SETTINGS', 'WEIGHT_SAMPLE', 'describe', 'fingerprint', 'model_fingerprint', 'tokenizer_fingerprint']

#: Attribute names that never change an output: progress, batching (a score does not depend on its batch),
#: counters, labels.
NOT_SETTINGS = frozenset({'verbose', 'batch_size', 'chunk_pairs', 'stats', 'label', 'query_cache', 'schematic'})

#: Values of each weight tensor read into a model's fingerprint (at an even stride over the tensor).
WEIGHT_SAMPLE = 4096

_MAX_DEPTH = 8

# vocabulary hashes of the tokenizers seen, by tokenizer and vocabulary size (hashing a vocabulary takes a while)
_VOCABS: 'weakref.WeakKeyDictionary[Any, Dict[Optional[int], str]]' = weakref.WeakKeyDictionary()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_fingerprint(model: Any) -> Dict[str, Any]:
    """A torch model described by class, config, dtype, device type and a hash of its weights (names, shapes,
    dtypes and :data:`WEIGHT_SAMPLE` values of every tensor)."""
    import torch
    h = hashlib.sha256()
    dtypes, devices = set(), set()
    with torch.no_grad():
        tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers())
        for name, t in tensors:
            flat = t.detach().reshape(-1)
            n = flat.numel()
            dtypes.add(str(t.dtype))
            devices.add(t.device.type)
            h.update(f'{name}|{tuple(t.shape)}|{t.dtype}|'.encode())
            if n:
                sample = flat[::max(1, n // WEIGHT_SAMPLE)][:WEIGHT_SAMPLE]
                if sample.is_floating_point() or sample.is_complex():
                    sample = sample.to(torch.float64)
                h.update(sample.cpu().numpy().tobytes())
    cfg = getattr(model, 'config', None)
    config = None
    if cfg is not None and hasattr(cfg, 'to_json_string'):
        config = _sha(cfg.to_json_string(use_diff=False).encode())
    return {'class': f'{type(model).__module__}.{type(model).__qualname__}', 'config': config,
            'dtypes': sorted(dtypes), 'devices': sorted(devices), 'weights': h.hexdigest()}


def tokenizer_fingerprint(tokenizer: Any) -> Dict[str, Any]:
    """A tokenizer described by class, vocabulary hash, special tokens, chat template and padding side."""
    size = len(tokenizer) if hasattr(tokenizer, '__len__') else None
    vocab = None
    if hasattr(tokenizer, 'get_vocab'):
        try:
            vocab = _VOCABS.get(tokenizer, {}).get(size)
        except TypeError:  # not weak-referenceable
            vocab = None
        if vocab is None:
            vocab = _sha(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
            try:
                _VOCABS[tokenizer] = {size: vocab}
            except TypeError:
                pass
    template = getattr(tokenizer, 'chat_template', None)
    return {'class': type(tokenizer).__name__, 'vocab': vocab,
            'size': size,
            'special': _describe(getattr(tokenizer, 'special_tokens_map', None), set(), 0, {}),
            'chat_template': _sha(json.dumps(template, sort_keys=True).encode()) if template else None,
            'padding_side': getattr(tokenizer, 'padding_side', None),
            'truncation_side': getattr(tokenizer, 'truncation_side', None)}


def _is_tokenizer(value: Any) -> bool:
    try:
        from transformers import PreTrainedTokenizerBase
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, PreTrainedTokenizerBase)


def _attributes(obj: Any, seen: Set[int], depth: int, memo: Dict[int, Any]) -> Dict[str, Any]:
    klass = type(obj)
    out: Dict[str, Any] = {'class': f'{klass.__module__}.{klass.__qualname__}'}
    for name, value in sorted(vars(obj).items()):
        if name.startswith('_'):
            public = name.lstrip('_')
            if not isinstance(getattr(klass, public, None), property):
                continue
            name, value = public, getattr(obj, public)
        if name in NOT_SETTINGS:
            continue
        out[name] = _describe(value, seen, depth + 1, memo)
    return out


def _describe(value: Any, seen: Set[int], depth: int, memo: Dict[int, Any]) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, bytes):
        return _sha(value)
    if isinstance(value, (list, tuple)):
        return [_describe(v, seen, depth + 1, memo) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_describe(v, seen, depth + 1, memo) for v in value), key=repr)
    if isinstance(value, dict):
        return {str(k): _describe(v, seen, depth + 1, memo) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, np.ndarray):
        return {'array': _sha(np.ascontiguousarray(value).tobytes()), 'shape': list(value.shape), 'dtype': str(value.dtype)}
    import torch
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, torch.nn.Module):
        memo[id(value)] = model_fingerprint(value)
        return memo[id(value)]
    if isinstance(value, torch.Tensor):
        return {'tensor': _sha(value.detach().cpu().contiguous().view(-1).to(torch.float64).numpy().tobytes())
                if value.is_floating_point() else _sha(value.detach().cpu().numpy().tobytes()),
                'shape': list(value.shape)}
    if _is_tokenizer(value):
        memo[id(value)] = tokenizer_fingerprint(value)
        return memo[id(value)]
    if isinstance(value, type) or callable(value) and not hasattr(value, '__dict__'):
        return f'{getattr(value, "__module__", "")}.{getattr(value, "__qualname__", type(value).__name__)}'
    if callable(value) and not hasattr(value, 'transform') and hasattr(value, '__code__'):  # a function
        return f'{value.__module__}.{value.__qualname__}:{_sha(value.__code__.co_code)}'
    if id(value) in seen or depth > _MAX_DEPTH:
        return f'<{type(value).__name__}>'
    if hasattr(value, '__dict__'):
        seen.add(id(value))
        try:
            memo[id(value)] = _attributes(value, seen, depth, memo)
        finally:
            seen.discard(id(value))
        return memo[id(value)]
    return repr(value)


def describe(obj: Any) -> Dict[str, Any]:
    """The settings of ``obj`` that decide its output, as JSON data (see the module's docstring), with the
    versions of ``torch``, ``transformers`` and this toolkit."""
    import torch
    import transformers

    import pyterrier_llmrank
    return {'settings': _describe(obj, set(), 0, {}),
            'versions': {'pyterrier_llmrank': pyterrier_llmrank.__version__, 'torch': torch.__version__,
                         'transformers': transformers.__version__}}


def fingerprint(obj: Any, description: Optional[Dict[str, Any]] = None) -> str:
    """The SHA-256 (hex) of :func:`describe` of ``obj`` (or of ``description`` when given)."""
    data = describe(obj) if description is None else description
    return _sha(json.dumps(data, sort_keys=True, ensure_ascii=False).encode())
