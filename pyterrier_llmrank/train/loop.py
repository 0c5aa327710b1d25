"""The deterministic, resumable training loop of the supervised recipes (``distill``, ``sft``, ``contrastive``).

One optimizer step takes ``grad_accum`` micro-batches of ``batch_size`` groups. The groups are read in an
order fixed by the seed (a new seeded permutation of all groups at each pass), so the micro-batch of every
step is known in advance and a resumed run sees exactly the batches the uninterrupted run would have seen.
With ``group_by_length`` (and the recipe passing the groups' lengths), each pass's permutation is cut into
mega-batches of ``length_window`` micro-batches, sorted by length within each (longest first, as the Hugging
Face ``Trainer``'s ``group_by_length``), so that a micro-batch pads its sequences to similar lengths; the order
is still a function of the seed only. A progress bar shows the mean loss of the last 10 steps, the seconds
per step and the time left.
Optimizer: AdamW; schedule: linear warm-up over ``warmup_ratio * steps`` then linear decay to 0 (as the
Hugging Face ``Trainer`` default used by the reference recipes); gradients clipped to ``max_grad_norm``.
Every ``save_steps`` steps (and at the end, or when ``stop_after`` steps of this invocation are done) the loop
writes a checkpoint (:func:`~pyterrier_llmrank.train.common.save_checkpoint`); every step it appends a row
to ``<output_dir>/log.csv``. A restart with other settings than those of its checkpoints is refused
(:func:`~pyterrier_llmrank.train.common.check_run_config`).

Data parallel (``accelerate launch --num_processes N -m pyterrier_llmrank.train ...``, or ``torchrun``): the
``grad_accum`` micro-batches of a step are shared among the N processes (micro-batch ``m`` goes to process
``m % N``; ``grad_accum`` must be a multiple of N), and the gradients and logged values are summed over the
processes before the step (an all-reduce, gloo on the CPU, NCCL on GPUs). A step therefore reads the same
global batch as a single-process run with the same settings and, without dropout, takes the same step (up to
floating-point summation order); with dropout, the processes draw other masks than the single process would.
Only the first process writes ``log.csv``, checkpoints and the outputs. DeepSpeed and FSDP configurations of
``accelerate`` are not used by this loop (plain data parallelism); the GRPO recipes run under them through trl.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyterrier as pt
import torch

from pyterrier_llmrank.train.common import (CSVLogger, barrier, check_run_config, distributed, latest_checkpoint,
                                            load_checkpoint, save_checkpoint, set_seed)

__all__ = ['LOOP_DEFAULTS', 'train_loop', 'batch_indices', 'epoch_order', 'used_groups']

#: Loop settings of every supervised recipe and their defaults.
LOOP_DEFAULTS: Dict[str, Any] = {
    'steps': 100, 'batch_size': 1, 'grad_accum': 1, 'lr': 1e-4, 'warmup_ratio': 0.1, 'weight_decay': 0.0,
    'max_grad_norm': 1.0, 'save_steps': 50, 'keep_checkpoints': 2, 'stop_after': None, 'resume': True,
    'group_by_length': False, 'length_window': 16,
}

LOSS = Callable[[List[Dict[str, Any]]], Tuple[torch.Tensor, Dict[str, float]]]


def epoch_order(n: int, seed: int, epoch: int, lengths: Optional[Sequence[int]] = None, window: int = 0) -> List[int]:
    """The order in which pass ``epoch`` reads the ``n`` groups: a permutation seeded by ``(seed, epoch)``; with
    ``lengths`` and ``window`` > 1, sorted by decreasing length within each slice of ``window`` positions."""
    perm = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    if lengths is None or window <= 1:
        return perm
    out: List[int] = []
    for start in range(0, n, window):
        out += sorted(perm[start:start + window], key=lambda i: -lengths[i])  # stable: ties keep the seeded order
    return out


def batch_indices(n: int, seed: int, step: int, micro: int, batch_size: int, grad_accum: int,
                  lengths: Optional[Sequence[int]] = None, window: int = 0) -> List[int]:
    """Indices of the groups of micro-batch ``micro`` of optimizer step ``step`` (0-based); ``lengths`` and
    ``window`` (groups) as :func:`epoch_order`."""
    start = (step * grad_accum + micro) * batch_size
    out = []
    orders: Dict[int, List[int]] = {}
    for k in range(start, start + batch_size):
        epoch, pos = divmod(k, n)
        if epoch not in orders:
            orders[epoch] = epoch_order(n, seed, epoch, lengths, window)
        out.append(int(orders[epoch][pos]))
    return out


def used_groups(n: int, cfg: Dict[str, Any], seed: int, lengths: Optional[Sequence[int]] = None) -> List[int]:
    """Sorted indices of the groups that the ``steps`` steps of ``cfg`` read (e.g. to score only those with a
    teacher)."""
    opts = {k: cfg.get(k, v) for k, v in LOOP_DEFAULTS.items()}
    bs, accum = int(opts['batch_size']), int(opts['grad_accum'])
    lengths, window = _length_order(opts, lengths)
    return sorted({i for step in range(int(opts['steps'])) for m in range(accum)
                   for i in batch_indices(n, seed, step, m, bs, accum, lengths, window)})


def _length_order(opts: Dict[str, Any], lengths: Optional[Sequence[int]]) -> Tuple[Optional[Sequence[int]], int]:
    """``(lengths, window in groups)`` when ``group_by_length`` is on and lengths are known, else ``(None, 0)``."""
    if not opts['group_by_length'] or lengths is None:
        return None, 0
    return lengths, int(opts['length_window']) * int(opts['batch_size'])


def _lr_lambda(steps: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return float(step + 1) / float(max(1, warmup))
        return max(0.0, float(steps - step) / float(max(1, steps - warmup)))
    return f


def train_loop(model: torch.nn.Module, groups: List[Dict[str, Any]], loss_fn: LOSS, *, output_dir: str,
               cfg: Dict[str, Any], seed: int, log_columns: Sequence[str], desc: str = 'training',
               verbose: bool = True, lengths: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """Trains the parameters of ``model`` that require gradients; resumes from the newest checkpoint.

    Args:
        model: The model (put in training mode here).
        groups: The training groups (:func:`~pyterrier_llmrank.train.data.training_groups`).
        loss_fn: Maps a micro-batch (list of groups) to ``(loss, {column: float})``.
        output_dir: Where ``log.csv`` and ``checkpoints/`` go.
        cfg: The recipe configuration; the keys of :data:`LOOP_DEFAULTS` are read from it.
        seed: The seed of the data order and of the random states.
        log_columns: The value columns of ``log.csv`` besides ``loss``, ``lr`` and ``seconds``.
        desc: Progress-bar label.
        verbose: Show a progress bar.
        lengths: A length per group (e.g. its characters), for ``group_by_length``.

    Returns:
        ``{'steps_done', 'resumed_from', 'seconds', 'finished', 'processes'}``.
    """
    opts = {k: cfg.get(k, v) for k, v in LOOP_DEFAULTS.items()}
    steps, bs, accum = int(opts['steps']), int(opts['batch_size']), int(opts['grad_accum'])
    if steps < 1 or bs < 1 or accum < 1:
        raise ValueError('steps, batch_size and grad_accum must be >= 1')
    if not groups:
        raise ValueError('no training groups')
    rank, world = distributed()
    if accum % world:
        raise ValueError(f'grad_accum ({accum}) must be a multiple of the number of training processes ({world}): '
                         f'each process runs grad_accum / processes micro-batches of every step')
    if lengths is not None and len(lengths) != len(groups):
        raise ValueError(f'lengths: {len(lengths)} values for {len(groups)} groups')
    order_lengths, window = _length_order(opts, lengths)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(opts['lr']), weight_decay=float(opts['weight_decay']))
    warmup = int(math.ceil(float(opts['warmup_ratio']) * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(steps, warmup))

    set_seed(seed)
    start, resumed_from = 0, None
    ckpt = latest_checkpoint(out) if opts['resume'] else None
    # refuses a checkpoint of other settings
    check_run_config(out, cfg, resuming=ckpt is not None, write=rank == 0)
    if ckpt is not None:
        start, resumed_from = load_checkpoint(ckpt, model, optimizer, scheduler)['step'], str(ckpt)
    logger = CSVLogger(out / 'log.csv', ['loss', 'lr', *log_columns, 'seconds'], resume_step=start) if rank == 0 else None

    model.train()
    stop_after = opts['stop_after']
    end = steps if stop_after is None else min(steps, start + int(stop_after))
    t0 = time.time()
    bar = pt.tqdm(total=end, initial=start, desc=desc, unit='step', disable=not verbose or rank != 0,
                  bar_format='{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining} left{postfix}]')
    recent: List[float] = []
    step = start
    for step in range(start, end):
        t_step = time.time()
        optimizer.zero_grad(set_to_none=True)
        total, sums = 0.0, {c: 0.0 for c in log_columns}
        for micro in range(rank, accum, world):
            batch = [groups[i] for i in batch_indices(len(groups), seed, step, micro, bs, accum, order_lengths,
                                                      window)]
            loss, parts = loss_fn(batch)
            (loss / accum).backward()
            total += float(loss.detach()) / accum
            for c in log_columns:
                sums[c] += float(parts.get(c, float('nan'))) / accum
        if world > 1:
            total, sums = _sum_over_processes(params, total, sums)
        if opts['max_grad_norm']:
            torch.nn.utils.clip_grad_norm_(params, float(opts['max_grad_norm']))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        if logger is not None:
            logger.log(step + 1, loss=total, lr=float(lr), **sums, seconds=round(time.time() - t_step, 3))
        recent.append(total)
        bar.set_postfix(loss=f'{np.mean(recent[-10:]):.4f}', s_step=f'{time.time() - t_step:.1f}', refresh=False)
        bar.update(1)
        done = step + 1
        if done % int(opts['save_steps']) == 0 or done == end:
            if rank == 0:
                save_checkpoint(out, done, model, optimizer, scheduler, keep=int(opts['keep_checkpoints']))
            barrier()
    bar.close()
    model.eval()
    done = end if end > start else start
    return {'steps_done': done, 'resumed_from': resumed_from, 'seconds': round(time.time() - t0, 2),
            'finished': done >= steps, 'processes': world}


def _sum_over_processes(params: List[torch.nn.Parameter], total: float,
                        sums: Dict[str, float]) -> Tuple[float, Dict[str, float]]:
    """Sum the gradients (in place) and the logged values of a step over the data-parallel processes."""
    import torch.distributed as dist
    for p in params:
        if p.grad is None:  # a parameter this process's micro-batches did not reach
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
    values = torch.tensor([total, *sums.values()], dtype=torch.float64,
                          device=params[0].device if params else 'cpu')
    dist.all_reduce(values)
    out = values.tolist()
    return out[0], dict(zip(sums, out[1:]))
