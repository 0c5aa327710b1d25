"""ICR's latency against one plain forward pass of the same prompt, and against RankGPT, on the same candidates.

Goal (issue 17, goal 2): ICR at most 0.25x RankGPT's latency at 100 candidates (same model, same candidates), and
ICR's time at most 1.25x one plain forward pass (``model(ids, logits_to_keep=1)``, SDPA) over ICR's own prompt.
Model: SmolLM2-135M-Instruct, CPU float32, 1 torch thread; candidates: the BM25 top-``--docs`` of the first DL19
topic. The systems' repetitions are interleaved; medians of the per-repetition ratios are printed with the load
average, and a torch profile of one ICR call (where the time goes).

``--rankgpt-full`` adds a second RankGPT: the same prompts, but every window's answer decoded to the length of a
whole permutation of its window (the tokens of ``[1] > [2] > ... > [20]``, no stop token). SmolLM2 answers
``Received passage [20].`` (7 tokens) and stops, so the plain RankGPT row is nearly all prefill; a model that
follows RankGPT's format writes the whole permutation, the workload of the ICR paper's latency comparison.
The row is labelled as such; its answers are not used for anything.

Usage::

    python benchmarks/bench_icr_ratio.py --docs 100 --reps 2 [--rankgpt] [--rankgpt-full]
"""
from __future__ import annotations

import argparse
import os
import time

import harness  # noqa: E402,F401 -- offline hub, the repository on sys.path

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--docs', type=int, default=100)
    ap.add_argument('--reps', type=int, default=2)
    ap.add_argument('--rankgpt', action='store_true', help='also time RankGPT (w20 s10) on the same candidates')
    ap.add_argument('--rankgpt-tokens', type=int, default=200)
    ap.add_argument('--rankgpt-full', action='store_true',
                    help='also time RankGPT decoding a whole permutation per window (see the docstring)')
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    from pyterrier_llmrank import HFGenerationBackend, RankGPT, datasets
    from pyterrier_llmrank.icr import ICR
    from pyterrier_llmrank.models import load_causal_lm

    dl19 = datasets.load('msmarco-passage-trec-dl-2019')
    inp = (dl19.get_run('bm25') % args.docs)(dl19.get_topics().head(1))
    llm = load_causal_lm('smollm2-135m-instruct', device='cpu', dtype='float32')
    icr = ICR(llm)
    icr(inp)  # warm-up, and the prompt the plain pass reuses
    texts = list(zip(inp.sort_values('rank')['text'], [None] * len(inp)))
    docs = [icr.document_text(t, ti) for t, ti in texts][::-1]
    prompt = icr.build_prompt(inp['query'].iloc[0], docs)
    words = None
    if len(prompt.ids) > icr.max_length:  # ICR cut the documents to fit: the plain pass reads the same prompt
        words = icr._fit_words(inp['query'].iloc[0], texts[::-1])
        prompt = icr.build_prompt(inp['query'].iloc[0], [icr.document_text(t, ti, words) for t, ti in texts[::-1]])
    ids = torch.tensor([prompt.ids])

    def plain():
        with torch.inference_mode():
            llm.model(input_ids=ids, logits_to_keep=1, use_cache=False)

    systems = {'ICR': lambda: ICR(llm)(inp), 'plain forward': plain}
    if args.rankgpt:
        systems['RankGPT'] = lambda: RankGPT(llm, window=20, step=10, depth=args.docs,
                                             max_new_tokens=args.rankgpt_tokens)(inp)
    full_tokens = 0
    if args.rankgpt_full:
        full = HFGenerationBackend(llm)
        full.stop_ids = []  # decode to max_new_tokens: a whole permutation, as a model that follows the format
        full_tokens = len(llm.ids(' > '.join(f'[{i}]' for i in range(1, 21))))
        full_rankgpt = RankGPT(full, window=20, step=10, depth=args.docs, max_new_tokens=full_tokens)
        systems['RankGPT (whole permutations)'] = lambda: full_rankgpt(inp)
    load0 = os.getloadavg()
    times = {k: [] for k in systems}
    names = list(systems)
    for rep in range(args.reps):
        for name in (names if rep % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            systems[name]()
            times[name].append(time.perf_counter() - start)
        print(f'rep {rep}: ' + ', '.join(f'{k} {v[-1]:.1f} s' for k, v in times.items()), flush=True)
    load1 = os.getloadavg()
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ICR(llm)(inp)
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=12))
    print(f'DL19 topic 1, BM25 top-{args.docs}; ICR prompt {len(prompt.ids)} tokens (query span '
          f'{len(prompt.suffix)}; words per document {words}); SmolLM2-135M-Instruct, CPU float32, 1 torch thread; '
          f'{args.reps} interleaved repetitions; load average {load0[0]:.1f} at start, {load1[0]:.1f} at end')
    over = float(np.median(np.array(times['ICR']) / np.array(times['plain forward'])))
    print(f'ICR / plain forward: {over:.2f} (goal <= 1.25: {over <= 1.25})')
    if args.rankgpt:
        r = float(np.median(np.array(times['ICR']) / np.array(times['RankGPT'])))
        print(f'ICR / RankGPT: {r:.2f} (goal <= 0.25: {r <= 0.25})')
    if args.rankgpt_full:
        gen = full_rankgpt.stats.per_query()
        r = float(np.median(np.array(times['ICR']) / np.array(times['RankGPT (whole permutations)'])))
        print(f'RankGPT (whole permutations): {int(gen["model_calls"].sum() / args.reps)} windows, '
              f'{int(gen["generated_tokens"].sum() / args.reps)} generated tokens per run '
              f'({full_tokens} per window)')
        print(f'ICR / RankGPT decoding whole permutations: {r:.2f} (goal <= 0.25: {r <= 0.25})')


if __name__ == '__main__':
    main()
