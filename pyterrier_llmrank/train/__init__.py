"""Training recipes for the rerankers of this toolkit: ``python -m pyterrier_llmrank.train RECIPE --config FILE``.

Recipes (each a function taking the configuration mapping and returning the output folder, whose content loads
straight into the named reranker):

=================  ==========================================================  =====================
``distill``        DeAR stage 1 distillation (:mod:`.distill`)                 ``DeARPointwise``
``sft``            yes/no scorer, SFT on the "Yes"/"No" token (:mod:`.yesno`)  ``YesNo``
``contrastive``    yes/no scorer, InfoNCE over a group (:mod:`.yesno`)         ``YesNo``
``upr``            UPR, InfoNCE on the query likelihood (:mod:`.qlm`)          ``UPR``
``grpo-rank-r1``   GRPO for Rank-R1 (:mod:`.grpo`)                             ``RankR1``
``prorank``        ProRank prompt warm-up + score learning (:mod:`.prorank`)   ``ProRank``
``idcm``           IDCM: ETM, then ESM distilled from it (:mod:`.idcm`)        ``IDCM``
``mm-r5``          MM-R5: SFT warm-up, then GRPO (:mod:`.mmr5`)                ``MMR5``
``vl-sft``         multimodal yes/no, SFT (:mod:`.vlyesno`)                    ``VLYesNo``
``vl-contrastive`` multimodal yes/no, InfoNCE (:mod:`.vlyesno`)                ``VLYesNo``
=================  ==========================================================  =====================

Training data come from :func:`pyterrier_llmrank.train.data.training_groups`.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict

__all__ = ['RECIPES', 'get_recipe', 'run_recipe', 'load_reranker']

#: Recipe name -> ``module:function`` (imported on use).
RECIPES: Dict[str, str] = {
    'distill': 'pyterrier_llmrank.train.distill:main',
    'sft': 'pyterrier_llmrank.train.yesno:main_sft',
    'contrastive': 'pyterrier_llmrank.train.yesno:main_contrastive',
    'upr': 'pyterrier_llmrank.train.qlm:main',
    'grpo-rank-r1': 'pyterrier_llmrank.train.grpo:main_rank_r1',
    'prorank': 'pyterrier_llmrank.train.prorank:main',
    'idcm': 'pyterrier_llmrank.train.idcm:main',
    'mm-r5': 'pyterrier_llmrank.train.mmr5:main',
    'vl-sft': 'pyterrier_llmrank.train.vlyesno:main_sft',
    'vl-contrastive': 'pyterrier_llmrank.train.vlyesno:main_contrastive',
}


def get_recipe(name: str) -> Callable[[Dict[str, Any]], str]:
    """The entry point of recipe ``name`` (imported lazily)."""
    if name not in RECIPES:
        raise ValueError(f'unknown recipe {name!r}; available: {", ".join(RECIPES)}')
    module, func = RECIPES[name].split(':')
    return getattr(importlib.import_module(module), func)


def load_reranker(folder: str, **overrides: Any) -> Any:
    """The reranker of a recipe's output folder (``reranker.json``), built with the arguments it was trained for;
    ``overrides`` (``batch_size``, ``device``, ...) are passed on. Only the toolkit's rerankers
    (:data:`~pyterrier_llmrank.train.recipe.RERANKERS`) are built: any other class name is refused (``ValueError``)."""
    from pyterrier_llmrank.train.recipe import load_reranker as _load
    return _load(folder, **overrides)


def run_recipe(name: str, config: Dict[str, Any]) -> str:
    """Runs recipe ``name`` with the configuration mapping ``config``; returns the output folder."""
    return str(get_recipe(name)(config))
