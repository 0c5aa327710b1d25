"""Multimodal collections built from TREC DL 2019: what OCR costs a text reranker, and interleaved documents.

    python examples/multimodal.py pages --topics 20        # OCR accuracy, then BM25%20 >> UPR on text vs OCR'd pages
    python examples/multimodal.py interleaved              # mean vs max vs first section, and section picking

``pages``: the passages of the stored BM25 top-``depth`` of the first ``--topics`` topics are rendered as page
images (:func:`pyterrier_llmrank.datasets.page_images`), read back by Tesseract (:class:`pyterrier_llmrank.OCR`;
word-sequence similarity to the original text and seconds per page), then re-ranked by UPR (SmolLM2-135M) from
the original text and from the OCR text: nDCG@10 of both, their difference and a paired t-test.

``interleaved``: documents of three judged passages of one DL19 topic, some sections rendered as page images or
tables (:func:`pyterrier_llmrank.datasets.interleaved_documents`). Each section is embedded by MiniLM (image and
table sections through OCR); documents are retrieved from all documents by the mean of their section vectors,
against the element-wise max and the first section (nDCG@10, paired t-tests); then the section reranker picks the
best section of each relevant document (accuracy against the labelled section, binomial test against chance, and
against picking from the original texts with McNemar's exact test).

Needs the ``tesseract`` binary (``make install`` installs it as root; see ``pyterrier_llmrank/ocr.py``).
"""
import argparse
import difflib
import os
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from ir_measures import nDCG  # noqa: E402
from scipy import stats  # noqa: E402

import pyterrier_llmrank as llmrank  # noqa: E402
from pyterrier_llmrank.datasets import interleaved_documents, page_images  # noqa: E402


def word_similarity(reference: str, read: str) -> float:
    """Word-sequence similarity: 2 * matched words / (words of both), difflib's ratio over word lists."""
    return difflib.SequenceMatcher(None, reference.split(), read.split(), autojunk=False).ratio()


def paired(a: pd.Series, b: pd.Series) -> str:
    t = stats.ttest_rel(a, b)
    return f'diff {a.mean() - b.mean():+.4f} ({int((a > b).sum())} up / {int((a < b).sum())} down), p = {t.pvalue:.3g}'


def per_query_ndcg(results: pd.DataFrame, qrels: pd.DataFrame, topics: pd.DataFrame) -> pd.Series:
    import ir_measures
    runs = results[['qid', 'docno', 'score']].rename(columns={'qid': 'query_id', 'docno': 'doc_id'})
    rels = qrels.rename(columns={'qid': 'query_id', 'docno': 'doc_id', 'label': 'relevance'})
    got = {m.query_id: m.value for m in ir_measures.iter_calc([nDCG @ 10], rels, runs)}
    return pd.Series([got.get(q, 0.0) for q in topics['qid']], index=topics['qid'])


def run_pages(args) -> None:
    dl19 = llmrank.datasets.load(args.data)
    topics = dl19.get_topics().head(args.topics) if args.topics else dl19.get_topics()
    qrels = dl19.get_qrels()
    bm25 = dl19.get_run('bm25') % args.depth
    text_run = bm25(topics)
    start = time.time()
    pages = page_images(dl19, docnos=text_run['docno'].unique())
    print(f'rendered {text_run["docno"].nunique()} pages in {time.time() - start:.0f} s ({pages.path})')
    ocr = llmrank.OCR(verbose=True)
    image_run = (pages.get_run('bm25', num_results=args.depth) >> ocr)(topics)   # only these are rendered
    seconds = ocr.stats.per_query()
    original = dict(zip(text_run['docno'], text_run['text']))
    read = image_run.drop_duplicates('docno').set_index('docno')['text']
    sims = pd.Series({d: word_similarity(original[d], t) for d, t in read.items()})
    print(f'OCR: {int(seconds["pages"].sum())} pages, word-sequence similarity mean {sims.mean():.4f} '
          f'(median {sims.median():.4f}, min {sims.min():.4f}), '
          f'{seconds["seconds"].sum() / seconds["pages"].sum():.2f} s/page; worst pages: '
          f'{sims.nsmallest(3).round(3).to_dict()}')
    upr = llmrank.UPR(args.model, batch_size=args.batch_size)
    start = time.time()
    on_text = upr(text_run)
    on_ocr = upr(image_run)
    print(f'UPR on {2 * len(text_run)} pairs: {time.time() - start:.0f} s')
    a = per_query_ndcg(on_text, qrels, topics)
    b = per_query_ndcg(on_ocr, qrels, topics)
    base = per_query_ndcg(text_run, qrels, topics)
    print(f'TREC DL 2019, first {len(topics)} topics, BM25 top-{args.depth}, nDCG@10:')
    print(f'  BM25                          {base.mean():.4f}')
    print(f'  BM25 >> UPR (original text)   {a.mean():.4f}')
    print(f'  pages >> OCR() >> UPR         {b.mean():.4f}   vs original text: {paired(b, a)}')


