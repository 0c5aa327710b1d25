"""Peer equality: our rerankers against the published implementations, on the tiny models and DL19 passages.

* ``Setwise`` against llm-rankers 0.0.2 ``SetwiseLlmRanker`` (ielab/llm-rankers ``llmrankers/setwise.py``): the same
  LLM calls (token ids), the same answers and the same final ranking;
* ``RankGPT`` against llm-rankers 0.0.2 ``ListwiseLlmRanker`` (``llmrankers/listwise.py``): the same prompts, raw
  answers and ranking;
* ``MonoT5`` against rerankers 0.10.0 ``T5Ranker`` (AnswerDotAI/rerankers ``rerankers/models/t5ranker.py``);
* the defaults of ``Setwise`` and ``RankR1`` against the reference scripts.

A random tiny model answers with random tokens, which would leave every comparison unparsable and test only the
no-swap path. The causal tests therefore run a *steered* copy of the tiny Llama: the logits of a few answer tokens
(labels or digits, one out-of-range label, one word) are centred over calibration prompts, scaled to unit spread
and raised by :data:`STEER_BIAS`, so that the greedy answer is one of them, chosen by the prompt (for RankGPT,
hooks also alternate numbers and ``>`` and bar repeated numbers, so that answers are permutations). Both sides run
that same model object; every ``generate`` call is recorded (prompt ids without padding, generated ids).

The references are test dependencies (setup.cfg ``test``, requirements.txt): when one is missing these tests
fail, they never skip.
"""
import copy
import inspect
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

try:  # the references of the equality claims: missing, the tests fail (never skip)
    from llmrankers.listwise import ListwiseLlmRanker
    from llmrankers.rankers import SearchResult
    from llmrankers.setwise import SetwiseLlmRanker
    from rerankers.models.t5ranker import T5Ranker
except ImportError as e:
    raise ImportError('the peer references are not installed: pip install llm-rankers==0.0.2 rerankers==0.10.0 '
                      'tiktoken openai (llm-rankers imports tiktoken and openai without declaring them)') from e

from pyterrier_llmrank import datasets
from pyterrier_llmrank.backends import ChatPrompt, HFGenerationBackend, ScriptedBackend
from pyterrier_llmrank.listwise import RankGPT
from pyterrier_llmrank.monot5 import MonoT5
from pyterrier_llmrank.setwise import RankR1, Setwise

N_QUERIES, N_DOCS = 5, 20

#: ielab/llm-rankers at the commit read for the reference values (the v0.2 head).
LLM_RANKERS = ('ielab/llm-rankers', 'b36517bf17a3956dc56c4c967f972d02390b1cdd')
#: Setwise's defaults in the reference's run script (ielab/llm-rankers run.py @b36517b: setwise_parser
#: --num_child 3, --k 10; run_parser --passage_length 128, --query_length 128) and its compare()
#: (llmrankers/setwise.py: max_new_tokens=1 on the causal path; no shuffling with num_permutation=1).
SETWISE_REFERENCE = {'source': LLM_RANKERS + ('run.py', 'llmrankers/setwise.py'),
                     'num_child': 3, 'k': 10, 'max_passage_tokens': 128, 'max_query_tokens': 128,
                     'max_new_tokens': 1, 'shuffle': False}
#: Rank-R1's settings (ielab/llm-rankers Rank-R1/README.md @b36517b, the evaluation command: --query_length 32
#: --passage_length 512 setwise --num_child 19 --k 10; llmrankers/setwise.py RankR1SetwiseLlmRanker:
#: SamplingParams(temperature=0.0, max_tokens=2048) and random.sample of the documents of every comparison).
RANKR1_REFERENCE = {'source': LLM_RANKERS + ('Rank-R1/README.md', 'llmrankers/setwise.py'),
                    'num_child': 19, 'k': 10, 'max_passage_tokens': 512, 'max_query_tokens': 32,
                    'max_new_tokens': 2048, 'shuffle': True}

STEER_BIAS = 8.0


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope='module')
def dl19(data_dir):
    """BM25 top-20 passages (with text and rank) of the first 5 DL19 topics."""
    col = datasets.load(data_dir / 'msmarco-passage-trec-dl-2019')
    run = (col.get_run('bm25') % N_DOCS)(col.get_topics().head(N_QUERIES))
    return run[['qid', 'query', 'docno', 'score', 'rank', 'text']].reset_index(drop=True)


