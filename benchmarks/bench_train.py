"""Seconds per sequence of a training step on the CPU: threads, LoRA depth, full fine-tuning, inference.

SmolLM2-135M-Instruct (float32), one batch of ``--batch`` random sequences of ``--length`` tokens, next-token
logits of the last position: forward only under ``torch.inference_mode`` (``inf``), or forward + backward +
AdamW step with LoRA (r 16 on all projections) on the top ``k`` layers (``lora<k>``; ``lora`` = all layers) or
with all weights trainable (``full``). Reports the best of 2 timed iterations after a warm-up. These are the
choices of the training recipes' speed settings (``threads``, ``lora.layers_to_transform``); see
``docs/training.md``.

Usage::

    python benchmarks/bench_train.py --threads 1 --mode lora8        # one setting
    python benchmarks/bench_train.py --threads 1 2 --mode inf lora8 full
"""
from __future__ import annotations

import argparse
import os
import time

import harness  # noqa: E402,F401 -- offline hub, the repository on sys.path

import torch  # noqa: E402

from pyterrier_llmrank import models  # noqa: E402
from pyterrier_llmrank.train.recipe import add_lora  # noqa: E402

LORA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']


def seconds_per_sequence(mode: str, length: int, batch: int, model_name: str) -> float:
    """Best seconds per sequence of one step in ``mode`` (``inf``, ``full``, ``lora`` or ``lora<k>``)."""
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(models.resolve_model_path(model_name), dtype=torch.float32)  # a fresh copy
    m.eval()
    n = m.config.num_hidden_layers
    if mode.startswith('lora'):
        k = int(mode[4:]) if len(mode) > 4 else n
        m = add_lora(m, {'r': 16, 'alpha': 32, 'dropout': 0.05, 'target_modules': LORA_TARGETS,
                         'layers_to_transform': list(range(n - k, n))}, 'CAUSAL_LM', model_name).get_base_model()
    elif mode == 'full':
        for p in m.parameters():
            p.requires_grad_(True)
    elif mode != 'inf':
        raise ValueError(f'--mode: unknown mode {mode!r} (inf, full, lora, lora<k>)')
    ids = torch.randint(100, 40000, (batch, length), generator=torch.Generator().manual_seed(0))
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5) if mode != 'inf' else None
    times = []
    for _ in range(3):
        t = time.perf_counter()
        if mode == 'inf':
            with torch.inference_mode():
                m(input_ids=ids, logits_to_keep=1)
        else:
            m(input_ids=ids, logits_to_keep=1).logits[:, -1, :10].sum().backward()
            opt.step()
            opt.zero_grad()
        times.append(time.perf_counter() - t)
    return min(times[1:]) / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().split('\n')[0])
    ap.add_argument('--threads', type=int, nargs='+', default=[1])
    ap.add_argument('--mode', nargs='+', default=['inf', 'lora8', 'full'])
    ap.add_argument('--length', type=int, default=128)
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--model', default='smollm2-135m-instruct')
    args = ap.parse_args()
    print(f'load average before: {os.getloadavg()[0]:.1f}')
    for threads in args.threads:
        torch.set_num_threads(threads)
        for mode in args.mode:
            s = seconds_per_sequence(mode, args.length, args.batch, args.model)
            print(f'threads {threads}  mode {mode:6s}  {args.batch} x {args.length} tokens: {s:.3f} s/sequence',
                  flush=True)
    print(f'load average after: {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
    main()
