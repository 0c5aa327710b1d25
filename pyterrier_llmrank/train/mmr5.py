"""MM-R5 training (recipe ``mm-r5``): an SFT warm-up on reasoning-and-ranking answers, then GRPO with the
reference's rewards.

Reference: i2vec/MM-R5 at commit 0806019b6c07b676973f3877739bbea8aa330ab4:

* rewards: ``src/rl/VLM-R1/src/open-r1-multimodal/src/open_r1/vlm_modules/qwen_module.py``, ``rerank_reward``
  (:func:`mmr5_rerank_reward`) and ``format_rerank_reward`` (:func:`mmr5_format_reward`), added unweighted;
* GRPO settings: ``src/rl/VLM-R1/run_scripts/rl_rerank.sh`` (:data:`MMR5_GRPO_REFERENCE`), with the VLM-R1
  trainer's own (``trainer/grpo_trainer.py``: sampling temperature 1, LoRA on every linear layer outside the
  vision tower, vision tower frozen; ``trainer/grpo_config.py``: beta 0.04, epsilon 0.2);
* SFT settings: ``src/sft/train.sh`` (ms-swift; :data:`MMR5_SFT_REFERENCE`).

Where the reference is broken or unpublished, and what this recipe does instead:

* the SFT data (reasoning chains written by GPT-4o, ``src/sft/gpt4o_cot.py``) and the RL data are not published.
  A training example here is a query, its candidate images and the 1-based ids of the relevant ones (a JSONL file,
  see :func:`load_examples`); the SFT target is ``<think>{reasoning}</think><answer>[ids]</answer>`` with the
  relevant ids first (in the order given) and the others after in increasing order, and the example's own
  ``reasoning`` when it has one, else :data:`MMR5_SFT_REASONING` (our own sentence);
* ``rl_rerank.sh`` runs ``grpo_rerank_v4.py`` and ``grpo_rerank.py`` registers ``format_rerank_reward_v3``;
  neither exists in the repository. The rewards used are the two functions that do exist in ``qwen_module.py``;
* the reference trains with a prompt unlike its inference prompt (images first, the question template without
  ``"\\nThe question is:"``, unpublished problem texts); here training uses the inference prompt of
  :class:`~pyterrier_llmrank.mmr5.MMR5` (:func:`~pyterrier_llmrank.mmr5.mmr5_messages`), so the reranker reads
  what was trained;
* the reference's batch of 1 completion on each of 4 GPUs (4 = ``num_generations``) is one batch of 4 completions
  on one device here; no DeepSpeed, bf16 or flash attention.

Output (``output_dir``): ``sft/`` (the warm-up's loop, log and merged model), ``checkpoints/`` and ``log.csv`` of
GRPO, ``adapter/``, ``model/`` (merged; ``MMR5('<output_dir>/model')`` loads it) and ``config.json``.
"""
from __future__ import annotations

import ast
import json
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch

from pyterrier_llmrank.mmr5 import MMR5_ANSWER_PATTERN, mmr5_chat, mmr5_messages
from pyterrier_llmrank.train.common import check_keys, jsonl_records, lora_config, set_seed, set_threads, write_json
from pyterrier_llmrank.train.grpo import completion_text, run_grpo, save_outputs, write_reranker_spec

__all__ = ['mmr5_rerank_reward', 'mmr5_format_reward', 'MMR5_FORMAT_PATTERN', 'MMR5_GRPO_REFERENCE',
           'MMR5_SFT_REFERENCE', 'MMR5_DEFAULTS', 'MMR5_SFT_REASONING', 'load_examples', 'sft_target',
           'grpo_examples', 'language_linear_modules', 'sft_step_loss', 'main']

# qwen_module.py, format_rerank_reward: re.search(pattern, content, re.DOTALL)
MMR5_FORMAT_PATTERN = r"<think>.*?</think>\s*<answer>\[([0-9]+(?:,\s*[0-9]+)*)\]</answer>"