def _single_token(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else tok.encode(text.strip(), add_special_tokens=False)[-1]


def _steered(model, tok, answers, prompts, one_step_in=False):
    """A copy of ``model`` whose output layer favours the tokens of ``answers``, with the choice among them left to
    the prompt: each answer's logit is centred on its mean over the calibration ``prompts`` (chat prompts of the
    test, and with ``one_step_in`` the same followed by each answer token), scaled to unit spread and raised by ``STEER_BIAS``; the
    other logits are unchanged."""
    m = copy.deepcopy(model)
    ids = [_single_token(tok, a) for a in answers]
    with torch.no_grad():
        seqs = [tok(p.render(tok))['input_ids'] for p in prompts]
        if one_step_in:  # answers of several tokens: calibrate one step into the answer too
            seqs += [s + [a] for s in seqs for a in ids]
        hidden = torch.stack([m.model(input_ids=torch.tensor([s])).last_hidden_state[0, -1] for s in seqs])
        w = m.lm_head.weight[ids]
        z = hidden @ w.T                                  # (prompts, answers)
        mu, scale = z.mean(0), 1.0 / (z - z.mean(0)).std().clamp_min(1e-6)
        head = torch.nn.Linear(m.lm_head.in_features, m.lm_head.out_features, bias=True)
        head.weight.copy_(m.lm_head.weight)
        head.bias.zero_()
        head.weight[ids] = w * scale
        head.bias[ids] = STEER_BIAS - scale * mu
    m.lm_head = head
    return m.eval()


def _alternating(model, tok, numbers, separator):
    """Make ``model`` answer in RankGPT's form: after a token of ``numbers`` the ``separator`` is forced, after the
    separator it is barred, and a number already given in the answer is barred, so that the answer is a
    permutation (``2 >4 >1 >...``) whose order comes from the steered logits. The rule reads the last input token
    of each forward pass (hooks; with the KV cache, the token just generated; a pass over more than one token
    starts a new answer)."""
    nums = torch.tensor([_single_token(tok, a) for a in numbers])
    sep = _single_token(tok, separator)
    state = {}

    def take_ids(module, args, kwargs):
        ids = kwargs['input_ids']
        if ids.shape[1] > 1:
            state['seen'] = torch.zeros(ids.shape[0], len(nums), dtype=torch.bool)
        state['last'] = ids[:, -1]
        state['seen'] |= state['last'][:, None] == nums[None, :]

    def bias(module, args, out):
        out = out.clone()
        last, seen = state['last'], state['seen']
        out[torch.isin(last, nums), -1, sep] += 100.0
        out[last == sep, -1, sep] -= 100.0
        for row in range(out.shape[0]):
            out[row, -1, nums[seen[row]]] -= 100.0
        return out

    model.register_forward_pre_hook(take_ids, with_kwargs=True)
    model.lm_head.register_forward_hook(bias)
    return model


def _calibration_prompts(dl19, make_prompt, n=4):
    """Chat prompts of ``n`` consecutive passages of every query (the kind of prompt the test will send)."""
    out = []
    for _, grp in dl19.groupby('qid', sort=False):
        texts = grp.sort_values('rank')['text'].tolist()
        out += [make_prompt(grp['query'].iloc[0], texts[i:i + n]) for i in range(0, len(texts), n)]
    return out


class CallLog:
    """Records every ``generate`` call of a model: the prompt ids of each row (padding removed) and its new ids."""

    def __init__(self, model):
        self.calls = []
        self._generate = model.generate
        model.generate = self

    def __call__(self, input_ids=None, attention_mask=None, **kwargs):
        out = self._generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        width = input_ids.shape[1]
        for row in range(input_ids.shape[0]):
            ids = input_ids[row] if attention_mask is None else input_ids[row][attention_mask[row].bool()]
            self.calls.append((tuple(ids.tolist()), tuple(out[row, width:].tolist())))
        return out

    def take(self):
        calls, self.calls = self.calls, []
        return calls


def _ranking(res, qid):
    return res[res['qid'] == qid].sort_values('rank')['docno'].tolist()


# -- Setwise ----------------------------------------------------------------------------------------------------

SETWISE_ANSWERS = [' A', ' B', ' C', ' D', ' E', ' the']  # labels of 4 documents, one label not shown, one word


def _bos_llama_folder(tiny_llama, folder):
    """The tiny Llama with a tokenizer that adds BOS and a template that writes it too (as Llama-2/3's)."""
    shutil.copytree(tiny_llama.path, folder)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder)
    tok.bos_token = tok.convert_ids_to_tokens(0)
    tok.add_bos_token = True
    tok.chat_template = '{{ bos_token }}' + tok.chat_template
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope='module', params=['chatml', 'bos'])
def setwise_model(request, tiny_llama, tmp_path_factory, dl19):
    """(folder, tokenizer, steered model, call log) for the tiny Llama's own tokenizer and a BOS-adding one."""
    from transformers import AutoTokenizer
    folder = tiny_llama.path
    if request.param == 'bos':
        folder = _bos_llama_folder(tiny_llama, tmp_path_factory.mktemp('bos') / 'llama')
    tok = AutoTokenizer.from_pretrained(folder)
    model = _steered(tiny_llama.model, tok, SETWISE_ANSWERS,
                     _calibration_prompts(dl19, Setwise(ScriptedBackend([]), max_passage_tokens=None).prompt))
    return request.param, folder, tok, model, CallLog(model)


