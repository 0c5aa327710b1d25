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


# Tiny randomly initialised models with real tokenizers (pyterrier_llmrank.testing), built once per session in a
# temporary folder (a few seconds in all); each is a TinyModel(model, tokenizer, path), also usable as
# ``.pair`` -> (model, tokenizer). The models are shared: do not train or modify them in a test.

@pytest.fixture(scope='session')
def tiny_models_dir(tmp_path_factory):
    """Session folder holding the tiny models (one sub-folder each)."""
    return tmp_path_factory.mktemp('tiny_models')


@pytest.fixture(scope='session')
def tiny_t5(tiny_models_dir):
    """Tiny T5ForConditionalGeneration (d_model 64, 2+2 layers, n_positions 512) + trained SentencePiece T5Tokenizer."""
    from pyterrier_llmrank.testing import build_tiny_t5
    return build_tiny_t5(tiny_models_dir / 't5')


@pytest.fixture(scope='session')
def tiny_t5_spiece(tiny_models_dir):
    """Folder of a tiny T5 as castorini ships monoT5: only ``spiece.model``, ``config.json`` and the weights."""
    from pyterrier_llmrank.testing import build_tiny_t5_spiece
    return build_tiny_t5_spiece(tiny_models_dir / 't5-spiece')


@pytest.fixture(scope='session')
def tiny_bert(tiny_models_dir):
    """Tiny BertForSequenceClassification (hidden 64, 2 layers, 1 label) + trained WordPiece BertTokenizerFast."""
    from pyterrier_llmrank.testing import build_tiny_bert
    return build_tiny_bert(tiny_models_dir / 'bert')


@pytest.fixture(scope='session')
def tiny_distilbert(tiny_models_dir, tiny_bert):
    """Tiny DistilBertModel (dim 64, 2 layers), sharing tiny_bert's tokenizer."""
    from pyterrier_llmrank.testing import build_tiny_distilbert
    return build_tiny_distilbert(tiny_models_dir / 'distilbert', tokenizer=tiny_bert.tokenizer)


@pytest.fixture(scope='session')
def tiny_llama(tiny_models_dir):
    """Tiny LlamaForCausalLM (hidden 64, 2 layers, 4 heads, 2 kv heads) with SmolLM2's tokenizer (always: token
    ids pinned by golden tests do not depend on the cache)."""
    from pyterrier_llmrank.testing import build_tiny_llama
    return build_tiny_llama(tiny_models_dir / 'llama')


@pytest.fixture(scope='session')
def tiny_qwen_vl(tiny_models_dir):
    """Tiny Qwen2_5_VLForConditionalGeneration (2 text layers of width 64, mrope [2, 3, 3], 2 vision layers) with a
    BPE tokenizer holding Qwen's vision tokens and Qwen2.5-VL's chat template; a TinyVLM(model, processor, path)."""
    from pyterrier_llmrank.testing import build_tiny_qwen2_5_vl
    return build_tiny_qwen2_5_vl(tiny_models_dir / 'qwen2_5_vl')