#: run_scripts/rl_rerank.sh (and, where noted, the VLM-R1 trainer it runs).
MMR5_GRPO_REFERENCE: Dict[str, Any] = {
    'max_completion_length': 2048,     # --max_completion_length 2048
    'num_generations': 4,              # --num_generations 4
    'num_iterations': 2,               # --num_iterations 2
    'batch_size': 4,                   # --per_device_train_batch_size 1 on --nproc_per_node 4
    'gradient_accumulation_steps': 2,  # --gradient_accumulation_steps 2
    'logging_steps': 10,               # --logging_steps 10
    'num_train_epochs': 1,             # --num_train_epochs 1
    'save_steps': 100,                 # --save_steps 100
    'learning_rate': 1e-5,             # --learning_rate 1e-5
    'lora_r': 64,                      # --lora_r 64
    'lora_alpha': 128,                 # --lora_alpha 128
    'lora_dropout': 0.05,              # not set: trl ModelConfig default 0.05
    'gradient_checkpointing': True,    # --gradient_checkpointing true
    'temperature': 1.0,                # grpo_trainer.py: GenerationConfig(do_sample=True, temperature=1)
    'beta': 0.04,                      # grpo_config.py: beta default 0.04
    'epsilon': 0.2,                    # grpo_config.py: epsilon default 0.2
    'seed': 0,                         # --data_seed 0
}

#: src/sft/train.sh (ms-swift sft): LoRA rank 8, alpha 32 on all linear layers, vision tower frozen.
MMR5_SFT_REFERENCE: Dict[str, Any] = {
    'lora_r': 8, 'lora_alpha': 32, 'lora_dropout': 0.05,  # dropout: ms-swift default
    'lr': 1e-4, 'epochs': 1, 'grad_accum': 4, 'warmup_ratio': 0.05, 'batch_size': 1,
}

#: Our reasoning text of SFT targets for examples without their own (the reference's GPT-4o chains are unpublished).
MMR5_SFT_REASONING = 'Image {ids} show content relevant to the question; the other images do not.'

MMR5_DEFAULTS: Dict[str, Any] = {
    'model': None, 'data': None, 'output_dir': 'build/train/mm-r5',
    'min_pixels': None, 'max_pixels': None,
    # SFT warm-up (src/sft/train.sh); steps: 0 skips it
    'sft_steps': None, 'sft_lr': MMR5_SFT_REFERENCE['lr'], 'sft_grad_accum': MMR5_SFT_REFERENCE['grad_accum'],
    'sft_warmup_ratio': MMR5_SFT_REFERENCE['warmup_ratio'], 'sft_lora_r': MMR5_SFT_REFERENCE['lora_r'],
    'sft_lora_alpha': MMR5_SFT_REFERENCE['lora_alpha'], 'sft_lora_dropout': MMR5_SFT_REFERENCE['lora_dropout'],
    # GRPO (run_scripts/rl_rerank.sh)
    **{k: v for k, v in MMR5_GRPO_REFERENCE.items() if k != 'seed'},
    'top_p': 1.0, 'loss_type': 'grpo', 'scale_rewards': 'group', 'max_steps': -1, 'save_total_limit': 2,
    'lora_targets': None,  # None: every linear layer outside the vision tower (VLM-R1's find_all_linear_names)
    'seed': MMR5_GRPO_REFERENCE['seed'], 'threads': None, 'resume': True, 'merge': True, 'device': 'cpu',
}


# ----------------------------------------------------------------------------------------------------- rewards

def _solution(sol: Any) -> Tuple[List[int], int]:
    if isinstance(sol, str):
        sol = json.loads(sol)
    return list(sol[0]), int(sol[1])


def mmr5_rerank_reward(completions: Sequence[Any], solution: Sequence[Any], **kwargs: Any) -> List[float]:
    """The reference's ranking reward (``qwen_module.py``, ``rerank_reward``).

    The ids of the first ``<answer>[...]</answer>`` (comma-separated integers); each positive id at 1-based
    rank ``r`` scores ``1 / r**3``, a positive not named 0; the sum is divided by its ideal value (the positives
    at ranks ``1..P``). No answer, or a piece that is not an integer, scores 0.

    Args:
        completions: trl completions (strings or ``[{'role': 'assistant', 'content': ...}]``).
        solution: per completion ``(positive_ids, total_num)`` (1-based ids), or that pair as a JSON string.
    """
    rewards = []
    for completion, sol in zip(completions, solution):
        try:
            positives, _ = _solution(sol)
            m = re.search(MMR5_ANSWER_PATTERN, completion_text(completion))
            if m is None:
                rewards.append(0.0)
                continue
            order = [int(x) for x in m.group(1).strip().split(',') if x.strip()]
            actual = sum(1.0 / (order.index(p) + 1) ** 3 for p in positives if p in order)
            ideal = sum(1.0 / i ** 3 for i in range(1, len(positives) + 1))
            rewards.append(actual / ideal if ideal > 0 else 0.0)
        except Exception:  # the reference scores any failure 0
            rewards.append(0.0)
    return rewards


