"""Pieces shared by the recipes: config defaults, training groups, LoRA models, output folders and their loading.

An output folder names the reranker it loads into in ``reranker.json`` (``{"class": name, "kwargs": {...}}``);
:func:`load_reranker` builds only the toolkit's own rerankers (:data:`RERANKERS`) and refuses any other class
name, so that loading a folder never imports or calls code the folder chooses.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Dict, List

import torch

from pyterrier_llmrank.train.common import (barrier, check_keys, distributed, lora_config, set_seed, set_threads,
                                            write_json)
from pyterrier_llmrank.train.loop import LOOP_DEFAULTS

#: Settings every supervised recipe reads (besides its own and :data:`~.loop.LOOP_DEFAULTS`).
COMMON_DEFAULTS: Dict[str, Any] = {
    'model': 'smollm2-135m-instruct', 'dataset': 'beir-scifact/train', 'output_dir': None, 'seed': 42,
    'n_negatives': 7, 'negatives': 'bm25', 'depth': 100, 'max_queries': None, 'qids': None, 'threads': None, 'verbose': True,
    'device': 'cpu', 'dtype': 'float32',
}

#: The file of an output folder naming the reranker class and the arguments it loads with.
RERANKER_FILE = 'reranker.json'

#: The reranker classes a ``reranker.json`` may name: name -> ``module:Class`` of this toolkit (imported on use).
RERANKERS: Dict[str, str] = {
    'DeARPointwise': 'pyterrier_llmrank.pointwise:DeARPointwise',
    'YesNo': 'pyterrier_llmrank.pointwise:YesNo',
    'ProRank': 'pyterrier_llmrank.pointwise:ProRank',
    'RankR1': 'pyterrier_llmrank.setwise:RankR1',
    'Setwise': 'pyterrier_llmrank.setwise:Setwise',
    'IDCM': 'pyterrier_llmrank.idcm:IDCM',
    'UPR': 'pyterrier_llmrank.upr:UPR',
    'MonoT5': 'pyterrier_llmrank.monot5:MonoT5',
    'DuoT5': 'pyterrier_llmrank.monot5:DuoT5',
    'RankGPT': 'pyterrier_llmrank.listwise:RankGPT',
    'DeARListwise': 'pyterrier_llmrank.listwise:DeARListwise',
    'ICR': 'pyterrier_llmrank.icr:ICR',
    'MMR5': 'pyterrier_llmrank.mmr5:MMR5',
    'VLYesNo': 'pyterrier_llmrank.mmyesno:VLYesNo',
}


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
    qids = cfg.get('qids')
    if isinstance(qids, str):  # a file of qids, one a line (e.g. the training folds of a cross-validation)
        qids = [line.strip() for line in Path(qids).read_text(encoding='utf-8').splitlines() if line.strip()]
    elif qids is not None:
        qids = [str(q) for q in qids]
    return training_groups(cfg['dataset'], n_negatives=int(cfg['n_negatives']), negatives=cfg['negatives'],
                           depth=int(cfg['depth']), seed=int(cfg['seed']), max_queries=cfg['max_queries'],
                           qids=qids)


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
    """Saves the adapter, tokenizer, resolved config, ``reranker.json`` and ``summary.json``; returns the folder.

    In a data-parallel run only the first process writes; the others wait until it has."""
    out = Path(cfg['output_dir'])
    if distributed()[0] == 0:
        peft_model.save_pretrained(str(out))
        set_adapter_base(out, cfg['model'])
        tokenizer.save_pretrained(str(out))
        write_json(out / 'train_config.json', cfg)
        write_json(out / RERANKER_FILE, {'class': reranker_class, 'kwargs': reranker_kwargs})
        write_json(out / 'summary.json', summary)
    barrier()
    return str(out)


def set_adapter_base(folder: Any, base: str) -> None:
    """Records ``base`` (e.g. the short name ``smollm2-135m-instruct``, which peft replaces by the cache folder it
    was loaded from) as ``base_model_name_or_path`` of the adapter in ``folder``."""
    path = Path(folder) / 'adapter_config.json'
    data = json.loads(path.read_text())
    if data.get('base_model_name_or_path') != base:
        data['base_model_name_or_path'] = base
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + '\n')


def reranker_class(name: str, source: Any = RERANKER_FILE) -> Any:
    """The toolkit reranker class registered as ``name`` in :data:`RERANKERS`.

    ``name`` is a registered name (``'DeARPointwise'``); the spellings of older folders, ``'pyterrier_llmrank.Name'``
    and ``'module:Name'`` as registered, are accepted too.

    Raises:
        ValueError: naming ``source`` and the class, for any other name (nothing is imported).
    """
    key = name if isinstance(name, str) else ''
    if key.startswith('pyterrier_llmrank.') and ':' not in key and key.count('.') == 1:
        key = key.split('.', 1)[1]
    elif ':' in key:
        key = next((k for k, v in RERANKERS.items() if v == key), '')
    if key not in RERANKERS:
        raise ValueError(f'{source}: reranker class {name!r} is not one of the toolkit\'s rerankers '
                         f'({", ".join(RERANKERS)}); refusing to load it')
    module, cls = RERANKERS[key].split(':')
    return getattr(importlib.import_module(module), cls)


def load_reranker(folder: str, **overrides: Any) -> Any:
    """The reranker of a trained output folder, built with the arguments it was trained for.

    Args:
        folder: An output folder of a recipe (it holds ``reranker.json``).
        **overrides: Further reranker arguments (``batch_size``, ``device``, ...).

    Raises:
        ValueError: If ``reranker.json`` names a class that is not one of :data:`RERANKERS`, or is malformed.
    """
    path = Path(folder) / RERANKER_FILE
    spec = json.loads(path.read_text(encoding='utf-8'))
    if not isinstance(spec, dict) or not isinstance(spec.get('kwargs', {}), dict):
        raise ValueError(f'{path}: expected {{"class": name, "kwargs": {{...}}}}, got {spec!r}')
    cls = reranker_class(spec.get('class'), path)
    return cls(str(folder), **{**spec.get('kwargs', {}), **overrides})


def prepare(cfg: Dict[str, Any]) -> None:
    """Threads, seed, and the process group of a data-parallel run (:func:`~.common.distributed`)."""
    distributed()
    set_threads(cfg.get('threads'))
    set_seed(int(cfg['seed']))
