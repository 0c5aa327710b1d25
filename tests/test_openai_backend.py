"""OpenAIBackend against a real OpenAI-compatible server (``transformers serve`` with SmolLM2 on loopback), against
a closed port, and against small HTTP servers of the test's own (garbage answers; many requests in flight).

Every server listens on 127.0.0.1 only; every wait is bounded; every server is stopped by its fixture.
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest
import torch

from pyterrier_llmrank import (DeARListwise, GenerateAnswer, HFGenerationBackend, QueryDecompose, QueryRewrite,
                               RankGPT, RankR1, Setwise)
from pyterrier_llmrank.backends import ChatPrompt, OpenAIBackend, OpenAIServerError
from pyterrier_llmrank.serving import TransformersServer, free_port

pytestmark = pytest.mark.slow

DOCS = {
    'q1': ('how do cats purr', [
        'Cats purr by rapidly twitching the muscles of the larynx while breathing in and out.',
        'The stock market closed higher on Tuesday after strong earnings reports.',
        'Purring is a sound made by cats; the vibration comes from the voice box.',
        'A recipe for banana bread with walnuts and cinnamon.']),
    'q2': ('symptoms of a heart attack', [
        'Chest pain, shortness of breath and pain in the left arm are common heart attack symptoms.',
        'The Eiffel Tower is in Paris.',
        'Heart attacks happen when blood flow to the heart is blocked.']),
}


def frame():
    rows = []
    for qid, (query, texts) in DOCS.items():
        for i, text in enumerate(texts):
            rows.append({'qid': qid, 'query': query, 'docno': f'{qid}d{i}', 'text': text,
                         'score': float(len(texts) - i), 'rank': i})
    return pd.DataFrame(rows)


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """One torch thread here and in the server: the cores are shared, and oversubscribed thread pools are many
    times slower than one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope='session')
def server(smollm2_starting_server):
    """``transformers serve`` with the real SmolLM2-135M-Instruct folder on a free loopback port (float32, CPU)."""
    return smollm2_starting_server.wait()


@pytest.fixture(scope='session')
def smollm2_starting_server():
    """The server, started (not yet answering); stopped at the end of the session."""
    srv = TransformersServer('smollm2-135m-instruct', device='cpu', dtype='float32', threads=1,
                             startup_timeout=180).start(wait=False)
    yield srv
    srv.stop()


@pytest.fixture(scope='session')
def hf_backend(smollm2_starting_server, smollm2):
    """In-process generation, one prompt per call (no padding), as the server runs each request."""
    return HFGenerationBackend(smollm2, batch_size=1)


@pytest.fixture(scope='session')
def served(hf_backend, server, smollm2):
    """The backend over the server, with the served model's tokenizer (passage truncation, Setwise's prefix)."""
    return OpenAIBackend(server.model, base_url=server.base_url, tokenizer=smollm2.tokenizer, concurrency=4,
                         timeout=60, max_retries=1)


# -- a real server ---------------------------------------------------------------------------------------------------

def test_rankgpt_same_answers_and_ranking_as_in_process(served, hf_backend):
    kw = dict(window=4, step=2, depth=4, max_new_tokens=24)
    via_server, in_process = RankGPT(served, **kw), RankGPT(hf_backend, **kw)
    a, b = via_server(frame()), in_process(frame())
    ta, tb = via_server.trace(), in_process.trace()
    assert len(ta) == 2 and ta['output'].tolist() == tb['output'].tolist()
    assert ta['answer'].tolist() == tb['answer'].tolist()
    key = ['qid', 'docno']
    pd.testing.assert_frame_equal(a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True))
    sa, sb = via_server.stats.per_query(), in_process.stats.per_query()
    # token accounting from the server's `usage`: the same prompt and answer tokens as in process
    assert sa['input_tokens'].tolist() == sb['input_tokens'].tolist()
    assert sa['generated_tokens'].tolist() == sb['generated_tokens'].tolist()
    assert sa['sequences'].tolist() == [1, 1] and sa['model_calls'].tolist() == [1, 1]
    assert (sa['seconds'] > 0).all()


def test_setwise_prefix_through_completions_endpoint_equals_in_process(served, hf_backend):
    via_server, in_process = Setwise(served, num_child=2, k=2), Setwise(hf_backend, num_child=2, k=2)
    before = served.counts['completions']
    a, b = via_server(frame()), in_process(frame())
    assert served.counts['completions'] - before == len(via_server.trace()) > 0
    assert via_server.trace()['output'].tolist() == in_process.trace()['output'].tolist()
    key = ['qid', 'docno']
    pd.testing.assert_frame_equal(a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True))
    assert via_server.stats.per_query()['input_tokens'].tolist() == in_process.stats.per_query()['input_tokens'].tolist()


