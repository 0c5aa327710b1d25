"""OCR (pyterrier_llmrank.ocr) with the real tesseract binary: a rendered page is read back, and the transformer
follows the toolkit's conventions."""
import difflib

import pandas as pd
import pytest

from pyterrier_llmrank.datasets import render_page
from pyterrier_llmrank.ocr import OCR, ocr_image, tesseract_command

PASSAGE = ('The life cycle of a flea can last anywhere from 20 days to an entire year. It depends on how long the '
           'flea remains in the dormant stage (eggs, larvae, pupa). Outside influences, such as weather, affect the '
           'flea cycle.')


@pytest.fixture(scope='module')
def tesseract():
    try:
        return tesseract_command()
    except FileNotFoundError as e:   # a clear failure, not a skip: make install puts tesseract in place
        pytest.fail(str(e))


@pytest.fixture(scope='module')
def page(tmp_path_factory, tesseract):
    path = tmp_path_factory.mktemp('ocr') / 'page.png'
    render_page(PASSAGE).save(path)
    return str(path)


def similarity(a, b):
    return difflib.SequenceMatcher(None, a.split(), b.split(), autojunk=False).ratio()


def test_ocr_reads_a_rendered_page(page):
    text = ocr_image(page)
    assert similarity(PASSAGE, text) > 0.9, text
    assert '\n' not in text and '  ' not in text


def test_ocr_transformer_conventions(page):
    ocr = OCR()
    frame = pd.DataFrame({'qid': ['1', '1', '2'], 'query': ['q1', 'q1', 'q2'], 'docno': ['a', 'b', 'a'],
                          'score': [3.0, 2.0, 1.0], 'rank': [0, 1, 0],
                          'image': [page, render_page('Hello world'), page],
                          'text': ['stale', 'stale', 'stale'], 'extra': [1, 2, 3]})
    out = ocr(frame)
    assert list(out.columns) == list(frame.columns)
    assert out[['qid', 'docno', 'score', 'rank', 'extra']].equals(frame[['qid', 'docno', 'score', 'rank', 'extra']])
    assert similarity(PASSAGE, out['text'].iloc[0]) > 0.9 and out['text'].iloc[0] == out['text'].iloc[2]
    assert out['text'].iloc[1] == 'Hello world'
    per_query = ocr.stats.per_query().set_index('qid')
    assert per_query.loc['1', 'pages'] == 2 and '2' not in per_query.index   # the shared page is read once
    assert per_query['seconds'].sum() > 0

    empty = ocr(frame.iloc[:0])
    assert empty.empty and 'text' in empty.columns
    with pytest.raises(KeyError, match='image'):
        ocr(frame.drop(columns=['image']))
    with pytest.raises(ValueError, match="'image' is missing"):
        ocr(frame.assign(image=[page, None, page]))
    with pytest.raises(FileNotFoundError, match='no-such.png'):
        ocr(frame.assign(image=['no-such.png'] * 3))
    with pytest.raises(FileNotFoundError, match='apt-get install -y tesseract-ocr'):
        OCR(command='no-such-tesseract-binary')(frame)


def test_pages_ocr_then_a_text_reranker(page, tiny_llama):
    from pyterrier_llmrank import UPR
    frame = pd.DataFrame({'qid': ['1', '1'], 'query': ['flea life cycle'] * 2, 'docno': ['a', 'b'],
                          'score': [2.0, 1.0], 'rank': [0, 1], 'image': [page, render_page('Hello world')]})
    out = (OCR() >> UPR(tiny_llama.pair, kind='causal'))(frame)
    assert sorted(out['docno']) == ['a', 'b'] and out['score'].notna().all() and 'text' in out.columns
