"""IDCM: time per document with the intra-document cascade (``sample_n`` 4) beside no cascade (``sample_n = -1``)
as the document grows from 256 to 2000 tokens.

The model has DistilBERT's width (dim 768, 12 heads, FFN 3072, CK student on 768-dim embeddings) with random
weights built from a config, and ``--layers`` transformer layers (DistilBERT has 6); the tokenizer is the
WordPiece vocabulary trained on the spot (pyterrier_llmrank.testing). Speed depends on shapes, not weights.
Documents are real TREC DL 2019 passages concatenated and cut to exactly the given number of tokens. Both
settings score the same frame (one query, ``--docs`` documents) in the same process, alternately, best of
``--repeats``; before timing, the script checks that the cascade with ``sample_n`` >= the number of windows
gives the no-cascade scores.

Usage::

    python benchmarks/bench_idcm.py                      # 2 layers, 4 docs per length, 1 thread
    python benchmarks/bench_idcm.py --layers 6 --docs 8 --threads 2 --device cuda
"""
from __future__ import annotations

import argparse
import time

import harness  # noqa: E402,F401 -- offline hub, the repository on sys.path

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

LENGTHS = (256, 512, 1000, 1500, 2000)


def build(layers: int, device: str):
    from transformers import DistilBertConfig, DistilBertModel
    from pyterrier_llmrank.testing import train_wordpiece_tokenizer
    from pyterrier_llmrank.idcm import IDCM, IDCMModel
    tok = train_wordpiece_tokenizer()
    cfg = DistilBertConfig(vocab_size=len(tok), dim=768, n_layers=layers, n_heads=12, hidden_dim=3072,
                           max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = IDCMModel(DistilBertModel(cfg), sample_n=4, top_k_chunks=3)
    return IDCM(model, tokenizer=tok, device=device, dtype='float32', batch_size=32), tok


def documents(tok, n_docs: int, length: int):
    """``n_docs`` texts of exactly ``length`` tokens ([CLS] and [SEP] included) from DL19 passages."""
    from pyterrier_llmrank.testing import corpus_lines
    lines = corpus_lines(2000)
    texts, pos = [], 0
    for _ in range(n_docs):
        ids = []
        while len(ids) < length - 2:
            ids += tok(lines[pos], add_special_tokens=False)['input_ids']
            pos += 1
        texts.append(tok.decode(ids[:length - 2]))
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--layers', type=int, default=2)
    ap.add_argument('--docs', type=int, default=4)
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--lengths', default=','.join(map(str, LENGTHS)))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reranker, tok = build(args.layers, args.device)
    query = 'what is the history of the roman empire'
    lengths = [int(x) for x in args.lengths.split(',')]
    frames = {}
    for n in lengths:
        texts = documents(tok, args.docs, n)
        frames[n] = pd.DataFrame({'qid': '1', 'query': query, 'docno': [f'd{i}' for i in range(len(texts))], 'text': texts})
        got = [len(tok(t, truncation=True, max_length=2000)['input_ids']) for t in texts]
        assert all(abs(g - n) <= 2 for g in got), (n, got)  # decode/encode may merge a word piece at the cut

    # sanity: a cascade wide enough to take every window gives the no-cascade scores
    check = frames[lengths[0]]
    reranker.sample_n = -1
    full = reranker(check)['score'].to_numpy()
    reranker.sample_n = 1000
    wide = reranker(check)['score'].to_numpy()
    assert np.allclose(full, wide, rtol=1e-5), (full, wide)

    print(f'IDCM, DistilBERT width (dim 768, {args.layers} layers), random weights, {args.docs} docs per length, '
          f'{args.threads} thread(s), {args.device}, best of {args.repeats}')
    print(f'{"tokens":>6} {"windows":>7} {"no cascade s/doc":>17} {"sample_n=4 s/doc":>17} {"ETM windows":>11} {"ratio":>6}')
    rows = []
    for n in lengths:
        times = {-1: [], 4: []}
        etm_windows = windows = 0
        for _ in range(args.repeats):
            for sample_n in (-1, 4):
                reranker.sample_n = sample_n
                reranker.stats.reset()
                start = time.perf_counter()
                reranker(frames[n])
                times[sample_n].append((time.perf_counter() - start) / args.docs)
                s = reranker.stats.per_query()
                if sample_n == 4:
                    etm_windows, windows = s['etm_windows'].sum() / args.docs, s['windows'].sum() / args.docs
        full, casc = min(times[-1]), min(times[4])
        rows.append((n, windows, full, casc, etm_windows, full / casc))
        print(f'{n:>6} {windows:>7.1f} {full:>17.4f} {casc:>17.4f} {etm_windows:>11.1f} {full / casc:>5.2f}x', flush=True)
    first, last = rows[0], rows[-1]
    print(f'growth {first[0]} -> {last[0]} tokens: no cascade {last[2] / first[2]:.2f}x, '
          f'cascade {last[3] / first[3]:.2f}x; speed-up at {last[0]} tokens: {last[5]:.2f}x')


if __name__ == '__main__':
    main()
