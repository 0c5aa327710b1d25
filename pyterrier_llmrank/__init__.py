"""pyterrier-llmrank: LLM document rerankers as PyTerrier transformers."""
__version__ = '0.1.0'

from pyterrier_llmrank import models
from pyterrier_llmrank._base import EfficiencyStats

__all__ = ['models', 'EfficiencyStats']
