"""Shared machinery of the training recipes: configs, seeds, CSV logs, checkpoints, LoRA configs.

Configuration files are YAML (``examples/train/*.yaml``), read with PyYAML's ``safe_load``; since YAML is a
superset of JSON, a JSON file is accepted too. Without PyYAML only JSON files can be read.

Custom training loops (the supervised recipes, ProRank's stage 2) checkpoint with :func:`save_checkpoint` /
:func:`load_checkpoint`, written atomically in ``<output_dir>/checkpoints/step-<n>/``:

* ``trainable.safetensors``: the trainable parameters (the LoRA weights and any head trained with them);
* ``optimizer.pt``: the optimizer and scheduler state dicts (tensors, numbers, lists and dicts only: read back with
  ``torch.load(..., weights_only=True)``, so a file holding any other pickled object is refused);
* ``rng.safetensors``: the random states of torch (CPU and CUDA);
* ``state.json``: the step, the loop's extra state and the random states of Python and NumPy.

No file of a checkpoint is unpickled beyond tensors and plain containers. Restarting the same command resumes from
the newest complete checkpoint and, the loop being deterministic, ends with the same weights as an uninterrupted
run. :func:`check_run_config` records the settings of a run next to its checkpoints and refuses to resume a run
whose settings changed.
"""
from __future__ import annotations

import csv
import json
import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ['read_log', 'load_config', 'apply_overrides', 'set_seed', 'CSVLogger', 'save_checkpoint', 'load_checkpoint',
           'latest_checkpoint', 'lora_config', 'trainable_state', 'set_threads', 'check_keys', 'check_run_config',
           'write_json', 'distributed', 'barrier', 'DEFAULT_LORA_TARGETS', 'RUN_CONFIG_FILE', 'RUN_CONFIG_IGNORED']

PathLike = Union[str, os.PathLike]

#: The attention and MLP projections of Llama/Qwen-style decoders (DeAR's ``--lora_target_modules``
#: ``q_proj,v_proj,o_proj,gate_proj,up_proj,down_proj`` in ``run_pointwise.sh``).
DEFAULT_LORA_TARGETS = ('q_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')

CHECKPOINTS_DIR = 'checkpoints'
_CKPT_PREFIX = 'step-'
#: The files of a checkpoint folder (``state.json`` last: its presence marks a complete checkpoint).
_CKPT_FILE = 'state.json'
_CKPT_WEIGHTS = 'trainable.safetensors'
_CKPT_OPTIM = 'optimizer.pt'
_CKPT_RNG = 'rng.safetensors'

#: The file recording the settings of a run (:func:`check_run_config`).
RUN_CONFIG_FILE = 'run_config.json'
#: Settings that do not change the result of a run (a resumed run may change them).
RUN_CONFIG_IGNORED = ('stop_after', 'resume', 'threads', 'verbose', 'save_steps', 'keep_checkpoints', 'output_dir',
                      'logging_steps', 'save_total_limit')


# -------------------------------------------------------------------------------------------- configs

def load_config(path: PathLike) -> Dict[str, Any]:
    """Reads a recipe configuration (a YAML or JSON mapping).

    Args:
        path: The file.

    Returns:
        The mapping (an empty file gives ``{}``).

    Raises:
        ValueError: If the file does not hold a mapping.
        ImportError: If the file is not JSON and PyYAML is not installed.
    """
    text = Path(path).read_text(encoding='utf-8')
    try:
        import yaml
    except ImportError:
        try:
            cfg = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as e:
            raise ImportError(f'{path} is not JSON and PyYAML is not installed (pip install pyyaml)') from e
    else:
        cfg = yaml.safe_load(text)
        if cfg is None:
            cfg = {}
    if not isinstance(cfg, dict):
        raise ValueError(f'{path}: a recipe configuration must be a mapping, got {type(cfg).__name__}')
    return cfg


def _parse_value(text: str) -> Any:
    try:
        import yaml
        return yaml.safe_load(text)
    except ImportError:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text


