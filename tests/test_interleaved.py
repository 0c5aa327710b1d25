"""Interleaved-document retrieval (pyterrier_llmrank.interleaved): merge modes against direct computations, the
MiniLM section encoder (with OCR for image sections), retrieval, the section reranker, and the end-token pooling of
a tiny Qwen2.5-VL (built here)."""
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from pyterrier_llmrank.datasets import explode_sections, render_page
from pyterrier_llmrank.interleaved import (InterleavedRetriever, SectionReranker, TextSectionEncoder,
                                           VLMEndTokenEncoder, embed_documents, interleaved_index, merge_sections)

SECTIONS_A = ['Photosynthesis turns light, water and carbon dioxide into glucose and oxygen in plant leaves.',
              'The Eiffel Tower in Paris was completed in 1889 for the World Fair.',
              'Volcanoes erupt when magma rises through cracks in the crust of the earth.']
SECTIONS_B = ['Penguins are flightless birds that live in the southern hemisphere.',
              'Bread is baked from flour, water, salt and yeast.']


def text_doc(texts):
    return [{'kind': 'text', 'text': t, 'image': None} for t in texts]


@pytest.fixture(scope='module')
def minilm():
    return TextSectionEncoder('all-minilm-l6-v2', device='cpu')


def test_merge_modes_equal_direct_computations():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, 5)).astype(np.float32)
    owners = np.array([0, 0, 0, 1, 2, 2])
    groups = [vectors[:3], vectors[3:4], vectors[4:]]
    for mode, fn in [('mean', lambda g: g.mean(0)), ('max', lambda g: g.max(0)), ('first', lambda g: g[0])]:
        raw = np.stack([fn(g) for g in groups])
        np.testing.assert_allclose(merge_sections(vectors, owners, 3, mode, normalize=False), raw, rtol=1e-6)
        np.testing.assert_allclose(merge_sections(vectors, owners, 3, mode),
                                   raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5)
    with pytest.raises(ValueError, match='mode'):
        merge_sections(vectors, owners, 3, 'sum')
    with pytest.raises(ValueError, match='no section'):
        merge_sections(vectors, owners, 4)


def test_text_encoder_and_retriever_equal_minilm_directly(minilm):
    docs = pd.DataFrame({'docno': ['a', 'b'], 'sections': [text_doc(SECTIONS_A), text_doc(SECTIONS_B)]})
    emb = embed_documents(minilm, docs)
    direct = minilm.text_encoder.encode_docs(SECTIONS_A + SECTIONS_B)
    np.testing.assert_allclose(emb.vectors, direct, atol=1e-5)
    assert emb.owners.tolist() == [0, 0, 0, 1, 1] and emb.sections.tolist() == [0, 1, 2, 0, 1]
    mean_a = direct[:3].mean(0) / np.linalg.norm(direct[:3].mean(0))
    np.testing.assert_allclose(emb.merged('mean')[0], mean_a, atol=1e-5)

    topics = pd.DataFrame({'qid': ['1', '2'], 'query': ['when was the eiffel tower built', 'flightless birds'],
                           'extra': ['x', 'y']})
    res = InterleavedRetriever(minilm, emb, merge='mean')(topics)
    assert res.groupby('qid')['docno'].first().to_dict() == {'1': 'a', '2': 'b'}
    assert list(res.columns) == ['qid', 'query', 'extra', 'docno', 'score', 'rank']
    q = minilm.text_encoder.encode_queries(topics['query'].tolist())
    np.testing.assert_allclose(res[res.qid == '1'].set_index('docno').loc[['a', 'b'], 'score'],
                               q[0] @ emb.merged('mean').T, atol=1e-5)
    first = InterleavedRetriever(minilm, emb, merge='first', num_results=1)(topics)
    assert len(first) == 2 and first['rank'].tolist() == [0, 0]
    assert InterleavedRetriever(minilm, emb)(topics.iloc[:0]).empty

    # the same vectors in a pyterrier-dr FlexIndex give the same ranking
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        index = interleaved_index(emb, os.path.join(tmp, 'idx'), merge='mean')
        flex = index.np_retriever(num_results=2)(topics.assign(query_vec=list(q)))
        assert flex.sort_values(['qid', 'rank'])['docno'].tolist() == res.sort_values(['qid', 'rank'])['docno'].tolist()


def test_section_reranker_picks_the_matching_section(minilm):
    frame = pd.DataFrame({'qid': ['1', '1'], 'query': ['when was the eiffel tower built'] * 2, 'docno': ['a', 'b'],
                          'score': [2.0, 1.0], 'rank': [0, 1],
                          'sections': [text_doc(SECTIONS_A), text_doc(SECTIONS_B)]})
    out = SectionReranker(minilm)(frame)
    assert out['section'].tolist()[0] == 1
    assert out['docno'].tolist() == ['a', 'b'] and out['score'].tolist() == [2.0, 1.0]
    q = minilm.text_encoder.encode_queries(['when was the eiffel tower built'])[0]
    direct = minilm.text_encoder.encode_docs(SECTIONS_A) @ q
    np.testing.assert_allclose(out['section_scores'].iloc[0], direct, atol=1e-5)
    assert out['section_score'].iloc[0] == pytest.approx(direct.max(), abs=1e-5)
    # max-passage re-ranking: document b first when its best section beats a's
    swapped = frame.assign(query=['penguins live in the south'] * 2)
    reranked = SectionReranker(minilm, rerank_documents=True)(swapped)
    assert reranked['docno'].tolist() == ['b', 'a'] and reranked['rank'].tolist() == [0, 1]
    assert reranked['score'].tolist() == reranked['section_score'].tolist()
    empty = SectionReranker(minilm)(frame.iloc[:0])
    assert empty.empty and {'section', 'section_score'} <= set(empty.columns)
    with pytest.raises(KeyError, match='sections'):
        SectionReranker(minilm)(frame.drop(columns=['sections']))
    with pytest.raises(ValueError, match='no sections'):
        SectionReranker(minilm)(frame.assign(sections=[[], text_doc(SECTIONS_B)]))


