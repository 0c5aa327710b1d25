"""GRPO training of Rank-R1 (recipe ``grpo-rank-r1``), and the GRPO machinery shared with the ProRank recipe.

Zhuang, Ma, Koopman, Zuccon: "Rank-R1: Enhancing Reasoning in LLM-based Document Rerankers via Reinforcement
Learning", 2025. Reference code: ielab/llm-rankers ``Rank-R1/train_grpo.py`` (trainer, reward, LoRA, hyper-parameters)
and ``Rank-R1/create_dataset.py`` (the setwise training prompts), prompts ``Rank-R1/prompts/prompt_setwise-R1.toml``.

What the recipe does, as the reference:

* one training prompt per (query, relevant document) group of :func:`~pyterrier_llmrank.train.data.training_groups`:
  the positive and the ``n_negatives`` negatives (19 in the reference: 20 documents a prompt), shuffled, labelled
  ``[1] text`` ... and joined by newlines in the Rank-R1 v0.1 prompts (:data:`~pyterrier_llmrank.setwise.RANKR1_SYSTEM`,
  :data:`~pyterrier_llmrank.setwise.RANKR1_USER`, the constants :class:`~pyterrier_llmrank.RankR1` prompts with,
  so that training and inference prompts are identical); the ground truth is the positive's label ``[k]``;
* reward (:func:`rank_r1_reward`, the reference's ``reward_func_setwise``): 1 when the completion matches
  ``<think>...</think>\\s*<answer>(...)</answer>`` and the stripped answer equals ``[k]``, else 0;
* trl ``GRPOTrainer`` with LoRA (r 16, alpha 32, dropout 0.05, bias none, peft's default target modules:
  ``q_proj``, ``v_proj``), learning rate 1e-5, 8 generations per
  prompt, 16 completions per device batch (two prompts a step), 3 epochs (the ``TrainingArguments`` default the
  reference keeps), and the GRPO settings of the trl version the
  reference was written for (trl 0.15/0.16: KL coefficient ``beta`` 0.04, sampling temperature 0.9, loss averaged
  per sequence, ``loss_type='grpo'``; rewards normalised by the group's standard deviation). Completions of up to
  2048 tokens as the reference (``max_completion_length``); the CPU configuration of ``examples/train`` lowers it.

Differences from the reference (stated, configurable): the passages and the query are cut to
``max_passage_tokens`` / ``max_query_tokens`` model tokens (512 / 32, what :class:`RankR1` shows at inference;
the reference cut prompts at 4096 tokens with trl's ``max_prompt_length``, gone from trl 1.x); documents are the
collection's ``text`` (the reference writes ``title text``); no DeepSpeed or bf16 (gradient checkpointing is
on by default as the reference, off in the CPU configuration).

Outputs (``output_dir``): ``checkpoints/`` (trl/transformers checkpoints, resumed from automatically),
``log.csv`` (one row per logged step: loss, reward, reward std, per-function rewards, completion length, KL,
learning rate, seconds), ``adapter/`` (the LoRA adapter), ``model/`` (the adapter merged into the base model,
with the tokenizer: ``RankR1('<output_dir>/model')`` loads it; both folders hold a ``reranker.json`` for
:func:`pyterrier_llmrank.train.load_reranker`) and ``config.json`` (the configuration used).
:func:`main_rank_r1` returns the ``model/`` folder.
"""
from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from pyterrier_llmrank.setwise import RANKR1_DOC, RANKR1_DOC_SEPARATOR, RANKR1_PATTERN, RANKR1_SYSTEM, RANKR1_USER
from pyterrier_llmrank.train.common import (RUN_CONFIG_IGNORED, CSVLogger, check_keys, check_run_config, lora_config,
                                            set_seed, set_threads, write_json)

__all__ = ['rank_r1_reward', 'rank_r1_example', 'rank_r1_examples', 'main_rank_r1', 'RANK_R1_DEFAULTS',
           'RANK_R1_REFERENCE', 'GRPO_DEFAULTS', 'GRPO_LOG_COLUMNS', 'completion_text', 'run_grpo']

