"""GRPO recipes: Rank-R1 (``grpo-rank-r1``) and ProRank (``prorank``) on tiny models and real training data."""
import random
import shutil

import pandas as pd
import pytest
import torch

from pyterrier_llmrank.setwise import RANKR1_SYSTEM
from pyterrier_llmrank.train.grpo import rank_r1_example, rank_r1_reward, run_grpo
from pyterrier_llmrank.train.prorank import (prorank_correct_reward, prorank_format_reward, prorank_loss,
                                             prorank_scores)

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------- rewards

@pytest.mark.parametrize('text, label, expected', [
    ('<think>doc 2 mentions it</think> <answer>[2]</answer>', '[2]', 1.0),
    ('<think>a\nb</think><answer>[2]</answer>', '[2]', 1.0),           # \s* allows no space, DOTALL spans lines
    ('<think>x</think>\n<answer> [2] </answer>', '[2]', 1.0),         # the answer is stripped
    ('<think>x</think> <answer>[3]</answer>', '[2]', 0.0),            # wrong document
    ('<answer>[2]</answer>', '[2]', 0.0),                             # no reasoning: no match
    ('<think>x</think> <answer>2</answer>', '[2]', 0.0),              # label without brackets
    ('<THINK>x</THINK> <answer>[2]</answer>', '[2]', 0.0),            # case-sensitive, as the reference
    ('<think>x</think> text <answer>[2]</answer>', '[2]', 0.0),       # only white space between the tags
    ('<think>x</think> <answer>[1]</answer> <think>y</think> <answer>[2]</answer>', '[2]', 0.0),  # first match
    ('', '[1]', 0.0),
])
def test_rank_r1_reward_golden(text, label, expected):
    assert rank_r1_reward([text], [label]) == [expected]
    # conversational completions (the reference reads completion[0]['content'])
    assert rank_r1_reward([[{'role': 'assistant', 'content': text}]], [label]) == [expected]


@pytest.mark.parametrize('text, label, fmt, correct', [
    ('1', '1', 1.0, 1.0), (' 0\n', '0', 1.0, 1.0), ('0', '1', 1.0, 0.0), ('1.', '1', 0.0, 0.0),
    ('Relevant', '1', 0.0, 0.0), ('10', '1', 0.0, 0.0), ('', '0', 0.0, 0.0),
])
def test_prorank_rewards_golden(text, label, fmt, correct):
    assert prorank_format_reward([text]) == [fmt]
    assert prorank_correct_reward([text], label=[label]) == [correct]


# -------------------------------------------------------------------------------------------------- prompts

def test_rank_r1_example_is_the_inference_prompt(tiny_llama):
    from pyterrier_llmrank import RankR1
    ex = rank_r1_example('what is x?', 'POS', ['N1', 'N2', 'N3'], random.Random(0))
    user = ex['prompt'][1]['content']
    order = [line.split(' ', 1)[1] for line in user.split('\n')[1:5]]
    assert sorted(order) == ['N1', 'N2', 'N3', 'POS']
    assert ex['ground_truth'] == f'[{order.index("POS") + 1}]'
    ranker = RankR1(tiny_llama.pair, device='cpu')
    assert ex['prompt'] == ranker.prompt('what is x?', order).as_dicts()
    assert ex['prompt'][0] == {'role': 'system', 'content': RANKR1_SYSTEM}
    assert user.startswith('Given the query: "what is x?", which of the following documents is most relevant?\n'
                           f'[1] {order[0]}\n[2] {order[1]}\n[3] {order[2]}\n[4] {order[3]}\nAfter completing')
    # seeded: same shuffle again
    assert rank_r1_example('what is x?', 'POS', ['N1', 'N2', 'N3'], random.Random(0)) == ex


def test_prorank_stage1_prompt_tokenizes_back_to_the_inference_input(tiny_llama):
    from pyterrier_llmrank import ProRank
    from pyterrier_llmrank.train.prorank import prorank_pair_examples
    scorer = ProRank(tiny_llama.pair, device='cpu', max_length=64)
    groups = [{'qid': 'q1', 'query': 'does aspirin reduce fever?', 'positive': 'Aspirin lowers fever in adults.',
               'negatives': ['The moon orbits the earth.', 'Unused negative.']}]
    exs = prorank_pair_examples(groups, scorer, negatives_per_positive=1)
    assert [e['label'] for e in exs] == ['1', '0']
    for ex, doc in zip(exs, ['Aspirin lowers fever in adults.', 'The moon orbits the earth.']):
        # trl tokenizes a standard prompt with processing_class(text=...)
        assert tiny_llama.tokenizer(text=[ex['prompt']])['input_ids'][0] == scorer.prompt_ids(groups[0]['query'], doc)


# ----------------------------------------------------------------------------------------------- stage 2 loss