def run_interleaved(args) -> None:
    from pyterrier_llmrank.interleaved import InterleavedRetriever, SectionReranker, TextSectionEncoder, embed_documents
    docs = interleaved_documents(args.data, seed=args.seed)
    topics, qrels, sqrels = docs.get_topics(), docs.get_qrels(), docs.get_section_qrels()
    corpus = docs.get_corpus()
    kinds = sqrels['kind'].value_counts().to_dict()
    print(f'{len(corpus)} documents over {len(topics)} topics, {len(sqrels)} sections {kinds}, '
          f'{int((qrels["label"] >= docs.relevant_label).sum())} relevant documents ({docs.path})')
    encoder = TextSectionEncoder(ocr=llmrank.OCR(verbose=True))
    start = time.time()
    embeddings = embed_documents(encoder, corpus)
    print(f'sections embedded in {time.time() - start:.0f} s ({int(encoder.ocr.stats.per_query()["pages"].sum())} '
          f'OCR pages, {encoder.ocr.stats.summary()["seconds_total"]:.0f} s of OCR)')
    ndcg = {}
    for merge in ('mean', 'max', 'first'):
        res = InterleavedRetriever(encoder, embeddings, merge=merge, num_results=100)(topics)
        ndcg[merge] = per_query_ndcg(res, qrels, topics)
    print(f'document retrieval, {len(topics)} topics, nDCG@10:')
    for merge, v in ndcg.items():
        extra = '' if merge == 'mean' else f'   mean vs {merge}: {paired(ndcg["mean"], v)}'
        print(f'  {merge:<6} {v.mean():.4f}{extra}')

    # section picking inside each relevant document, from what the documents show (OCR'd images) and from
    # the original passage texts of every section
    relevant = sqrels[sqrels['label'] >= docs.relevant_label][['qid', 'docno', 'section']]
    frame = relevant.merge(topics, on='qid')[['qid', 'query', 'docno']].assign(score=0.0, rank=0)
    frame = docs.sections_loader()(frame)
    picked = SectionReranker(encoder)(frame)
    ok = (picked['section'].to_numpy() == relevant.set_index('docno').loc[picked['docno'], 'section'].to_numpy())
    manifest = {d['docno']: d for d in docs.manifest()}
    as_text = frame.assign(sections=[[{'kind': 'text', 'text': s['text'], 'image': None}
                                      for s in manifest[d]['sections']] for d in frame['docno']])
    picked_text = SectionReranker(encoder)(as_text)
    ok_text = (picked_text['section'].to_numpy()
               == relevant.set_index('docno').loc[picked_text['docno'], 'section'].to_numpy())
    n, k = len(ok), int(ok.sum())
    chance = 1 / 3
    binom = stats.binomtest(k, n, chance, alternative='greater')
    b_, c_ = int((ok & ~ok_text).sum()), int((~ok & ok_text).sum())
    mcnemar = stats.binomtest(b_, b_ + c_, 0.5).pvalue if b_ + c_ else 1.0
    print(f'section picking over {n} relevant documents: accuracy {k / n:.4f} (chance {chance:.3f}, binomial '
          f'p = {binom.pvalue:.3g}); from the original texts {ok_text.mean():.4f} '
          f'(OCR better on {b_}, worse on {c_}, McNemar exact p = {mcnemar:.3g})')
    kind = relevant.merge(sqrels, on=['qid', 'docno', 'section']).set_index('docno').loc[picked['docno'], 'kind']
    for label, hits in (('as shown (OCR)', ok), ('original texts', ok_text)):
        by_kind = pd.Series(hits, index=kind.to_numpy())
        print(f'  accuracy by the kind of the relevant section, {label}:',
              {k: f'{v.mean():.3f} (n={len(v)})' for k, v in by_kind.groupby(level=0)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('part', choices=['pages', 'interleaved'])
    parser.add_argument('--data', default='msmarco-passage-trec-dl-2019')
    parser.add_argument('--topics', type=int, default=None, help='pages: only the first N topics')
    parser.add_argument('--depth', type=int, default=20, help='pages: BM25 results re-ranked')
    parser.add_argument('--model', default='smollm2-135m-instruct')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--seed', type=int, default=0, help='interleaved: the seed of the documents')
    args = parser.parse_args()
    np.random.seed(0)
    run_pages(args) if args.part == 'pages' else run_interleaved(args)


if __name__ == '__main__':
    main()