#: The reference's values (ielab/llm-rankers at commit b36517bf17a3956dc56c4c967f972d02390b1cdd,
#: ``Rank-R1/train_grpo.py``; ``num_train_epochs`` and ``save_steps`` are not set there: the values are the
#: transformers ``TrainingArguments`` defaults; ``n_negatives`` from ``Rank-R1/create_dataset.py``, ``neg_docs[:19]``).
RANK_R1_REFERENCE: Dict[str, Any] = {
    'learning_rate': 1e-5,            # GRPOConfig(learning_rate=1e-5)
    'batch_size': 16,                 # batch_size = 16 -> per_device_train_batch_size (2 prompts x 8 generations)
    'num_generations': 8,             # num_generations = 8
    'max_completion_length': 2048,    # GRPOConfig(max_completion_length=2048)
    'gradient_checkpointing': True,   # GRPOConfig(gradient_checkpointing=True)
    'num_train_epochs': 3,            # not set: TrainingArguments default 3.0
    'lora_r': 16,                     # LoraConfig(r=16)
    'lora_alpha': 32,                 # LoraConfig(lora_alpha=32)
    'lora_dropout': 0.05,             # LoraConfig(lora_dropout=0.05)
    'lora_targets': None,             # not set: peft's default for the architecture
    'n_negatives': 19,                # create_dataset.py: neg_docs[:19]
}

#: The GRPO (trl ``GRPOConfig``) and LoRA settings shared by the GRPO recipes (``grpo-rank-r1`` and ProRank's stage 1),
#: those of the Rank-R1 reference (:data:`RANK_R1_REFERENCE`); ``beta``, ``temperature``, ``top_p``, ``loss_type``
#: and ``scale_rewards`` are the trl 0.15 defaults the reference ran with (gone or changed in later trl versions).
#: Deliberate differences: ``logging_steps`` 1 (the reference logs every 10 steps; ``log.csv`` gets every step) and
#: ``save_steps`` 50 (the reference, TrainingArguments' 500).
GRPO_DEFAULTS: Dict[str, Any] = {
    'lora_r': RANK_R1_REFERENCE['lora_r'],
    'lora_alpha': RANK_R1_REFERENCE['lora_alpha'],
    'lora_dropout': RANK_R1_REFERENCE['lora_dropout'],
    'lora_targets': RANK_R1_REFERENCE['lora_targets'],  # peft's default (q_proj, v_proj for Llama/Qwen2)
    'learning_rate': RANK_R1_REFERENCE['learning_rate'],
    'batch_size': RANK_R1_REFERENCE['batch_size'],  # completions per device and step (per_device_train_batch_size)
    'num_generations': RANK_R1_REFERENCE['num_generations'],
    'max_completion_length': RANK_R1_REFERENCE['max_completion_length'],
    'temperature': 0.9,
    'top_p': 1.0,
    'beta': 0.04,
    'loss_type': 'grpo',
    'scale_rewards': 'group',
    'gradient_accumulation_steps': 1,
    'gradient_checkpointing': RANK_R1_REFERENCE['gradient_checkpointing'],
    'num_train_epochs': RANK_R1_REFERENCE['num_train_epochs'],
    'max_steps': -1,
    'logging_steps': 1,
    'save_steps': 50,
    'save_total_limit': 2,
}

#: Defaults of the ``grpo-rank-r1`` recipe: :data:`GRPO_DEFAULTS` and the data of ``Rank-R1/create_dataset.py``
#: (the model is the toolkit's offline default instead of Qwen2.5-3B-Instruct).
RANK_R1_DEFAULTS: Dict[str, Any] = {
    'model': 'smollm2-135m-instruct',
    'dataset': 'beir-scifact/train',
    'output_dir': 'build/train/grpo-rank-r1',
    # data (create_dataset.py: one positive + 19 negatives, shuffled)
    'n_negatives': RANK_R1_REFERENCE['n_negatives'],
    'negatives': 'bm25',
    'depth': 100,
    'max_queries': None,
    'max_passage_tokens': 512,
    'max_query_tokens': 32,
    **GRPO_DEFAULTS,
    'seed': 42,
    'threads': None,
    'resume': True,
    'merge': True,
    'device': 'auto',
}

#: Settings a resumed GRPO run may change (besides :data:`~pyterrier_llmrank.train.common.RUN_CONFIG_IGNORED`).
GRPO_RUN_CONFIG_IGNORED = (*RUN_CONFIG_IGNORED, 'merge')

