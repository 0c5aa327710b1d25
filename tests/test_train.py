"""Training recipes (pyterrier_llmrank.train): data, losses against the reference formulas, configs and CLI,
loss going down on a fixed batch, resume == uninterrupted run, and the saved outputs loading into their
rerankers with the scores the trained weights give. Tiny random Llama models; SciFact train for the data."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from pyterrier_llmrank import DeARPointwise, YesNo
from pyterrier_llmrank.train import RECIPES, get_recipe
from pyterrier_llmrank.train.common import (CSVLogger, apply_overrides, latest_checkpoint, load_checkpoint,
                                            load_config, read_log, save_checkpoint)
from pyterrier_llmrank.train.recipe import load_reranker, reranker_class, resolve_config
from pyterrier_llmrank.train.data import LAST_STATS, training_groups
from pyterrier_llmrank.train.distill import DISTILL_DEFAULTS, DeARStudent, distill_loss, rank_net
from pyterrier_llmrank.train.yesno import YESNO_DEFAULTS, YesNoStudent, infonce_loss, sft_loss

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / 'examples' / 'train'


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope='module')
def scifact_train(data_dir):
    from pyterrier_llmrank import datasets
    return datasets.load(data_dir / 'beir-scifact' / 'train')


@pytest.fixture(scope='module')
def tiny_padded(tiny_llama, tmp_path_factory):
    """tiny_llama saved with no pad_token_id in its config: DeAR then reads the 'padded' position."""
    folder = tmp_path_factory.mktemp('tiny_nopad')
    model = tiny_llama.model
    cfg_pad = model.config.pad_token_id
    model.config.pad_token_id = None
    try:
        model.save_pretrained(folder)
    finally:
        model.config.pad_token_id = cfg_pad
    tiny_llama.tokenizer.save_pretrained(folder)
    return str(folder)


# ------------------------------------------------------------------------------------------------ data

def test_training_groups(scifact_train):
    groups = training_groups(scifact_train, n_negatives=5, max_queries=6, depth=50)
    qrels = scifact_train.get_qrels()
    rel = {(q, d) for q, d, l in zip(qrels['qid'], qrels['docno'], qrels['label']) if l > 0}
    topics = scifact_train.get_topics()
    first = [q for q in topics['qid'] if q in set(qrels['qid'])][:6]
    assert sorted({g['qid'] for g in groups}, key=first.index) == first
    assert len(groups) == sum(1 for q, d in rel if q in first) == LAST_STATS['groups']
    bm25 = scifact_train.bm25(num_results=50)(topics[topics['qid'].isin(first)])
    pool = {q: set(g['docno']) for q, g in bm25.groupby('qid')}
    texts = dict(zip(*[[d['docno'] for d in scifact_train.get_corpus_iter()],
                       [d['text'] for d in scifact_train.get_corpus_iter()]]))
    for g in groups:
        assert (g['qid'], g['positive_docno']) in rel and g['positive'] == texts[g['positive_docno']]
        assert len(g['negative_docnos']) == 5 == len(set(g['negative_docnos']))
        assert all((g['qid'], d) not in rel and d in pool[g['qid']] for d in g['negative_docnos'])
        assert g['negatives'] == [texts[d] for d in g['negative_docnos']]
    # deterministic, and a group does not depend on max_queries
    assert training_groups(scifact_train, n_negatives=5, max_queries=6, depth=50) == groups
    assert training_groups(scifact_train, n_negatives=5, max_queries=2, depth=50) == groups[:sum(
        g['qid'] in first[:2] for g in groups)]
    other = training_groups(scifact_train, n_negatives=5, max_queries=6, depth=50, seed=7)
    assert [g['negative_docnos'] for g in other] != [g['negative_docnos'] for g in groups]
    rnd = training_groups(scifact_train, n_negatives=5, max_queries=6, negatives='random')
    assert all((g['qid'], d) not in rel for g in rnd for d in g['negative_docnos'])
    assert [g['negative_docnos'] for g in rnd] != [g['negative_docnos'] for g in groups]
    with pytest.raises(ValueError, match='negatives'):
        training_groups(scifact_train, n_negatives=1, negatives='dense')


# ---------------------------------------------------------------------------------------------- losses

def test_distill_loss_matches_reference_formula():
    torch.manual_seed(0)
    s, t = torch.randn(3, 4), torch.randn(3, 4) * 3
    T, alpha = 2.0, 0.1
    ce = -torch.log_softmax(s, 1)[:, 0].mean()
    kl = sum((F.softmax(t[b] / T, 0) * (F.log_softmax(t[b] / T, 0) - F.log_softmax(s[b] / T, 0))).sum()
             for b in range(3)) / 3 * T ** 2
    total, parts = distill_loss(s, t, 'ce', T, alpha)
    assert torch.allclose(total, (1 - alpha) * ce + alpha * kl, atol=1e-6)
    assert parts['main'] == pytest.approx(float(ce)) and parts['kl'] == pytest.approx(float(kl))
    # RankNet of rank_loss.py: pairs i < j, soft target sigmoid(y_i - y_j) with y = (1, 0, 0, 0)
    y = [1.0, 0.0, 0.0, 0.0]
    terms = []
    for b in range(3):
        for i in range(4):
            for j in range(i + 1, 4):
                p = 1 / (1 + math.exp(-(y[i] - y[j])))
                x = float(s[b, i] - s[b, j])
                terms.append(-(p * math.log(1 / (1 + math.exp(-x))) + (1 - p) * math.log(1 / (1 + math.exp(x)))))
    ranknet = sum(terms) / len(terms)
    assert float(distill_loss(s, None, 'ranknet')[0]) == pytest.approx(ranknet, rel=1e-5)
    both = distill_loss(s, t, 'ce+ranknet', T, alpha)[0]
    assert float(both) == pytest.approx(float((1 - alpha) * (0.5 * ranknet + 0.5 * ce) + alpha * kl), rel=1e-5)
    assert float(distill_loss(s, t, 'ranknet-teacher', T, 0.0)[0]) == pytest.approx(float(rank_net(s, t)))
    with pytest.raises(ValueError, match='teacher'):
        distill_loss(s, None, 'listnet-teacher')


def test_yesno_losses():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 10), torch.tensor([1, 0, 0, 0])
    expected = -(F.log_softmax(logits, 1)[0, 3] + F.log_softmax(logits, 1)[1:, 5].sum()) / 4
    assert torch.allclose(sft_loss(logits, labels, yes_id=3, no_id=5), expected)
    rel = torch.randn(2, 4)
    assert torch.allclose(infonce_loss(rel, 0.5), -torch.log_softmax(rel / 0.5, 1)[:, 0].mean())


def test_judged_negatives_and_qids(data_dir):
    from pyterrier_llmrank import datasets
    dl19 = datasets.load(data_dir / 'msmarco-passage-trec-dl-2019')
    qrels = dl19.get_qrels()
    label = {(q, d): int(x) for q, d, x in zip(qrels['qid'].astype(str), qrels['docno'].astype(str), qrels['label'])}
    qids = dl19.get_topics()['qid'].astype(str).tolist()[:2]
    groups = training_groups(dl19, n_negatives=3, negatives='judged', qids=qids)
    stats = dict(LAST_STATS)
    assert {g['qid'] for g in groups} == set(qids) and stats['queries'] == 2
    assert stats['judged_without_text'] > 0  # candidate-only collection: many judged passages have no text
    texts = dict(zip([g['positive_docno'] for g in groups], [g['positive'] for g in groups]))
    assert all(texts.values())
    for g in groups:
        pos = label[g['qid'], g['positive_docno']]
        assert pos > 0 and len(g['negative_docnos']) == 3 and len(set(g['negative_docnos'])) == 3
        # judged lower than the positive (label-1 positives: judged 0), never the positive itself
        assert all(label[g['qid'], d] < pos for d in g['negative_docnos'])
    assert training_groups(dl19, n_negatives=3, negatives='judged', qids=qids) == groups  # deterministic
    with pytest.raises(ValueError, match='not topics'):
        training_groups(dl19, n_negatives=1, qids=['no-such-topic'])


def test_group_by_length_order():
    from pyterrier_llmrank.train.loop import batch_indices, epoch_order
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 0]
    plain = epoch_order(10, 42, 0)
    grouped = epoch_order(10, 42, 0, lengths, 5)
    assert sorted(grouped) == list(range(10))  # a permutation of all the groups
    for start in (0, 5):  # the same groups per window as the plain order, longest first
        assert set(grouped[start:start + 5]) == set(plain[start:start + 5])
        assert [lengths[i] for i in grouped[start:start + 5]] == sorted((lengths[i] for i in plain[start:start + 5]),
                                                                        reverse=True)
    assert epoch_order(10, 42, 1, lengths, 5) != grouped  # a new order each pass
    steps = [batch_indices(10, 42, s, 0, 2, 1, lengths, 10) for s in range(5)]
    assert [i for b in steps for i in b] == epoch_order(10, 42, 0, lengths, 10)
    assert batch_indices(10, 42, 1, 0, 2, 1) == plain[2:4]  # without lengths: the plain order


# --------------------------------------------------------------------------------------- configs, CLI

def test_example_configs_and_overrides(tmp_path):
    names = {p.stem for p in EXAMPLES.glob('*.yaml')}
    assert {'distill', 'sft', 'contrastive'} <= names
    for recipe, defaults in [('distill', DISTILL_DEFAULTS), ('sft', YESNO_DEFAULTS), ('contrastive', YESNO_DEFAULTS)]:
        cfg = resolve_config(load_config(EXAMPLES / f'{recipe}.yaml'), recipe, defaults)
        assert cfg['model'] == 'smollm2-135m-instruct' and cfg['dataset'] == 'beir-scifact/train'
    cfg = apply_overrides({'lora': {'r': 8}, 'steps': 3}, ['steps=10', 'lora.alpha=4', 'output_dir=/x', 'tau=0.5'])
    assert cfg == {'lora': {'r': 8, 'alpha': 4}, 'steps': 10, 'output_dir': '/x', 'tau': 0.5}
    with pytest.raises(ValueError, match='unknown key'):
        resolve_config({'output_dir': '/x', 'stepz': 3}, 'sft', YESNO_DEFAULTS)
    assert set(RECIPES) == {'distill', 'sft', 'contrastive', 'upr', 'grpo-rank-r1', 'prorank', 'idcm', 'mm-r5',
                            'vl-sft', 'vl-contrastive'}
    from pyterrier_llmrank.train.qlm import QLM_DEFAULTS
    cfg = resolve_config(load_config(EXAMPLES / 'dl19-reranker.yaml'), 'upr', QLM_DEFAULTS)
    assert cfg['dataset'] == 'msmarco-passage-trec-dl-2019' and cfg['negatives'] == 'judged'
    with pytest.raises(ValueError, match='unknown recipe'):
        get_recipe('dpo')


def test_csv_logger_resume(tmp_path):
    log = CSVLogger(tmp_path / 'log.csv', ['loss'])
    for step in (1, 2, 3):
        log.log(step, loss=float(step))
    log = CSVLogger(tmp_path / 'log.csv', resume_step=2)
    log.log(3, loss=9.0)
    assert [(r['step'], r['loss']) for r in log.read()] == [('1', '1'), ('2', '2'), ('3', '9')]


# ------------------------------------------------------------------------------------------ training

def _losses(folder):
    return [float(r['loss']) for r in read_log(Path(folder) / 'log.csv')]


def _base(model, out, **kw):
    cfg = dict(model=model, dataset='beir-scifact/train', output_dir=str(out), max_queries=1, n_negatives=3,
               steps=8, save_steps=4, lr=1e-2, warmup_ratio=0.0, verbose=False, max_text_tokens=48)
    cfg.update(kw)
    return cfg


PAIRS = pd.DataFrame({
    'qid': ['1', '1', '1', '2', '2'],
    'query': ['what causes cancer'] * 3 + ['capital of france'] * 2,
    'docno': ['d1', 'd2', 'd3', 'd4', 'd5'],
    'text': ['Mutations in oncogenes cause tumours.', 'Paris is the capital of France.', '',
             'Paris is the capital of France.', 'Cells divide.'],
    'extra': [1, 2, 3, 4, 5]})


@pytest.mark.parametrize('recipe', ['sft', 'contrastive'])
def test_yesno_recipe(recipe, tiny_llama, tmp_path):
    from pyterrier_llmrank import models
    shared = models.load_causal_lm(tiny_llama.path, device='cpu', dtype='float32')  # a reranker's copy
    before = {k: v.clone() for k, v in shared.model.state_dict().items()}
    out = get_recipe(recipe)(_base(tiny_llama.path, tmp_path / recipe))
    # training worked on a private copy: the shared handle is untouched (same weights, no adapter layers)
    after = shared.model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    losses = _losses(out)
    # one group (the first topic has one relevant document): the same batch every step
    assert len(losses) == 8 and losses[-1] < 0.9 * losses[0]
    reranker = YesNo(out, max_text_tokens=48, device='cpu')
    assert type(load_reranker(out, device='cpu')) is YesNo
    res = reranker(PAIRS)
    # the scores are those of the trained weights: rebuild the student from the last checkpoint
    cfg = resolve_config(_base(tiny_llama.path, tmp_path / recipe), recipe, YESNO_DEFAULTS)
    torch.manual_seed(123)
    student = YesNoStudent(cfg['model'], cfg['lora'], max_text_tokens=48)
    load_checkpoint(latest_checkpoint(out), student.model)
    student.model.eval()
    with torch.no_grad():
        r = student.relevance(list(zip(PAIRS['query'], PAIRS['text'])))
    expected = -F.softplus(-r).numpy()
    got = res.set_index('docno').loc[PAIRS['docno'], 'score'].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    base = YesNo(tiny_llama.pair, max_text_tokens=48, device='cpu')(PAIRS)
    assert not np.allclose(base.set_index('docno').loc[PAIRS['docno'], 'score'], got, atol=1e-3)


def test_upr_recipe(tiny_llama, tmp_path):
    from pyterrier_llmrank import UPR
    from pyterrier_llmrank.causal import target_logprob_tensor, target_logprobs
    from pyterrier_llmrank.train.qlm import QLM_DEFAULTS, QLMStudent
    kw = dict(max_passage_tokens=48, group_by_length=True, batch_size=2, max_queries=2, n_negatives=2, steps=6,
              save_steps=3)
    cfg_in = _base(tiny_llama.path, tmp_path / 'upr', **kw)
    del cfg_in['max_text_tokens']
    out = get_recipe('upr')(cfg_in)
    rows = read_log(Path(out) / 'log.csv')
    assert len(rows) == 6 and {'infonce', 'lm', 'margin'} <= set(rows[0])
    assert float(rows[-1]['margin']) > float(rows[0]['margin'])  # the positive's query likelihood pulls ahead
    reranker = load_reranker(out, device='cpu')
    assert type(reranker) is UPR and reranker.kind == 'causal' and reranker.max_passage_tokens == 48
    res = reranker(PAIRS)
    # the scores are those of the trained weights, computed as in training
    cfg = resolve_config(cfg_in, 'upr', QLM_DEFAULTS)
    student = QLMStudent(cfg['model'], cfg['lora'], max_passage_tokens=48)
    load_checkpoint(latest_checkpoint(out), student.model)
    student.model.eval()
    with torch.no_grad():
        s, _ = student.scores(list(zip(PAIRS['query'], PAIRS['text'])))
    got = res.set_index('docno').loc[PAIRS['docno'], 'score'].to_numpy()
    np.testing.assert_allclose(got, s.numpy(), rtol=1e-4, atol=1e-4)
    base = UPR(tiny_llama.pair, kind='causal', max_passage_tokens=48, device='cpu')(PAIRS)
    assert not np.allclose(base.set_index('docno').loc[PAIRS['docno'], 'score'], got, atol=1e-3)
    # the differentiable form equals the inference form
    items = [student.scorer.pair_ids(q, t) for q, t in zip(PAIRS['query'], PAIRS['text'])]
    args = ([c for c, _ in items], [t for _, t in items], student.scorer.pad)
    with torch.no_grad():
        np.testing.assert_allclose(target_logprob_tensor(student.model, *args).numpy(),
                                   target_logprobs(student.model, *args), rtol=1e-5, atol=1e-5)


def test_resume_equals_uninterrupted(tiny_llama, tmp_path):
    from safetensors.torch import load_file
    full = get_recipe('sft')(_base(tiny_llama.path, tmp_path / 'full', max_queries=3, steps=6, save_steps=2))
    part = _base(tiny_llama.path, tmp_path / 'part', max_queries=3, steps=6, save_steps=2)
    get_recipe('sft')(dict(part, stop_after=3))  # interrupted after step 3 (checkpoint at 3)
    assert not (tmp_path / 'part' / 'adapter_model.safetensors').exists()
    assert len(_losses(tmp_path / 'part')) == 3
    resumed = get_recipe('sft')(part)
    assert _losses(resumed) == _losses(full)
    a, b = load_file(Path(full) / 'adapter_model.safetensors'), load_file(Path(resumed) / 'adapter_model.safetensors')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match='another configuration'):
        get_recipe('sft')(dict(part, lr=1e-3))


@pytest.mark.parametrize('pooling_model', ['last', 'padded'])
def test_distill_recipe(pooling_model, tiny_llama, tiny_padded, tmp_path):
    model = tiny_llama.path if pooling_model == 'last' else tiny_padded
    out_dir = tmp_path / 'distill'
    if pooling_model == 'last':  # teacher: a scorer transformer of the toolkit (UPR on the tiny LM)
        teacher = {'teacher': {'class': 'pyterrier_llmrank.upr:UPR', 'kwargs': {'model': tiny_llama.path}}}
    else:  # teacher: a stored score file
        groups = training_groups('beir-scifact/train', n_negatives=3, max_queries=1)
        lines = [f"{g['qid']}\t{d}\t{float(i)}\n" for g in groups
                 for i, d in enumerate(reversed([g['positive_docno'], *g['negative_docnos']]))]
        (tmp_path / 'scores.tsv').write_text(''.join(lines))
        teacher = {'teacher_scores': str(tmp_path / 'scores.tsv')}
    cfg = _base(model, out_dir, max_passage_tokens=40, batch_size=1, grad_accum=1, **teacher)
    del cfg['max_text_tokens']
    out = get_recipe('distill')(cfg)
    losses = _losses(out)
    assert len(losses) == 8 and losses[-1] < 0.9 * losses[0]
    assert (Path(out) / 'teacher_scores.tsv').exists() == (pooling_model == 'last')
    reranker = load_reranker(out, device='cpu')
    assert type(reranker) is DeARPointwise and reranker.pooling == pooling_model
    res = reranker(PAIRS)
    full = resolve_config(cfg, 'distill', DISTILL_DEFAULTS)
    torch.manual_seed(321)
    student = DeARStudent(full['model'], full['lora'], max_passage_tokens=40)
    load_checkpoint(latest_checkpoint(out), student.model)
    student.model.eval()
    with torch.no_grad():
        expected = student.scores(list(zip(PAIRS['query'], PAIRS['text']))).numpy()
    got = res.set_index('docno').loc[PAIRS['docno'], 'score'].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_cli(tiny_llama, tmp_path):
    from pyterrier_llmrank.train.__main__ import main
    cfg = tmp_path / 'c.yaml'
    cfg.write_text(f'model: {tiny_llama.path}\ndataset: beir-scifact/train\nmax_queries: 1\nn_negatives: 1\n'
                   f'steps: 5\nverbose: false\nmax_text_tokens: 32\n')
    assert main(['contrastive', '--config', str(cfg), f'output_dir={tmp_path / "o"}', 'steps=2']) == 0
    assert len(_losses(tmp_path / 'o')) == 2 and (tmp_path / 'o' / 'adapter_config.json').exists()


# ------------------------------------------------------------------------------ defaults vs the references

#: DeAR stage 1 as the reference trains it: DataScienceUIBK/DeAR-Reranking, commit
#: c31c73985f0f7546ef7598a3c8815ef6594a6190, train_pointwise.sh (flags), pointwise_reranker/arguments.py (defaults
#: the script keeps) and pointwise_reranker/modeling.py (LoraConfig of DistillRerankerModel.build).
DEAR_TRAIN_POINTWISE = {
    'n_negatives': 1,              # train_pointwise.sh --train_n_passages 2 (1 positive + 1 negative)
    'batch_size': 2,               # train_pointwise.sh --per_device_train_batch_size 2
    'grad_accum': 2,               # train_pointwise.sh --gradient_accumulation_steps 2
    'lr': 1e-4,                    # train_pointwise.sh --learning_rate 1e-4
    'temperature': 2.0,            # train_pointwise.sh --temperature 2
    'alpha': 0.1,                  # train_pointwise.sh --alpha 0.1
    'max_query_tokens': 32,        # train_pointwise.sh --q_max_len 32
    'max_passage_tokens': 196,     # train_pointwise.sh --p_max_len 196
    'loss': 'ce',                  # arguments.py loss_type = "softmax_ce"
    'warmup_ratio': 0.1,           # arguments.py ModelTrainingArguments.warmup_ratio = 0.1
    'max_grad_norm': 1.0,          # arguments.py ModelTrainingArguments.max_grad_norm = 1.0
    'lora': {'r': 32, 'alpha': 64, 'dropout': 0.1,  # modeling.py LoraConfig(r=32, lora_alpha=64, lora_dropout=0.1)
             'target_modules': ['q_proj', 'v_proj', 'o_proj', 'down_proj', 'up_proj', 'gate_proj']},
}


def test_distill_defaults_are_the_reference():
    from pyterrier_llmrank.train.distill import DEAR_REFERENCE
    cfg = resolve_config({'output_dir': '/x'}, 'distill', DISTILL_DEFAULTS)
    for key, value in DEAR_TRAIN_POINTWISE.items():
        if key == 'lora':
            assert {k: cfg['lora'][k] for k in value} == value
        else:
            assert cfg[key] == value, key
            assert DEAR_REFERENCE[key] == value, key


# The yes/no recipes (sft, contrastive) and ProRank have no public reference training code (Dai et al. 2025 and
# Li et al. 2025 publish none): their defaults are documented choices, nothing to compare.


# ------------------------------------------------------------------------------------ loading safely

def test_load_reranker_refuses_classes_outside_the_toolkit(tmp_path):
    import json
    folder = tmp_path / 'evil'
    folder.mkdir()
    marker = tmp_path / 'ran'
    (folder / '__main__.py').write_text(f'open({str(marker)!r}, "w").write("pwned")\n')
    for name in ('runpy:run_path', 'os:system', 'os.system', 'pyterrier_llmrank.train.common:write_json',
                 'pyterrier_llmrank.os', 'builtins:eval', 'NotAReranker', None):
        (folder / 'reranker.json').write_text(json.dumps({'class': name, 'kwargs': {}}))
        with pytest.raises(ValueError, match='not one of the toolkit') as err:
            load_reranker(str(folder))
        assert str(folder / 'reranker.json') in str(err.value) and repr(name) in str(err.value)
    assert not marker.exists()  # nothing of the folder ran
    # the toolkit's names, and the spellings of older folders, are accepted
    assert reranker_class('YesNo') is YesNo and reranker_class('DeARPointwise') is DeARPointwise
    assert reranker_class('pyterrier_llmrank.pointwise:YesNo') is YesNo
    from pyterrier_llmrank import IDCM, ProRank, RankR1
    assert reranker_class('pyterrier_llmrank.RankR1') is RankR1 and reranker_class('ProRank') is ProRank
    assert reranker_class('IDCM') is IDCM


# ------------------------------------------------------------------------------------------ checkpoints

class _NotATensor:
    """Any picklable object that is neither a tensor nor a plain container."""


def test_checkpoint_round_trip_and_refuses_pickled_objects(tmp_path):
    import random
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched.step()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    ckpt = save_checkpoint(tmp_path, 1, model, opt, sched, extra={'order': [3, 1, 2]})
    assert sorted(p.name for p in ckpt.iterdir()) == ['optimizer.pt', 'rng.safetensors', 'state.json',
                                                      'trainable.safetensors']
    after = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (s + 1))
    state = load_checkpoint(latest_checkpoint(tmp_path), model, opt2, sched2)
    assert state == {'step': 1, 'extra': {'order': [3, 1, 2]}}
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == after  # the random states
    assert opt2.state_dict()['state'][0]['step'] == opt.state_dict()['state'][0]['step']
    assert sched2.last_epoch == 1
    # a checkpoint whose optimizer file holds another pickled object is refused, nothing of it is built
    torch.save({'optimizer': _NotATensor(), 'scheduler': None}, ckpt / 'optimizer.pt')
    with pytest.raises(ValueError, match='refusing to unpickle'):
        load_checkpoint(ckpt, model, opt2, sched2)
