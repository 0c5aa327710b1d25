"""Generative rerankers (RankGPT, DeARListwise, Setwise, RankR1): golden prompts, exact window order and heap
operations with the scripted backend, repair rules, accounting, frames; one real-model run each on SmolLM2."""
import random
import re

import numpy as np
import pandas as pd
import pyterrier_alpha as pta
import pytest
import torch

from pyterrier_llmrank import DeARListwise, RankGPT, RankR1, ScriptedBackend, Setwise
from pyterrier_llmrank.backends import ChatPrompt, HFGenerationBackend, VLLMBackend
from pyterrier_llmrank.generative import truncate_tokens
from pyterrier_llmrank.listwise import parse_permutation, sliding_windows
from pyterrier_llmrank.listwise import DEAR_POST, RANKGPT_POST, RANKGPT_SYSTEM, listwise_messages
from pyterrier_llmrank.setwise import RANKR1_SYSTEM, RANKR1_USER, SETWISE_PROMPT


@pytest.fixture(autouse=True, scope='module')
def one_torch_thread():
    """Generation in one torch thread (restored afterwards): on a busy 2-core machine, two spinning threads made
    SmolLM2's forward passes up to 30x slower; the results are the same."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SMOL_SYSTEM = '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n'


def run_frame(n, qid='q1', query='cats', rel=None):
    """``n`` documents d0..d{n-1} in first-stage order; the text carries the docno (and a hidden relevance)."""
    rel = rel if rel is not None else list(range(n))
    return pd.DataFrame({'qid': qid, 'query': query, 'docno': [f'd{i}' for i in range(n)],
                         'text': [f'text of d{i} rel {rel[i]}' for i in range(n)],
                         'score': np.arange(n, 0, -1, dtype=float), 'rank': np.arange(n), 'extra': list(range(n))})


def docnos_in(prompt):
    """The docnos shown in a prompt, in order."""
    body = '\n'.join(c for _, c in prompt.messages)
    return re.findall(r'text of (d\d+)', body)


def reverse_answer(prompt):
    """A listwise judge answering the reverse of the order shown: [n] > ... > [1]."""
    n = len(docnos_in(prompt))
    return ' > '.join(f'[{i}]' for i in range(n, 0, -1))


def ranking(out, qid='q1'):
    return out[out.qid == qid].sort_values('rank')['docno'].tolist()


# -- golden prompts -------------------------------------------------------------------------------------------

def test_rankgpt_prompt_golden():
    msgs = RankGPT(ScriptedBackend([])).messages('how do cats purr', ['first   passage\ntext', 'second'])
    assert msgs == [
        {'role': 'system', 'content': 'You are RankGPT, an intelligent assistant that can rank passages based on '
                                      'their relevancy to the query.'},
        {'role': 'user', 'content': 'I will provide you with 2 passages, each indicated by number identifier []. \n'
                                    'Rank the passages based on their relevance to query: how do cats purr.'},
        {'role': 'assistant', 'content': 'Okay, please provide the passages.'},
        {'role': 'user', 'content': '[1] first passage text'},
        {'role': 'assistant', 'content': 'Received passage [1].'},
        {'role': 'user', 'content': '[2] second'},
        {'role': 'assistant', 'content': 'Received passage [2].'},
        {'role': 'user', 'content': 'Search Query: how do cats purr. \nRank the 2 passages above based on their '
                                    'relevance to the search query. The passages should be listed in descending order '
                                    'using identifiers. The most relevant passages should be listed first. The output '
                                    'format should be [] > [], e.g., [1] > [2]. Only response the ranking results, do '
                                    'not say any word or explain.'}]
    assert RANKGPT_POST.format(query='q', num=20).startswith('Search Query: q. \nRank the 20 passages above')


def test_rankgpt_cuts_passages_to_300_words():
    long = ' '.join(f'w{i}' for i in range(400))
    msgs = RankGPT(ScriptedBackend([])).messages('q', [long])
    assert msgs[3]['content'] == '[1] ' + ' '.join(f'w{i}' for i in range(300))


def test_dear_prompt_golden():
    msgs = DeARListwise(ScriptedBackend([])).messages('q', ['a'])
    assert msgs[0] == {'role': 'system', 'content': 'You are RankLLM, an assistant that ranks passages by relevance '
                                                    'to the query.'}
    assert msgs[1]['content'] == ('I will provide you with 1 passages, each indicated by number identifier [].\n'
                                  'Rank the passages based on their relevance to query: q.')
    assert msgs[2:5] == [{'role': 'assistant', 'content': 'Okay, please provide the passages.'},
                         {'role': 'user', 'content': '[1] a'},
                         {'role': 'assistant', 'content': 'Received passage [1].'}]
    assert msgs[5]['content'] == (
        'Search Query: q.\nRank the 1 passages above based on their relevance to the search query. The passages '
        'should be listed in descending order using identifiers.\nPlease follow the steps below:\n'
        'Step 1. List the information requirements to answer the query.\n'
        'Step 2. For each requirement, find the passages containing that information.\n'
        'Step 3. Rank passages that best cover clear and diverse information. Include all passages.\n'
        'Output format strictly: [2] > [1] > [3] ... Only output the ranking using identifiers; no explanations.')
    assert DEAR_POST.format(query='q', num=1) == msgs[5]['content']


def test_setwise_prompt_golden():
    p = Setwise(ScriptedBackend([])).prompt('cats', ['one', 'two'])
    assert p.messages == (('user', 'Given a query "cats", which of the following passages is the most relevant one '
                                   'to the query?\n\nPassage A: "one"\n\nPassage B: "two"\n\nOutput only the passage '
                                   'label of the most relevant passage:'),)
    assert p.prefix == ' Passage:'
    assert SETWISE_PROMPT.format(query='x', passages='P').endswith('\n\nP\n\nOutput only the passage label of the '
                                                                   'most relevant passage:')


def test_rankr1_prompt_golden():
    p = RankR1(ScriptedBackend([])).prompt('cats', ['one', 'two'])
    assert p.messages[0] == ('system', 'A conversation between User and Assistant. The user asks a question, and the '
                             'Assistant solves it. The assistant first thinks about the reasoning process in the mind '
                             'and then provides the user with the answer. The reasoning process and answer are '
                             'enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., '
                             '<think> reasoning process here </think> <answer> answer here </answer>.')
    assert p.messages[1] == ('user', 'Given the query: "cats", which of the following documents is most relevant?\n'
                             '[1] one\n[2] two\nAfter completing the reasoning process, please provide only the label '
                             'of the most relevant document to the query, enclosed in square brackets, within the '
                             'answer tags. For example, if the third document is the most relevant, the answer '
                             'should be: <think> reasoning process here </think> <answer>[3]</answer>.')
    assert p.prefix == ''
    assert RANKR1_SYSTEM == p.messages[0][1] and RANKR1_USER.count('{') == 2


def test_chat_rendering_golden(smollm2):
    _, tok = smollm2
    p = ChatPrompt.of(listwise_messages('q', ['a'], system=RANKGPT_SYSTEM, prefix_user='U{num}{query}',
                                        prefix_assistant='A', passage='[{rank}] {content}',
                                        received='R{rank}', post='P{num}'))
    assert p.render(tok) == ('<|im_start|>system\n' + RANKGPT_SYSTEM + '<|im_end|>\n<|im_start|>user\nU1q<|im_end|>\n'
                             '<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\n[1] a<|im_end|>\n'
                             '<|im_start|>assistant\nR1<|im_end|>\n<|im_start|>user\nP1<|im_end|>\n'
                             '<|im_start|>assistant\n')
    sw = Setwise(ScriptedBackend([])).prompt('q', ['a'])
    assert sw.render(tok) == (SMOL_SYSTEM + '<|im_start|>user\nGiven a query "q", which of the following passages is '
                              'the most relevant one to the query?\n\nPassage A: "a"\n\nOutput only the passage '
                              'label of the most relevant passage:<|im_end|>\n<|im_start|>assistant\n Passage:')


# -- windows and the permutation parser -----------------------------------------------------------------------

def test_sliding_windows():
    assert sliding_windows(100, 20, 10) == [(80, 100), (70, 90), (60, 80), (50, 70), (40, 60), (30, 50), (20, 40),
                                            (10, 30), (0, 20)]
    assert sliding_windows(30, 20, 10) == [(10, 30), (0, 20)]  # DeAR: top 30, 2 calls
    assert sliding_windows(20, 20, 10) == [(0, 20)]
    assert sliding_windows(7, 20, 10) == [(0, 7)]
    assert sliding_windows(25, 20, 10) == [(5, 25), (0, 20)]  # the reference would stop after (5, 25)
    assert sliding_windows(0, 20, 10) == []


@pytest.mark.parametrize('text,n,order,status', [
    ('[2] > [1] > [3]', 3, [1, 0, 2], 'ok'),
    ('2 1 3', 3, [1, 0, 2], 'ok'),
    ('[2] > [2] > [1] > [3]', 3, [1, 0, 2], 'repaired'),           # duplicate removed
    ('[3] > [7] > [1] > [0] > [2]', 3, [2, 0, 1], 'repaired'),     # out of range (7, 0) dropped
    ('[3] > [1]', 4, [2, 0, 1, 3], 'repaired'),                    # missing appended in original order
    ('I cannot rank these.', 3, [0, 1, 2], 'unparsable'),
    ('[9] > [12]', 3, [0, 1, 2], 'unparsable'),
    ('[1]>[2]>[3]', 3, [0, 1, 2], 'ok'),
    ('[12] > [1]', 12, [11, 0] + list(range(1, 11)), 'repaired'),  # multi-digit ids
])
def test_parse_permutation(text, n, order, status):
    assert parse_permutation(text, n) == (order, status)


# -- RankGPT with the scripted backend ------------------------------------------------------------------------

def test_rankgpt_exact_windows_on_100():
    backend = ScriptedBackend(reverse_answer)
    out = RankGPT(backend)(run_frame(100))
    # independent simulation of the reference: each window [s, e) reversed, bottom to top
    order = [f'd{i}' for i in range(100)]
    expected_shown = []
    for s in range(80, -1, -10):
        expected_shown.append(order[s:s + 20])
        order[s:s + 20] = order[s:s + 20][::-1]
    assert [docnos_in(p) for p in backend.prompts] == expected_shown
    assert ranking(out) == order
    assert len(backend.prompts) == 9


def test_rankgpt_depth_scores_and_columns():
    inp = run_frame(30).sample(frac=1.0, random_state=3)  # rows shuffled: the rank column gives the first stage
    backend = ScriptedBackend(reverse_answer)
    out = RankGPT(backend, window=4, step=2, depth=6)(inp)
    assert [docnos_in(p) for p in backend.prompts] == [['d2', 'd3', 'd4', 'd5'], ['d0', 'd1', 'd5', 'd4']]
    assert ranking(out) == ['d4', 'd5', 'd1', 'd0', 'd3', 'd2'] + [f'd{i}' for i in range(6, 30)]
    out = out.sort_values('rank')
    np.testing.assert_array_equal(out['score'].to_numpy(), -np.arange(1, 31, dtype=float))
    np.testing.assert_array_equal(out['rank'].to_numpy(), np.arange(30))
    assert out.set_index('docno')['extra'].sort_index().equals(inp.set_index('docno')['extra'].sort_index())
    assert set(inp.columns) <= set(out.columns)


def test_first_stage_order_from_score_without_rank():
    inp = run_frame(5).drop(columns=['rank'])
    inp['score'] = [1.0, 5.0, 3.0, 4.0, 2.0]
    backend = ScriptedBackend(['[1]'])  # keep the first; the rest appended in first-stage order
    out = RankGPT(backend)(inp)
    assert docnos_in(backend.prompts[0]) == ['d1', 'd3', 'd2', 'd4', 'd0']
    assert ranking(out) == ['d1', 'd3', 'd2', 'd4', 'd0']


def test_rankgpt_batches_windows_across_queries():
    inp = pd.concat([run_frame(30, qid='q1'), run_frame(30, qid='q2', query='dogs')], ignore_index=True)
    backend = ScriptedBackend(reverse_answer, batch_size=8)
    out = RankGPT(backend, window=20, step=10)(inp)
    assert [len(b) for b in backend.batches] == [2, 2]  # one window of each query per call
    assert [p.last_user.split('.')[0] for p in backend.batches[0]] == ['Search Query: cats', 'Search Query: dogs']
    single = RankGPT(ScriptedBackend(reverse_answer))(run_frame(30, qid='q2', query='dogs'))
    assert ranking(out, 'q2') == ranking(single, 'q2')
    small = ScriptedBackend(reverse_answer, batch_size=1)
    RankGPT(small)(inp)
    assert [len(b) for b in small.batches] == [1, 1, 1, 1]


def test_rankgpt_repair_accounting_and_trace():
    answers = ['[3] > [1] > [2]', '[2] > [2] > [9]', 'no idea']  # ok, repaired, unparsable
    inp = pd.concat([run_frame(3, qid='a'), run_frame(3, qid='b'), run_frame(3, qid='c')], ignore_index=True)
    rr = RankGPT(ScriptedBackend(answers))
    out = rr(inp)
    assert ranking(out, 'a') == ['d2', 'd0', 'd1']
    assert ranking(out, 'b') == ['d1', 'd0', 'd2']
    assert ranking(out, 'c') == ['d0', 'd1', 'd2']
    pq = rr.stats.per_query().set_index('qid')
    assert pq.loc[['a', 'b', 'c'], 'repaired'].tolist() == [0, 1, 0]
    assert pq.loc[['a', 'b', 'c'], 'unparsable'].tolist() == [0, 0, 1]
    assert pq['sequences'].tolist() == [1, 1, 1]
    np.testing.assert_allclose(pq['model_calls'].sum(), 1.0)  # one batched call shared by three prompts
    assert (pq['input_tokens'] > 0).all() and (pq['generated_tokens'] > 0).all()
    tr = rr.trace()
    assert tr['status'].tolist() == ['ok', 'repaired', 'unparsable']
    assert tr['output'].tolist() == answers
    assert tr.loc[0, 'answer'] == ['d2', 'd0', 'd1'] and tr.loc[0, 'docnos'] == ['d0', 'd1', 'd2']
    assert rr.stats.summary()['queries'] == 3
    rr.reset()
    assert len(rr.trace()) == 0 and rr.stats.summary()['queries'] == 0


def test_exception_in_model_propagates():
    def boom(prompt):
        raise RuntimeError('model failed')
    with pytest.raises(RuntimeError, match='model failed'):
        RankGPT(ScriptedBackend(boom))(run_frame(5))
    with pytest.raises(RuntimeError, match='model failed'):
        Setwise(ScriptedBackend(boom), num_child=2)(run_frame(5))


def test_empty_input_and_validation():
    empty = run_frame(3).iloc[:0]
    for rr in (RankGPT(ScriptedBackend([])), DeARListwise(ScriptedBackend([])), Setwise(ScriptedBackend([])),
               RankR1(ScriptedBackend([]))):
        out = rr(empty)
        assert len(out) == 0 and {'score', 'rank', 'extra'} <= set(out.columns)
        with pytest.raises(Exception, match='text'):
            rr(run_frame(3).drop(columns=['text']))
    with pytest.raises(ValueError):
        RankGPT(ScriptedBackend([]), window=1)
    with pytest.raises(ValueError):
        Setwise(ScriptedBackend([]), num_child=23)
    with pytest.raises(ValueError):
        RankR1(ScriptedBackend([]), num_child=20)


def test_reprs():
    assert repr(RankGPT(ScriptedBackend([]))) == "RankGPT('scripted', window=20, step=10, depth=100)"
    assert repr(DeARListwise(ScriptedBackend([]), sample=True)) == \
        "DeARListwise('scripted', window=20, step=10, depth=30, sample=True)"
    assert repr(Setwise(ScriptedBackend([]))) == "Setwise('scripted', num_child=3, k=10, shuffle=False)"
    assert repr(RankR1(ScriptedBackend([]))) == "RankR1('scripted', num_child=19, k=10, shuffle=True)"


def test_verbose_prints_progress_and_one_summary_line(capsys):
    RankGPT(ScriptedBackend(['[2] > [2]', 'x']), verbose=True)(
        pd.concat([run_frame(3, qid='a'), run_frame(3, qid='b')], ignore_index=True))
    captured = capsys.readouterr()
    lines = [ln for ln in captured.out.splitlines() if ln.strip()]
    assert len(lines) == 1
    assert '2/2' in captured.err and 'prompt' in captured.err  # the progress bar counts prompts answered
    assert '2 queries' in lines[0] and 'repaired 1/2' in lines[0] and 'unparsable 1/2' in lines[0]


# -- DeAR ------------------------------------------------------------------------------------------------------

def test_dear_windows_think_parsing_and_sampling_option():
    backend = ScriptedBackend(lambda p: '<think>Step 1. [1] is off topic.</think>\n[2] > [1]')
    out = DeARListwise(backend)(run_frame(40))
    assert [docnos_in(p)[:1] + docnos_in(p)[-1:] for p in backend.prompts] == [['d10', 'd29'], ['d0', 'd19']]
    assert [len(docnos_in(p)) for p in backend.prompts] == [20, 20]
    # window [10, 30): d11 d10 d12..d29; then window [0, 20) of that: d1 d0 d2..
    assert ranking(out)[:4] == ['d1', 'd0', 'd2', 'd3']
    assert ranking(out)[30:] == [f'd{i}' for i in range(30, 40)]
    assert backend.settings[0] == dict(max_new_tokens=1024, temperature=0.0, top_p=1.0, seed=929)
    sampled = ScriptedBackend(lambda p: '2 1')
    DeARListwise(sampled, sample=True, seed=7, max_new_tokens=64)(run_frame(3))
    assert sampled.settings[0] == dict(max_new_tokens=64, temperature=0.5, top_p=0.9, seed=7)


def test_dear_without_think_reads_whole_answer():
    rr = DeARListwise(ScriptedBackend(['Step 1. relevant: [3] > [2]']))
    out = rr(run_frame(3))
    # as the reference: no </think>, the whole text is parsed ("1" from "Step 1" included)
    assert ranking(out) == ['d0', 'd2', 'd1']
    assert rr.trace()['status'].tolist() == ['ok']


# -- Setwise / RankR1 heapsort ----------------------------------------------------------------------------------

def reference_heapsort(items, num_child, k, compare):
    """The reference's heapSort/heapify (ielab/llm-rankers llmrankers/setwise.py) on a list, recursion included;
    ``compare(docs) -> index`` (0 = parent on failure). Returns the sorted list and the comparisons made."""
    arr = list(items)
    calls = []

    def heapify(n, i):
        if num_child * i + 1 < n:
            docs = [arr[i]] + arr[num_child * i + 1: min(num_child * (i + 1) + 1, n)]
            inds = [i] + list(range(num_child * i + 1, min(num_child * (i + 1) + 1, n)))
            calls.append(list(docs))
            best = compare(docs)
            largest = inds[best] if best < len(inds) else i
            if largest != i:
                arr[i], arr[largest] = arr[largest], arr[i]
                heapify(n, largest)

    n = len(arr)
    for i in range(n // num_child, -1, -1):
        heapify(n, i)
    ranked = 0
    for i in range(n - 1, 0, -1):
        arr[i], arr[0] = arr[0], arr[i]
        ranked += 1
        if ranked == k:
            break
        heapify(i, 0)
    return list(reversed(arr)), calls


def setwise_judge(prompt):
    """Answers the label of the passage with the highest hidden relevance."""
    rels = [int(r) for r in re.findall(r'rel (\d+)', prompt.last_user)]
    return ' ' + 'ABCDEFGHIJKLMNOPQRSTUVW'[int(np.argmax(rels))]


@pytest.mark.parametrize('n,num_child,k', [(20, 19, 10), (100, 19, 10), (13, 3, 5), (6, 2, 10)])
def test_setwise_heap_operations_exact(n, num_child, k):
    rel = random.Random(n).sample(range(1000), n)
    backend = ScriptedBackend(setwise_judge)
    out = Setwise(backend, num_child=num_child, k=k)(run_frame(n, rel=rel))
    docs = [f'd{i}' for i in range(n)]
    best = lambda ds: int(np.argmax([rel[int(d[1:])] for d in ds]))  # noqa: E731
    ref_sorted, ref_calls = reference_heapsort(docs, num_child, k, best)
    assert [docnos_in(p) for p in backend.prompts] == ref_calls
    top = ref_sorted[:k]
    assert ranking(out) == top + [d for d in docs if d not in top]
    assert ranking(out)[:min(k, n)] == sorted(docs, key=lambda d: -rel[int(d[1:])])[:min(k, n)]
    assert backend.settings[0]['max_new_tokens'] == 1


def test_setwise_unparsable_keeps_parent():
    backend = ScriptedBackend(lambda p: ' Z')  # never a label shown
    rr = Setwise(backend, num_child=2, k=3)
    out = rr(run_frame(6))
    ref_sorted, ref_calls = reference_heapsort([f'd{i}' for i in range(6)], 2, 3, lambda ds: 0)
    assert [docnos_in(p) for p in backend.prompts] == ref_calls
    assert ranking(out)[:3] == ref_sorted[:3]
    assert set(rr.trace()['status']) == {'unparsable'}
    pq = rr.stats.per_query()
    assert pq['unparsable'].iloc[0] == len(ref_calls) and pq['repaired'].iloc[0] == 0


def test_setwise_shuffle_is_seeded_per_query():
    rel = random.Random(5).sample(range(100), 8)
    b1, b2 = ScriptedBackend(setwise_judge), ScriptedBackend(setwise_judge)
    out1 = Setwise(b1, num_child=7, k=3, shuffle=True)(run_frame(8, rel=rel))
    out2 = Setwise(b2, num_child=7, k=3, shuffle=True)(
        pd.concat([run_frame(8, qid='other', rel=rel[::-1]), run_frame(8, rel=rel)], ignore_index=True))
    assert ranking(out1) == ranking(out2)
    first = docnos_in(b1.prompts[0])
    assert first == [f'd{i}' for i in random.Random(929).sample(range(8), 8)]  # reference: random.sample, seed 929
    # the judge reads the shuffled labels correctly: the top 3 are the truly most relevant
    assert ranking(out1)[:3] == sorted([f'd{i}' for i in range(8)], key=lambda d: -rel[int(d[1:])])[:3]


@pytest.mark.parametrize('text,n,expected', [
    ('<think>d2 mentions cats</think> <answer>[2]</answer>', 3, 1),
    ('<THINK>x</THINK>\n<ANSWER> [3] </ANSWER>', 3, 2),          # lower-cased, stripped
    ('<answer>[2]</answer>', 3, None),                          # no reasoning block: the regex fails
    ('<think>x</think><answer>[4]</answer>', 3, None),          # not a label shown
    ('<think>x</think><answer>2</answer>', 3, None),            # without brackets
    ('<think>a</think> b <answer>[1]</answer>', 3, None),       # text between the tags
    ('<think>x', 3, None),                                      # cut by max_new_tokens
])
def test_rankr1_parse(text, n, expected):
    assert RankR1(ScriptedBackend([])).parse(text, n) == expected


def test_rankr1_shuffled_heapsort_and_reasoning_kept():
    rel = random.Random(11).sample(range(100), 12)

    def judge(prompt):
        rels = [int(r) for r in re.findall(r'rel (\d+)', prompt.messages[1][1])]
        best = int(np.argmax(rels)) + 1
        return f'<think>document {best} matches</think>\n<answer>[{best}]</answer>'
    backend = ScriptedBackend(judge)
    rr = RankR1(backend, num_child=4, k=4)
    out = rr(run_frame(12, rel=rel))
    assert ranking(out)[:4] == sorted([f'd{i}' for i in range(12)], key=lambda d: -rel[int(d[1:])])[:4]
    assert ranking(out)[4:] == [d for d in (f'd{i}' for i in range(12)) if d not in ranking(out)[:4]]
    tr = rr.trace()
    assert set(tr['status']) == {'ok'} and tr['output'].str.contains('<think>document').all()
    # the first comparison is heap node 2 with its children 9, 10, 11, shown in the order of the seeded shuffle
    assert tr.loc[0, 'docnos'] == [['d2', 'd9', 'd10', 'd11'][j] for j in random.Random(929).sample(range(4), 4)]
    assert backend.settings[0]['max_new_tokens'] == 2048


def test_truncation_in_tokens(smollm2):
    _, tok = smollm2
    text = 'The quick brown fox jumps over the lazy dog ' * 100
    cut = truncate_tokens(tok, text, 20)
    assert len(tok.tokenize(cut)) == 20 and text.startswith(cut)
    assert truncate_tokens(tok, 'short', 20) == 'short'
    assert truncate_tokens(None, 'a b c d', 2) == 'a b'


# -- backends -------------------------------------------------------------------------------------------------

def test_vllm_backend_needs_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match='pip install vllm'):
            VLLMBackend('any-model')
    else:  # pragma: no cover
        pytest.skip('vLLM is installed; its backend is exercised through the interface only')


def test_hf_backend_batching_and_stops(smollm2):
    be = HFGenerationBackend(smollm2, batch_size=3, device='cpu')
    prompts = [ChatPrompt.of([{'role': 'user', 'content': q}]) for q in
               ('Say hi.', 'What is the capital of France? Answer in one word.', 'Count: 1 2 3')]
    batched = be.generate(prompts, 8)
    be.batch_size = 1
    single = be.generate(prompts, 8)
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(1 <= g.generated_tokens <= 8 for g in batched)
    assert all('<|im_end|>' not in g.text for g in batched)
    np.testing.assert_allclose(sum(g.calls for g in batched), 1.0)
    assert [g.prompt_tokens for g in batched] == [len(be.encode(p)) for p in prompts]
    assert 2 in be.stop_ids  # <|im_end|>


def test_hf_backend_prefill_alone_reuses_shared_prefixes(smollm2):
    """On the CPU each prompt is prefilled alone from the longest prefix it shares with a stored prompt: the answers
    are those of whole-batch prefill, and the shared tokens are computed once."""
    be = HFGenerationBackend(smollm2, batch_size=4, device='cpu')
    head = 'Answer in one word. The following question is about geography and capitals of European countries. '
    prompts = [ChatPrompt.of([{'role': 'user', 'content': head + q}]) for q in
               ('What is the capital of France?', 'What is the capital of Italy?', 'Which river flows in Paris?')]
    be.prefill_alone = False
    padded = be.generate(prompts, 6)
    be.prefill_alone = None  # the default: alone on the CPU
    alone = be.generate(prompts, 6)
    assert [g.text for g in alone] == [g.text for g in padded]
    assert [g.prompt_tokens for g in alone] == [g.prompt_tokens for g in padded]
    kv = be._prompt_kv
    shared = len(be.encode(ChatPrompt.of([{'role': 'user', 'content': head}]))) - 6  # the template's end differs
    assert kv.reused_tokens >= 2 * shared
    total = sum(len(be.encode(p)) - be.GENERATE_TAIL for p in prompts)
    assert kv.computed_tokens + kv.reused_tokens == total
    again = be.generate(prompts[:1], 6)  # a prompt seen before: nothing recomputed
    assert again[0].text == alone[0].text and kv.computed_tokens + kv.reused_tokens == total + len(
        be.encode(prompts[0])) - be.GENERATE_TAIL


def test_batch_cache_writes_decoding_steps_in_place(smollm2):
    """batch_cache's layers have room for the tokens to come: decoding steps write their states into it in place
    (no copy of the whole cache per step), growing it once the room is used up, and give DynamicCache's logits
    and states."""
    from transformers import DynamicCache
    from pyterrier_llmrank.prefill import batch_cache
    model = smollm2.model
    ids = torch.tensor([smollm2.ids('The capital of France is Paris. The capital of Italy is')])
    with torch.inference_mode():
        ref = DynamicCache(config=model.config)
        out = model(input_ids=ids, cache=ref, use_cache=True)
        grown = batch_cache([[(k.clone(), v.clone()) for k, v in ((la.keys, la.values) for la in ref.layers)]],
                            ids.shape[1], room=3)
        assert isinstance(grown, DynamicCache) and grown.get_seq_length() == ids.shape[1]
        buffer = grown.layers[0]._kbuf.data_ptr()
        tok = out.logits[:, -1:].argmax(-1)
        for step in range(5):
            a = model(input_ids=tok, cache=ref, use_cache=True).logits
            b = model(input_ids=tok, cache=grown, use_cache=True).logits
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
            assert (grown.layers[0]._kbuf.data_ptr() == buffer) == (step < 3)  # in place within the room
            tok = a[:, -1:].argmax(-1)
        assert grown.get_seq_length() == ref.get_seq_length() == ids.shape[1] + 5
        for la, lb in zip(ref.layers, grown.layers):
            torch.testing.assert_close(lb.keys, la.keys, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(lb.values, la.values, rtol=1e-5, atol=1e-5)
        grown.crop(-2)  # a crop (as assisted decoding does) keeps writing into the same buffer
        ref.crop(-2)
        b = model(input_ids=tok, cache=grown, use_cache=True).logits
        a = model(input_ids=tok, cache=ref, use_cache=True).logits
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


# -- one real-model run each (SmolLM2-135M-Instruct, few documents, short generations) -------------------------

def real_frame():
    texts = ['Cats purr by vibrating the muscles of their larynx.', 'The stock market fell on Monday.',
             'A purring cat is usually content.', 'Paris is the capital of France.', 'Dogs bark at strangers.']
    return pd.DataFrame({'qid': '1', 'query': 'why do cats purr', 'docno': [f'd{i}' for i in range(5)],
                         'text': texts, 'score': [5., 4., 3., 2., 1.]})


def check_real(make, smollm2, min_calls, max_calls=None):
    """A real SmolLM2 run of the reranker ``make(model)`` builds: a valid frame; counters that match the trace;
    the same output and answers when run again (greedy decoding is deterministic); and the same ranking when the
    trace's raw answers are replayed through a scripted backend, i.e. the order is what the answers imply."""
    rr = make(smollm2)
    out = rr(real_frame())
    pta.validate.result_frame(out, extra_columns=['score', 'rank'])
    assert sorted(out['docno']) == [f'd{i}' for i in range(5)]
    np.testing.assert_array_equal(np.sort(out['score'].to_numpy()), -np.arange(5, 0, -1, dtype=float))
    pq, trace = rr.stats.per_query(), rr.trace()
    calls = pq['sequences'].iloc[0]
    assert calls == len(trace) and min_calls <= calls <= (max_calls or min_calls)
    assert pq['generated_tokens'].iloc[0] > 0 and pq['seconds'].iloc[0] > 0
    for status in ('repaired', 'unparsable'):  # the counters are the trace's statuses
        assert pq[status].iloc[0] == (trace['status'] == status).sum()
    assert trace['output'].map(len).sum() > 0
    rr.reset()  # determinism: the same answers and output again
    again = rr(real_frame())
    assert rr.trace()['output'].tolist() == trace['output'].tolist()
    assert ranking(again, '1') == ranking(out, '1')
    replay = make(ScriptedBackend(trace['output'].tolist(), tokenizer=smollm2[1]))
    replayed = replay(real_frame())
    assert ranking(replayed, '1') == ranking(out, '1')
    assert replay.trace()[['docnos', 'answer', 'status']].equals(trace[['docnos', 'answer', 'status']])
    return out