#: Columns of ``log.csv`` written by the GRPO recipes (besides ``step``); per-function reward columns are added as
#: ``reward/<function name>``.
GRPO_LOG_COLUMNS = ['loss', 'reward', 'reward_std', 'frac_reward_zero_std', 'completion_length',
                    'completion_clipped_ratio', 'kl', 'entropy', 'grad_norm', 'learning_rate', 'epoch', 'seconds']


# ------------------------------------------------------------------------------------------------------ reward

def completion_text(completion: Any) -> str:
    """The text of a trl completion: a string (standard prompts) or the message list of a conversational prompt
    (the reference reads ``completion[0]["content"]``, the assistant message)."""
    if isinstance(completion, str):
        return completion
    return completion[0]['content']


def rank_r1_reward(completions: Sequence[Any], ground_truth: Sequence[str], **kwargs: Any) -> List[float]:
    """The Rank-R1 reward (ielab/llm-rankers ``Rank-R1/train_grpo.py``, ``reward_func_setwise``).

    1.0 when the completion matches :data:`~pyterrier_llmrank.setwise.RANKR1_PATTERN`
    (``<think>.*?</think>\\s*<answer>(.*?)</answer>``, first match, ``re.DOTALL``, case-sensitive as the
    reference) and the answer, stripped, equals the ground truth label (``'[k]'``); else 0.0.

    Args:
        completions: trl completions (strings or ``[{'role': 'assistant', 'content': ...}]``).
        ground_truth: the positive's label of each completion's prompt, e.g. ``'[3]'``.
    """
    scores = []
    for completion, label in zip(completions, ground_truth):
        m = re.search(RANKR1_PATTERN, completion_text(completion), re.DOTALL)
        scores.append(1.0 if m is not None and m.group(1).strip() == label else 0.0)
    return scores


# -------------------------------------------------------------------------------------------------------- data

def rank_r1_example(query: str, positive: str, negatives: Sequence[str], rng: random.Random) -> Dict[str, Any]:
    """One Rank-R1 training prompt (as ielab/llm-rankers ``Rank-R1/create_dataset.py``).

    The positive and the negatives are shuffled with ``rng``, labelled ``[1] text`` ... in the shuffled order and
    joined by newlines into :data:`~pyterrier_llmrank.setwise.RANKR1_USER`; the system turn is
    :data:`~pyterrier_llmrank.setwise.RANKR1_SYSTEM`. Texts are used as given (cut them beforehand).

    Returns:
        ``{'prompt': [system, user messages], 'ground_truth': '[k]'}`` with ``k`` the positive's 1-based label.
    """
    docs = [positive] + list(negatives)
    order = list(range(len(docs)))
    rng.shuffle(order)
    shown = [docs[i] for i in order]
    k = order.index(0) + 1
    text = RANKR1_DOC_SEPARATOR.join(RANKR1_DOC.format(num=i + 1, text=t) for i, t in enumerate(shown))
    return {'prompt': [{'role': 'system', 'content': RANKR1_SYSTEM},
                       {'role': 'user', 'content': RANKR1_USER.format(query=query, docs=text)}],
            'ground_truth': f'[{k}]'}


def rank_r1_examples(groups: Sequence[Dict[str, Any]], tokenizer: Any, *, max_passage_tokens: Optional[int] = 512,
                     max_query_tokens: Optional[int] = 32, seed: int = 42) -> List[Dict[str, Any]]:
    """Rank-R1 training prompts of training groups (one a group), texts cut as :class:`RankR1` cuts them.

    The shuffles use one ``random.Random(seed)`` in the groups' order (the reference: Python's ``random``).
    Each example also carries ``qid``.
    """
    from pyterrier_llmrank.generative import truncate_tokens
    rng = random.Random(seed)
    out = []
    for g in groups:
        ex = rank_r1_example(truncate_tokens(tokenizer, g['query'], max_query_tokens),
                             truncate_tokens(tokenizer, g['positive'], max_passage_tokens),
                             [truncate_tokens(tokenizer, t, max_passage_tokens) for t in g['negatives']], rng)
        ex['qid'] = str(g['qid'])
        out.append(ex)
    return out


# --------------------------------------------------------------------------------------------------- training

