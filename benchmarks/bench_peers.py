"""Setwise and RankGPT against llm-rankers 0.0.2 (ielab/llm-rankers) on the same model object, same prompts.

Goal (issue 17, goal 1): ours at least 1.5x faster than the peer per query, with identical answers. Both sides run
the one model handle (``load_causal_lm('smollm2-135m-instruct', device='cpu', dtype='float32')``) with 1 torch
thread, on the BM25 top-20 of the first DL19 topics:

* Setwise (num_child=3, k=10; query and passages cut to 128 tokens, as the peer's ``run.py``) against
  ``SetwiseLlmRanker``;
* RankGPT (window 20, step 10, depth 20; ``max_new_tokens`` for both) against ``ListwiseLlmRanker`` (its
  ``apply_chat_template`` is shimmed with ``return_dict=False`` for transformers 5, in this script only).

``--whole-permutations`` runs RankGPT as a model that follows its format would: both sides decode every window's
answer to the length of a whole permutation (the tokens of ``[1] > [2] > ... > [20]``, 90 for SmolLM2), with no
stop token (the peer through the model's generation config, ours through the backend's ``stop_ids``). SmolLM2
answers ``Received passage [20].`` (7 tokens) and stops, so without the flag RankGPT is nearly all prefill; with
it, decoding is half the work, as with the models RankGPT is used with. Answers are still compared token for token.

The repetitions of the two sides are interleaved (the side that goes first alternates); each repetition of ours
builds a new reranker (a new backend: no prompt states carried over from an earlier repetition). Printed: every
repetition's seconds, the median ratio peer/ours, whether every raw answer and every ranking are equal, and the
load average. A shared CPU makes absolute seconds meaningless: read the ratios.

Usage::

    python benchmarks/bench_peers.py --queries 2 --reps 3
    python benchmarks/bench_peers.py --queries 4 --reps 2 --skip setwise --whole-permutations
"""
from __future__ import annotations

import argparse
import os
import time

import harness  # noqa: E402,F401 -- offline hub, the repository on sys.path

import numpy as np  # noqa: E402
import torch  # noqa: E402

