"""Throughput of the pointwise LLM scorers with SmolLM2-135M-Instruct, and the achieved model FLOP/s against a dense
fp32 matmul measured in the same run, on the same threads.

Scorers: ``YesNo``, ``ProRank`` (prompt only: SmolLM2 is not a ProRank checkpoint, speed does not depend on it),
``UPR`` (causal, chat form), ``DeARPointwise`` (SmolLM2's body under a freshly initialised 1-label head:
a DeAR-shaped model of the same size) and ``MonoT5`` (a random T5 of t5-base's shape, 12+12 layers, d_model 768,
with a SentencePiece vocabulary trained on the spot: no T5 weights offline, and speed depends on the shapes
only), each with the shared-prefix cache (default) and, for comparison, ProRank without it and YesNo with the
old fixed batches (``max_padding=inf``: slices of ``batch_size`` rows). Inputs are the BM25 top-``--docs``
passages (real texts) of the first ``--queries`` TREC DL 2019 topics.

What is counted (useful model FLOPs, the usual "MFU" convention; padding and masked attention entries are not
counted, embedding lookups are free):

* ``2 * P * T``: ``P`` = non-embedding parameters (106.2M for SmolLM2: 30 layers of attention + MLP
  projections), ``T`` = tokens run through the model (fed suffixes + shared prefixes computed once);
* output heads: ``2 * vocab * hidden`` per kept position of a causal LM (1 per pair for YesNo/ProRank, the
  target length for UPR), ``2 * hidden`` for DeAR's 1-label head;
* attention: ``4 * layers * heads * head_dim`` per (query token, visible key) pair, causal (a token at position
  ``t`` sees ``t + 1`` keys, its prefix included).

The reference rate is a dense fp32 ``torch.mm`` of two ``N x N`` matrices (``--matmul-n``, default 1536), and of
the model's MLP shape (``2048 x 576`` by ``576 x 1536``), each timed (best of 5) before and after the scorers;
the ratio is model FLOP/s over the mean of the square matmul rates (goal of issue 17: at least 0.6). A busy
machine lowers both.

MonoT5's FLOPs: ``2 * P_enc * T`` for the encoder (``T`` real tokens) plus bidirectional attention
(``4 * layers * heads * d_kv`` per (query, key) pair, ``T^2`` per sequence), one decoder step (``2 * P_dec``
plus cross-attention over ``T`` keys) and the two output rows read.

Usage::

    python benchmarks/bench_pointwise.py                       # 1 query x 20 docs, batch 16, torch's threads
    python benchmarks/bench_pointwise.py --queries 4 --batch-size 32 --threads 2
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import harness  # noqa: E402,F401 -- offline hub, the repository on sys.path

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import pyterrier_llmrank  # noqa: E402
from pyterrier_llmrank.models import load_causal_lm, load_sequence_classifier, resolve_model_path  # noqa: E402
from pyterrier_llmrank.pointwise import DeARPointwise, ProRank, YesNo  # noqa: E402


GOAL = 0.6  # issue 17: pointwise scorers at 0.6 of a dense matmul's FLOP/s


def matmul_rate(m: int, k: int, n: int, repeats: int = 5) -> float:
    """Best FLOP/s of a dense fp32 ``[m, k] @ [k, n]``."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best


def non_embedding_params(model) -> int:
    emb = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    heads = {id(p) for name in ('lm_head', 'score') for p in getattr(model, name, torch.nn.Module()).parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in emb | heads)