def test_real_rankgpt(smollm2):
    check_real(lambda m: RankGPT(m, max_new_tokens=24, device='cpu'), smollm2, 1)


def test_real_dear(smollm2):
    check_real(lambda m: DeARListwise(m, window=4, step=2, max_new_tokens=24, device='cpu'), smollm2, 2)  # [1, 5), [0, 4)


def test_real_setwise(smollm2):
    # build: node 1, node 0 (+ node 1 again after a swap); extract once: node 0 (+ node 1 after a swap)
    check_real(lambda m: Setwise(m, num_child=2, k=2, device='cpu'), smollm2, 3, 5)


def test_real_rankr1(smollm2):
    check_real(lambda m: RankR1(m, num_child=4, k=1, max_new_tokens=16, device='cpu'), smollm2, 1)  # one node of 5 docs


# -- titles, as each reference writes them ----------------------------------------------------------------------

def test_titles_as_each_reference_writes_them():
    """RankGPT and DeAR: 'Title: {title} Content: {text}' (an empty title dropped, rank_gpt.py); Setwise and
    Rank-R1: '{title} {text}' (llm-rankers run.py); no title column: the text alone."""
    frame = run_frame(3).assign(title=['Cats', '', None])
    for cls in (RankGPT, DeARListwise):
        backend = ScriptedBackend(lambda p: '[1] > [2] > [3]')
        cls(backend)(frame)
        users = [c for r, c in backend.prompts[0].messages if r == 'user' and c.startswith('[')]
        assert users == ['[1] Title: Cats Content: text of d0 rel 0', '[2] text of d1 rel 1', '[3] text of d2 rel 2']
        backend = ScriptedBackend(lambda p: '[1] > [2] > [3]')
        cls(backend, title_field=None)(frame)
        users = [c for r, c in backend.prompts[0].messages if r == 'user' and c.startswith('[')]
        assert users[0] == '[1] text of d0 rel 0'
    backend = ScriptedBackend(lambda p: 'A')
    Setwise(backend, num_child=2, k=1)(frame)
    assert 'Passage A: "Cats text of d0 rel 0"' in backend.prompts[0].last_user
    assert 'Passage B: "text of d1 rel 1"' in backend.prompts[0].last_user
    backend = ScriptedBackend(lambda p: '<think></think><answer>[1]</answer>')
    RankR1(backend, num_child=2, k=1, shuffle=False)(frame)
    assert '[1] Cats text of d0 rel 0' in backend.prompts[0].last_user


