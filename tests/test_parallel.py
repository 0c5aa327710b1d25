"""Query sharding on PyTerrier's parallel backends: rerankers pickle without their weights, load the model once
per worker process, and give exactly the serial output (real SmolLM2, UPR and ICR, TREC DL 2019 BM25)."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pyterrier_llmrank import ICR, UPR, datasets

REPO = Path(__file__).resolve().parent.parent
MODEL = 'smollm2-135m-instruct'

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings('ignore:.parallel\\(\\) is experimental')]


@pytest.fixture(scope='module')
def run(data_dir):
    """BM25 top 5 of two DL19 queries."""
    ds = datasets.load('msmarco-passage-trec-dl-2019')
    return ds.get_run('bm25', num_results=5)(ds.get_topics().head(2))


@pytest.fixture(scope='module')
def rerankers():
    return {'UPR': UPR(MODEL, kind='causal', device='cpu', dtype='float32'),
            'ICR': ICR(MODEL, max_words=64, device='cpu', dtype='float32')}


@pytest.fixture(scope='module')
def serial(rerankers, run):
    return {name: r(run) for name, r in rerankers.items()}


def ordered(df):
    return df.sort_values(['qid', 'rank']).reset_index(drop=True)


def test_pickle_has_no_weights(rerankers):
    for r in rerankers.values():
        data = pickle.dumps(r)
        assert len(data) < 50_000  # the weights are ~540 MB in float32
        copy = pickle.loads(data)  # in the same process: the live handle, shared
        assert copy.lm is r.lm and copy.model is r.model and copy.tokenizer is r.tokenizer


def test_pair_handle_pickles_with_weights(tiny_llama):
    upr = UPR(tiny_llama.pair, kind='causal', device='cpu')
    assert upr.lm.spec is None
    copy = pickle.loads(pickle.dumps(upr))
    assert copy.model is not upr.model and copy.model is copy.lm.model
    frame = pd.DataFrame([['1', 'a cat', 'd1', 'cats are small mammals'], ['1', 'a cat', 'd2', 'Paris']],
                         columns=['qid', 'query', 'docno', 'text'])
    pd.testing.assert_frame_equal(copy(frame), upr(frame))


def test_worker_loads_once(rerankers, tmp_path):
    """Unpickled in another process, two pickles of rerankers over the same model load it once (pinned)."""
    blob = tmp_path / 'rerankers.pkl'
    blob.write_bytes(pickle.dumps([rerankers['UPR'], rerankers['ICR']]))
    code = (
        'import pickle, sys\n'
        'from pyterrier_llmrank import models\n'
        'data = open(sys.argv[1], "rb").read()\n'
        'upr, icr = pickle.loads(data)\n'
        'upr2, icr2 = pickle.loads(data)\n'  # a second task in the same worker
        'assert upr.lm is icr.lm is upr2.lm is icr2.lm, "loaded more than once"\n'
        'assert upr2.model is upr.lm.model and icr2.tokenizer is upr.lm.tokenizer\n'
        'assert len(models.pinned_handles()) == 1\n'
        'print("ok")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))
    out = subprocess.run([sys.executable, '-c', code, str(blob)], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith('ok')


@pytest.mark.parametrize('name', ['UPR', 'ICR'])
def test_joblib_equals_serial(rerankers, serial, run, name):
    par = rerankers[name].parallel(2, backend='joblib')(run)
    pd.testing.assert_frame_equal(ordered(par), ordered(serial[name]))


def test_ray_equals_serial(rerankers, serial, run):
    ray = pytest.importorskip('ray')
    # Ray's workers import the package from PYTHONPATH: this checkout's, not another installed copy.
    ray.init(address='local', include_dashboard=False, num_cpus=2, log_to_driver=False,
             runtime_env={'env_vars': {'PYTHONPATH': str(REPO), 'HF_HUB_OFFLINE': '1',
                                       'TOKENIZERS_PARALLELISM': 'false'}})
    try:
        par = rerankers['UPR'].parallel(2, backend='ray')(run)
        pd.testing.assert_frame_equal(ordered(par), ordered(serial['UPR']))
    finally:
        ray.shutdown()