def mmr5_format_reward(completions: Sequence[Any], solution: Sequence[Any], **kwargs: Any) -> List[float]:
    """The reference's format reward (``qwen_module.py``, ``format_rerank_reward``).

    When ``<think>...</think>\\s*<answer>[i, j, ...]</answer>`` matches (:data:`MMR5_FORMAT_PATTERN`,
    ``re.DOTALL``): ``(N - |len - N|) / N`` times the fraction of the ids within ``1..N`` (``N`` the number of
    images); else 0. As the reference (which ``eval``-s the id list; read here with ``ast.literal_eval``), a
    single id (``[3]``) reads as a number, not a list, and scores 0, and a list longer than ``2N`` scores below 0.
    """
    rewards = []
    for completion, sol in zip(completions, solution):
        try:
            _, total = _solution(sol)
            m = re.search(MMR5_FORMAT_PATTERN, completion_text(completion), re.DOTALL)
            if m is None:
                rewards.append(0.0)
                continue
            order = ast.literal_eval(m.group(1))
            len_reward = (total - abs(len(order) - total)) / total
            in_range = sum(1.0 for p in order if 1 <= p <= total)
            range_reward = in_range / len(order) if len(order) > 0 else 0.0
            rewards.append(len_reward * range_reward)
        except Exception:  # the reference scores any failure 0
            rewards.append(0.0)
    return rewards


# -------------------------------------------------------------------------------------------------------- data

def load_examples(path: Any) -> List[Dict[str, Any]]:
    """Training examples from a JSONL file, one per line: ``{"query": str, "images": [path, ...],
    "positives": [1-based ids], "reasoning": optional str}``; image paths are relative to the file's folder."""
    path = Path(path)
    out = []
    for n, ex in jsonl_records(path):
        for key in ('query', 'images', 'positives'):
            if key not in ex:
                raise ValueError(f'{path}:{n}: example has no {key!r}')
        ex['images'] = [str(path.parent / p) if not Path(p).is_absolute() else p for p in ex['images']]
        bad = [p for p in ex['positives'] if not 1 <= int(p) <= len(ex['images'])]
        if bad:
            raise ValueError(f'{path}:{n}: positive ids {bad} are outside 1..{len(ex["images"])}')
        out.append(ex)
    if not out:
        raise ValueError(f'{path}: no training examples')
    return out


def sft_target(example: Dict[str, Any]) -> str:
    """The SFT answer of an example: ``<think>{reasoning}</think><answer>[ids]</answer>`` (positives first)."""
    n = len(example['images'])
    positives = [int(p) for p in example['positives']]
    ids = positives + [i for i in range(1, n + 1) if i not in positives]
    reasoning = example.get('reasoning') or MMR5_SFT_REASONING.format(ids=', '.join(map(str, positives)))
    return f"<think>{reasoning}</think><answer>[{', '.join(map(str, ids))}]</answer>"


