"""Page images and interleaved documents (pyterrier_llmrank.datasets.multimodal), built from a small collection in
the folder format, in a temporary cache."""
import gzip
import io
import json

import pandas as pd
import pytest

from pyterrier_llmrank import datasets
from pyterrier_llmrank.datasets import (UnknownDocnoError, explode_sections, interleaved_documents, page_images,
                                        render_page, render_table)
from pyterrier_llmrank.datasets.multimodal import PAGE_WIDTH

TEXTS = {f'p{i:02d}': f'Passage {i} says that the value of item {i} is {i * 7} units; it is listed in table {i}.'
         for i in range(24)}
# topic q1: 3 relevant (label >= 2) and 9 below; topic q2: 1 relevant and 1 below (too few for a document)
QRELS = ([f'q1 0 p{i:02d} {2 + i % 2}' for i in range(3)] + [f'q1 0 p{i:02d} {i % 2}' for i in range(3, 12)]
         + ['q2 0 p12 2', 'q2 0 p13 0', 'q2 0 unknown 0'])
RUN = [f'q1 Q0 p{i:02d} {i + 1} {30 - i} bm25' for i in range(12)] + ['q2 Q0 p12 1 5 bm25']


@pytest.fixture
def collection(tmp_path, monkeypatch):
    monkeypatch.setenv('PYTERRIER_LLMRANK_CACHE', str(tmp_path / 'cache'))
    root = tmp_path / 'col'
    (root / 'runs').mkdir(parents=True)
    with gzip.open(root / 'docs.jsonl.gz', 'wt', encoding='utf-8') as f:
        for docno, text in TEXTS.items():
            f.write(json.dumps({'docno': docno, 'text': text}) + '\n')
    (root / 'topics.tsv').write_text('q1\tvalue of an item\nq2\tsecond topic\n', encoding='utf-8')
    (root / 'qrels.txt').write_text(''.join(q + '\n' for q in QRELS), encoding='utf-8')
    (root / 'runs' / 'bm25.run').write_text(''.join(r + '\n' for r in RUN), encoding='utf-8')
    return datasets.load(root)


def png(image):
    buf = io.BytesIO()
    image.save(buf, format='PNG')
    return buf.getvalue()


def test_rendering_is_deterministic():
    text = TEXTS['p01'] * 4 + ' ' + 'x' * 200   # wraps, and a word wider than a line is cut
    assert png(render_page(text)) == png(render_page(text))
    assert png(render_table(text)) == png(render_table(text))
    assert png(render_page(text)) != png(render_page(text + ' more'))
    page = render_page(text)
    assert page.size[0] == PAGE_WIDTH and page.mode == 'L' and page.size[1] > render_page('short').size[1]
    assert render_table(text).size[1] > page.size[1]   # row borders and padding


def test_page_images(collection, tmp_path):
    pages = page_images(collection)
    files = pages.files()
    assert set(files) == set(TEXTS)
    with open(files['p03'], 'rb') as f:
        assert f.read() == png(render_page(TEXTS['p03']))
    assert str(tmp_path / 'cache') in str(pages.path)
    mtime = (pages.path / 'pages.tsv').stat().st_mtime_ns
    assert page_images(collection).path == pages.path and (pages.path / 'pages.tsv').stat().st_mtime_ns == mtime

    topics = pages.get_topics()
    assert topics.equals(collection.get_topics()) and pages.get_qrels().equals(collection.get_qrels())
    res = pages.get_run('bm25')(topics)
    ref = collection.get_run('bm25')(topics)
    cols = ['qid', 'docno', 'score', 'rank']
    assert 'text' not in res.columns and res[cols].equals(ref[cols])
    assert res['image'].tolist() == [files[d] for d in ref['docno']]
    assert 'text' in pages.get_run('bm25', keep_text=True)(topics).columns
    assert len(pages.get_run('bm25').fuse_rank_cutoff(2)(topics)) == 3
    with pytest.raises(UnknownDocnoError, match='zz'):
        pages.image_loader()(pd.DataFrame({'docno': ['zz']}))

    subset = page_images(collection, docnos=['p01', 'p02'])
    assert subset.path != pages.path and set(subset.files()) == {'p01', 'p02'}
    with pytest.raises(UnknownDocnoError):
        page_images(collection, docnos=['nope'])