def _csv_callback(path: Path, columns: List[str], resume_step: Optional[int]) -> Any:
    from transformers import TrainerCallback

    class _CSVCallback(TrainerCallback):
        """Writes trl's training logs to ``log.csv`` (one row per logging step)."""

        def __init__(self) -> None:
            self.logger = CSVLogger(path, columns=columns, resume_step=resume_step)
            self.last = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: Optional[Dict[str, float]] = None,
                   **kwargs: Any) -> None:
            if not logs or 'loss' not in logs:  # the final summary (train_runtime ...) is not a step
                return
            now = time.perf_counter()
            row = {'loss': logs.get('loss'), 'reward': logs.get('reward'), 'reward_std': logs.get('reward_std'),
                   'frac_reward_zero_std': logs.get('frac_reward_zero_std'),
                   'completion_length': logs.get('completions/mean_length'),
                   'completion_clipped_ratio': logs.get('completions/clipped_ratio'),
                   'kl': logs.get('kl'), 'entropy': logs.get('entropy'), 'grad_norm': logs.get('grad_norm'),
                   'learning_rate': logs.get('learning_rate'), 'epoch': logs.get('epoch'),
                   'seconds': now - self.last}
            for c in columns:
                if c.startswith('reward/'):
                    row[c] = logs.get(f'rewards/{c[len("reward/"):]}/mean')
            self.last = now
            self.logger.log(state.global_step, **{k: (float(v) if v is not None else '') for k, v in row.items()})

    return _CSVCallback()


def _last_checkpoint(folder: Path) -> Optional[str]:
    from transformers.trainer_utils import get_last_checkpoint
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def run_grpo(cfg: Dict[str, Any], model: Any, tokenizer: Any, examples: List[Dict[str, Any]],
             reward_funcs: List[Callable[..., List[float]]], output_dir: Path,
             reward_weights: Optional[List[float]] = None, settings: Optional[Dict[str, Any]] = None,
             grpo_args: Optional[Dict[str, Any]] = None) -> Any:
    """Runs trl's ``GRPOTrainer`` with LoRA on ``examples``; resumes from the newest checkpoint of
    ``output_dir/checkpoints`` when ``cfg['resume']``; logs to ``output_dir/log.csv``.

    ``settings`` (default ``cfg``) are the settings of the run, recorded in ``output_dir/run_config.json``; a
    checkpoint written with other settings is not resumed (``ValueError``,
    :func:`~pyterrier_llmrank.train.common.check_run_config`). ``grpo_args`` are further ``GRPOConfig`` arguments
    (e.g. ``num_iterations``, ``epsilon``); ``tokenizer`` may be a processor (vision-language models).

    Returns:
        The trained ``PeftModel`` (adapter not merged).
    """
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    ckpt_dir = output_dir / 'checkpoints'
    resume = _last_checkpoint(ckpt_dir) if cfg['resume'] else None
    check_run_config(output_dir, cfg if settings is None else settings, resuming=resume is not None,
                     ignore=GRPO_RUN_CONFIG_IGNORED)
    resume_step = int(Path(resume).name.split('-')[-1]) if resume else None
    use_cpu = str(cfg.get('device', 'auto')) == 'cpu' or not torch.cuda.is_available()
    args = GRPOConfig(
        output_dir=str(ckpt_dir), learning_rate=float(cfg['learning_rate']),
        per_device_train_batch_size=int(cfg['batch_size']), num_generations=int(cfg['num_generations']),
        gradient_accumulation_steps=int(cfg['gradient_accumulation_steps']),
        max_completion_length=int(cfg['max_completion_length']), temperature=float(cfg['temperature']),
        top_p=float(cfg['top_p']), beta=float(cfg['beta']), loss_type=cfg['loss_type'],
        scale_rewards=cfg['scale_rewards'], num_train_epochs=float(cfg['num_train_epochs']),
        max_steps=int(cfg['max_steps']), logging_steps=int(cfg['logging_steps']),
        save_strategy='steps', save_steps=int(cfg['save_steps']), save_total_limit=cfg['save_total_limit'],
        seed=int(cfg['seed']), data_seed=int(cfg['seed']), report_to='none', use_cpu=use_cpu, bf16=False,
        reward_weights=reward_weights, log_completions=False, disable_tqdm=False, use_vllm=False,
        gradient_checkpointing=bool(cfg['gradient_checkpointing']), dataloader_num_workers=0, **(grpo_args or {}))
    columns = GRPO_LOG_COLUMNS + [f'reward/{f.__name__}' for f in reward_funcs]
    set_seed(int(cfg['seed']))  # the LoRA initialisation (replaced by the checkpoint's weights on resume)
    peft_cfg = lora_config(r=cfg['lora_r'], alpha=cfg['lora_alpha'], dropout=cfg['lora_dropout'],
                           target_modules=cfg['lora_targets'], task_type='CAUSAL_LM')
    model.train()
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=Dataset.from_list(examples),
                          processing_class=tokenizer, peft_config=peft_cfg,
                          callbacks=[_csv_callback(output_dir / 'log.csv', columns, resume_step)])
    trainer.train(resume_from_checkpoint=resume)
    return trainer.model


