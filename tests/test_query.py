"""Omni-RAG's query understanding steps: exact prompts, parsing and repair rules, sub-query fusion and answer plumbing
with the scripted backend; one end-to-end run with SmolLM2 on SciFact."""
import io

import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta
import pytest

from pyterrier_llmrank import ScriptedBackend, datasets
from pyterrier_llmrank.fusion import fuse
from pyterrier_llmrank.query import (ANSWER_PROMPT, DECOMPOSE_PROMPT, REWRITE_PROMPT, GenerateAnswer, QueryDecompose,
                                     QueryRewrite, SubQueryRetrieve, parse_answer, parse_rewrite, parse_subqueries)


def test_prompts_golden():
    assert REWRITE_PROMPT.format(query='hart atack symtoms') == (
        'Rewrite the following search query: correct its spelling mistakes and remove noise, but keep its meaning and '
        'every intent it expresses. For example, "hart atack symtoms pls" becomes "heart attack symptoms". Answer '
        'with the rewritten query only.\n\nQuery: hart atack symtoms')
    assert QueryDecompose(ScriptedBackend([]), max_subqueries=3).prompt('a and b').last_user == (
        'Split the following search query into at most 3 self-contained sub-queries, one for each distinct '
        'information need it expresses; a query with a single intent gives a single sub-query. Answer with a JSON '
        'list of strings only. For example, "symptoms of flu and how to treat it" gives ["symptoms of flu", '
        '"treatment of flu"].\n\nQuery: a and b')
    gen = GenerateAnswer(ScriptedBackend([]), k=2, max_passage_tokens=3)
    assert gen.prompt('who?', ['one two three four', ' five ']).last_user == (
        'Use the context information to answer the question.\n\nContext:\n[1] one two three\n[2] five\n\n'
        'Question: who?\n\nThink step by step: first say which passages are relevant and what they state, then write '
        'the final answer on a last line starting with "Answer:".')
    assert '{passages}' in ANSWER_PROMPT and '{max_subqueries}' in DECOMPOSE_PROMPT


@pytest.mark.parametrize('text, expected', [
    ('heart attack symptoms', ('heart attack symptoms', 'ok')),
    ('Rewritten query: "heart attack symptoms"\nI fixed the spelling.', ('heart attack symptoms', 'repaired')),
    ('  `heart attack`  ', ('heart attack', 'repaired')),
    ('Correct: heart attack', ('heart attack', 'repaired')),
    ('The rewritten query: "heart attack"', ('heart attack', 'repaired')),
    ('""', ('orig', 'unparsable')),
    ('   \n ', ('orig', 'unparsable')),
])
def test_parse_rewrite(text, expected):
    assert parse_rewrite(text, 'orig') == expected


@pytest.mark.parametrize('text, expected', [
    ('["a b", "c"]', (['a b', 'c'], 'ok')),
    ('```json\n["a", "b"]\n```', (['a', 'b'], 'ok')),
    ('Sure! Here they are: ["a", "b"] Hope it helps.', (['a', 'b'], 'repaired')),
    ('{"sub_queries": ["a", "b"]}', (['a', 'b'], 'ok')),
    ('[{"query": "a"}, {"query": "b"}]', (['a', 'b'], 'ok')),
    ('["a", "b", "c', (['a', 'b'], 'repaired')),                       # cut by max_new_tokens
    ('```json\n{\n  "query": {\n    "type": "json",\n    "data": [\n      {\n        "type": "',
     (['the query'], 'unparsable')),                                   # SmolLM2's answer: keys are not items
    ('[{"query": "a"}, {"query": "b"}, {"qu', (['the query'], 'unparsable')),    # object keys are not items
    ('1. first need\n2) second need\n- third need', (['first need', 'second need', 'third need'], 'ok')),
    ('Sub-queries:\n1. first\n2. first\n3. second', (['first', 'second'], 'repaired')),
    ('["a", "A", "  ", "b", "c", "d", "e", "f"]', (['a', 'b', 'c', 'd', 'e'], 'repaired')),
    ('I cannot split this.', (['the query'], 'unparsable')),
    ('[]', (['the query'], 'unparsable')),
])
def test_parse_subqueries(text, expected):
    assert parse_subqueries(text, 'the query', max_subqueries=5) == expected


