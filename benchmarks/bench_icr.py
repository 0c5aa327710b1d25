"""Latency and peak memory of ICR: the query-span-rows path beside the brute-force path, and beside a pointwise
LLM scorer (UPR, query likelihood) of the same model on the same candidates.

    HF_HUB_OFFLINE=1 python benchmarks/bench_icr.py [--sizes 20 50 100] [--model smollm2-135m-instruct]
                                                    [--max-brute-gb 6] [--device cpu] [--dtype float32]

For each number of candidates (the BM25 top-n of the first TREC DL 2019 topic, texts from the stored run):

* ``ICR rows``: ICR as shipped (SDPA + the query-span attention rows, KV cache reused: 2 passes, the second over
  the query span only);
* ``ICR brute``: ``attention='eager'``, the brute-force reference (eager attention with ``output_attentions=True``
  on the full prompt, twice). It materialises layers x heads x L x L float32 probabilities, so it is run only
  where that estimate stays under ``--max-brute-gb``; otherwise the estimate is printed instead;
* ``UPR``: pointwise query likelihood (``pyterrier_llmrank.upr.UPR(kind='causal')``), one sequence per candidate.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above what was allocated before the call; on the CPU the
process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` before each call) above its
resident set before the call; every measurement runs in a fresh process (after loading the model and a warm-up),
so that memory freed by an earlier, larger call cannot hide a peak. Latency: wall clock of one ``transform``. Both
ICR paths see the same prompt (at 100 candidates the documents are cut to fit the context, identically).
"""
from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import time
import warnings
from typing import Any, Callable, Dict, Tuple

import harness  # noqa: E402,F401 -- offline hub, the repository on sys.path

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from pyterrier_llmrank import datasets  # noqa: E402
from pyterrier_llmrank.icr import ICR  # noqa: E402
from pyterrier_llmrank.models import load_causal_lm  # noqa: E402
from pyterrier_llmrank.upr import UPR  # noqa: E402


def _status_kb(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def measure(fn: Callable[[], Any], device: torch.device) -> Tuple[float, float, Any]:
    """(seconds, peak MiB above the state before the call, result) of one call."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # reset VmHWM to the current resident set
        base = _status_kb('VmRSS') * 1024
    start = time.perf_counter()
    out = fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.type == 'cuda' else _status_kb('VmHWM') * 1024
    return seconds, max(0.0, (peak - base) / 2 ** 20), out


def _load_bench(args: argparse.Namespace) -> Tuple[Any, Dict[str, Any], pd.DataFrame]:
    if args.threads:
        torch.set_num_threads(args.threads)
    llm = load_causal_lm(args.model, device=args.device, dtype=args.dtype)
    systems = {'rows': lambda: ICR(llm), 'brute': lambda: ICR(llm, attention='eager'),
               'upr': lambda: UPR(llm, kind='causal')}
    dl19 = datasets.load('msmarco-passage-trec-dl-2019')
    topic = dl19.get_topics().head(1)
    return llm, systems, dl19.get_run('bm25')(topic)


def _child(args: argparse.Namespace, kind: str, n: int, queue: Any) -> None:
    """One measurement in a fresh process, so that no earlier allocation hides this one's peak."""
    llm, systems, run = _load_bench(args)
    system = systems[kind]()
    device = next(llm[0].parameters()).device
    system(run.head(3))  # warm-up (allocator, kernels, tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the 100-candidate prompt is cut to fit: expected here
        seconds, mib, out = measure(lambda: system(run.head(n)), device)
    queue.put((seconds, mib, out[['docno', 'score']]))


def run_isolated(args: argparse.Namespace, kind: str, n: int) -> Tuple[float, float, pd.DataFrame]:
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(args, kind, n, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--sizes', type=int, nargs='+', default=[20, 50, 100])
    ap.add_argument('--model', default='smollm2-135m-instruct')
    ap.add_argument('--device', default='auto')
    ap.add_argument('--dtype', default='float32')
    ap.add_argument('--max-brute-gb', type=float, default=6.0,
                    help='skip the brute-force path when its attention matrices would exceed this')
    ap.add_argument('--threads', type=int, default=0)
    args = ap.parse_args()

    llm, systems, run = _load_bench(args)
    cfg = llm[0].config
    icr = systems['rows']()
    query = run['query'].iat[0]
    results = []
    for n in args.sizes:
        cand = run.head(n)
        prompt = icr.build_prompt(query, [icr.document_text(t) for t in cand['text']])
        length = min(len(prompt.ids), icr.max_length)  # at worst the context: both paths cut the same way
        est_gb = cfg.num_hidden_layers * cfg.num_attention_heads * length ** 2 * 4 / 2 ** 30
        row: Dict[str, Any] = {'candidates': n, 'prompt_tokens': length}
        t, m, out_rows = run_isolated(args, 'rows', n)
        row.update({'rows_s': t, 'rows_MiB': m})
        if est_gb <= args.max_brute_gb:
            t, m, out_brute = run_isolated(args, 'brute', n)
            row.update({'brute_s': t, 'brute_MiB': m})
            a = out_rows.set_index('docno')['score']
            b = out_brute.set_index('docno')['score'].reindex(a.index)
            row['max_rel_diff'] = float(((a - b).abs() / b.abs().max()).max())
            row['same_ranking'] = list(out_rows['docno']) == list(out_brute['docno'])
        else:
            row.update({'brute_s': None, 'brute_MiB': None, 'brute_est_GiB': est_gb})
        t, m, _ = run_isolated(args, 'upr', n)
        row.update({'upr_s': t, 'upr_MiB': m})
        results.append(row)
        print(pd.DataFrame([row]).to_string(index=False), flush=True)

    df = pd.DataFrame(results)
    df['brute/rows time'] = df['brute_s'].astype(float) / df['rows_s']
    df['brute/rows memory'] = df['brute_MiB'].astype(float) / df['rows_MiB']
    df['upr/icr time'] = df['upr_s'] / df['rows_s']
    df['upr/icr memory'] = df['upr_MiB'] / df['rows_MiB']
    pd.set_option('display.width', 250)
    pd.set_option('display.max_columns', 30)
    print()
    print(f'device {next(llm[0].parameters()).device}, dtype {args.dtype}, torch threads {torch.get_num_threads()}, '
          f'model {args.model}; each measurement in a fresh process after a warm-up')
    print(df.round(3).to_string(index=False))


if __name__ == '__main__':
    main()
