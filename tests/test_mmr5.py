"""MM-R5 on the tiny Qwen2.5-VL: the reference's prompt (golden), parse/repair, rewards, windows, the recipe."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pyterrier_llmrank import models
from pyterrier_llmrank.backends import ScriptedBackend
from pyterrier_llmrank.mmr5 import MMR5, mmr5_chat, parse_mmr5_answer
from pyterrier_llmrank.train.mmr5 import mmr5_format_reward, mmr5_rerank_reward, sft_target


def _img(seed, h=56, w=56):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype('uint8'))


@pytest.fixture(scope='module')
def vlm(tiny_qwen_vl):
    return models.load_vlm(tiny_qwen_vl.path, device='cpu')


def _frame(images, qid='1', query='what is shown?'):
    return pd.DataFrame({'qid': qid, 'query': query, 'docno': [f'd{i}' for i in range(len(images))],
                         'image': images, 'rank': range(len(images)), 'score': -np.arange(len(images), dtype=float)})


def test_prompt_golden(vlm):
    text = mmr5_chat('Who wrote it?', [_img(0), _img(1)]).render(vlm.processor)
    assert text == (
        '<|im_start|>system\nA conversation between User and Assistant. The user asks a question, and the Assistant '
        'solves it. The assistant first thinks about the reasoning process in the mind and then provides the user '
        'with the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> '
        '</answer> tags, respectively, i.e., <think> reasoning process here </think><answer> answer here </answer>'
        '<|im_end|>\n<|im_start|>user\nPlease rank the following images according to their relevance to the '
        'question. Provide your response in the format: <think>your reasoning process here</think><answer>'
        '[image_id_1, image_id_2, ...]</answer> where the numbers in the list represent the ranking order of '
        "images'id from most to least relevant. Before outputting the answer, you need to analyze each image and "
        'provide your analysis process.For example: <think>Image 1 shows the most relevant content because...'
        '</think><answer>[id_most_relevant, id_second_relevant, ...]</answer>\nThe question is: Who wrote it?\n\n'
        'There are 2 images, id from 1 to 2, Image ID to image mapping:\n\nImage 1: <|vision_start|><|image_pad|>'
        '<|vision_end|>\nImage 2: <|vision_start|><|image_pad|><|vision_end|><|im_end|>\n<|im_start|>assistant\n')


@pytest.mark.parametrize('text,n,order,status', [
    ('<think>x</think><answer>[2, 3, 1]</answer>', 3, [1, 2, 0], 'ok'),
    ('<answer>[3]</answer>', 3, [2, 0, 1], 'repaired'),              # missing ids appended in increasing order
    ('<answer>[5, 2, 0]</answer>', 3, [1, 0, 2], 'repaired'),        # out of range dropped
    ('<answer>[2, 2, 1]</answer>', 3, [1, 0, 2], 'repaired'),        # a duplicate kept at its first place
    ('<answer>[a, 1]</answer>', 3, [0, 1, 2], 'unparsable'),         # int() fails: unchanged (reference's except)
    ('no answer at all', 3, [0, 1, 2], 'unparsable'),
    ('<answer>[2,\n1]</answer>', 3, [0, 1, 2], 'unparsable'),        # the pattern does not cross lines
    ('<answer>[]</answer>', 2, [0, 1], 'unparsable'),
])
def test_parse_repair(text, n, order, status):
    assert parse_mmr5_answer(text, n) == (order, status)


def test_rerank_reward_hand_worked():
    ideal2 = 1 + 1 / 8
    got = mmr5_rerank_reward(['<answer>[2, 1, 3]</answer>', '<answer>[3, 1]</answer>', 'nothing',
                              [{'role': 'assistant', 'content': '<answer>[1, 3, 2]</answer>'}], '<answer>[x]</answer>'],
                             [([1, 3], 3), ([1, 2], 3), ([1], 3), json.dumps([[1, 3], 3]), ([1], 2)])
    assert got == pytest.approx([(1 / 8 + 1 / 27) / ideal2, (1 / 8) / ideal2, 0.0, 1.0, 0.0])


def test_format_reward_hand_worked():
    sol = [([1], 3)] * 6
    got = mmr5_format_reward(['<think>a\nb</think> <answer>[2, 1, 3]</answer>',   # full: 1 * 1
                              '<think>a</think><answer>[2, 1]</answer>',            # len (3-1)/3, range 1
                              '<think>a</think><answer>[2, 7, 1, 3]</answer>',      # len 2/3, range 3/4
                              '<think>a</think><answer>[3]</answer>',              # one id: not a list, 0
                              '<answer>[1, 2, 3]</answer>',                         # no think: 0
                              '<think>a</think><answer>[1,2,3,1,2,3,1]</answer>'],  # len (3-4)/3, range 1
                             sol)
    assert got == pytest.approx([1.0, 2 / 3, 2 / 3 * 3 / 4, 0.0, 0.0, -1 / 3])


def test_sft_target():
    assert sft_target({'images': [1, 2, 3, 4], 'positives': [3, 1]}) == (
        '<think>Image 3, 1 show content relevant to the question; the other images do not.</think>'
        '<answer>[3, 1, 2, 4]</answer>')


def test_windows_trace_and_counts():
    answers = ['<think>w1</think><answer>[2, 1]</answer>', '<answer>[2]</answer>', 'oops']
    backend = ScriptedBackend(answers)
    r = MMR5(backend, window=2, step=1, sample=True)
    out = r(_frame([_img(i) for i in range(3)]))
    # windows [1, 3) then [0, 2): (d1, d2) -> d2 d1; then (d0, d2) answered [2] -> d2 d0 (repaired); 'oops' unused
    assert out['docno'].tolist() == ['d2', 'd0', 'd1']
    trace = r.trace()
    assert trace['status'].tolist() == ['ok', 'repaired']
    assert trace['output'].iloc[0] == answers[0]
    assert backend.settings[0]['temperature'] == 0.3
    assert '\nImage 2: <image>' in backend.prompts[0].render()
    stats = r.stats.per_query()
    assert stats['repaired'].sum() == 1 and stats['sequences'].sum() == 2


def test_tiny_vlm_runs_and_checks_images(vlm, tmp_path):
    r = MMR5(vlm, max_new_tokens=4, window=3, step=2)
    paths = []
    for i in range(3):
        p = tmp_path / f'p{i}.png'
        _img(i, 60 + 8 * i, 70).save(p)
        paths.append(str(p))
    out = r(_frame(paths))
    assert sorted(out['docno']) == ['d0', 'd1', 'd2'] and out['rank'].tolist() == [0, 1, 2]
    assert r.stats.per_query()['generated_tokens'].sum() > 0
    bad = _frame(paths[:2] + [str(tmp_path / 'missing.png')])
    with pytest.raises(FileNotFoundError, match=r"row 2 of column 'image'.*missing\.png"):
        r(bad)
    from pyterrier.validate import InputValidationError
    with pytest.raises(InputValidationError, match="missing_columns=\\['image'\\]"):
        r(_frame(paths).drop(columns=['image']))
    with pytest.raises(ValueError, match=r"column 'image' is missing .* \[1\]"):
        r(_frame([paths[0], None]))


def test_recipe_sft_then_one_grpo_step(tiny_qwen_vl, tmp_path):
    from pyterrier_llmrank.train import load_reranker, run_recipe
    lines = []
    for q in range(2):
        names = []
        for i in range(3):
            _img(10 * q + i).save(tmp_path / f'q{q}_{i}.png')
            names.append(f'q{q}_{i}.png')
        lines.append(json.dumps({'query': f'query {q}', 'images': names, 'positives': [2]}))
    (tmp_path / 'train.jsonl').write_text('\n'.join(lines) + '\n')
    out = tmp_path / 'out'
    folder = run_recipe('mm-r5', {'model': tiny_qwen_vl.path, 'data': str(tmp_path / 'train.jsonl'),
                                  'output_dir': str(out), 'sft_steps': 6, 'sft_grad_accum': 1, 'sft_lr': 1e-2,
                                  'sft_warmup_ratio': 0.0, 'max_steps': 1, 'max_completion_length': 8,
                                  'gradient_checkpointing': False, 'gradient_accumulation_steps': 1,
                                  'logging_steps': 1, 'save_steps': 1})
    sft = pd.read_csv(out / 'sft' / 'log.csv')
    assert sft['loss'].iloc[-1] < sft['loss'].iloc[0]
    grpo = pd.read_csv(out / 'log.csv')
    assert grpo['step'].tolist() == [1]
    assert {'reward/mmr5_rerank_reward', 'reward/mmr5_format_reward'} <= set(grpo.columns)
    reranker = load_reranker(folder, max_new_tokens=2, device='cpu')
    assert isinstance(reranker, MMR5)