def test_every_generative_reranker_and_rag_step_runs_unchanged(served, hf_backend):
    """DeARListwise, RankR1 and the RAG steps over the server give the in-process answers (greedy)."""
    one = frame().query('qid == "q2"')
    topic = one[['qid', 'query']].drop_duplicates()
    runs = [(lambda be: DeARListwise(be, window=3, step=1, depth=3, max_new_tokens=12), one),
            (lambda be: RankR1(be, num_child=2, k=1, max_new_tokens=12), one),
            (lambda be: QueryRewrite(be, max_new_tokens=12), topic),
            (lambda be: QueryDecompose(be, max_new_tokens=12), topic),
            (lambda be: GenerateAnswer(be, k=2, max_new_tokens=12), one)]
    for make, inp in runs:
        via_server, in_process = make(served), make(hf_backend)
        a, b = via_server(inp), in_process(inp)
        assert via_server.trace()['output'].tolist() == in_process.trace()['output'].tolist(), repr(via_server)
        pd.testing.assert_frame_equal(a, b)
        assert via_server.stats.per_query()['generated_tokens'].sum() > 0


def test_many_requests_in_flight_come_back_complete_and_in_order(server, smollm2):
    tok = smollm2.tokenizer
    backend = OpenAIBackend(server.model, base_url=server.base_url, concurrency=8, timeout=60, max_retries=1)
    # prompts of distinct lengths: the server's own prompt-token count tells which answer belongs to which prompt
    prompts = [ChatPrompt.of([{'role': 'user', 'content': ' '.join(['one'] * (i + 1))}])
               for i in range(32)]
    done = []
    gens = backend.generate(prompts, 1, progress=done.append)
    assert len(gens) == 32 and sum(done) == 32
    expected = [len(tok.apply_chat_template(p.as_dicts(), tokenize=True, add_generation_prompt=True,
                                            return_dict=True)['input_ids']) for p in prompts]
    assert [g.prompt_tokens for g in gens] == expected
    assert all(g.generated_tokens == 1 and isinstance(g.text, str) for g in gens)
    assert backend.counts['chat'] == 32 and backend.counts['malformed'] == 0


# -- a server that is down ----------------------------------------------------------------------------------------

def test_server_down_gives_a_clear_error_after_the_retries():
    port = free_port()  # nothing listens there
    backend = OpenAIBackend('some-model', base_url=f'http://127.0.0.1:{port}/v1', max_retries=2, timeout=2)
    start = time.monotonic()
    with pytest.raises(OpenAIServerError, match=rf"127\.0\.0\.1:{port}/v1/chat/completions \(model 'some-model'\) "
                                                r'after 2 retries'):
        RankGPT(backend, window=3, step=1, depth=3)(frame())
    assert time.monotonic() - start < 30


# -- servers of the test's own ------------------------------------------------------------------------------------

class _Local:
    """A ThreadingHTTPServer on 127.0.0.1 whose POST answers come from ``answer(path, body) -> (status, bytes)``."""

    def __init__(self, answer):
        local = self
        self.bodies, self.in_flight, self.most_in_flight = [], 0, 0
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
                with local.lock:
                    local.bodies.append(body)
                    local.in_flight += 1
                    local.most_in_flight = max(local.most_in_flight, local.in_flight)
                try:
                    status, data, kind = answer(self.path, body)
                finally:
                    with local.lock:
                        local.in_flight -= 1
                self.send_response(status)
                self.send_header('Content-Type', kind)
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}/v1'
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def _completion(path, text, usage=True):
    choice = {'index': 0, 'finish_reason': 'stop'}
    if path.endswith('/chat/completions'):
        choice['message'] = {'role': 'assistant', 'content': text}
    else:
        choice['text'] = text
    out = {'id': 'x', 'object': 'chat.completion', 'created': 0, 'model': 'm', 'choices': [choice]}
    if usage:
        out['usage'] = {'prompt_tokens': 7, 'completion_tokens': 3, 'total_tokens': 10}
    return json.dumps(out).encode()


GARBAGE = [
    lambda path: (200, _completion(path, '~~ lorem ipsum ### no ranking here ~~'), 'application/json'),
    lambda path: (200, b'{"unexpected": "shape"}', 'application/json'),
    lambda path: (200, b'<html>not json at all</html>', 'application/json'),
    lambda path: (200, b'plain text answer', 'text/plain'),
    lambda path: (200, _completion(path, None), 'application/json'),
    lambda path: (200, _completion(path, 'Passage Z?!', usage=False), 'application/json'),
]


@pytest.fixture
def garbage_server():
    count = iter(range(10 ** 6))
    srv = _Local(lambda path, body: GARBAGE[next(count) % len(GARBAGE)](path))
    yield srv
    srv.close()


