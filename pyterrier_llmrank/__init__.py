"""pyterrier-llmrank: LLM document rerankers as PyTerrier transformers."""
__version__ = '0.1.0'

from pyterrier_llmrank import datasets, models
from pyterrier_llmrank._base import EfficiencyStats
from pyterrier_llmrank.monot5 import DuoT5, MonoT5
from pyterrier_llmrank.upr import UPR

__all__ = ['datasets', 'models', 'EfficiencyStats', 'UPR', 'MonoT5', 'DuoT5']