def test_parse_answer():
    assert parse_answer('Passage 1 says X.\nAnswer: X') == ('X', 'ok')
    assert parse_answer('answer: no. Final Answer:  yes ') == ('yes', 'ok')
    assert parse_answer('It is X.') == ('It is X.', 'repaired')
    assert parse_answer('Answer:') == ('Answer:', 'repaired')
    # SmolLM2 repeating the instruction: 'a last line starting with "Answer:".' has no answer after the marker
    assert parse_answer('Write it on a line starting with "Answer:".') == (
        'Write it on a line starting with "Answer:".', 'repaired')
    assert parse_answer('  ') == ('', 'unparsable')


TOPICS = pd.DataFrame({'qid': ['1', '2'], 'query': ['hart atack and stroke symtoms', 'inflaton'],
                       'extra': ['e1', 'e2']})


def test_query_rewrite_pushes_original():
    llm = ScriptedBackend({REWRITE_PROMPT.format(query='hart atack and stroke symtoms'):
                           'heart attack and stroke symptoms',
                           REWRITE_PROMPT.format(query='inflaton'): ''})
    rw = QueryRewrite(llm)
    out = rw(TOPICS)
    assert out['query'].tolist() == ['heart attack and stroke symptoms', 'inflaton']     # empty answer: kept
    assert out['query_0'].tolist() == TOPICS['query'].tolist()
    assert out['extra'].tolist() == ['e1', 'e2']
    assert [p.messages[0][0] for p in llm.prompts] == ['system', 'system']
    stats = rw.stats.per_query().set_index('qid')
    assert stats.loc['2', 'unparsable'] == 1 and stats.loc['1', 'unparsable'] == 0
    assert stats['sequences'].tolist() == [1, 1] and stats['input_tokens'].gt(0).all()
    assert rw.trace()['status'].tolist() == ['ok', 'unparsable']
    # a second rewrite shifts query_0 to query_1, as PyTerrier's rewriters
    again = QueryRewrite(ScriptedBackend(lambda p: 'x'))(out)
    assert again['query_1'].tolist() == TOPICS['query'].tolist() and again['query'].tolist() == ['x', 'x']
    # result frames: one prompt per qid
    res = pd.DataFrame({'qid': ['1', '1'], 'query': ['q', 'q'], 'docno': ['a', 'b'], 'score': [2.0, 1.0]})
    llm2 = ScriptedBackend(lambda p: 'q fixed')
    assert QueryRewrite(llm2)(res)['query'].tolist() == ['q fixed', 'q fixed'] and len(llm2.prompts) == 1
    assert len(rw(TOPICS.iloc[:0])) == 0
    with pytest.raises(pta.validate.InputValidationError, match='query'):
        rw(TOPICS.drop(columns='query'))