def test_prorank_losses_equal_direct_formulas():
    s = torch.tensor([[2.0, 1.0, -1.0], [0.5, 0.7, 0.1]])
    listwise = -(torch.log(torch.exp(s[:, 0]) / torch.exp(s).sum(-1))).mean()
    assert torch.allclose(prorank_loss(s, 'listwise'), listwise)
    y = torch.tensor([[1.0, 0, 0], [1.0, 0, 0]])
    p = torch.sigmoid(s)
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    assert torch.allclose(prorank_loss(s, 'pointwise'), bce)
    with pytest.raises(ValueError):
        prorank_loss(s, 'pairwise')


@pytest.mark.parametrize('loss', ['listwise', 'pointwise'])
def test_prorank_stage2_loss_goes_down_on_a_fixed_batch(tiny_llama, loss):
    from peft import get_peft_model

    from pyterrier_llmrank import ProRank
    from pyterrier_llmrank.train.common import lora_config
    model = build_tiny_llama_copy(tiny_llama)
    scorer = ProRank((model, tiny_llama.tokenizer), device='cpu', max_length=48, prefix_reuse=False)
    seqs = [scorer.prompt_ids('q one', t) for t in ['relevant text', 'other text', 'third']] + \
        [scorer.prompt_ids('q two', t) for t in ['good answer', 'bad answer', 'noise']]
    torch.manual_seed(0)
    peft = get_peft_model(model, lora_config(r=8, alpha=16, dropout=0.0, target_modules=None, task_type='CAUSAL_LM'))
    peft.train()
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        value = prorank_loss(prorank_scores(peft, seqs, scorer.pad, scorer._pos_id, scorer._neg_id).view(2, 3), loss)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    assert losses[-1] < losses[0] - 0.02, losses


def build_tiny_llama_copy(tiny):
    """A trainable copy of the shared tiny model (the fixture must not be modified)."""
    import copy
    return copy.deepcopy(tiny.model).float()


# --------------------------------------------------------------------------------------------- GRPO machinery

class _EvenFirstToken:
    """A test reward with signal on a random model: 1 when the first generated token id is even. Keeps the
    completions and rewards of its first call (the first step's batch)."""

    __name__ = 'even_first_token'

    def __init__(self):
        self.first = None

    def __call__(self, completion_ids, **kwargs):
        rewards = [1.0 if len(ids) and ids[0] % 2 == 0 else 0.0 for ids in completion_ids]
        if self.first is None:
            self.first = ([ids[0] for ids in completion_ids], rewards)
        return rewards


def _first_token_logprobs(model, tok, prompt, tokens):
    ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)['input_ids']
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
    return logp[torch.tensor(tokens)]


def _grpo_cfg(**kw):
    from pyterrier_llmrank.train.grpo import RANK_R1_DEFAULTS
    cfg = dict(RANK_R1_DEFAULTS, learning_rate=1e-2, batch_size=8, num_generations=8, max_completion_length=1,
               temperature=1.0, beta=0.0, gradient_checkpointing=False, max_steps=4, save_steps=2, logging_steps=1,
               device='cpu', lora_r=8, lora_alpha=16, lora_dropout=0.0)
    cfg.update(kw)
    return cfg


def test_grpo_favours_rewarded_completions_logs_and_resumes(tiny_llama, tmp_path):
    """GRPO steps on a fixed prompt raise the log-probability of the first batch's rewarded completions relative to
    its unrewarded ones; a run interrupted after its step-2 checkpoint and restarted ends with the same adapter and
    the same log as the uninterrupted run."""
    tok = tiny_llama.tokenizer
    prompt = [{'role': 'system', 'content': 'sys'}, {'role': 'user', 'content': 'say something'}]
    examples = [{'prompt': prompt}] * 4
    out = tmp_path / 'run'
    reward = _EvenFirstToken()
    peft = run_grpo(_grpo_cfg(), build_tiny_llama_copy(tiny_llama), tok, examples, [reward], out)
    peft.eval()
    tokens, rewards = reward.first
    assert 0 < sum(rewards) < len(rewards)  # the first group has signal
    delta = (_first_token_logprobs(peft, tok, prompt, tokens)
             - _first_token_logprobs(tiny_llama.model, tok, prompt, tokens))
    good = torch.tensor(rewards) > 0
    assert delta[good].mean() > 0 > delta[~good].mean() and delta[good].mean() - delta[~good].mean() > 0.1, delta
    log = pd.read_csv(out / 'log.csv')
    assert log['step'].tolist() == [1, 2, 3, 4]
    assert {'loss', 'reward', 'reward_std', 'reward/even_first_token', 'kl', 'learning_rate'} <= set(log.columns)
    assert log['reward'].between(0, 1).all()
    weights = {n: p.detach().clone() for n, p in peft.named_parameters() if 'lora_' in n}
    assert any(w.abs().sum() > 0 for n, w in weights.items() if 'lora_B' in n)
    # "interrupt" after step 3: the step-4 checkpoint never got written; the restart resumes from step 2
    shutil.rmtree(out / 'checkpoints' / 'checkpoint-4')
    log.to_csv(tmp_path / 'full_log.csv', index=False)
    peft2 = run_grpo(_grpo_cfg(), build_tiny_llama_copy(tiny_llama), tok, examples, [_EvenFirstToken()], out)
    weights2 = {n: p.detach().clone() for n, p in peft2.named_parameters() if 'lora_' in n}
    assert weights.keys() == weights2.keys()
    for n in weights:
        assert torch.allclose(weights[n], weights2[n], atol=1e-6), n
    log2 = pd.read_csv(out / 'log.csv')
    pd.testing.assert_frame_equal(log.drop(columns=['seconds']), log2.drop(columns=['seconds']), rtol=1e-5)
    # a restart with other settings does not resume these checkpoints
    with pytest.raises(ValueError, match='another configuration.*learning_rate'):
        run_grpo(_grpo_cfg(learning_rate=1e-3), build_tiny_llama_copy(tiny_llama), tok, examples, [_EvenFirstToken()],
                 out)


