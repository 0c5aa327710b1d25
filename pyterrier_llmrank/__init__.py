"""pyterrier-llmrank: LLM document rerankers as PyTerrier transformers."""
__version__ = '0.1.0'

from pyterrier_llmrank import datasets, dense, fusion, models
from pyterrier_llmrank.base import EfficiencyStats
from pyterrier_llmrank.upr import UPR
from pyterrier_llmrank.monot5 import DuoT5, MonoT5
from pyterrier_llmrank.pointwise import DeARPointwise, ProRank, YesNo
from pyterrier_llmrank.backends import (GenerationBackend, HFGenerationBackend, OpenAIBackend, ScriptedBackend,
                                       VLLMBackend)
from pyterrier_llmrank.listwise import DeARListwise, RankGPT
from pyterrier_llmrank.setwise import RankR1, Setwise
from pyterrier_llmrank.icr import ICR
from pyterrier_llmrank.idcm import IDCM, IDCMModel
from pyterrier_llmrank.cascade import TopPassages, aggregate_passages, passage_cascade, split_passages
from pyterrier_llmrank.dense import DenseRetriever, minilm_scorer
from pyterrier_llmrank.ocr import OCR
from pyterrier_llmrank.fusion import Fusion, Hybrid
from pyterrier_llmrank.query import GenerateAnswer, QueryDecompose, QueryRewrite, SubQueryRetrieve
from pyterrier_llmrank.caching import cached

__all__ = ['datasets', 'dense', 'fusion', 'models', 'EfficiencyStats', 'UPR', 'MonoT5', 'DuoT5', 'ProRank',
           'DeARPointwise', 'YesNo',
           'GenerationBackend', 'HFGenerationBackend', 'OpenAIBackend', 'ScriptedBackend', 'VLLMBackend', 'RankGPT',
           'DeARListwise', 'Setwise', 'RankR1', 'ICR', 'IDCM', 'IDCMModel',
           'passage_cascade', 'split_passages', 'TopPassages', 'aggregate_passages', 'minilm_scorer',
           'DenseRetriever', 'Hybrid', 'Fusion', 'QueryRewrite', 'QueryDecompose', 'SubQueryRetrieve', 'GenerateAnswer',
           'cached', 'OCR']

#: Multimodal rerankers, imported on first use (their vision-language imports are slow).
_LAZY = {'MMR5': 'pyterrier_llmrank.mmr5', 'VLYesNo': 'pyterrier_llmrank.mmyesno'}
__all__ += list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
