"""Resumable runs (pyterrier_llmrank.caching): real interruptions (SIGKILL) of runs on the real SmolLM2, settings
that must not share scores, two processes filling one cache, damaged cache files, pt.Experiment's save_dir, and
the training recipes' refusal of a checkpoint written with another configuration."""
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyterrier as pt
import pytest
from ir_measures import nDCG

import pyterrier_llmrank as llmrank
from pyterrier_llmrank.caching import CachedQueries, CachedScorer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import caching_worker  # noqa: E402

QUERIES, DEPTH = 3, 3


def start(method, cache, out):
    env = dict(os.environ, HF_HUB_OFFLINE='1', TOKENIZERS_PARALLELISM='false')
    return subprocess.Popen([sys.executable, str(HERE / 'caching_worker.py'), method, str(cache), str(out),
                             str(QUERIES), str(DEPTH)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc, out):
    log = proc.communicate(timeout=400)[0].decode(errors='replace')
    assert proc.returncode == 0, log[-3000:]
    with open(out, 'rb') as f:
        return pickle.load(f)


def finished_queries(cache, method):
    """Queries written to the cache so far (0 while the cache folder is not built)."""
    dbs = list(Path(cache).glob('*/db.sqlite3'))
    if not dbs:
        return 0
    sql = 'SELECT COUNT(DISTINCT [group]) FROM cache' if method == 'upr' else 'SELECT COUNT(*) FROM queries'
    try:
        with sqlite3.connect(dbs[0], timeout=30) as db:
            return db.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # the table is being created
        return 0


def interrupted_then_resumed(method, tmp_path):
    """Kill a run with SIGKILL once its first query is in the cache, run again; (result, stats, done at kill)."""
    cache, out = tmp_path / 'cache', tmp_path / 'out.pkl'
    proc = start(method, cache, out)
    deadline = time.time() + 300
    while finished_queries(cache, method) < 1:
        assert proc.poll() is None, proc.communicate()[0].decode(errors='replace')[-3000:]
        assert time.time() < deadline, 'no query was written in 300 s'
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    done = finished_queries(cache, method)
    assert 1 <= done < QUERIES, f'{done} queries were finished when the run was killed'
    resumed = finish(start(method, cache, out), out)
    return resumed, done


def sort(frame):
    return frame.sort_values(['qid', 'docno']).reset_index(drop=True)


@pytest.fixture(scope='module')
def inputs():
    return caching_worker.inputs(QUERIES, DEPTH)


@pytest.fixture(scope='module')
def upr_two_processes(tmp_path_factory):
    """Two processes filling one fresh cache with the same UPR run at once."""
    root = tmp_path_factory.mktemp('two')
    procs = [(start('upr', root / 'cache', root / f'out{i}.pkl'), root / f'out{i}.pkl') for i in range(2)]
    results = [finish(p, out) for p, out in procs]
    return root / 'cache', results


@pytest.mark.slow
def test_two_processes_fill_one_cache_without_corruption(upr_two_processes, inputs):
    cache, (a, b) = upr_two_processes
    pd.testing.assert_frame_equal(a['result'], b['result'])
    db, = cache.glob('*/db.sqlite3')
    with sqlite3.connect(db) as con:
        assert con.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
        assert con.execute('SELECT COUNT(*) FROM cache').fetchone()[0] == len(inputs)
    # between them, every query was computed at least once; a third run computes nothing
    assert set(a['stats']['qid']) | set(b['stats']['qid']) == set(inputs['qid'])


@pytest.mark.slow
def test_upr_killed_part_way_resumes_without_recomputing(upr_two_processes, tmp_path):
    resumed, done = interrupted_then_resumed('upr', tmp_path)
    reference = upr_two_processes[1][0]['result']  # an uninterrupted run
    pd.testing.assert_frame_equal(sort(resumed['result']), sort(reference))
    # the queries finished before the kill cost no model call in the resumed run
    assert len(resumed['stats']) == QUERIES - done
    assert resumed['stats']['model_calls'].sum() > 0


@pytest.mark.slow
def test_rankgpt_killed_part_way_resumes_without_recomputing(tmp_path, inputs):
    resumed, done = interrupted_then_resumed('rankgpt', tmp_path)
    import torch
    torch.set_num_threads(1)
    model = caching_worker.reranker('rankgpt')
    reference = model(inputs)  # uncached and uninterrupted
    pd.testing.assert_frame_equal(sort(resumed['result']), sort(reference))
    assert len(resumed['stats']) == QUERIES - done
    assert resumed['stats']['sequences'].sum() < model.stats.per_query()['sequences'].sum()


# -- settings never share scores (tiny model: fast) ---------------------------------------------------------------

def calls(reranker):
    return float(reranker.stats.per_query()['sequences'].sum()) if len(reranker.stats.per_query()) else 0.0


@pytest.fixture(scope='module')
def small_inputs(inputs):
    return inputs[inputs['qid'] == inputs['qid'].iloc[0]]


def test_a_changed_setting_never_reads_another_settings_scores(tmp_path, tiny_llama, small_inputs):
    from pyterrier_llmrank.testing import build_tiny_llama
    n = len(small_inputs)

    def run(reranker):
        before = calls(reranker)
        out = llmrank.cached(reranker, tmp_path)(small_inputs)
        return out, calls(reranker) - before

    base = dict(device='cpu', dtype='float32')
    yesno = llmrank.YesNo(tiny_llama.pair, **base)
    first, cost = run(yesno)
    assert cost == n
    again, cost = run(yesno)
    assert cost == 0
    pd.testing.assert_frame_equal(first, again)
    assert run(llmrank.YesNo(tiny_llama.pair, **base))[1] == 0   # same settings, another object: read
    assert run(llmrank.YesNo(tiny_llama.pair, prompt='Q: {query}\nD: {text}\nRelevant:', **base))[1] == n  # prompt
    assert run(llmrank.YesNo(tiny_llama.pair, max_text_tokens=8, **base))[1] == n  # truncation
    other = build_tiny_llama(tmp_path / 'other-llama', seed=1)  # same architecture, other weights
    assert run(llmrank.YesNo(other.pair, **base))[1] == n
    upr = llmrank.UPR(tiny_llama.pair, **base)
    assert run(upr)[1] > 0 and run(llmrank.UPR(tiny_llama.pair, max_passage_tokens=20, **base))[1] > 0
    assert len(list(tmp_path.glob('*/settings.json'))) == 6  # one folder per setting
    # a changed text is another key: never the old text's score
    changed = small_inputs.assign(text=small_inputs['text'] + ' more words')
    before = calls(yesno)
    llmrank.cached(yesno, tmp_path)(changed)
    assert calls(yesno) - before == n


def test_per_query_cache_key_covers_candidates_and_settings(tmp_path, tiny_llama, small_inputs):
    rg = llmrank.RankGPT(tiny_llama.pair, window=3, step=3, max_new_tokens=4, batch_size=1, device='cpu')
    c = llmrank.cached(rg, tmp_path)
    assert isinstance(c, CachedQueries)
    a = c(small_inputs)
    assert (c.hits, c.misses) == (0, 1)
    b = c(small_inputs)
    assert (c.hits, c.misses) == (1, 1)
    pd.testing.assert_frame_equal(a, b)
    assert len(c.trace()) == 2 * len(rg.trace())  # the trace of the cached query is restored
    c(small_inputs.iloc[::-1].assign(rank=lambda d: d['rank'].to_numpy()[::-1]))  # another first-stage order
    assert c.misses == 2
    llmrank.cached(llmrank.RankGPT(tiny_llama.pair, window=3, step=3, max_new_tokens=5, batch_size=1,
                                   device='cpu'), tmp_path)(small_inputs)
    assert len(list(tmp_path.glob('*/settings.json'))) == 2


# -- damaged files ----------------------------------------------------------------------------------------------

def test_damaged_entry_is_recomputed_and_damaged_file_is_named(tmp_path, tiny_llama, small_inputs):
    rg = llmrank.RankGPT(tiny_llama.pair, window=3, step=3, max_new_tokens=4, batch_size=1, device='cpu')
    ref = llmrank.cached(rg, tmp_path)(small_inputs)
    db, = tmp_path.glob('*/db.sqlite3')
    with sqlite3.connect(db) as con:  # flip bytes inside the stored entry
        value, = con.execute('SELECT value FROM queries').fetchone()
        value = bytearray(value)
        value[len(value) // 2] ^= 0xFF
        con.execute('UPDATE queries SET value = ?', (bytes(value),))
    before = calls(rg)
    with pytest.warns(UserWarning, match='db.sqlite3.*damaged'):
        again = llmrank.cached(rg, tmp_path)(small_inputs)
    assert calls(rg) > before  # recomputed, not read
    pd.testing.assert_frame_equal(again, ref)
    db.write_bytes(db.read_bytes()[:1000])  # a truncated database file
    with pytest.raises(RuntimeError, match=str(db).replace('.', r'\.')):
        llmrank.cached(rg, tmp_path)(small_inputs)

    yesno = llmrank.YesNo(tiny_llama.pair, device='cpu')
    scorer = llmrank.cached(yesno, tmp_path / 'pointwise')
    assert isinstance(scorer, CachedScorer)
    scorer(small_inputs)
    scorer.close()
    sdb, = (tmp_path / 'pointwise').glob('*/db.sqlite3')
    sdb.write_bytes(sdb.read_bytes()[:1000])
    with pytest.raises(RuntimeError, match='db.sqlite3.*damaged'):
        llmrank.cached(yesno, tmp_path / 'pointwise')(small_inputs)


# -- pipelines, experiments, training ---------------------------------------------------------------------------

def test_experiment_save_dir_reuse_and_cascade(tmp_path, tiny_llama, inputs):
    base = dict(device='cpu', dtype='float32')
    yesno = llmrank.YesNo(tiny_llama.pair, **base)
    rg = llmrank.RankGPT(tiny_llama.pair, window=3, step=3, max_new_tokens=4, batch_size=1, device='cpu')
    first = pt.Transformer.from_df(inputs)
    cascade = llmrank.passage_cascade(None, llmrank.cached(yesno, tmp_path / 'cache'), length=8, stride=8)
    systems = {'bm25': first, 'bm25-yesno': first >> llmrank.cached(yesno, tmp_path / 'cache'),
               'bm25-rankgpt': first >> llmrank.cached(rg, tmp_path / 'cache'), 'bm25-cascade-yesno': first >> cascade}
    topics = inputs[['qid', 'query']].drop_duplicates()
    qrels = pd.DataFrame({'qid': inputs['qid'], 'docno': inputs['docno'], 'label': 1})
    runs = tmp_path / 'runs'
    runs.mkdir()

    def experiment():
        return pt.Experiment(list(systems.values()), topics, qrels, [nDCG @ 3], names=list(systems),
                             save_dir=str(runs), save_mode='reuse')

    a = experiment()
    assert sorted(p.name for p in runs.glob('*.res.gz')) == sorted(f'{n}.res.gz' for n in systems)
    spent = calls(yesno), calls(rg)
    b = experiment()
    assert (calls(yesno), calls(rg)) == spent
    pd.testing.assert_frame_equal(a, b)
    for p in runs.glob('*.res.gz'):  # without the run files, the caches answer: still no model call
        p.unlink()
    pd.testing.assert_frame_equal(experiment(), a)
    assert (calls(yesno), calls(rg)) == spent


def test_training_refuses_a_checkpoint_of_another_config(tmp_path):
    from pyterrier_llmrank.train.common import check_run_config
    cfg = {'model': 'smollm2-135m-instruct', 'lr': 1e-4, 'steps': 10}
    check_run_config(tmp_path, cfg, resuming=False)
    check_run_config(tmp_path, dict(cfg), resuming=True)  # same settings: resumes
    with pytest.raises(ValueError, match='lr'):
        check_run_config(tmp_path, {**cfg, 'lr': 2e-4}, resuming=True)