# ------------------------------------------------------------------------------ defaults vs the reference

#: Rank-R1 GRPO as the reference trains it: ielab/llm-rankers, commit b36517bf17a3956dc56c4c967f972d02390b1cdd,
#: Rank-R1/train_grpo.py (GRPOConfig, LoraConfig; num_train_epochs not set: TrainingArguments' default 3.0) and
#: Rank-R1/create_dataset.py (neg_docs[:19]).
RANK_R1_TRAIN_GRPO = {
    'batch_size': 16,               # batch_size = 16 -> per_device_train_batch_size (2 prompts x 8 generations)
    'num_generations': 8,           # num_generations = 8
    'num_train_epochs': 3,          # not set: TrainingArguments().num_train_epochs == 3.0
    'learning_rate': 1e-5,          # learning_rate=1e-5
    'max_completion_length': 2048,  # max_completion_length=2048
    'gradient_checkpointing': True,  # gradient_checkpointing=True
    'lora_r': 16,                   # LoraConfig(r=16)
    'lora_alpha': 32,               # LoraConfig(lora_alpha=32)
    'lora_dropout': 0.05,           # LoraConfig(lora_dropout=0.05)
    'lora_targets': None,           # LoraConfig without target_modules: peft's default
    'n_negatives': 19,              # create_dataset.py: neg_docs[:19]
}


def test_grpo_rank_r1_defaults_are_the_reference():
    from transformers import TrainingArguments

    from pyterrier_llmrank.train.grpo import GRPO_DEFAULTS, RANK_R1_DEFAULTS, RANK_R1_REFERENCE
    from pyterrier_llmrank.train.prorank import PRORANK_DEFAULTS
    assert TrainingArguments('x').num_train_epochs == RANK_R1_TRAIN_GRPO['num_train_epochs']
    for key, value in RANK_R1_TRAIN_GRPO.items():
        assert RANK_R1_DEFAULTS[key] == value, key
        assert RANK_R1_REFERENCE[key] == value, key
    # the GRPO settings live once: ProRank's stage 1 takes them (but its one answer token)
    stage1 = PRORANK_DEFAULTS['stage1']
    for key, value in GRPO_DEFAULTS.items():
        if key.startswith('lora_'):
            assert PRORANK_DEFAULTS[key] == value
        elif key not in ('max_completion_length', 'gradient_checkpointing'):
            assert stage1[key] == value, key


# ------------------------------------------------------------------------------------------------ the recipes

def _docs_frame(groups, n=1):
    rows = []
    for g in groups[:n]:
        for i, t in enumerate([g['positive']] + g['negatives']):
            rows.append({'qid': g['qid'], 'query': g['query'], 'docno': f'd{i}', 'text': t, 'score': -i, 'rank': i})
    return pd.DataFrame(rows)