def apply_overrides(cfg: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Applies ``key=value`` overrides (``a.b=3`` sets ``cfg['a']['b']``; values parsed as YAML scalars).

    Args:
        cfg: The configuration (not modified).
        overrides: Strings ``key=value``.

    Returns:
        A new configuration.
    """
    import copy
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if '=' not in item:
            raise ValueError(f'override {item!r} is not of the form key=value')
        key, value = item.split('=', 1)
        parts = key.strip().split('.')
        node = cfg
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f'override {item!r}: {p!r} is not a mapping')
        node[parts[-1]] = _parse_value(value)
    return cfg


def check_keys(cfg: Dict[str, Any], allowed: Iterable[str], recipe: str) -> None:
    """Raises ``ValueError`` naming any key of ``cfg`` not in ``allowed`` (catches typos in configs)."""
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ValueError(f'unknown key(s) for recipe {recipe!r}: {unknown}; allowed: {sorted(allowed)}')


def staged_config(config: Dict[str, Any], defaults: Dict[str, Any], recipe: str,
                  stages: Sequence[str]) -> Dict[str, Any]:
    """A recipe's config: ``defaults`` updated with ``config``, where the keys in ``stages`` are dictionaries of their
    own (one per training stage) updated key by key; unknown keys at either level raise ``ValueError``."""
    import copy
    check_keys(config, defaults, recipe)
    cfg = copy.deepcopy(defaults)
    for k, v in config.items():
        if k in stages:
            v = v or {}
            check_keys(v, defaults[k], f'{recipe} ({k})')
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg


def jsonl_records(path: PathLike) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """``(line number, object)`` of each non-blank line of a JSONL file; a line that is not JSON is a ``ValueError``
    naming the file and the line."""
    with open(path, encoding='utf-8') as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f'{path}:{n}: not a JSON object ({e})') from e


# ---------------------------------------------------------------------------------------------- seeds

def set_seed(seed: int) -> None:
    """Seeds Python's ``random``, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def set_threads(threads: Optional[int]) -> None:
    """``torch.set_num_threads(threads)`` when ``threads`` is given."""
    if threads:
        torch.set_num_threads(int(threads))


def distributed() -> Tuple[int, int]:
    """``(rank, processes)`` of this training process: ``(0, 1)`` alone; under ``accelerate launch`` or
    ``torchrun`` (``WORLD_SIZE`` > 1) the ``torch.distributed`` process group is initialised on first call --
    gloo on the CPU (or with ``accelerate launch --cpu``), NCCL on GPUs, with ``LOCAL_RANK`` made the current
    CUDA device so that ``device='cuda'`` puts each process on its own GPU."""
    import torch.distributed as dist
    if int(os.environ.get('WORLD_SIZE', '1')) <= 1:
        return 0, 1
    if not dist.is_initialized():
        cpu = (os.environ.get('ACCELERATE_USE_CPU', '').lower() in ('1', 'true', 'yes')
               or not torch.cuda.is_available())
        if not cpu:
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', '0')))
        dist.init_process_group('gloo' if cpu else 'nccl')
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    """Wait for every training process (nothing when training alone)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rng_state() -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """The random states: Python's and NumPy's as JSON-able data, torch's as tensors."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    data = {'python': [version, list(mt), gauss],
            'numpy': [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]}
    tensors = {'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, t in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f'cuda.{i}'] = t
    return data, tensors


def _set_rng_state(data: Dict[str, Any], tensors: Dict[str, torch.Tensor]) -> None:
    version, mt, gauss = data['python']
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = data['numpy']
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors['torch'])
    cuda = [tensors[f'cuda.{i}'] for i in range(sum(k.startswith('cuda.') for k in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------------------------- logs

class CSVLogger:
    """Appends one row per logged step to a CSV file (``step`` then the value columns).

    The columns are fixed by the first row (or by ``columns``). Opening with ``resume_step`` drops the rows
    of steps after it (logged by an interrupted run after its last checkpoint), so that a resumed run leaves
    the same log as an uninterrupted one.

    A logger opened without ``resume_step`` starts a new file (an existing one is replaced); read a log with
    :func:`read_log`.

    Args:
        path: The CSV file.
        columns: The value columns (``None``: those of the first :meth:`log` call).
        resume_step: Keep the existing rows with ``step <= resume_step``; ``None`` starts a new file.
    """

    def __init__(self, path: PathLike, columns: Optional[Sequence[str]] = None, resume_step: Optional[int] = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns: Optional[List[str]] = list(columns) if columns is not None else None
        kept: List[Dict[str, str]] = []
        if resume_step is not None and self.path.exists():
            with open(self.path, newline='', encoding='utf-8') as f:
                reader = csv.DictReader(f)
                if reader.fieldnames and self.columns is None:
                    self.columns = [c for c in reader.fieldnames if c != 'step']
                kept = [r for r in reader if int(r['step']) <= resume_step]
        if self.columns is not None:
            self._write_header(kept)
        elif self.path.exists():
            self.path.unlink()

    def _write_header(self, rows: List[Dict[str, str]]) -> None:
        with open(self.path, 'w', newline='', encoding='utf-8') as f:
            w = csv.DictWriter(f, fieldnames=['step'] + self.columns)
            w.writeheader()
            for r in rows:
                w.writerow(r)

    def log(self, step: int, **values: Any) -> None:
        """Writes the row of ``step`` (floats written with 8 significant digits)."""
        if self.columns is None:
            self.columns = list(values)
            self._write_header([])
        unknown = set(values) - set(self.columns)
        if unknown:
            raise ValueError(f'unknown log columns {sorted(unknown)}; the log has {self.columns}')
        row = {'step': step}
        for c in self.columns:
            v = values.get(c, '')
            row[c] = f'{v:.8g}' if isinstance(v, float) else v
        with open(self.path, 'a', newline='', encoding='utf-8') as f:
            csv.DictWriter(f, fieldnames=['step'] + self.columns).writerow(row)

    def read(self) -> List[Dict[str, str]]:
        """The rows logged so far."""
        if not self.path.exists():
            return []
        with open(self.path, newline='', encoding='utf-8') as f:
            return list(csv.DictReader(f))


def read_log(path: PathLike) -> List[Dict[str, str]]:
    """The rows of a CSV log written by :class:`CSVLogger` (without opening it for writing)."""
    with open(path, newline='', encoding='utf-8') as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------- checkpoints

def trainable_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The parameters of ``model`` that require gradients (LoRA weights, trained heads), detached on the CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def latest_checkpoint(output_dir: PathLike) -> Optional[Path]:
    """The newest complete checkpoint folder ``<output_dir>/checkpoints/step-<n>``, or ``None``."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(_CKPT_PREFIX) and (p / _CKPT_FILE).exists():
            try:
                found.append((int(p.name[len(_CKPT_PREFIX):]), p))
            except ValueError:
                continue
    return max(found)[1] if found else None


def save_checkpoint(output_dir: PathLike, step: int, model: torch.nn.Module, optimizer: Any = None,
                    scheduler: Any = None, extra: Optional[Dict[str, Any]] = None, keep: int = 2) -> Path:
    """Writes a checkpoint of a custom training loop atomically and keeps the ``keep`` newest.

    Args:
        output_dir: The run's output folder (the checkpoint goes to ``checkpoints/step-<step>``).
        step: The number of optimizer steps done.
        model: The model; only its trainable parameters are saved (:func:`trainable_state`).
        optimizer, scheduler: Saved with ``state_dict()`` when given (tensors, numbers, lists, dicts).
        extra: Further loop state, JSON-serialisable (e.g. the data order).
        keep: Older checkpoints beyond this many are deleted.

    Returns:
        The checkpoint folder.
    """
    from safetensors.torch import save_file
    root = Path(output_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    target = root / f'{_CKPT_PREFIX}{step}'
    rng_data, rng_tensors = _rng_state()
    state = {'step': int(step), 'extra': extra or {}, 'rng': rng_data}
    text = json.dumps(state, sort_keys=True)  # fails here, before anything is written, if extra is not JSON
    tmp = Path(tempfile.mkdtemp(prefix=f'.{target.name}-', dir=root))
    try:
        save_file({n: t.contiguous() for n, t in trainable_state(model).items()}, str(tmp / _CKPT_WEIGHTS))
        save_file(rng_tensors, str(tmp / _CKPT_RNG))
        torch.save({'optimizer': optimizer.state_dict() if optimizer is not None else None,
                    'scheduler': scheduler.state_dict() if scheduler is not None else None}, tmp / _CKPT_OPTIM)
        (tmp / _CKPT_FILE).write_text(text + '\n', encoding='utf-8')
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    done = sorted((int(p.name[len(_CKPT_PREFIX):]), p) for p in root.iterdir()
                  if p.is_dir() and p.name.startswith(_CKPT_PREFIX) and p.name[len(_CKPT_PREFIX):].isdigit())
    for _, p in done[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    return target


def load_checkpoint(path: PathLike, model: torch.nn.Module, optimizer: Any = None, scheduler: Any = None,
                    restore_rng: bool = True) -> Dict[str, Any]:
    """Restores a checkpoint written by :func:`save_checkpoint` into ``model``, ``optimizer``, ``scheduler``.

    Nothing but tensors and plain containers is unpickled (``torch.load(..., weights_only=True)``).

    Args:
        path: The checkpoint folder.
        model, optimizer, scheduler: Restored in place (the model's trainable parameters must match).
        restore_rng: Also restore the random states.

    Returns:
        ``{'step': int, 'extra': dict}``.

    Raises:
        ValueError: If the checkpoint's parameters do not match the model's trainable parameters, or if
            ``optimizer.pt`` holds anything but tensors and plain containers.
    """
    from safetensors.torch import load_file
    folder = Path(path)
    state = json.loads((folder / _CKPT_FILE).read_text(encoding='utf-8'))
    weights = load_file(str(folder / _CKPT_WEIGHTS))
    try:
        optim = torch.load(folder / _CKPT_OPTIM, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f'{folder / _CKPT_OPTIM} holds objects other than tensors and plain containers; '
                         f'refusing to unpickle it ({str(e).splitlines()[0]})') from e
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(weights):
        missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
        raise ValueError(f'checkpoint {path} does not match the model: missing {missing[:5]}, '
                         f'unexpected {unexpected[:5]}')
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n].to(p.device, p.dtype))
    if optimizer is not None and optim['optimizer'] is not None:
        optimizer.load_state_dict(optim['optimizer'])
    if scheduler is not None and optim['scheduler'] is not None:
        scheduler.load_state_dict(optim['scheduler'])
    if restore_rng:
        _set_rng_state(state['rng'], load_file(str(folder / _CKPT_RNG)))
    return {'step': int(state['step']), 'extra': state['extra']}


def run_settings(cfg: Dict[str, Any], ignore: Sequence[str] = RUN_CONFIG_IGNORED) -> Dict[str, Any]:
    """The settings of ``cfg`` that determine the result of a run, as JSON data (keys of ``ignore`` left out, also
    in nested mappings such as ProRank's ``stage1``)."""
    def strip(d: Dict[str, Any]) -> Dict[str, Any]:
        return {k: strip(v) if isinstance(v, dict) else v for k, v in d.items() if k not in ignore}
    return json.loads(json.dumps(strip(cfg), sort_keys=True, default=str))


def check_run_config(folder: PathLike, cfg: Dict[str, Any], resuming: bool,
                     ignore: Sequence[str] = RUN_CONFIG_IGNORED, write: bool = True) -> None:
    """Refuses to resume a run whose settings changed, and records the settings of the run.

    The settings (:func:`run_settings`) are written to ``<folder>/run_config.json``. When ``resuming`` (a
    checkpoint or finished stage of ``folder`` is about to be reused) and that file exists with other settings,
    nothing is written and a ``ValueError`` names the file and the settings that differ. ``write=False`` only
    checks (the processes of a data-parallel run other than the first).
    """
    path = Path(folder) / RUN_CONFIG_FILE
    now = run_settings(cfg, ignore)
    if resuming and path.exists():
        before = json.loads(path.read_text(encoding='utf-8'))
        missing = object()
        diff = sorted(k for k in set(before) | set(now) if before.get(k, missing) != now.get(k, missing))
        if diff:
            shown = ', '.join(f'{k}: {before.get(k, "(unset)")!r} -> {now.get(k, "(unset)")!r}' for k in diff[:6])
            raise ValueError(f'{path}: the checkpoint in {folder} was written with another configuration ({shown}); '
                             f'use a new output_dir, or resume=false to start over')
    if write:
        Path(folder).mkdir(parents=True, exist_ok=True)
        write_json(path, now)


# ----------------------------------------------------------------------------------------------- LoRA

def lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.05,
                target_modules: Optional[Sequence[str]] = DEFAULT_LORA_TARGETS, task_type: Optional[str] = None,
                modules_to_save: Optional[Sequence[str]] = None) -> Any:
    """A ``peft.LoraConfig`` (bias ``'none'``).

    Args:
        r: LoRA rank.
        alpha: LoRA alpha (scaling ``alpha / r``).
        dropout: LoRA dropout.
        target_modules: Module names to adapt (default :data:`DEFAULT_LORA_TARGETS`).
        task_type: peft task type, e.g. ``'CAUSAL_LM'`` or ``'SEQ_CLS'`` (the latter also trains and saves the
            classification head ``score``).
        modules_to_save: Further modules trained fully and saved with the adapter.
    """
    from peft import LoraConfig
    return LoraConfig(r=int(r), lora_alpha=int(alpha), lora_dropout=float(dropout),
                      target_modules=list(target_modules) if target_modules is not None else None,
                      bias='none', task_type=task_type,
                      modules_to_save=list(modules_to_save) if modules_to_save else None)


def write_json(path: PathLike, data: Dict[str, Any]) -> None:
    """Writes ``data`` as indented JSON."""
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + '\n', encoding='utf-8')