def test_setwise_equals_llm_rankers(setwise_model, dl19):
    """Setwise (3 children, top 10) makes the LLM calls of llm-rankers' SetwiseLlmRanker, token for token, gets the
    same answers and returns the same ranking, on 5 DL19 queries x BM25 top 20 (run.py's flow: query and passages
    cut with the ranker's ``truncate`` to 128 tokens, then ``rerank``)."""
    kind, folder, tok, model, log = setwise_model
    ref = SetwiseLlmRanker(folder, None, 'cpu', num_child=3, k=10)
    ref.llm = model
    ref_compares = []
    compare = ref.compare

    def logged_compare(query, docs):
        out = compare(query, docs)
        ref_compares.append(([d.docid for d in docs], out))
        return out

    ref.compare = logged_compare
    log.take()
    ref_rankings, ref_compares_by_q = {}, {}
    for qid, grp in dl19.groupby('qid', sort=False):
        grp = grp.sort_values('rank')
        docs = [SearchResult(docid=d, score=None, text=ref.truncate(t, 128)) for d, t in zip(grp['docno'], grp['text'])]
        ranked = ref.rerank(ref.truncate(grp['query'].iloc[0], 128), docs)
        ref_rankings[qid] = [r.docid for r in ranked]
        ref_compares_by_q[qid], ref_compares[:] = list(ref_compares), []
    ref_calls = log.take()

    ours = Setwise((model, tok), device='cpu', batch_size=4)
    assert (ours.num_child, ours.k) == (3, 10)
    res = ours(dl19)
    our_calls = log.take()
    trace = ours.trace()

    assert len(ref_calls) == len(our_calls) == len(trace) > 10 * N_QUERIES
    assert Counter(our_calls) == Counter(ref_calls)  # the same prompts, token for token, and the same answers
    for qid in ref_rankings:
        t = trace[trace['qid'] == qid]
        assert [list(d) for d in t['docnos']] == [d for d, _ in ref_compares_by_q[qid]]
        assert [o.strip().upper() for o in t['output']] == [o for _, o in ref_compares_by_q[qid]]
        assert _ranking(res, qid) == ref_rankings[qid]
    # the steering gives every kind of answer: swaps, parent kept, labels out of range, non-labels
    statuses = trace['status'].value_counts()
    assert statuses.get('ok', 0) > 10 and statuses.get('unparsable', 0) > 5
    assert {'A', 'B', 'C', 'D'} <= set(o.strip() for o in trace['output'])
    if kind == 'bos':  # the reference's double BOS (template + tokenizer), kept by default
        assert all(ids[:2] == (tok.bos_token_id, tok.bos_token_id) and ids[2] != tok.bos_token_id
                   for ids, _ in our_calls)
    else:  # no BOS added by the tokenizer: nothing doubled
        assert not any(ids[:2] == (tok.bos_token_id, tok.bos_token_id) for ids, _ in our_calls)


def test_setwise_tokenization_matches_reference_text_tokenization(setwise_model):
    """The prompt ids are those of the reference's ``tokenizer(apply_chat_template(...) + " Passage:")`` (default
    special tokens), for a tokenizer that adds BOS (two BOS) and one that does not."""
    kind, folder, tok, model, log = setwise_model
    backend = HFGenerationBackend((model, tok), device='cpu')
    prompt = Setwise(backend).prompt('what is a flea', ['Fleas are insects.', 'Café, 3½ miles — “quoted”.'])
    text = tok.apply_chat_template([{'role': 'user', 'content': prompt.last_user}], tokenize=False,
                                   add_generation_prompt=True) + ' Passage:'
    assert backend.encode(prompt) == tok(text)['input_ids']
    n_bos = 2 if kind == 'bos' else 0
    assert backend.encode(prompt)[:n_bos] == [tok.bos_token_id] * n_bos
    # the other generative rerankers keep the template's own special tokens only
    rankgpt = RankGPT(backend).messages('q', ['a', 'b'])
    assert backend.encode(ChatPrompt.of(rankgpt)) == tok(tok.apply_chat_template(
        rankgpt, tokenize=False, add_generation_prompt=True), add_special_tokens=False)['input_ids']


# -- RankGPT ----------------------------------------------------------------------------------------------------

LISTWISE_ANSWERS = [' 1', ' 2', ' 3', ' 4', ' 5', ' >', ' the']  # ids, one out of range, a separator, a word