def save_outputs(peft_model: Any, tokenizer: Any, output_dir: Path, merge: bool = True,
                 merged_dir: Optional[Path] = None) -> Path:
    """Saves the adapter (with the tokenizer) to ``output_dir/adapter`` and, when ``merge``, the merged model with
    the tokenizer to ``merged_dir`` (default ``output_dir/model``); returns the folder a reranker loads (the merged
    model, else the adapter)."""
    peft_model.save_pretrained(str(output_dir / 'adapter'))
    tokenizer.save_pretrained(str(output_dir / 'adapter'))
    if not merge:
        return output_dir / 'adapter'
    target = Path(merged_dir) if merged_dir is not None else output_dir / 'model'
    merged = peft_model.merge_and_unload()
    merged.eval()
    merged.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    return target


def write_reranker_spec(output_dir: Path, base: Any, reranker_class: str, kwargs: Dict[str, Any]) -> None:
    """Writes ``reranker.json`` (the class and arguments :func:`pyterrier_llmrank.train.recipe.load_reranker`
    builds) into ``model/`` and ``adapter/``, and records ``base`` (e.g. the short name) as the adapter's base."""
    from pyterrier_llmrank.train.recipe import RERANKER_FILE, set_adapter_base
    set_adapter_base(output_dir / 'adapter', str(base))
    for sub in ('model', 'adapter'):
        if (output_dir / sub).is_dir():
            write_json(output_dir / sub / RERANKER_FILE, {'class': reranker_class, 'kwargs': kwargs})


def _config(cfg: Dict[str, Any], defaults: Dict[str, Any], recipe: str) -> Dict[str, Any]:
    check_keys(cfg, defaults, recipe)
    out = dict(defaults)
    out.update(cfg)
    return out


def load_model(name: Any, device: Any) -> Any:
    """The causal LM (float32) and its tokenizer, with a pad token, for training."""
    from pyterrier_llmrank.models import load_causal_lm
    model, tok = load_causal_lm(name, device=device, dtype='float32', shared=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def main_rank_r1(config: Dict[str, Any]) -> str:
    """The ``grpo-rank-r1`` recipe: GRPO training of a setwise Rank-R1 reranker (see the module documentation).

    Args:
        config: keys of :data:`RANK_R1_DEFAULTS` (unknown keys are an error).

    Returns:
        The folder of the trained model (``<output_dir>/model``, or ``<output_dir>/adapter`` with ``merge: false``),
        loadable with ``RankR1(folder)``.
    """
    from pyterrier_llmrank.train.data import training_groups
    cfg = _config(config, RANK_R1_DEFAULTS, 'grpo-rank-r1')
    set_threads(cfg['threads'])
    out = Path(cfg['output_dir'])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / 'config.json', cfg)
    model, tok = load_model(cfg['model'], cfg['device'])
    start = time.perf_counter()
    groups = training_groups(cfg['dataset'], n_negatives=int(cfg['n_negatives']), negatives=cfg['negatives'],
                             depth=int(cfg['depth']), seed=int(cfg['seed']), max_queries=cfg['max_queries'])
    examples = rank_r1_examples(groups, tok, max_passage_tokens=cfg['max_passage_tokens'],
                                max_query_tokens=cfg['max_query_tokens'], seed=int(cfg['seed']))
    peft_model = run_grpo(cfg, model, tok, examples, [rank_r1_reward], out)
    folder = save_outputs(peft_model, tok, out, merge=bool(cfg['merge']))
    write_reranker_spec(out, cfg['model'], 'RankR1',
                        {'max_passage_tokens': cfg['max_passage_tokens'], 'max_query_tokens': cfg['max_query_tokens']})
    (out / 'train_info.json').write_text(json.dumps({'examples': len(examples), 'seconds': time.perf_counter() - start,
                                                     'output': str(folder)}, indent=2) + '\n')
    return str(folder)