def test_garbage_answers_are_unparsable_and_never_crash_the_run(garbage_server, smollm2):
    backend = OpenAIBackend('m', base_url=garbage_server.url, concurrency=3, max_retries=0, timeout=10)
    inp = frame()
    ranker = RankGPT(backend, window=2, step=1, depth=3, max_new_tokens=8)
    out = ranker(inp)
    trace = ranker.trace()
    assert len(trace) >= 4 and set(trace['status']) == {'unparsable'}
    assert (ranker.stats.per_query()['unparsable'] == trace.groupby('qid').size().to_numpy()).all()
    # nothing parsed: the first-stage order is kept
    first = out.sort_values(['qid', 'rank'])['docno'].tolist()
    assert first == inp.sort_values(['qid', 'rank'])['docno'].tolist()
    assert backend.counts['malformed'] >= 3 and backend.counts['usage_missing'] >= 1
    # Setwise's prefix through /completions (local tokenizer) over the same garbage
    backend = OpenAIBackend('m', base_url=garbage_server.url, tokenizer=smollm2.tokenizer, max_retries=0, timeout=10)
    setwise = Setwise(backend, num_child=2, k=2)
    setwise(inp)
    assert set(setwise.trace()['status']) == {'unparsable'} and backend.counts['completions'] > 0
    assert garbage_server.bodies[-1]['prompt'].endswith('<|im_start|>assistant\n Passage:')


def test_requests_in_flight_are_bounded_and_answers_keep_prompt_order():
    def answer(path, body):
        time.sleep(0.05)
        return 200, _completion(path, 'echo ' + body['messages'][-1]['content']), 'application/json'
    srv = _Local(answer)
    try:
        backend = OpenAIBackend('m', base_url=srv.url, concurrency=8, max_retries=0, timeout=10)
        prompts = [ChatPrompt.of([{'role': 'user', 'content': f'prompt {i}'}]) for i in range(32)]
        gens = backend.generate(prompts, 5)
        assert [g.text for g in gens] == [f'echo prompt {i}' for i in range(32)]
        assert 1 < srv.most_in_flight <= 8
        assert np.isclose(sum(g.calls for g in gens), 32)
        # the batch_size given to generate lowers the limit for that call
        srv.most_in_flight = 0
        backend.generate(prompts[:8], 5, batch_size=2)
        assert srv.most_in_flight <= 2
    finally:
        srv.close()


def test_decoding_settings_and_prefix_modes_as_sent():
    srv = _Local(lambda path, body: (200, _completion(path, ' Passage: B'), 'application/json'))
    try:
        prompt = ChatPrompt.of([{'role': 'user', 'content': 'which one?'}], prefix=' Passage:')
        greedy = OpenAIBackend('m', base_url=srv.url, stop=['\n'], prefix_mode='continue', max_retries=0)
        assert greedy.generate([prompt], 1, top_p=0.5, seed=3)[0].text == ' Passage: B'
        body = srv.bodies[-1]
        assert body['temperature'] == 0.0 and 'top_p' not in body and 'seed' not in body
        assert body['max_tokens'] == 1 and body['stop'] == ['\n']
        assert body['messages'][-1] == {'role': 'assistant', 'content': ' Passage:'}
        assert body['continue_final_message'] is True and body['add_generation_prompt'] is False
        sampled = OpenAIBackend('m', base_url=srv.url, max_retries=0)          # no tokenizer: 'instruct'
        gen = sampled.generate([prompt], 1, temperature=0.7, top_p=0.9, seed=5)[0]
        body = srv.bodies[-1]
        assert (body['temperature'], body['top_p'], body['seed']) == (0.7, 0.9, 5)
        assert body['messages'][-1]['content'] == 'which one?\n\nBegin your answer with "Passage:".'
        assert body['max_tokens'] == 1 + len(' Passage:')
        assert gen.text == ' B' and sampled.counts['instruct'] == 1
        assert (gen.prompt_tokens, gen.generated_tokens) == (7, 3)
    finally:
        srv.close()


def test_arguments_and_environment(monkeypatch):
    monkeypatch.setenv('OPENAI_BASE_URL', 'http://127.0.0.1:9/v1/')
    monkeypatch.setenv('OPENAI_API_KEY', 'sk-test')
    backend = OpenAIBackend('m')
    assert (backend.base_url, backend.api_key, backend.tokenizer, backend.prefix_mode) == (
        'http://127.0.0.1:9/v1', 'sk-test', None, 'instruct')
    assert repr(backend) == "OpenAIBackend('m', base_url='http://127.0.0.1:9/v1')"
    monkeypatch.delenv('OPENAI_API_KEY')
    assert OpenAIBackend('m', base_url='http://127.0.0.1:8/v1').api_key == 'EMPTY'
    import pickle
    again = pickle.loads(pickle.dumps(backend))
    assert again.base_url == backend.base_url and again.client is not None
    for bad, match in [(dict(concurrency=0), 'concurrency'), (dict(prefix_mode='x'), 'prefix_mode'),
                       (dict(prefix_mode='completions'), 'tokenizer'), (dict(timeout=0), 'timeout')]:
        with pytest.raises(ValueError, match=match):
            OpenAIBackend('m', **bad)
