"""GPU readiness check, prepared for a session that has a GPU for a few minutes.

1. Equality: every method on the tiny random models of ``pyterrier_llmrank.testing`` (Llama with SmolLM2's
   tokenizer when cached, T5), once on the CPU and once on ``--device``, both in float32: the largest absolute score
   difference and whether the rankings are the same. Pointwise and attention scores must agree within
   ``--atol``; the generative methods (RankGPT, Setwise) are reported (greedy decoding of a random model can
   break argmax ties differently across devices) but do not fail the check.
2. Throughput: every method on SmolLM2-135M-Instruct on ``--device`` with the toolkit's defaults there
   (``dtype='auto'``: bfloat16 on a bf16-capable GPU; SDPA attention), BM25 top ``--depth`` of the first
   ``--queries`` TREC DL 2019 topics: documents per second and seconds per query. ``--compile`` adds
   ``model.compile()`` (``torch.compile``) to the scorers that hold a model.

Usage::

    python benchmarks/gpu_check.py                         # on cuda (a GPU session), a few minutes
    python benchmarks/gpu_check.py --device cpu --queries 1 --depth 5   # dry run on the CPU

Exit status 1 when an equality check fails.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import harness  # noqa: E402,F401 -- offline hub, the repository on sys.path

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from pyterrier_llmrank import ICR, UPR, MonoT5, ProRank, RankGPT, Setwise, YesNo, datasets  # noqa: E402

#: method -> (model family, constructor over a model reference and device/dtype keywords, exact check)
METHODS = {
    'UPR': ('llama', lambda m, **kw: UPR(m, kind='causal', **kw), True),
    'ICR': ('llama', lambda m, **kw: ICR(m, max_words=64, **kw), True),
    'YesNo': ('llama', lambda m, **kw: YesNo(m, **kw), True),
    'ProRank': ('llama', lambda m, **kw: ProRank(m, **kw), True),
    'MonoT5': ('t5', lambda m, **kw: MonoT5(model=m, **kw), True),
    'RankGPT': ('llama', lambda m, **kw: RankGPT(m, window=5, step=2, max_new_tokens=24, **kw), False),
    'Setwise': ('llama', lambda m, **kw: Setwise(m, k=3, max_new_tokens=8, **kw), False),
}


def run_frame(queries: int, depth: int) -> pd.DataFrame:
    ds = datasets.load('msmarco-passage-trec-dl-2019')
    return ds.get_run('bm25', num_results=depth)(ds.get_topics().head(queries))


def sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def equality(device: str, frame: pd.DataFrame, atol: float) -> bool:
    from pyterrier_llmrank.testing import build_tiny_llama, build_tiny_t5
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        folders = {'llama': build_tiny_llama(Path(tmp) / 'llama').path, 't5': build_tiny_t5(Path(tmp) / 't5').path}
        print(f'== equality: tiny models, cpu vs {device}, float32 ({len(frame)} rows)')
        for name, (family, make, exact) in METHODS.items():
            outs = []
            for dev in ('cpu', device):
                r = make(str(folders[family]), device=dev, dtype='float32')
                outs.append(r(frame).sort_values(['qid', 'docno']).reset_index(drop=True))
            diff = float(np.max(np.abs(outs[0]['score'].to_numpy() - outs[1]['score'].to_numpy())))
            same = bool((outs[0]['rank'].to_numpy() == outs[1]['rank'].to_numpy()).all())
            good = (diff <= atol) if exact else True
            ok &= good
            print(f'{name:8s} max|score diff| {diff:.2e}  same ranking {same}  '
                  f'{"ok" if good else "FAIL"}{"" if exact else " (reported only)"}')
    return ok


def throughput(device: str, frame: pd.DataFrame, compile_: bool) -> None:
    n_q = frame['qid'].nunique()
    print(f'== throughput: SmolLM2-135M-Instruct on {device}, dtype auto, {n_q} queries x '
          f'{len(frame) // max(n_q, 1)} docs')
    for name, (family, make, _) in METHODS.items():
        if family != 'llama':
            continue
        r = make('smollm2-135m-instruct', device=device, dtype='auto')
        model = getattr(r, 'model', None) or getattr(getattr(r, 'backend', None), 'model', None)
        if compile_ and model is not None:
            model.compile()
        r(frame[frame['qid'] == frame['qid'].iloc[0]])  # warm-up (kernels, compilation)
        sync(device)
        start = time.perf_counter()
        r(frame)
        sync(device)
        sec = time.perf_counter() - start
        dtype = next(model.parameters()).dtype if model is not None else '?'
        print(f'{name:8s} {len(frame) / sec:8.1f} docs/s  {sec / n_q:7.3f} s/query  ({dtype})')


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cuda')
    p.add_argument('--queries', type=int, default=4, help='DL19 queries of the throughput run')
    p.add_argument('--depth', type=int, default=20, help='BM25 documents per query')
    p.add_argument('--atol', type=float, default=1e-3, help='largest score difference allowed, CPU vs device')
    p.add_argument('--compile', action='store_true', help='torch.compile the models of the throughput run')
    p.add_argument('--skip-throughput', action='store_true')
    args = p.parse_args()
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        print('no CUDA device visible; use --device cpu for a dry run', file=sys.stderr)
        return 2
    ok = equality(args.device, run_frame(2, 5), args.atol)
    if not args.skip_throughput:
        throughput(args.device, run_frame(args.queries, args.depth), args.compile)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
