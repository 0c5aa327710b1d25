"""The multimodal yes/no reranker (Lychee/GMR template) on the tiny Qwen2.5-VL, and its vl-sft/vl-contrastive
recipes."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pyterrier_llmrank import models
from pyterrier_llmrank.mmyesno import VLYesNo


def _img(seed, h=56, w=56):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype('uint8'))


@pytest.fixture(scope='module')
def vlm(tiny_qwen_vl):
    return models.load_vlm(tiny_qwen_vl.path, device='cpu')


def _frame(n=5):
    return pd.DataFrame({'qid': ['1'] * 3 + ['2'] * (n - 3), 'query': ['a red car'] * 3 + ['two dogs'] * (n - 3),
                         'docno': [f'd{i}' for i in range(n)], 'text': [f'caption {i}' * (i + 1) for i in range(n)],
                         'image': [_img(i, 56 + 14 * i, 70) for i in range(n)]})


def test_prompt_golden(vlm):
    r = VLYesNo(vlm, instruction='Find the picture.')
    text = r.chat('a red car', 'a caption', _img(0), _img(1)).render(vlm.processor)
    assert text == (
        '<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct '
        'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n<Instruct>: Find the '
        'picture.\n<Query>:<|vision_start|><|image_pad|><|vision_end|> a red car\n<Document>:<|vision_start|>'
        '<|image_pad|><|vision_end|> a caption<|im_end|>\n<|im_start|>assistant\n')
    text_only = r.chat('q', 'doc').render(vlm.processor)
    assert '<Instruct>: Find the picture.\n<Query>: q\n<Document>: doc<|im_end|>' in text_only


def test_scores_are_p_yes_and_batch_invariant(vlm):
    df = _frame()
    one = VLYesNo(vlm, batch_size=1)(df).sort_values('docno')
    four = VLYesNo(vlm, batch_size=4)(df).sort_values('docno')
    assert np.allclose(one['score'], four['score'], atol=1e-6)
    assert ((one['score'] > 0) & (one['score'] < 1)).all()
    # p(yes) by hand for the first pair
    r = VLYesNo(vlm)
    item = r.encode_pair('a red car', df['text'][0], None, df['image'][0])
    import torch
    with torch.no_grad():
        logits = vlm.model(**r.model_inputs([item])).logits[0, -1]
    p = torch.softmax(torch.stack([logits[r.no_id], logits[r.yes_id]]), 0)[1].item()
    assert one.set_index('docno').loc['d0', 'score'] == pytest.approx(p, abs=1e-6)
    # the image is read: another image, another score
    other = df.copy()
    other['image'] = [_img(100 + i, 56, 56) for i in range(len(df))]
    assert not np.allclose(VLYesNo(vlm)(other).sort_values('docno')['score'], one['score'])


def test_image_only_text_only_and_query_images(vlm):
    df = _frame(4)
    assert len(VLYesNo(vlm, text_field=None)(df.drop(columns=['text']))) == 4
    assert len(VLYesNo(vlm, image_field=None)(df.drop(columns=['image']))) == 4
    qi = df.assign(query_image=[_img(7)] * 4)
    assert len(VLYesNo(vlm, query_image_field='query_image')(qi)) == 4
    with pytest.raises(ValueError, match='image_field, text_field'):
        VLYesNo(vlm, image_field=None, text_field=None)


def test_image_errors(vlm, tmp_path):
    df = _frame(3)
    df['image'] = [str(tmp_path / 'x.png'), None, None]
    with pytest.raises(ValueError, match=r"column 'image' is missing .* \[1, 2\]"):
        VLYesNo(vlm)(df)
    (tmp_path / 'bad.png').write_text('not an image')
    df['image'] = [str(tmp_path / 'nope.png'), str(tmp_path / 'bad.png'), str(tmp_path / 'bad.png')]
    with pytest.raises(FileNotFoundError, match=r"row 0 of column 'image'.*nope\.png"):
        VLYesNo(vlm)(df)
    df['image'] = [str(tmp_path / 'bad.png')] * 3
    with pytest.raises(ValueError, match=r"row 0 of column 'image'.*bad\.png.*not a readable image"):
        VLYesNo(vlm)(df)


def test_load_vlm_shares_and_sets_pixels(tiny_qwen_vl):
    a = models.load_vlm(tiny_qwen_vl.path, device='cpu')
    assert models.load_vlm(tiny_qwen_vl.path, device='cpu') is a
    assert isinstance(a, models.LoadedVLM) and a.processor.tokenizer is a.tokenizer
    small = models.load_vlm(tiny_qwen_vl.path, device='cpu', min_pixels=28 * 28, max_pixels=28 * 28)
    assert small is not a
    from pyterrier_llmrank.vlm import image_token_count
    assert image_token_count(small.processor, _img(0, 112, 112)) == 1
    assert image_token_count(a.processor, _img(0, 112, 112)) == 16
    pair = models.load_vlm(tiny_qwen_vl.pair, device='cpu')
    assert pair.model is tiny_qwen_vl.model


@pytest.mark.parametrize('recipe', ['vl-contrastive', 'vl-sft'])
def test_recipes_loss_falls_and_loads(tiny_qwen_vl, tmp_path, recipe):
    from pyterrier_llmrank.train import load_reranker, run_recipe
    lines = []
    for g in range(2):
        for i in range(3):
            _img(10 * g + i).save(tmp_path / f'g{g}_{i}.png')
        lines.append(json.dumps({'query': f'query {g}', 'positive': {'image': f'g{g}_0.png', 'text': 'yes'},
                                 'negatives': [{'image': f'g{g}_{i}.png'} for i in (1, 2)]}))
    (tmp_path / 'groups.jsonl').write_text('\n'.join(lines) + '\n')
    out = tmp_path / 'out'
    folder = run_recipe(recipe, {'model': tiny_qwen_vl.path, 'data': str(tmp_path / 'groups.jsonl'),
                                 'output_dir': str(out), 'steps': 8, 'lr': 1e-2, 'warmup_ratio': 0.0,
                                 'batch_size': 2, 'save_steps': 8})
    log = pd.read_csv(out / 'log.csv')
    assert log['loss'].iloc[-1] < log['loss'].iloc[0]
    reranker = load_reranker(folder, device='cpu')
    assert isinstance(reranker, VLYesNo)