def grpo_examples(examples: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """trl GRPO rows: ``prompt`` (the MM-R5 chat with empty image slots), ``images`` (PIL) and ``solution``
    (``[positives, N]`` as JSON)."""
    from pyterrier_llmrank.images import load_image
    rows = []
    for ex in examples:
        msgs = mmr5_messages(ex['query'], [None] * len(ex['images']))
        for m in msgs:
            m['content'] = [{'type': 'image'} if c['type'] == 'image' else c for c in m['content']]
        rows.append({'prompt': msgs, 'images': [load_image(p) for p in ex['images']],
                     'solution': json.dumps([[int(p) for p in ex['positives']], len(ex['images'])])})
    return rows


def language_linear_modules(model: Any) -> List[str]:
    """The names of the linear layers outside the vision tower (``visual``) and the embeddings, VLM-R1's LoRA
    targets (``grpo_trainer.py``, ``find_all_linear_names``), without ``lm_head``: VLM-R1 adapts it too, but trl's
    ``GRPOTrainer`` reads log-probabilities from ``lm_head.weight`` and refuses an adapter there."""
    return sorted(name for name, mod in model.named_modules()
                  if isinstance(mod, torch.nn.Linear) and 'visual' not in name and 'embed_tokens' not in name
                  and not name.endswith('lm_head'))


# --------------------------------------------------------------------------------------------------------- SFT

def sft_step_loss(lm: Any, model: Any, examples: Sequence[Dict[str, Any]]) -> torch.Tensor:
    """Mean cross-entropy of the SFT targets (the answer and the end-of-turn token) given the MM-R5 prompts."""
    from pyterrier_llmrank.vlm import EncodedChat, encode_chat, vl_model_inputs
    proc = lm.processor
    end = lm.ids(lm.chat_parts()[2])[:1]
    losses = []
    for ex in examples:
        chat = mmr5_chat(ex['query'], ex['images'])
        prompt = encode_chat(proc, chat.render(proc), chat.images)
        target = lm.ids(sft_target(ex)) + end
        item = EncodedChat(prompt.ids + target, prompt.images)
        inputs = vl_model_inputs(proc, [item], lm.pad_id, lm.device)
        labels = torch.full_like(inputs['input_ids'], -100)
        labels[0, -len(target):] = torch.tensor(target)
        losses.append(model(**inputs, labels=labels).loss)
    return torch.stack(losses).mean()


def _sft(cfg: Dict[str, Any], lm: Any, examples: List[Dict[str, Any]], out: Path) -> Any:
    from peft import get_peft_model
    from pyterrier_llmrank.train.loop import train_loop
    model = lm.model
    for p in model.parameters():
        p.requires_grad_(False)
    pc = lora_config(cfg['sft_lora_r'], cfg['sft_lora_alpha'], cfg['sft_lora_dropout'],
                     cfg['lora_targets'] or language_linear_modules(model), task_type='CAUSAL_LM')
    peft = get_peft_model(model, pc)
    loop_cfg = {'steps': int(cfg['sft_steps']), 'batch_size': 1, 'grad_accum': int(cfg['sft_grad_accum']),
                'lr': float(cfg['sft_lr']), 'warmup_ratio': float(cfg['sft_warmup_ratio']),
                'save_steps': int(cfg['sft_steps']), 'resume': bool(cfg['resume'])}
    summary = train_loop(peft, examples, lambda batch: (sft_step_loss(lm, peft, batch), {}),
                         output_dir=str(out / 'sft'), cfg=loop_cfg, seed=int(cfg['seed']), log_columns=[],
                         desc='mm-r5 sft', verbose=False)
    merged = peft.merge_and_unload()
    merged.eval()
    write_json(out / 'sft' / 'summary.json', summary)
    return merged


def main(config: Dict[str, Any]) -> str:
    """The ``mm-r5`` recipe (see the module documentation).

    Args:
        config: keys of :data:`MMR5_DEFAULTS` (unknown keys are an error); ``model`` (a Qwen2.5-VL name or
            folder) and ``data`` (a JSONL file, :func:`load_examples`) are required. ``sft_steps`` (default: one
            pass over the examples, as the reference's one epoch; 0 skips the warm-up).

    Returns:
        The folder of the trained model (``<output_dir>/model``), loadable with ``MMR5(folder)``.
    """
    from pyterrier_llmrank.models import load_vlm
    check_keys(config, MMR5_DEFAULTS, 'mm-r5')
    cfg = {**MMR5_DEFAULTS, **config}
    for key in ('model', 'data'):
        if not cfg[key]:
            raise ValueError(f'recipe mm-r5 needs {key}')
    set_threads(cfg['threads'])
    set_seed(int(cfg['seed']))
    out = Path(cfg['output_dir'])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / 'config.json', cfg)
    start = time.perf_counter()
    examples = load_examples(cfg['data'])
    lm = load_vlm(cfg['model'], device=cfg['device'], dtype='float32', min_pixels=cfg['min_pixels'],
                  max_pixels=cfg['max_pixels'], shared=False)
    sft_steps = len(examples) if cfg['sft_steps'] is None else int(cfg['sft_steps'])
    model = _sft({**cfg, 'sft_steps': sft_steps}, lm, examples, out) if sft_steps > 0 else lm.model
    targets = cfg['lora_targets'] or language_linear_modules(model)
    grpo_cfg = {**cfg, 'lora_targets': targets}
    peft_model = run_grpo(grpo_cfg, model, lm.processor, grpo_examples(examples),
                          [mmr5_rerank_reward, mmr5_format_reward], out, settings=cfg,
                          grpo_args={'num_iterations': int(cfg['num_iterations']), 'epsilon': float(cfg['epsilon'])})
    folder = save_outputs(peft_model, lm.processor, out, merge=bool(cfg['merge']))
    if (out / 'model').is_dir():
        lm.processor.image_processor.save_pretrained(str(out / 'model'))
    write_reranker_spec(out, cfg['model'], 'MMR5', {})
    write_json(out / 'train_info.json', {'examples': len(examples), 'sft_steps': sft_steps,
                                         'seconds': time.perf_counter() - start, 'output': str(folder)})
    return str(folder)
