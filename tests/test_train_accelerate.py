"""Training under ``accelerate launch``: two CPU processes (gloo) share every step's micro-batches, the first
writes the log and the adapter, and the losses equal those of one process with the same global batch.

``accelerate launch --cpu --num_processes 2`` starts a single process unless mpirun is configured (accelerate
1.x launches multi-CPU jobs through mpirun only), so the test uses accelerate's torchrun launcher
(``--multi_gpu``) with ``ACCELERATE_USE_CPU=1``, which keeps the processes on the CPU and on gloo."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyterrier_llmrank.pointwise import YesNo
from pyterrier_llmrank.train import get_recipe, load_reranker
from pyterrier_llmrank.train.common import read_log

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

#: Relative tolerance between the two-process and the single-process losses: the same global batch and no
#: dropout give the same step; only the order of the floating-point sums differs (an all-reduce of gradients).
RTOL = 1e-4


def _config(model, out):
    # 3 groups, 2 micro-batches of one group a step: each process runs one micro-batch of every step
    return dict(model=str(model), dataset='beir-scifact/train', output_dir=str(out), max_queries=3, n_negatives=3,
                steps=3, save_steps=2, batch_size=1, grad_accum=2, lr=1e-2, warmup_ratio=0.0, verbose=False,
                max_text_tokens=48, threads=1, lora={'dropout': 0.0})


def test_sft_two_processes_equal_one(tiny_llama, tmp_path):
    if shutil.which('accelerate', path=os.path.dirname(sys.executable)) is None:
        pytest.skip('accelerate launcher not installed next to this Python')
    single = get_recipe('sft')(_config(tiny_llama.path, tmp_path / 'single'))
    cfg_file = tmp_path / 'sft.json'
    cfg_file.write_text(json.dumps(_config(tiny_llama.path, tmp_path / 'ddp')))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]),
               HF_HUB_OFFLINE='1', TOKENIZERS_PARALLELISM='false', OMP_NUM_THREADS='1', ACCELERATE_USE_CPU='1')
    launcher = os.path.join(os.path.dirname(sys.executable), 'accelerate')
    cmd = [launcher, 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1', '--mixed_precision', 'no',
           '--dynamo_backend', 'no', '--main_process_port', '29531', '-m', 'pyterrier_llmrank.train', 'sft',
           '--config', str(cfg_file)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    ddp = tmp_path / 'ddp'
    summary = json.loads((ddp / 'summary.json').read_text())
    assert summary['processes'] == 2 and summary['finished']
    rows = read_log(ddp / 'log.csv')
    assert [r['step'] for r in rows] == ['1', '2', '3']  # written once, by the first process
    one = [float(r['loss']) for r in read_log(Path(single) / 'log.csv')]
    two = [float(r['loss']) for r in rows]
    assert two == pytest.approx(one, rel=RTOL)  # the second process's micro-batch is in every step's loss
    reranker = load_reranker(str(ddp), device='cpu')
    assert type(reranker) is YesNo
    pairs = YesNo(str(ddp), max_text_tokens=48, device='cpu')
    assert pairs.lm.name == str(ddp)
