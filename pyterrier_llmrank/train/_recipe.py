"""Pieces shared by the supervised recipes: config defaults, training groups, LoRA models, output folders."""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Dict, List

import torch

from pyterrier_llmrank.train._common import check_keys, lora_config, set_seed, set_threads, write_json
from pyterrier_llmrank.train._loop import LOOP_DEFAULTS

#: Settings every supervised recipe reads (besides its own and :data:`~._loop.LOOP_DEFAULTS`).
COMMON_DEFAULTS: Dict[str, Any] = {
    'model': 'smollm2-135m-instruct', 'dataset': 'beir-scifact/train', 'output_dir': None, 'seed': 42,
    'n_negatives': 7, 'negatives': 'bm25', 'depth': 100, 'max_queries': None, 'threads': None, 'verbose': True,
    'device': 'cpu', 'dtype': 'float32',
}

#: The file of an output folder naming the reranker class and the arguments it loads with.
RERANKER_FILE = 'reranker.json'


def resolve_config(cfg: Dict[str, Any], recipe: str, defaults: Dict[str, Any]) -> Dict[str, Any]:
    """``cfg`` completed with the defaults; unknown keys are an error; ``output_dir`` is required."""
    allowed = {**COMMON_DEFAULTS, **LOOP_DEFAULTS, **defaults}
    check_keys(cfg, allowed, recipe)
    full = dict(allowed)
    for k, v in cfg.items():
        if isinstance(v, dict) and isinstance(full.get(k), dict):
            check_keys(v, full[k], f'{recipe}.{k}')
            full[k] = {**full[k], **v}
        else:
            full[k] = v
    if not full['output_dir']:
        raise ValueError(f'recipe {recipe!r} needs output_dir')
    if not isinstance(full['model'], str):
        raise ValueError('model must be a name or a folder (the adapter records it as its base)')
    return full


def make_groups(cfg: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The training groups of the configuration (see :func:`~pyterrier_llmrank.train.data.training_groups`)."""
    from pyterrier_llmrank.train.data import training_groups
    return training_groups(cfg['dataset'], n_negatives=int(cfg['n_negatives']), negatives=cfg['negatives'],
                           depth=int(cfg['depth']), seed=int(cfg['seed']), max_queries=cfg['max_queries'])


def add_lora(model: torch.nn.Module, lora: Dict[str, Any], task_type: str, base_name: str) -> Any:
    """Wraps ``model`` in a peft LoRA model (``lora``: r, alpha, dropout, target_modules, layers_to_transform)."""
    from peft import get_peft_model
    pc = lora_config(lora['r'], lora['alpha'], lora['dropout'], lora['target_modules'], task_type=task_type)
    if lora.get('layers_to_transform') is not None:
        pc.layers_to_transform = list(lora['layers_to_transform'])
    pc.base_model_name_or_path = base_name
    return get_peft_model(model, pc)


def import_object(path: str) -> Any:
    """``'package.module:Name'`` or ``'package.Name'`` -> the object."""
    if ':' in path:
        module, name = path.split(':', 1)
    else:
        module, _, name = path.rpartition('.')
    return getattr(importlib.import_module(module), name)


def finish(peft_model: Any, tokenizer: Any, cfg: Dict[str, Any], summary: Dict[str, Any], reranker_class: str,
           reranker_kwargs: Dict[str, Any]) -> str:
    """Saves the adapter, tokenizer, resolved config, ``reranker.json`` and ``summary.json``; returns the folder."""
    out = Path(cfg['output_dir'])
    peft_model.save_pretrained(str(out))
    set_adapter_base(out, cfg['model'])
    tokenizer.save_pretrained(str(out))
    write_json(out / 'train_config.json', cfg)
    write_json(out / RERANKER_FILE, {'class': reranker_class, 'kwargs': reranker_kwargs})
    write_json(out / 'summary.json', summary)
    return str(out)


def set_adapter_base(folder: Any, base: str) -> None:
    """Records ``base`` (e.g. the short name ``smollm2-135m-instruct``, which peft replaces by the cache folder it
    was loaded from) as ``base_model_name_or_path`` of the adapter in ``folder``."""
    path = Path(folder) / 'adapter_config.json'
    data = json.loads(path.read_text())
    if data.get('base_model_name_or_path') != base:
        data['base_model_name_or_path'] = base
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + '\n')


def load_reranker(folder: str, **overrides: Any) -> Any:
    """The reranker of a trained output folder, built with the arguments it was trained for.

    Args:
        folder: An output folder of ``distill``, ``sft`` or ``contrastive``.
        **overrides: Further reranker arguments (``batch_size``, ``device``, ...).
    """
    spec = json.loads((Path(folder) / RERANKER_FILE).read_text())
    cls = import_object(spec['class'])
    return cls(str(folder), **{**spec['kwargs'], **overrides})


def prepare(cfg: Dict[str, Any]) -> None:
    """Threads and seed."""
    set_threads(cfg.get('threads'))
    set_seed(int(cfg['seed']))