def test_rankgpt_equals_llm_rankers_listwise(tiny_llama, dl19):
    """RankGPT (windows of 4, step 2, over the top 20) gives the raw answers and ranking of llm-rankers'
    ListwiseLlmRanker (its causal path; the same texts given to both). Under transformers 5 the reference's
    ``apply_chat_template(..., return_tensors='pt')`` returns a dict; the test makes it return the ids
    (``return_dict=False``), as under transformers 4. The reference generates with the model's generation config,
    given ``max_new_tokens`` here as ours."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_llama.path)
    rankgpt = RankGPT(ScriptedBackend([]))
    model = _steered(tiny_llama.model, tok, LISTWISE_ANSWERS,
                     _calibration_prompts(dl19, lambda q, ts: ChatPrompt.of(rankgpt.messages(q, ts))),
                     one_step_in=True)
    model = _alternating(model, tok, LISTWISE_ANSWERS[:5], ' >')
    model.generation_config.max_new_tokens = 12
    model.generation_config.do_sample = False
    log = CallLog(model)

    ref = ListwiseLlmRanker(tiny_llama.path, None, 'cpu', window_size=4, step_size=2)
    ref.llm = model
    apply = ref.tokenizer.apply_chat_template
    ref.tokenizer.apply_chat_template = lambda *a, **kw: apply(*a, return_dict=False, **kw)
    ref_outputs = []
    compare = ref.compare

    def logged_compare(query, docs):
        out = compare(query, docs)
        ref_outputs.append(([d.docid for d in docs], out))
        return out

    ref.compare = logged_compare
    ref_rankings, ref_outputs_by_q = {}, {}
    for qid, grp in dl19.groupby('qid', sort=False):
        grp = grp.sort_values('rank')
        docs = [SearchResult(docid=d, score=None, text=t) for d, t in zip(grp['docno'], grp['text'])]
        ref_rankings[qid] = [r.docid for r in ref.rerank(grp['query'].iloc[0], docs)]
        ref_outputs_by_q[qid], ref_outputs[:] = list(ref_outputs), []
    ref_calls = log.take()

    ours = RankGPT((model, tok), window=4, step=2, depth=None, max_new_tokens=12, device='cpu', batch_size=4)
    res = ours(dl19)
    our_calls = log.take()
    trace = ours.trace()

    assert len(ref_calls) == len(our_calls) == len(trace) == 9 * N_QUERIES
    assert Counter(our_calls) == Counter(ref_calls)
    for qid in ref_rankings:
        t = trace[trace['qid'] == qid]
        assert [list(d) for d in t['docnos']] == [d for d, _ in ref_outputs_by_q[qid]]
        assert [o.strip() for o in t['output']] == [o for _, o in ref_outputs_by_q[qid]]
        assert _ranking(res, qid) == ref_rankings[qid]
    assert trace['status'].value_counts().get('repaired', 0) > 0
    assert any(r != g.sort_values('rank')['docno'].tolist()
               for r, (_, g) in zip(ref_rankings.values(), dl19.groupby('qid', sort=False)))


# -- MonoT5 -----------------------------------------------------------------------------------------------------

def test_monot5_equals_rerankers_t5ranker(tiny_t5, dl19):
    """MonoT5's score is log P(true) over (true, false); rerankers' T5Ranker returns P(true): exp of ours equals it.
    (Passages of the test fit in 512 tokens: beyond, T5Ranker's tokenizer truncation cuts the ``Relevant:`` suffix,
    which pyterrier-t5 and MonoT5 keep.)"""
    ref = T5Ranker(tiny_t5.path, batch_size=4, dtype=torch.float32, device='cpu', verbose=0)
    inp = dl19.groupby('qid', sort=False).head(10)
    ours = MonoT5(model=tiny_t5.pair, batch_size=8)(inp).set_index(['qid', 'docno'])
    for qid, grp in inp.groupby('qid', sort=False):
        theirs = ref._get_scores(grp['query'].iloc[0], grp['text'].tolist())
        mine = np.exp(ours.loc[[(qid, d) for d in grp['docno']], 'score'].to_numpy())
        np.testing.assert_allclose(mine, theirs, atol=1e-6, rtol=0)
        assert np.std(theirs) > 1e-3


# -- defaults ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('cls,reference', [(Setwise, SETWISE_REFERENCE), (RankR1, RANKR1_REFERENCE)],
                         ids=['Setwise', 'RankR1'])
def test_defaults_are_the_reference_scripts(cls, reference):
    params = inspect.signature(cls.__init__).parameters
    for name, value in reference.items():
        if name != 'source':
            assert params[name].default == value, (cls.__name__, name, reference['source'])


def test_setwise_defaults_agree_with_the_installed_reference():
    params = inspect.signature(SetwiseLlmRanker.__init__).parameters
    assert params['num_child'].default == SETWISE_REFERENCE['num_child']
    assert params['k'].default == SETWISE_REFERENCE['k']