def test_decompose_and_subquery_fusion():
    llm = ScriptedBackend(lambda p: '["heart attack symptoms", "stroke symptoms"]'
                          if p.last_user.endswith('stroke symptoms') else 'Sorry, I do not understand.')
    topics = QueryRewrite(ScriptedBackend(lambda p: 'heart attack and stroke symptoms' if 'Query: hart' in p.last_user
                                          else 'inflation'))(TOPICS)
    dec = QueryDecompose(llm, max_subqueries=3)
    out = dec(topics)
    assert out['subqueries'].tolist() == [['heart attack symptoms', 'stroke symptoms'], ['inflation']]
    assert dec.trace()['status'].tolist() == ['ok', 'unparsable']
    assert dec.stats.per_query()['unparsable'].tolist() == [0, 1]

    # a retriever that records what it was asked and answers from a table
    table = {'heart attack symptoms': [('d1', 3.0), ('d2', 2.0), ('d3', 1.0)],
             'stroke symptoms': [('d3', 5.0), ('d4', 4.0)],
             'inflation': [('d9', 1.0)],
             'heart attack and stroke symptoms': [('d4', 9.0)]}
    seen = []

    def retrieve(df):
        seen.append(df.copy())
        rows = [(r.qid, r.query, d, s) for r in df.itertuples() for d, s in table[r.query]]
        return pt.model.add_ranks(pd.DataFrame(rows, columns=['qid', 'query', 'docno', 'score']))

    sqr = SubQueryRetrieve(pt.apply.generic(retrieve))
    res = sqr(out)
    asked = seen[0]
    assert asked['query'].tolist() == ['heart attack symptoms', 'stroke symptoms', 'inflation']
    assert asked['qid'].nunique() == 3                                   # a distinct qid per sub-query
    expected = fuse([pd.DataFrame({'qid': '1', 'query': 'heart attack and stroke symptoms',
                                   'docno': ['d1', 'd2', 'd3'], 'score': [3.0, 2.0, 1.0]}),
                     pd.DataFrame({'qid': '1', 'query': 'heart attack and stroke symptoms',
                                   'docno': ['d3', 'd4'], 'score': [5.0, 4.0]})], 'rrf')
    q1 = res[res.qid == '1'].sort_values('rank')
    assert q1['docno'].tolist() == expected['docno'].tolist() == ['d3', 'd1', 'd2', 'd4']  # tie d2/d4
    assert q1['score'].tolist() == pytest.approx(expected['score'].tolist())
    assert q1['score'].iloc[0] == pytest.approx(1 / 63 + 1 / 61)
    assert (res['query'] == res['qid'].map({'1': 'heart attack and stroke symptoms', '2': 'inflation'})).all()
    assert list(res.columns) == list(out.columns) + ['docno', 'score', 'rank']     # input columns kept, in order
    assert set(out.columns) == {'qid', 'query', 'extra', 'query_0', 'subqueries'}
    assert res[res.qid == '2']['docno'].tolist() == ['d9']
    # include_query adds the query's own list; linear fusion works too
    seen.clear()
    res2 = SubQueryRetrieve(pt.apply.generic(retrieve), include_query=True, fusion='minmax')(out.head(1))
    assert seen[0]['query'].tolist()[0] == 'heart attack and stroke symptoms'
    lists = [pd.DataFrame({'qid': '1', 'query': 'heart attack and stroke symptoms', 'docno': [d for d, _ in table[q]],
                           'score': [x for _, x in table[q]]})
             for q in ('heart attack and stroke symptoms', 'heart attack symptoms', 'stroke symptoms')]
    direct = fuse(lists, 'minmax')
    assert res2.sort_values('rank')['docno'].tolist() == direct['docno'].tolist() == ['d4', 'd1', 'd3', 'd2']
    assert res2.sort_values('rank')['score'].tolist() == pytest.approx([1.0, 1.0, 1.0, 0.5])
    empty = sqr(out.iloc[:0])
    assert len(empty) == 0 and {'docno', 'score', 'rank'} <= set(empty.columns)
    with pytest.raises(pta.validate.InputValidationError, match='subqueries'):
        sqr(topics)


def test_generate_answer_plumbing():
    res = pd.DataFrame({'qid': ['1'] * 3 + ['2'], 'query': ['q one'] * 3 + ['q two'], 'query_0': ['Q1'] * 3 + ['Q2'],
                        'docno': ['a', 'b', 'c', 'z'], 'text': ['alpha text', 'beta text', 'gamma text', 'zeta'],
                        'score': [1.0, 3.0, 2.0, 0.5]})
    res = pt.model.add_ranks(res)
    answers = {'q one': 'Passage 1 is relevant.\nAnswer: beta', 'q two': 'zeta, probably'}
    llm = ScriptedBackend(lambda p: answers[p.last_user.split('Question: ')[1].split('\n')[0]])
    gen = GenerateAnswer(llm, k=2)
    out = gen(res)
    assert list(out.columns) == ['qid', 'query', 'query_0', 'qanswer']
    assert out['qanswer'].tolist() == ['beta', 'zeta, probably']
    assert out['query_0'].tolist() == ['Q1', 'Q2']
    first = llm.prompts[0].last_user
    assert '[1] beta text\n[2] gamma text\n\nQuestion: q one' in first and 'alpha' not in first   # top-2 by rank
    assert gen.trace()['status'].tolist() == ['ok', 'repaired']
    assert gen.stats.per_query()['repaired'].tolist() == [0, 1]
    assert gen.stats.per_query()['generated_tokens'].tolist() == [6, 2]
    empty = gen(res.iloc[:0])
    assert len(empty) == 0 and 'qanswer' in empty.columns
    with pytest.raises(pta.validate.InputValidationError, match='text'):
        gen(res.drop(columns='text'))
    assert repr(gen) == "GenerateAnswer(ScriptedBackend('scripted'), k=2)"


