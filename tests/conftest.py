"""Shared fixtures. Tests run offline: the hub is never contacted."""
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get('PYTERRIER_LLMRANK_DATA', REPO.parent / 'shared' / 'data'))


@pytest.fixture(scope='session')
def data_dir():
    """The offline test collections (../shared/data)."""
    if not DATA.exists():
        pytest.fail(f'test collections not found at {DATA}; set PYTERRIER_LLMRANK_DATA')
    return DATA


@pytest.fixture(scope='session')
def smollm2():
    """The real SmolLM2-135M-Instruct as a (model, tokenizer) pair on the CPU in float32."""
    from pyterrier_llmrank.models import load_causal_lm
    return load_causal_lm('smollm2-135m-instruct', device='cpu', dtype='float32')