def test_grpo_rank_r1_recipe_output_loads_into_rankr1(tiny_llama, tmp_path, data_dir):
    from pyterrier_llmrank import RankR1
    from pyterrier_llmrank.train import load_reranker, run_recipe
    from pyterrier_llmrank.train.data import training_groups
    out = run_recipe('grpo-rank-r1', {
        'model': str(tiny_llama.path), 'dataset': str(data_dir / 'beir-scifact' / 'train'),
        'output_dir': str(tmp_path / 'r1'), 'max_queries': 2, 'n_negatives': 3, 'max_passage_tokens': 16,
        'max_query_tokens': 16, 'batch_size': 2, 'num_generations': 2, 'max_completion_length': 4, 'max_steps': 2,
        'save_steps': 1, 'device': 'cpu', 'gradient_checkpointing': False})
    assert out == str(tmp_path / 'r1' / 'model')
    log = pd.read_csv(tmp_path / 'r1' / 'log.csv')
    assert log['step'].tolist() == [1, 2] and 'reward/rank_r1_reward' in log.columns
    assert (tmp_path / 'r1' / 'adapter' / 'adapter_config.json').exists()
    groups = training_groups(str(data_dir / 'beir-scifact' / 'train'), n_negatives=3, max_queries=1)
    ranker = load_reranker(out, num_child=3, k=2, max_new_tokens=4, device='cpu')  # reranker.json: 16/16 tokens
    assert isinstance(ranker, RankR1) and ranker.max_passage_tokens == 16 and ranker.max_query_tokens == 16
    frame = _docs_frame(groups)
    res = ranker(frame)
    assert len(res) == 4 and sorted(res['rank']) == [0, 1, 2, 3]
    trace, pq = ranker.trace(), ranker.stats.per_query()
    assert pq['sequences'].sum() == len(trace) >= 1  # the model generated, once per traced comparison
    assert pq['unparsable'].sum() == (trace['status'] == 'unparsable').sum()
    # the output order is what the model's answers imply: replaying them through a scripted backend gives it
    from pyterrier_llmrank import ScriptedBackend
    replay = RankR1(ScriptedBackend(trace['output'].tolist(), tokenizer=ranker.tokenizer), num_child=3, k=2,
                    max_passage_tokens=16, max_query_tokens=16, max_new_tokens=4)
    order = lambda df: df.sort_values(['qid', 'rank'])['docno'].tolist()  # noqa: E731
    assert order(replay(frame)) == order(res)


def test_prorank_recipe_both_stages_output_loads_into_prorank(tiny_llama, tmp_path, data_dir):
    from pyterrier_llmrank import ProRank
    from pyterrier_llmrank.train import load_reranker, run_recipe
    from pyterrier_llmrank.train.data import training_groups
    out = run_recipe('prorank', {
        'model': str(tiny_llama.path), 'dataset': str(data_dir / 'beir-scifact' / 'train'),
        'output_dir': str(tmp_path / 'pr'), 'max_queries': 2, 'max_length': 48, 'device': 'cpu',
        'stage1': {'batch_size': 2, 'num_generations': 2, 'max_steps': 2, 'save_steps': 1},
        'stage2': {'n_negatives': 3, 'groups_per_step': 1, 'steps': 3, 'save_steps': 2, 'learning_rate': 1e-3}})
    assert out == str(tmp_path / 'pr' / 'model')
    log1 = pd.read_csv(tmp_path / 'pr' / 'stage1' / 'log.csv')
    assert log1['step'].tolist() == [1, 2]
    assert {'reward/prorank_format_reward', 'reward/prorank_correct_reward'} <= set(log1.columns)
    log2 = pd.read_csv(tmp_path / 'pr' / 'stage2' / 'log.csv')
    assert log2['step'].tolist() == [1, 2, 3] and {'loss', 'accuracy'} <= set(log2.columns)
    groups = training_groups(str(data_dir / 'beir-scifact' / 'train'), n_negatives=3, max_queries=1)
    frame = _docs_frame(groups)
    ranker = load_reranker(out, device='cpu')  # reranker.json: ProRank(max_length=48)
    assert isinstance(ranker, ProRank) and ranker.max_length == 48
    res = ranker(frame)
    # the scores are logit("1") - logit("0") of the saved model on the exact inference inputs
    seqs = [ranker.prompt_ids(q, t) for q, t in zip(frame['query'], frame['text'])]
    with torch.no_grad():
        direct = prorank_scores(ranker.model, seqs, ranker.pad, ranker._pos_id, ranker._neg_id)
    got = res.set_index('docno').loc[frame['docno'], 'score'].to_numpy()
    assert torch.allclose(torch.tensor(got, dtype=torch.float32), direct.float(), atol=1e-4)
    # a restart of the finished command resumes everything: nothing is retrained, the output is the same
    before = (tmp_path / 'pr' / 'stage2' / 'log.csv').read_text()
    assert run_recipe('prorank', {
        'model': str(tiny_llama.path), 'dataset': str(data_dir / 'beir-scifact' / 'train'),
        'output_dir': str(tmp_path / 'pr'), 'max_queries': 2, 'max_length': 48, 'device': 'cpu',
        'stage1': {'batch_size': 2, 'num_generations': 2, 'max_steps': 2, 'save_steps': 1},
        'stage2': {'n_negatives': 3, 'groups_per_step': 1, 'steps': 3, 'save_steps': 2,
                   'learning_rate': 1e-3}}) == out
    assert (tmp_path / 'pr' / 'stage2' / 'log.csv').read_text() == before