def attention_pairs(lengths_and_prefixes) -> int:
    """Sum over sequences of visible (query, key) pairs of the tokens run: sum_{t=p}^{L-1} (t + 1)."""
    return sum((L * (L + 1) - p * (p + 1)) // 2 for L, p in lengths_and_prefixes)


def t5_flops(model, seqs) -> tuple:
    """(useful FLOPs, real encoder tokens) of MonoT5 over ``seqs`` (see the module docstring)."""
    cfg = model.config
    enc = non_embedding_params(model.get_encoder())
    dec = non_embedding_params(model.get_decoder())
    per_pair = 4 * cfg.num_heads * cfg.d_kv
    tokens = sum(len(s) for s in seqs)
    flops = sum(2 * enc * len(s) + per_pair * cfg.num_layers * len(s) ** 2 + 2 * dec
                + per_pair * cfg.num_decoder_layers * len(s) + 2 * 2 * cfg.d_model for s in seqs)
    return flops, tokens


def workload(rr, inp: pd.DataFrame):
    """(tokens run, attention pairs, kept output positions) of one transform of ``inp`` by ``rr``."""
    items = rr._encode(inp)
    if isinstance(rr, pyterrier_llmrank.UPR):
        shapes = [(len(c) + len(t) - 1, 0) for c, t in items]
        kept = sum(len(t) for _, t in items)
        prefixes = 0
    else:
        shapes = [(len(s), p) for s, p, _ in items]
        kept = len(items)
        prefixes = {tuple(s[:p]) for s, p, _ in items if p}
        shapes += [(len(x), 0) for x in prefixes]  # each shared prefix is run once
        prefixes = sum(len(x) for x in prefixes)
    fed = sum(L - p for L, p in shapes)
    return fed, attention_pairs(shapes), kept, prefixes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--queries', type=int, default=1)
    ap.add_argument('--docs', type=int, default=20)
    ap.add_argument('--batch-size', type=int, default=16)
    ap.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    ap.add_argument('--matmul-n', type=int, default=1536)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    dl19 = pyterrier_llmrank.datasets.load('msmarco-passage-trec-dl-2019')
    topics = dl19.get_topics().head(args.queries)
    inp = (dl19.get_run('bm25') % args.docs)(topics)
    print(f'{len(inp)} pairs ({args.queries} DL19 queries x {args.docs} BM25 passages), batch {args.batch_size}, '
          f'{threads} torch threads, fp32 CPU, padding budget {pyterrier_llmrank.base.MAX_PADDING}; '
          f'load average {os.getloadavg()[0]:.1f}')

    llm = load_causal_lm('smollm2-135m-instruct', device='cpu', dtype='float32')
    cls = load_sequence_classifier(resolve_model_path('smollm2-135m-instruct'), device='cpu', dtype='float32',
                                   num_labels=1)
    cfg = llm[0].config
    P = non_embedding_params(llm[0])
    head_dim = getattr(cfg, 'head_dim', cfg.hidden_size // cfg.num_attention_heads)
    attn_per_pair = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim
    print(f'model: SmolLM2-135M-Instruct, {P / 1e6:.1f}M non-embedding parameters, vocab {cfg.vocab_size}, '
          f'hidden {cfg.hidden_size}')

    square = [matmul_rate(args.matmul_n, args.matmul_n, args.matmul_n)]
    mlp = [matmul_rate(2048, cfg.hidden_size, cfg.intermediate_size)]

    from pyterrier_llmrank.monot5 import MonoT5
    from pyterrier_llmrank.testing import build_tiny_t5, train_t5_tokenizer
    t5_dir = tempfile.TemporaryDirectory(prefix='bench-pointwise-t5-')
    t5 = build_tiny_t5(Path(t5_dir.name) / 't5', train_t5_tokenizer(vocab_size=8000), d_model=768, num_layers=12,
                       num_heads=12, d_ff=3072)

    bs = args.batch_size
    fixed = YesNo(llm, batch_size=bs)
    fixed.max_padding = float('inf')
    scorers = [
        ('YesNo', YesNo(llm, batch_size=bs), 2 * cfg.vocab_size * cfg.hidden_size),
        ('YesNo (fixed batches)', fixed, 2 * cfg.vocab_size * cfg.hidden_size),
        ('ProRank', ProRank(llm, batch_size=bs), 2 * cfg.vocab_size * cfg.hidden_size),
        ('ProRank (no prefix reuse)', ProRank(llm, batch_size=bs, prefix_reuse=False),
         2 * cfg.vocab_size * cfg.hidden_size),
        ('UPR-causal', pyterrier_llmrank.UPR(llm, batch_size=bs), 2 * cfg.vocab_size * cfg.hidden_size),
        ('DeAR-P (SmolLM2 body)', DeARPointwise(cls, batch_size=bs), 2 * cfg.hidden_size),
        ('MonoT5 (t5-base shape)', MonoT5(model=t5.pair, batch_size=bs), None),
    ]
    warm = inp.head(4)
    rows = []
    for name, rr, head_flops in scorers:
        rr(warm)
        rr.stats.reset()
        start = time.perf_counter()
        rr(inp)
        secs = time.perf_counter() - start
        if isinstance(rr, MonoT5):
            flops, prompt_tokens = t5_flops(rr.model, rr._encode(inp))
            run_tokens = prompt_tokens
        else:
            fed, pairs, kept, prefix_tokens = workload(rr, inp)
            run_tokens = fed
            flops = 2 * P * run_tokens + head_flops * kept + attn_per_pair * pairs
            prompt_tokens = sum(len(s) for s, _, _ in rr._encode(inp)) if not isinstance(rr, pyterrier_llmrank.UPR) \
                else sum(len(c) + len(t) for c, t in rr._encode(inp))
        st = rr.stats.per_query().sum()
        rows.append({'scorer': name, 'pairs/s': len(inp) / secs, 'batches': int(round(st['model_calls'])),
                     'padding': st['padded_tokens'] / st['input_tokens'] - 1, 'prompt tokens/s': prompt_tokens / secs,
                     'tokens run/s': run_tokens / secs, 'prompt tokens': prompt_tokens, 'tokens run': run_tokens,
                     'GFLOP': flops / 1e9, 'GFLOP/s': flops / secs / 1e9, 'seconds': secs})
        print(f'  {name}: {secs:.1f} s', flush=True)

    square.append(matmul_rate(args.matmul_n, args.matmul_n, args.matmul_n))
    mlp.append(matmul_rate(2048, cfg.hidden_size, cfg.intermediate_size))
    ref = sum(square) / len(square)
    df = pd.DataFrame(rows)
    df['ratio to matmul'] = df['GFLOP/s'] * 1e9 / ref
    pd.set_option('display.width', 200)
    pd.set_option('display.max_columns', 20)
    print(df.to_string(index=False, float_format=lambda x: f'{x:.3f}' if abs(x) < 10 else f'{x:.0f}'))
    for _, row in df.iterrows():
        verdict = 'met' if row['ratio to matmul'] >= GOAL else 'not met'
        print(f'goal (issue 17) model FLOP/s >= {GOAL} x matmul: {row["scorer"]}: {row["ratio to matmul"]:.2f} ({verdict})')
    print(f'dense fp32 matmul {args.matmul_n}^3: {square[0] / 1e9:.1f} GFLOP/s before, {square[1] / 1e9:.1f} after '
          f'(mean {ref / 1e9:.1f}); MLP-shaped 2048x{cfg.hidden_size}x{cfg.intermediate_size}: '
          f'{mlp[0] / 1e9:.1f} / {mlp[1] / 1e9:.1f} GFLOP/s; {threads} threads')
    print('model FLOPs = 2 x non-embedding params x tokens run + output head per kept position + causal attention '
          '(4 x layers x heads x head_dim per visible query-key pair); "tokens run" excludes prompt tokens served '
          'from the shared-prefix cache, "prompt tokens/s" counts every prompt token of every pair')


if __name__ == '__main__':
    main()
