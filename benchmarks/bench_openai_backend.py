"""Throughput of generation through an OpenAI-compatible server against in-process Hugging Face generation.

The same RankGPT prompts (one window of BM25 candidates for each of the first DL19 topics, passages cut to
``--words`` words) are answered greedily by SmolLM2-135M-Instruct, on the CPU in float32:

* in process: :class:`~pyterrier_llmrank.HFGenerationBackend`, one prompt per ``generate`` call and
  ``--batch-size`` prompts per call (left-padded batches);
* through ``transformers serve`` on a loopback port (:class:`~pyterrier_llmrank.serving.TransformersServer`),
  with :class:`~pyterrier_llmrank.OpenAIBackend`, 1 and ``--concurrency`` requests in flight.

Reported per setting: wall-clock seconds, requests (prompts) per second, generated tokens per second, and
whether the answers equal the in-process one-prompt-per-call answers. The server runs without continuous
batching (its default), so it answers one request at a time; with vLLM, SGLang or TGI the requests in flight
are batched on the server's side.

Usage::

    python benchmarks/bench_openai_backend.py                    # 16 prompts, window 10, 40 new tokens, 1 thread
    python benchmarks/bench_openai_backend.py --prompts 32 --concurrency 16 --threads 0
"""
from __future__ import annotations

import argparse
import time

import harness  # noqa: E402,F401 -- offline hub, the repository on sys.path

import pandas as pd  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--prompts', type=int, default=16, help='prompts (one RankGPT window per DL19 topic)')
    ap.add_argument('--window', type=int, default=10, help='passages per prompt')
    ap.add_argument('--words', type=int, default=60, help='words kept per passage')
    ap.add_argument('--max-new-tokens', type=int, default=40)
    ap.add_argument('--batch-size', type=int, default=8, help='prompts per in-process generate call')
    ap.add_argument('--concurrency', type=int, default=8, help='requests in flight to the server')
    ap.add_argument('--threads', type=int, default=1,
                    help='torch CPU threads, here and in the server (0: torch default; on a shared CPU more '
                         'threads than free cores run many times slower)')
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    from pyterrier_llmrank import HFGenerationBackend, OpenAIBackend, RankGPT, ScriptedBackend, datasets
    from pyterrier_llmrank.backends import ChatPrompt
    from pyterrier_llmrank.models import load_causal_lm
    from pyterrier_llmrank.serving import TransformersServer

    dl19 = datasets.load('msmarco-passage-trec-dl-2019')
    topics = dl19.get_topics().head(args.prompts)
    run = (dl19.get_run('bm25') % args.window)(topics)
    shaper = RankGPT(ScriptedBackend([]), window=args.window, max_words=args.words)
    prompts = [ChatPrompt.of(shaper.messages(q, g.sort_values('rank')['text'].tolist()))
               for q, g in run.groupby('query', sort=False)]

    server = TransformersServer('smollm2-135m-instruct', device='cpu', dtype='float32',
                                threads=args.threads or None, startup_timeout=300).start(wait=False)
    try:
        llm = load_causal_lm('smollm2-135m-instruct', device='cpu', dtype='float32')
        server.wait()
        settings = [
            ('in process, 1 prompt/call', HFGenerationBackend(llm, batch_size=1)),
            (f'in process, {args.batch_size} prompts/call', HFGenerationBackend(llm, batch_size=args.batch_size)),
            ('transformers serve, 1 in flight',
             OpenAIBackend(server.model, base_url=server.base_url, concurrency=1, timeout=600)),
            (f'transformers serve, {args.concurrency} in flight',
             OpenAIBackend(server.model, base_url=server.base_url, concurrency=args.concurrency, timeout=600)),
        ]
        settings[-1][1].generate(prompts[:1], 2)  # first request: warm-up
        rows, reference = [], None
        for name, backend in settings:
            start = time.perf_counter()
            gens = backend.generate(prompts, args.max_new_tokens)
            wall = time.perf_counter() - start
            texts = [g.text for g in gens]
            reference = texts if reference is None else reference
            generated = sum(g.generated_tokens for g in gens)
            rows.append({'setting': name, 'seconds': wall, 'requests/s': len(gens) / wall,
                         'generated tok/s': generated / wall, 'generated tokens': generated,
                         'prompt tokens': sum(g.prompt_tokens for g in gens),
                         'same answers': sum(a == b for a, b in zip(texts, reference))})
            print(f'{name}: {wall:.1f} s', flush=True)
    finally:
        server.stop()
    print()
    print(f'{len(prompts)} RankGPT prompts (DL19, BM25 top-{args.window}, {args.words} words/passage), greedy, '
          f'max_new_tokens {args.max_new_tokens}; SmolLM2-135M-Instruct, CPU float32, '
          f'{torch.get_num_threads()} torch thread(s) here and {args.threads or "default"} in the server')
    pd.set_option('display.width', 200)
    print(pd.DataFrame(rows).round(2).to_string(index=False))


if __name__ == '__main__':
    main()