GOAL = 1.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--queries', type=int, default=2, help='first N DL19 topics')
    ap.add_argument('--docs', type=int, default=20, help='BM25 candidates per query')
    ap.add_argument('--reps', type=int, default=3, help='interleaved repetitions per side')
    ap.add_argument('--rankgpt-tokens', type=int, default=200, help='max_new_tokens of RankGPT (both sides)')
    ap.add_argument('--whole-permutations', action='store_true',
                    help='RankGPT: both sides decode whole permutations, no stop token (see the docstring)')
    ap.add_argument('--show-diff', action='store_true', help='print the answers that differ')
    ap.add_argument('--skip', default='', help='comma-separated methods to leave out (setwise,rankgpt)')
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    from llmrankers.listwise import ListwiseLlmRanker
    from llmrankers.rankers import SearchResult
    from llmrankers.setwise import SetwiseLlmRanker

    from pyterrier_llmrank import RankGPT, Setwise, datasets
    from pyterrier_llmrank.models import load_causal_lm, resolve_model_path

    dl19 = datasets.load('msmarco-passage-trec-dl-2019')
    inp = (dl19.get_run('bm25') % args.docs)(dl19.get_topics().head(args.queries))
    inp = inp[['qid', 'query', 'docno', 'score', 'rank', 'text']].reset_index(drop=True)
    llm = load_causal_lm('smollm2-135m-instruct', device='cpu', dtype='float32')
    path = resolve_model_path('smollm2-135m-instruct')
    groups = [(qid, g.sort_values('rank')) for qid, g in inp.groupby('qid', sort=False)]
    load0 = os.getloadavg()

    def peer_setwise():
        ref = SetwiseLlmRanker(path, None, 'cpu', num_child=3, k=10)
        ref.llm = llm.model
        return ref

    def peer_listwise():
        ref = ListwiseLlmRanker(path, None, 'cpu', window_size=20, step_size=10)
        ref.llm = llm.model
        apply = ref.tokenizer.apply_chat_template
        ref.tokenizer.apply_chat_template = lambda *a, **kw: apply(*a, return_dict=False, **kw)
        return ref

    def run_peer(ref, cut):
        outputs, rankings = {}, {}
        compare = ref.compare

        def logged(query, docs):
            out = compare(query, docs)
            outputs.setdefault(current[0], []).append(out)
            return out
        ref.compare = logged
        current = [None]
        for qid, g in groups:
            current[0] = qid
            docs = [SearchResult(docid=d, score=None, text=ref.truncate(t, 128) if cut else t)
                    for d, t in zip(g['docno'], g['text'])]
            query = ref.truncate(g['query'].iloc[0], 128) if cut else g['query'].iloc[0]
            rankings[qid] = [r.docid for r in ref.rerank(query, docs)]
        return outputs, rankings

    def run_ours(rr, norm):
        res = rr(inp)
        tr = rr.trace()
        outputs = {qid: [norm(o) for o in tr[tr['qid'] == qid]['output']] for qid, _ in groups}
        rankings = {qid: res[res['qid'] == qid].sort_values('rank')['docno'].tolist() for qid, _ in groups}
        return outputs, rankings, rr

    # the peer's listwise generate() reads the model's generation config
    if args.whole_permutations:
        args.rankgpt_tokens = len(llm.ids(' > '.join(f'[{i}]' for i in range(1, 21))))
        llm.model.generation_config.eos_token_id = None
        # SmolLM2's pad id is its end-of-turn token; left as the pad id with no EOS, the peer's generate() never
        # picks it, although it is the model's argmax (by 6 logits at the 7th token of DL19 topic 264014, checked
        # with a plain forward pass): without a pad id the peer decodes the model's greedy answer, as ours does
        llm.model.generation_config.pad_token_id = None
    llm.model.generation_config.max_new_tokens = args.rankgpt_tokens
    llm.model.generation_config.do_sample = False

    def ours_rankgpt():
        rr = RankGPT(llm, window=20, step=10, depth=args.docs, max_new_tokens=args.rankgpt_tokens)
        if args.whole_permutations:
            rr.backend.stop_ids = []
        return rr
    methods = {
        'setwise': ('Setwise c3 k10',
                    lambda: run_peer(peer_setwise(), cut=True),
                    lambda: run_ours(Setwise(llm, num_child=3, k=10), lambda o: o.strip().upper())),
        'rankgpt': ('RankGPT w20 s10',
                    lambda: run_peer(peer_listwise(), cut=False),
                    lambda: run_ours(ours_rankgpt(), lambda o: o.strip())),
    }
    skip = {s.strip().lower() for s in args.skip.split(',') if s.strip()}
    rows = []
    for key, (name, peer, ours) in methods.items():
        if key in skip:
            continue
        t_peer, t_ours, equal = [], [], True
        for rep in range(args.reps):
            for side in ((0, 1) if rep % 2 == 0 else (1, 0)):
                start = time.perf_counter()
                if side == 0:
                    p_out, p_rank = peer()
                    t_peer.append(time.perf_counter() - start)
                else:
                    o_out, o_rank, rr = ours()
                    t_ours.append(time.perf_counter() - start)
            equal &= (p_out == o_out) and (p_rank == o_rank)
            if args.show_diff and p_out != o_out:
                for qid in p_out:
                    for a, b in zip(p_out[qid], o_out[qid]):
                        if a != b:
                            print(f'  {qid}: peer {a!r}\n  {qid}: ours {b!r}')
            print(f'{name} rep {rep}: peer {t_peer[-1]:.1f} s, ours {t_ours[-1]:.1f} s, '
                  f'ratio {t_peer[-1] / t_ours[-1]:.2f}, equal {p_out == o_out and p_rank == o_rank}', flush=True)
        ratio = float(np.median(np.array(t_peer) / np.array(t_ours)))
        pq = rr.stats.per_query()
        kv = getattr(rr.backend, '_prompt_kv', None)
        rows.append((name, ratio, equal, pq['sequences'].mean(), pq['input_tokens'].mean(),
                     getattr(kv, 'reused_tokens', 0) / len(pq) if kv else 0.0, pq['generated_tokens'].mean()))
    load1 = os.getloadavg()
    print()
    print(f'{args.queries} DL19 topics x BM25 top-{args.docs}; SmolLM2-135M-Instruct, CPU float32, 1 torch thread, '
          f'{args.reps} interleaved repetitions; llm-rankers 0.0.2 on the same model object')
    print(f'load average at start {load0[0]:.1f}, at end {load1[0]:.1f}; RankGPT max_new_tokens '
          f'{args.rankgpt_tokens}' + (' on both sides, no stop token (whole permutations)' if args.whole_permutations
                                      else ''))
    print(f'{"method":18s} {"peer/ours":>9s} {"goal":>5s} {"met":>4s} {"answers+rankings equal":>23s} '
          f'{"LLM calls/q":>11s} {"prompt tok/q":>12s} {"reused tok/q":>12s} {"generated/q":>11s}')
    for name, ratio, equal, calls, toks, reused, gen in rows:
        print(f'{name:18s} {ratio:9.2f} {GOAL:5.2f} {str(ratio >= GOAL):>4s} {str(equal):>23s} {calls:11.1f} '
              f'{toks:12.0f} {reused:12.0f} {gen:11.1f}')


if __name__ == '__main__':
    main()