def test_interleaved_documents_labels(collection):
    docs = interleaved_documents(collection, sections=3, relevant_per_topic=2, nonrelevant_per_topic=2, seed=1)
    manifest = docs.manifest()
    qrels = dict(zip(zip(*[pd.Series(QRELS).str.split().str[i] for i in (0, 2)]),
                     pd.Series(QRELS).str.split().str[3].astype(int)))
    # q1: 2 relevant documents (1 relevant + 2 other passages each), then 1 non-relevant one (5 passages left
    # below the label: only one full document of 3); q2 has too few passages and no documents
    assert [d['docno'] for d in manifest] == ['q1-d0', 'q1-d1', 'q1-d2']
    assert docs.get_topics()['qid'].tolist() == ['q1']
    used = [s['source'] for d in manifest for s in d['sections']]
    assert len(used) == len(set(used)) == 9
    for d in manifest:
        labels = [s['label'] for s in d['sections']]
        assert labels == [qrels[(d['qid'], s['source'])] for s in d['sections']]
        assert sum(lab >= 2 for lab in labels) == (1 if d['docno'] != 'q1-d2' else 0)
        for s in d['sections']:
            assert s['text'] == TEXTS[s['source']]
            assert (s['image'] is None) == (s['kind'] == 'text')
            if s['kind'] != 'text':
                render = render_page if s['kind'] == 'image' else render_table
                with open(s['image'], 'rb') as f:
                    assert f.read() == png(render(s['text']))
    q = docs.get_qrels().set_index('docno')['label']
    assert q.to_dict() == {d['docno']: max(s['label'] for s in d['sections']) for d in manifest}
    sq = docs.get_section_qrels()
    assert len(sq) == 9 and list(sq.columns) == ['qid', 'docno', 'section', 'kind', 'source', 'label']

    # the served sections hide what the document does not show: the text of image and table sections
    corpus = docs.get_corpus()
    for d, sections in zip(manifest, corpus['sections']):
        for s, served in zip(d['sections'], sections):
            assert served['kind'] == s['kind']
            assert served['text'] == (s['text'] if s['kind'] == 'text' else None)
            assert served['image'] == s['image']
    flat = explode_sections(corpus)
    assert len(flat) == 9 and flat['section'].tolist() == [0, 1, 2] * 3
    loaded = docs.sections_loader()(pd.DataFrame({'qid': ['q1'], 'docno': ['q1-d1']}))
    assert loaded['sections'].iloc[0] == corpus['sections'].iloc[1]
    with pytest.raises(UnknownDocnoError):
        docs.sections_loader()(pd.DataFrame({'docno': ['q9-d0']}))


def test_interleaved_documents_are_seeded(collection):
    a = interleaved_documents(collection, relevant_per_topic=2, nonrelevant_per_topic=2, seed=1).manifest()
    only_images = interleaved_documents(collection, relevant_per_topic=2, nonrelevant_per_topic=2, seed=1,
                                        kind_weights={'image': 1.0})
    b = interleaved_documents(collection, relevant_per_topic=2, nonrelevant_per_topic=2, seed=2).manifest()
    assert [[s['source'] for s in d['sections']] for d in a] != [[s['source'] for s in d['sections']] for d in b]
    assert {s['kind'] for d in only_images.manifest() for s in d['sections']} == {'image'}
    with pytest.raises(ValueError, match='kind_weights'):
        interleaved_documents(collection, kind_weights={'video': 1.0})
