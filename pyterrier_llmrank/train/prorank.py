"""ProRank training (recipe ``prorank``): GRPO prompt warm-up, then fine-grained score learning.

Li, Shakir, Huang, Lee, Lipp, Clavié, Li: "ProRank: Prompt Warmup via Reinforcement Learning for Small Language
Models Reranking", arXiv 2506.03487 (Findings of ACL 2026). The inference side is
:class:`~pyterrier_llmrank.ProRank` (mixedbread-ai/mxbai-rerank ``mxbai_rerank_v2.py``): a fixed relevance prompt
(:data:`~pyterrier_llmrank.pointwise.PRORANK_TASK_PROMPT`, "... 0 for not relevant, 1 for relevant ... Relevance:")
and the score ``logit("1") - logit("0")`` at the first answer position. The paper's training code and exact reward
terms are not public; the choices made here are:

Stage 1, prompt warm-up (GRPO, trl ``GRPOTrainer`` with LoRA as :mod:`.grpo`). Prompts are the exact
:meth:`ProRank.prompt_ids <pyterrier_llmrank.ProRank.prompt_ids>` input decoded to text (one prompt per
(query, document) pair: each training group's positive and its first ``stage1.negatives_per_positive``
negatives, label "1" / "0"); the model generates up to ``stage1.max_completion_length`` tokens (4). Rewards
(summed, weight 1 each; trl normalises them within each prompt's group of generations):

* :func:`prorank_format_reward`: 1 when the completion, stripped of white space, is exactly ``"0"`` or ``"1"``
  (the answer format the prompt asks for), else 0;
* :func:`prorank_correct_reward`: 1 when the stripped completion equals the label (``"1"`` for the positive,
  ``"0"`` for a negative), else 0.

Stage 2, fine-grained score learning (a custom loop on the stage-1 model, merged, with a new LoRA adapter). Each
training group (positive + ``stage2.n_negatives`` negatives) is scored exactly as :class:`ProRank` scores at
inference (same token ids, left padding, score ``s = logit("1") - logit("0")`` at the last position) and the loss
is, with ``stage2.loss``:

* ``'listwise'`` (default): softmax cross-entropy over the group's scores, the positive being the target
  (``-log softmax(s)[positive]``);
* ``'pointwise'``: binary cross-entropy with logits on each score, label 1 for the positive and 0 for the
  negatives (``BCEWithLogits(s, y)``, averaged over the group's documents).

Outputs (``output_dir``): ``stage1/`` (``checkpoints/``, ``log.csv`` with the rewards, ``adapter/``, ``model/``
merged), ``stage2/`` (``checkpoints/step-<n>``, ``log.csv`` with the losses, ``adapter/``), ``model/`` (the
final merged model and tokenizer, written by stage 2, or a copy of ``stage1/model`` without stage 2: ``ProRank('<output_dir>/model')`` loads it) and ``config.json``. Restarting the
same command resumes: a finished stage 1 (``stage1/model``) is not rerun, an interrupted one resumes from its
newest checkpoint, stage 2 from its newest ``step-<n>``; a restart with other settings than those a reused stage
was trained with is refused (``run_config.json`` of each stage).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from pyterrier_llmrank.train.common import (CSVLogger, check_run_config, latest_checkpoint, load_checkpoint,
                                            lora_config, save_checkpoint, set_seed, set_threads, staged_config,
                                            write_json)
from pyterrier_llmrank.train.grpo import (GRPO_DEFAULTS, GRPO_RUN_CONFIG_IGNORED, completion_text, load_model,
                                         run_grpo, save_outputs, write_reranker_spec)

__all__ = ['prorank_format_reward', 'prorank_correct_reward', 'prorank_pair_examples', 'prorank_scores',
           'prorank_loss', 'main', 'PRORANK_DEFAULTS', 'PRORANK_ANSWERS']

#: The two answers the ProRank prompt asks for (PRORANK_TASK_PROMPT: "0 for not relevant, 1 for relevant").
PRORANK_ANSWERS = ('0', '1')

#: Defaults of the ``prorank`` recipe. The paper's hyper-parameters and training code are not public: stage 1 takes
#: the GRPO settings of the Rank-R1 reference (:data:`~pyterrier_llmrank.train.grpo.GRPO_DEFAULTS`), the rest are
#: choices.
PRORANK_DEFAULTS: Dict[str, Any] = {
    'model': 'smollm2-135m-instruct',
    'dataset': 'beir-scifact/train',
    'output_dir': 'build/train/prorank',
    'negatives': 'bm25',
    'depth': 100,
    'max_queries': None,
    'max_length': 512,  # ProRank(max_length=...): query + document token budget of the prompts
    'instruction': None,
    'lora_r': GRPO_DEFAULTS['lora_r'],
    'lora_alpha': GRPO_DEFAULTS['lora_alpha'],
    'lora_dropout': GRPO_DEFAULTS['lora_dropout'],
    'lora_targets': GRPO_DEFAULTS['lora_targets'],
    'seed': 42,
    'threads': None,
    'resume': True,
    'device': 'auto',
    # the GRPO settings of grpo-rank-r1 (GRPO_DEFAULTS, without the LoRA ones above), but one answer token and no
    # gradient checkpointing
    'stage1': {
        'enabled': True,
        'negatives_per_positive': 1,
        **{k: v for k, v in GRPO_DEFAULTS.items() if not k.startswith('lora_')},
        'max_completion_length': 1,  # the answer token ProRank reads
        'gradient_checkpointing': False,
    },
    'stage2': {
        'enabled': True,
        'loss': 'listwise',
        'n_negatives': 7,
        'groups_per_step': 2,
        'learning_rate': 1e-4,
        'weight_decay': 0.0,
        'warmup_steps': 0,
        'steps': 100,
        'logging_steps': 1,
        'save_steps': 50,
        'max_grad_norm': 1.0,
    },
}


# ----------------------------------------------------------------------------------------------------- rewards

def prorank_format_reward(completions: Sequence[Any], **kwargs: Any) -> List[float]:
    """1.0 when the completion, stripped of white space, is exactly ``"0"`` or ``"1"``, else 0.0."""
    return [1.0 if completion_text(c).strip() in PRORANK_ANSWERS else 0.0 for c in completions]


def prorank_correct_reward(completions: Sequence[Any], label: Sequence[str], **kwargs: Any) -> List[float]:
    """1.0 when the completion, stripped of white space, equals the pair's label (``"1"`` relevant, ``"0"`` not),
    else 0.0."""
    return [1.0 if completion_text(c).strip() == y else 0.0 for c, y in zip(completions, label)]


# -------------------------------------------------------------------------------------------------------- data

def prorank_pair_examples(groups: Sequence[Dict[str, Any]], scorer: Any, negatives_per_positive: int = 1
                          ) -> List[Dict[str, Any]]:
    """Stage-1 prompts: for each group, its positive (label ``"1"``) and its first ``negatives_per_positive``
    negatives (label ``"0"``), each prompt being ``scorer.prompt_ids(query, text)`` decoded to text (the exact
    :class:`~pyterrier_llmrank.ProRank` input; trl re-tokenizes it without adding special tokens when the
    tokenizer adds none)."""
    tok = scorer.tokenizer
    out = []
    for g in groups:
        pairs = [(g['positive'], '1')] + [(t, '0') for t in g['negatives'][:negatives_per_positive]]
        for text, label in pairs:
            out.append({'prompt': tok.decode(scorer.prompt_ids(g['query'], text)), 'label': label,
                        'qid': str(g['qid'])})
    return out


# ------------------------------------------------------------------------------------------------------ stage 2

def prorank_scores(model: Any, seqs: Sequence[Sequence[int]], pad: int, pos_id: int, neg_id: int) -> torch.Tensor:
    """``logit("1") - logit("0")`` at the last position of each (left-padded) sequence, with gradients: the score
    :class:`~pyterrier_llmrank.ProRank` computes at inference."""
    from pyterrier_llmrank.causal import left_pad
    dev = next(model.parameters()).device
    ids, mask, pos = left_pad(seqs, pad, dev)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
    return logits[:, pos_id] - logits[:, neg_id]


def prorank_loss(scores: torch.Tensor, loss: str) -> torch.Tensor:
    """The stage-2 loss of groups of scores ``(n_groups, 1 + n_negatives)``, the positive first.

    ``'listwise'``: mean over groups of ``-log_softmax(scores)[:, 0]``; ``'pointwise'``: mean binary cross-entropy
    with logits, label 1 for column 0 and 0 for the others.
    """
    if loss == 'listwise':
        return -torch.log_softmax(scores, dim=-1)[:, 0].mean()
    if loss == 'pointwise':
        labels = torch.zeros_like(scores)
        labels[:, 0] = 1.0
        return torch.nn.functional.binary_cross_entropy_with_logits(scores, labels)
    raise ValueError(f"stage2.loss must be 'listwise' or 'pointwise', got {loss!r}")


def _order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def _batch_indices(step: int, n: int, per_step: int, seed: int) -> List[int]:
    """Indices of the groups of optimizer step ``step`` (0-based): consecutive slices of one seeded permutation
    per epoch, so that a resumed run sees the same batches as an uninterrupted one."""
    out = []
    for k in range(step * per_step, (step + 1) * per_step):
        epoch, i = divmod(k, n)
        out.append(int(_order(n, seed, epoch)[i]))
    return out


def _stage2(cfg: Dict[str, Any], base: str, groups: List[Dict[str, Any]], out: Path) -> Path:
    from peft import get_peft_model
    from transformers import get_linear_schedule_with_warmup

    from pyterrier_llmrank.pointwise import ProRank
    s2 = cfg['stage2']
    model, tok = load_model(base, cfg['device'])
    scorer = ProRank((model, tok), instruction=cfg['instruction'], max_length=int(cfg['max_length']),
                     prefix_reuse=False)
    seqs = [[scorer.prompt_ids(g['query'], t) for t in [g['positive']] + list(g['negatives'])] for g in groups]
    set_seed(int(cfg['seed']))
    model = get_peft_model(model, lora_config(r=cfg['lora_r'], alpha=cfg['lora_alpha'], dropout=cfg['lora_dropout'],
                                              target_modules=cfg['lora_targets'], task_type='CAUSAL_LM'))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(s2['learning_rate']), weight_decay=float(s2['weight_decay']))
    steps = int(s2['steps'])
    sched = get_linear_schedule_with_warmup(opt, int(s2['warmup_steps']), steps)
    folder = out / 'stage2'
    start = 0
    ckpt = latest_checkpoint(folder) if cfg['resume'] else None
    check_run_config(folder, cfg, resuming=ckpt is not None)  # stage 2 depends on every setting
    if ckpt is not None:
        start = load_checkpoint(ckpt, model, opt, sched)['step']
    columns = ['loss', 'accuracy', 'margin', 'learning_rate', 'seconds']
    log = CSVLogger(folder / 'log.csv', columns=columns, resume_step=start if ckpt is not None else None)
    model.train()
    from pyterrier_llmrank.causal import pad_id
    pad = pad_id(tok)
    last = time.perf_counter()
    import pyterrier as pt
    bar = pt.tqdm(total=steps, initial=start, desc='ProRank stage 2', unit='step')
    for step in range(start, steps):
        idx = _batch_indices(step, len(seqs), int(s2['groups_per_step']), int(cfg['seed']))
        batch = [s for i in idx for s in seqs[i]]
        scores = prorank_scores(model, batch, pad, scorer._pos_id, scorer._neg_id).view(len(idx), -1)
        loss = prorank_loss(scores, s2['loss'])
        opt.zero_grad()
        loss.backward()
        if s2['max_grad_norm']:
            torch.nn.utils.clip_grad_norm_(params, float(s2['max_grad_norm']))
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        bar.update(1)
        done = step + 1
        if done % int(s2['logging_steps']) == 0 or done == steps:
            with torch.no_grad():
                acc = (scores.argmax(-1) == 0).float().mean().item()
                margin = (scores[:, 0] - scores[:, 1:].max(-1).values).mean().item() if scores.shape[1] > 1 else 0.0
            now = time.perf_counter()
            log.log(done, loss=float(loss.item()), accuracy=float(acc), margin=float(margin), learning_rate=float(lr),
                    seconds=now - last)
            last = now
            bar.set_postfix(loss=f'{loss.item():.4f}')
        if done % int(s2['save_steps']) == 0 or done == steps:
            save_checkpoint(folder, done, model, opt, sched)
    bar.close()
    return save_outputs(model, tok, folder, merge=True, merged_dir=out / 'model')


def _merged_config(config: Dict[str, Any]) -> Dict[str, Any]:
    return staged_config(config, PRORANK_DEFAULTS, 'prorank', ('stage1', 'stage2'))


def main(config: Dict[str, Any]) -> str:
    """The ``prorank`` recipe (see the module documentation).

    Args:
        config: keys of :data:`PRORANK_DEFAULTS`; ``stage1`` and ``stage2`` are mappings of their own keys.

    Returns:
        ``<output_dir>/model``: the merged model and tokenizer, loadable with ``ProRank(folder)``.
    """
    import shutil

    from pyterrier_llmrank.pointwise import ProRank
    from pyterrier_llmrank.train.data import training_groups
    cfg = _merged_config(config)
    s1, s2 = cfg['stage1'], cfg['stage2']
    if not s1['enabled'] and not s2['enabled']:
        raise ValueError('both stages are disabled')
    set_threads(cfg['threads'])
    out = Path(cfg['output_dir'])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / 'config.json', cfg)
    n_neg = max(int(s2['n_negatives']) if s2['enabled'] else 0,
                int(s1['negatives_per_positive']) if s1['enabled'] else 0)
    groups = training_groups(cfg['dataset'], n_negatives=n_neg, negatives=cfg['negatives'], depth=int(cfg['depth']),
                             seed=int(cfg['seed']), max_queries=cfg['max_queries'])
    info: Dict[str, Any] = {'groups': len(groups)}
    spec = {'max_length': int(cfg['max_length']), 'instruction': cfg['instruction']}
    base = cfg['model']
    if s1['enabled']:
        stage1 = out / 'stage1'
        # stage 1 depends on the settings outside stage2
        settings1 = {k: v for k, v in cfg.items() if k != 'stage2'}
        if cfg['resume'] and (stage1 / 'model' / 'config.json').exists():  # finished: reused
            check_run_config(stage1, settings1, resuming=cfg['resume'], ignore=GRPO_RUN_CONFIG_IGNORED)
        else:
            start = time.perf_counter()
            model, tok = load_model(base, cfg['device'])
            scorer = ProRank((model, tok), instruction=cfg['instruction'], max_length=int(cfg['max_length']),
                             prefix_reuse=False)
            examples = prorank_pair_examples(groups, scorer, int(s1['negatives_per_positive']))
            gcfg = dict(s1, seed=cfg['seed'], resume=cfg['resume'], device=cfg['device'], lora_r=cfg['lora_r'],
                        lora_alpha=cfg['lora_alpha'], lora_dropout=cfg['lora_dropout'],
                        lora_targets=cfg['lora_targets'])
            peft_model = run_grpo(gcfg, model, tok, examples, [prorank_format_reward, prorank_correct_reward],
                                  stage1, reward_weights=[1.0, 1.0], settings=settings1)
            save_outputs(peft_model, tok, stage1, merge=True)
            write_reranker_spec(stage1, base, 'ProRank', spec)
            info['stage1_examples'] = len(examples)
            info['stage1_seconds'] = time.perf_counter() - start
        base = str(stage1 / 'model')
    if s2['enabled']:
        start = time.perf_counter()
        stage2_groups = [dict(g, negatives=g['negatives'][:int(s2['n_negatives'])]) for g in groups]
        final = _stage2(cfg, base, stage2_groups, out)
        write_reranker_spec(out / 'stage2', base, 'ProRank', spec)
        info['stage2_seconds'] = time.perf_counter() - start
    else:
        final = Path(base)
    target = out / 'model'
    if final.resolve() != target.resolve():
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(final, target)
    write_json(target / 'reranker.json', {'class': 'ProRank', 'kwargs': spec})
    info['output'] = str(target)
    prev = json.loads((out / 'train_info.json').read_text()) if (out / 'train_info.json').exists() else {}
    prev.update(info)
    (out / 'train_info.json').write_text(json.dumps(prev, indent=2) + '\n')
    return str(target)