def test_dear_listwise_tokenizes_with_special_tokens_as_its_client():
    """DeAR's clients.py tokenizes the rendered chat with default settings; RankGPT's prompts do not."""
    dear, gpt = ScriptedBackend(lambda p: '[1]'), ScriptedBackend(lambda p: '[1]')
    DeARListwise(dear)(run_frame(2))
    RankGPT(gpt)(run_frame(2))
    assert all(p.add_special_tokens for p in dear.prompts)
    assert not any(p.add_special_tokens for p in gpt.prompts)


# -- prompts longer than the model's context ---------------------------------------------------------------------

def long_frame(n, words, query='cats'):
    return pd.DataFrame({'qid': 'q1', 'query': query, 'docno': [f'd{i}' for i in range(n)],
                         'text': [f'text of d{i} ' + 'purr ' * words for i in range(n)],
                         'score': np.arange(n, 0, -1, dtype=float)})


@pytest.mark.parametrize('make', [
    lambda b: RankGPT(b, window=4, step=2, max_new_tokens=8),
    lambda b: DeARListwise(b, window=4, step=2, max_new_tokens=8),
    lambda b: Setwise(b, num_child=3, k=2, max_passage_tokens=None),
    lambda b: RankR1(b, num_child=3, k=2, max_new_tokens=8),
], ids=['RankGPT', 'DeARListwise', 'Setwise', 'RankR1'])
def test_prompts_fit_the_context(tiny_llama, make):
    """A prompt past the context (less max_new_tokens) has its documents cut, never the instruction or query; the
    cut is warned and counted; a backend without a context is not touched."""
    tok = tiny_llama.tokenizer
    inp = long_frame(6, 300)
    free = ScriptedBackend(reverse_answer, tokenizer=tok)
    make(free)(inp)
    longest = max(free.prompt_length(p) for p in free.prompts)
    assert longest > 900  # the documents as the method cuts them make long prompts
    bounded = ScriptedBackend(reverse_answer, tokenizer=tok, context_length=600)
    rr = make(bounded)
    with pytest.warns(UserWarning, match=r"query 'q1'.*each document cut to \d+ tokens"):
        out = rr(inp)
    assert len(out) == 6
    assert all(bounded.prompt_length(p) <= 600 - rr.max_new_tokens for p in bounded.prompts)
    assert all('cats' in p.last_user for p in bounded.prompts)  # the query is kept
    assert rr.stats.per_query()['truncated_prompts'].sum() >= 1
    # a query too long by itself: a clear error naming the query (Setwise-style rerankers cut it first)
    long_q = long_frame(4, 3, query='purr ' * 2000)
    if isinstance(rr, Setwise):
        make(ScriptedBackend(reverse_answer, tokenizer=tok, context_length=600))(long_q)  # max_query_tokens cuts it
    else:
        with pytest.raises(ValueError, match=r"query 'q1' is too long.*600 tokens less max_new_tokens"):
            make(ScriptedBackend(reverse_answer, tokenizer=tok, context_length=600))(long_q)


def test_rankr1_settings_fit_smollm2_context(tiny_llama):
    """Rank-R1's settings (20 documents of 512 tokens per prompt) on SmolLM2's context of 8192 tokens: the prompts
    are cut to fit with room for the answer."""
    tok = tiny_llama.tokenizer
    backend = ScriptedBackend(lambda p: '<answer>[1]</answer>', tokenizer=tok, context_length=8192)
    rr = RankR1(backend, k=1, max_new_tokens=256)
    with pytest.warns(UserWarning, match='each document cut'):
        rr(long_frame(20, 600))
    assert max(backend.prompt_length(p) for p in backend.prompts) <= 8192 - 256