def test_omni_rag_smollm2_scifact(smollm2, data_dir):
    """End to end with the real SmolLM2 on 2 SciFact claims: rewrite >> decompose >> BM25 per sub-query >> RRF >>
    rerank >> answer, with short generation caps to keep the test quick."""
    import torch
    from pyterrier_llmrank import HFGenerationBackend, UPR
    torch.set_num_threads(1)
    scifact = datasets.load(data_dir / 'beir-scifact')
    topics = scifact.get_topics().head(2)
    llm = HFGenerationBackend(smollm2, batch_size=2)
    rewrite, decompose = QueryRewrite(llm, max_new_tokens=24), QueryDecompose(llm, max_new_tokens=32)
    answer = GenerateAnswer(llm, k=2, max_passage_tokens=32, max_new_tokens=16)
    pipeline = (rewrite >> decompose >> SubQueryRetrieve(scifact.bm25(num_results=20)) % 2
                >> scifact.text_loader() >> UPR(smollm2, max_passage_tokens=64) >> answer)
    out = pipeline(topics)
    assert out['qid'].tolist() == topics['qid'].tolist()
    assert out['query_0'].tolist() == topics['query'].tolist()
    assert out['qanswer'].map(lambda s: isinstance(s, str)).all()
    assert all(isinstance(s, list) and 1 <= len(s) <= 4 for s in out['subqueries'])
    for step in (rewrite, decompose, answer):
        st = step.stats.per_query()
        assert len(st) == 2 and st['sequences'].tolist() == [1, 1] and st['generated_tokens'].gt(0).all()
        assert set(step.trace()['status']) <= {'ok', 'repaired', 'unparsable'}


@pytest.mark.parametrize('text', [
    r'["capital of \q france", "paris"]',                     # an invalid escape, whole list
    r'["capital of \q france", "paris", "lo',                 # an invalid escape, truncated list
    '[' * 100_000 + '"a"' + ']' * 100_000,                     # deeper than the JSON reader goes
    '[' * 100_000,
    '{"sub_queries": ' * 50_000 + '[]' + '}' * 50_000,
    '"\\',
])
def test_parse_subqueries_never_raises(text):
    items, status = parse_subqueries(text, 'the query', max_subqueries=5)
    assert items and all(isinstance(s, str) for s in items) and status in ('ok', 'repaired', 'unparsable')
    if text.startswith('["capital'):
        assert items[:2] == ['capital of \\q france', 'paris'] and status == 'repaired'


def test_subqueries_as_strings_and_missing_qids():
    """A subqueries column that went through a CSV file (a string holding the list) is read back; anything else is
    a clear error; a missing qid is named by SubQueryRetrieve and GenerateAnswer."""
    seen = []

    def retrieve(topics):
        seen.extend(topics['query'])
        return pd.DataFrame({'qid': topics['qid'], 'query': topics['query'], 'docno': 'd1', 'score': 1.0, 'rank': 0})
    sqr = SubQueryRetrieve(pt.apply.generic(retrieve))
    base = pd.DataFrame({'qid': ['1'], 'query': ['q'], 'subqueries': [['first one', 'second']]})
    csv = pd.read_csv(io.StringIO(base.to_csv(index=False)), dtype={'qid': str})
    assert csv['subqueries'].iloc[0] == "['first one', 'second']"
    for frame in (csv, base.assign(subqueries=['["first one", "second"]'])):
        seen.clear()
        out = sqr(frame)
        assert seen == ['first one', 'second'] and len(out) == 1
    with pytest.raises(ValueError, match=r"column 'subqueries' of qid '1' is the string 'first one'"):
        sqr(base.assign(subqueries=['first one']))
    with pytest.raises(ValueError, match=r"column 'subqueries' of qid '1' is nan"):
        sqr(base.assign(subqueries=[float('nan')]))
    with pytest.raises(ValueError, match=r"SubQueryRetrieve: column 'qid' is missing .*positions \[0\]"):
        sqr(base.assign(qid=[float('nan')]))
    answer = GenerateAnswer(ScriptedBackend(lambda p: 'Answer: x'), k=1)
    res = pd.DataFrame({'qid': ['1', float('nan')], 'query': 'q', 'docno': ['a', 'b'], 'text': 't', 'score': 1.0})
    with pytest.raises(ValueError, match=r"GenerateAnswer: column 'qid' is missing .*positions \[1\]"):
        answer(res)
