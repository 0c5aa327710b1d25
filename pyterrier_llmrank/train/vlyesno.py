"""SFT vs contrastive training of the multimodal yes/no reranker (:class:`~pyterrier_llmrank.mmyesno.VLYesNo`):
recipes ``vl-sft`` and ``vl-contrastive``.

Dai et al., "Supervised Fine-Tuning or Contrastive Learning? Towards Better Multimodal LLM Reranking", arXiv
2510.14824, 2025: the same vision-language model, prompt (the Lychee/GMR template of ``VLYesNo``) and answer
position, trained either with ``vl-sft``, the cross-entropy over the vocabulary of the ``"yes"`` (positive) or
``"no"`` (negative) token, or with ``vl-contrastive``, InfoNCE over each group on ``z_yes - z_no``; the losses are
those of the text recipes (:func:`~pyterrier_llmrank.train.yesno.sft_loss`,
:func:`~pyterrier_llmrank.train.yesno.infonce_loss`), and the loop is theirs (:mod:`~pyterrier_llmrank.train.loop`).
The paper's training data and hyper-parameters are not published with code; the defaults are the text recipes'.
LoRA adapts the linear layers of the language model only (the vision tower is frozen), and the output folder
holds the adapter, which ``VLYesNo(folder)`` loads on its base and merges.

Data: a JSONL file (``data``), one group a line: ``{"query": str or null, "query_image": path (optional),
"positive": {"text": ..., "image": ...}, "negatives": [{"text": ..., "image": ...}, ...]}``, every group with the
same number of negatives; image paths relative to the file's folder.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from pyterrier_llmrank.mmyesno import LYCHEE_DEFAULT_INSTRUCTION
from pyterrier_llmrank.train.common import check_keys, jsonl_records, lora_config, set_seed, set_threads
from pyterrier_llmrank.train.loop import LOOP_DEFAULTS, train_loop
from pyterrier_llmrank.train.mmr5 import language_linear_modules
from pyterrier_llmrank.train.recipe import finish
from pyterrier_llmrank.train.yesno import yesno_objectives

__all__ = ['VL_YESNO_DEFAULTS', 'load_groups', 'main_sft', 'main_contrastive']

VL_YESNO_DEFAULTS: Dict[str, Any] = {
    **LOOP_DEFAULTS, 'model': None, 'data': None, 'output_dir': None, 'instruction': LYCHEE_DEFAULT_INSTRUCTION,
    'lora_r': 16, 'lora_alpha': 32, 'lora_dropout': 0.05, 'tau': 1.0, 'min_pixels': None, 'max_pixels': None,
    'seed': 42, 'threads': None, 'verbose': False, 'device': 'cpu',
}


def _doc(d: Any, root: Path) -> Dict[str, Any]:
    d = {'text': d} if isinstance(d, str) else dict(d)
    if d.get('image') is not None and not Path(d['image']).is_absolute():
        d['image'] = str(root / d['image'])
    return d


def load_groups(path: Any) -> List[Dict[str, Any]]:
    """The training groups of a JSONL file (see the module documentation)."""
    path = Path(path)
    groups = []
    for n, g in jsonl_records(path):
        if 'positive' not in g or not g.get('negatives'):
            raise ValueError(f'{path}:{n}: a group needs a positive and negatives')
        qi = g.get('query_image')
        groups.append({'query': g.get('query'), 'query_image': str(path.parent / qi) if qi else None,
                       'positive': _doc(g['positive'], path.parent),
                       'negatives': [_doc(d, path.parent) for d in g['negatives']]})
    if not groups:
        raise ValueError(f'{path}: no training groups')
    if len({len(g['negatives']) for g in groups}) != 1:
        raise ValueError(f'{path}: every group needs the same number of negatives')
    return groups


def _run(config: Dict[str, Any], recipe: str) -> str:
    from peft import get_peft_model
    from pyterrier_llmrank.mmyesno import VLYesNo
    from pyterrier_llmrank.models import load_vlm
    check_keys(config, VL_YESNO_DEFAULTS, recipe)
    cfg = {**VL_YESNO_DEFAULTS, **config}
    for key in ('model', 'data', 'output_dir'):
        if not cfg[key]:
            raise ValueError(f'recipe {recipe} needs {key}')
    set_threads(cfg['threads'])
    set_seed(int(cfg['seed']))
    t0 = time.time()
    groups = load_groups(cfg['data'])
    lm = load_vlm(cfg['model'], device=cfg['device'], dtype='float32', min_pixels=cfg['min_pixels'],
                  max_pixels=cfg['max_pixels'], shared=False)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    pc = lora_config(cfg['lora_r'], cfg['lora_alpha'], cfg['lora_dropout'], language_linear_modules(lm.model),
                     task_type='CAUSAL_LM')
    pc.base_model_name_or_path = str(cfg['model'])
    peft = get_peft_model(lm.model, pc)
    scorer = VLYesNo(lm, instruction=cfg['instruction'], device=cfg['device'])
    tau = float(cfg['tau'])

    def loss_fn(batch: List[Dict[str, Any]]) -> Tuple[torch.Tensor, Dict[str, float]]:
        items = [scorer.encode_pair(g['query'], d.get('text'), g['query_image'], d.get('image'))
                 for g in batch for d in [g['positive'], *g['negatives']]]
        logits = peft(**scorer.model_inputs(items)).logits[:, -1]
        sft, nce, margin = yesno_objectives(logits, len(batch), scorer.yes_id, scorer.no_id, tau)
        loss = sft if recipe == 'vl-sft' else nce
        return loss, {'sft': float(sft.detach()), 'infonce': float(nce.detach()), 'margin': margin}

    summary = train_loop(peft, groups, loss_fn, output_dir=cfg['output_dir'], cfg=cfg, seed=int(cfg['seed']),
                         log_columns=['sft', 'infonce', 'margin'], desc=recipe, verbose=bool(cfg['verbose']))
    summary.update(groups=len(groups), total_seconds=round(time.time() - t0, 2))
    if not summary['finished']:
        return str(cfg['output_dir'])
    kwargs = {} if cfg['instruction'] == LYCHEE_DEFAULT_INSTRUCTION else {'instruction': cfg['instruction']}
    folder = finish(peft, lm.processor, cfg, summary, 'VLYesNo', kwargs)
    lm.processor.image_processor.save_pretrained(folder)
    return folder


def main_sft(config: Dict[str, Any]) -> str:
    """Runs the ``vl-sft`` recipe; returns the output folder (loads with ``VLYesNo(folder)``)."""
    return _run(config, 'vl-sft')


def main_contrastive(config: Dict[str, Any]) -> str:
    """Runs the ``vl-contrastive`` recipe; returns the output folder (loads with ``VLYesNo(folder)``)."""
    return _run(config, 'vl-contrastive')