def test_image_sections_are_read_by_ocr(minilm, tmp_path):
    from pyterrier_llmrank.ocr import tesseract_command
    try:
        tesseract_command()
    except FileNotFoundError as e:
        pytest.fail(str(e))
    path = tmp_path / 'eiffel.png'
    render_page(SECTIONS_A[1]).save(path)
    sections = [*text_doc(SECTIONS_A[:1]), {'kind': 'image', 'text': None, 'image': str(path)}]
    flat = explode_sections(pd.DataFrame({'docno': ['a'], 'sections': [sections]}))
    vectors = minilm.encode_sections(flat)
    direct = minilm.text_encoder.encode_docs([SECTIONS_A[1]])[0]
    assert float(vectors[1] @ direct) > 0.95          # the OCR text embeds like the original
    pages = minilm.ocr.stats.per_query()['pages'].sum()
    minilm.encode_sections(flat)                       # read once per encoder
    assert minilm.ocr.stats.per_query()['pages'].sum() == pages == 1
    with pytest.raises(ValueError, match='lack their content'):
        minilm.encode_sections(flat.assign(image=None))


# -- end-token pooling with a tiny Qwen2.5-VL -------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny_qwen_vl():
    """A random Qwen2.5-VL (2 text layers, hidden 64, mrope [2,3,3]; 2 vision layers) with SmolLM2's tokenizer plus
    Qwen's vision tokens, and the PIL Qwen2-VL image processor (no torchvision)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from pyterrier_llmrank.testing import smollm2_tokenizer
    tok = smollm2_tokenizer()
    tok.add_special_tokens({'additional_special_tokens': ['<|vision_start|>', '<|image_pad|>', '<|vision_end|>']})
    ids = tok.convert_tokens_to_ids(['<|vision_start|>', '<|image_pad|>', '<|vision_end|>'])
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_parameters={'rope_type': 'default', 'rope_theta': 10000.0, 'mrope_section': [2, 3, 3]},
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[1]),
        vision_start_token_id=ids[0], image_token_id=ids[1], vision_end_token_id=ids[2])
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    processor = SimpleNamespace(tokenizer=tok, image_processor=Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4,
                                                                                        max_pixels=28 * 28 * 16))
    return model, processor


def test_vlm_end_token_pooling_is_the_end_token_state_and_batch_invariant(tiny_qwen_vl, tmp_path):
    model, processor = tiny_qwen_vl
    enc = VLMEndTokenEncoder(model, processor, batch_size=4)
    page = tmp_path / 'p.png'
    render_page('A short page about volcanoes.', width=200).save(page)
    items = [(False, 'a short text'), (True, str(page)), (False, 'a somewhat longer text about the eiffel tower')]
    batched = enc.embed(items)
    singles = np.concatenate([enc.embed([x]) for x in items])
    np.testing.assert_allclose(batched, singles, atol=1e-5)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)

    # direct: the last layer's state at the appended EOS of the unpadded input
    tok = processor.tokenizer
    ids = torch.tensor([tok('a short text' + tok.eos_token, add_special_tokens=False)['input_ids']])
    with torch.no_grad():
        h = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
    np.testing.assert_allclose(batched[0], torch.nn.functional.normalize(h, dim=0).numpy(), atol=1e-5)
    from PIL import Image
    with Image.open(page) as im:
        proc = processor.image_processor(images=[im.convert('RGB')], return_tensors='pt')
    n = int(proc['image_grid_thw'][0].prod()) // 4
    ids = torch.tensor([tok('<|vision_start|>' + '<|image_pad|>' * n + '<|vision_end|>' + tok.eos_token,
                            add_special_tokens=False)['input_ids']])
    with torch.no_grad():
        h = model(input_ids=ids, pixel_values=proc['pixel_values'], image_grid_thw=proc['image_grid_thw'],
                  mm_token_type_ids=(ids == model.config.image_token_id).long(),
                  output_hidden_states=True).hidden_states[-1][0, -1]
    np.testing.assert_allclose(batched[1], torch.nn.functional.normalize(h, dim=0).numpy(), atol=1e-5)

    # as a section encoder: sections of a document merged, queries encoded as texts
    docs = pd.DataFrame({'docno': ['d'], 'sections': [[{'kind': 'text', 'text': 'a short text', 'image': None},
                                                        {'kind': 'image', 'text': None, 'image': str(page)}]]})
    emb = embed_documents(enc, docs)
    np.testing.assert_allclose(emb.vectors, batched[:2], atol=1e-5)
    np.testing.assert_allclose(emb.merged('first')[0], batched[0], atol=1e-5)
    res = InterleavedRetriever(enc, emb)(pd.DataFrame({'qid': ['1'], 'query': ['volcano']}))
    assert res['docno'].tolist() == ['d']
    with pytest.raises(TypeError, match='image_processor'):
        VLMEndTokenEncoder(model, SimpleNamespace(tokenizer=processor.tokenizer))
