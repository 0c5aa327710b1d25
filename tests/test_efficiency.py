"""EfficiencyStats (the counters every reranker reports) and the GenerationBackend interface every backend keeps."""
import numpy as np
import pandas as pd
import pytest

from pyterrier_llmrank import EfficiencyStats, GenerationBackend, HFGenerationBackend, OpenAIBackend, ScriptedBackend
from pyterrier_llmrank.backends import ChatPrompt, Generation, share_cost


def test_batch_shared_among_queries_by_tokens():
    """One call over 3 sequences of 2 queries: the call split by sequences, the seconds by tokens; totals exact."""
    stats = EfficiencyStats()
    stats.add_batch(['a', 'a', 'b'], [10, 30, 60], padded_len=60, seconds=2.0)
    pq = stats.per_query().set_index('qid')
    assert pq.loc['a', 'model_calls'] == pytest.approx(2 / 3) and pq.loc['b', 'model_calls'] == pytest.approx(1 / 3)
    assert pq['model_calls'].sum() == pytest.approx(1.0) and pq['seconds'].sum() == pytest.approx(2.0)
    assert pq.loc['a', 'seconds'] == pytest.approx(0.8) and pq.loc['b', 'input_tokens'] == 60
    assert pq.loc['a', 'sequences'] == 2 and pq.loc['a', 'padded_tokens'] == 120


def test_extra_counters_summary_repr_and_reset():
    stats = EfficiencyStats()
    assert 'no queries' in repr(stats) and list(stats.per_query().columns[:2]) == ['qid', 'model_calls']
    stats.add('q1', model_calls=2, seconds=1.0, repaired=1)
    stats.add('q2', model_calls=4, seconds=3.0)
    summary = stats.summary()
    assert summary['queries'] == 2 and summary['model_calls_per_query'] == 3 and summary['seconds_total'] == 4
    assert summary['repaired_per_query'] == 0.5  # an unknown counter becomes a column, 0 where not added
    assert '2 queries' in repr(stats) and 'model calls/query 3.0' in repr(stats)
    stats.reset()
    assert stats.summary() == {'queries': 0.0} and isinstance(stats.per_query(), pd.DataFrame)


def test_every_backend_is_a_generation_backend():
    """The rerankers rely only on this interface: generate, tokenizer, batch_size, context_length, prompt_length."""
    for cls in (HFGenerationBackend, OpenAIBackend, ScriptedBackend):
        assert issubclass(cls, GenerationBackend)
    with pytest.raises(NotImplementedError):
        GenerationBackend().generate([ChatPrompt.of([{'role': 'user', 'content': 'x'}])], 1)
    scripted = ScriptedBackend(['first answer', 'second'])
    assert scripted.prompt_length(ChatPrompt.of([{'role': 'user', 'content': 'x'}])) is None  # no tokenizer
    gens = scripted.generate([ChatPrompt.of([{'role': 'user', 'content': 'one two'}]),
                              ChatPrompt.of([{'role': 'user', 'content': 'three'}])], 5)
    assert [g.text for g in gens] == ['first answer', 'second'] and sum(g.calls for g in gens) == pytest.approx(1)


def test_share_cost_splits_seconds_by_tokens():
    gens = [Generation('a', prompt_tokens=3, generated_tokens=1), Generation('b', prompt_tokens=11, generated_tokens=1)]
    share_cost(gens, 8.0)
    assert [g.seconds for g in gens] == [pytest.approx(2.0), pytest.approx(6.0)]
    assert [g.calls for g in gens] == [0.5, 0.5]


# -- length_batches: the batch composition of the pointwise scorers and DuoT5 ----------------------------------

def test_length_batches_cut_where_padding_would_exceed_the_budget():
    from pyterrier_llmrank.base import length_batches
    lengths = np.array([100, 98, 97, 60, 59, 10])
    order = np.argsort(-lengths, kind='stable')
    got = [b.tolist() for b in length_batches(order, lengths, batch_size=16, max_padding=0.1)]
    assert got == [[0, 1, 2], [3, 4], [5]]
    # every row once, in order; batch_size still caps a batch; no budget gives plain slices
    assert [b.tolist() for b in length_batches(order, lengths, 2, 0.1)] == [[0, 1], [2], [3, 4], [5]]
    assert [b.tolist() for b in length_batches(order, lengths, 4, float('inf'))] == [[0, 1, 2, 3], [4, 5]]
    # a zero budget batches equal lengths only; an empty order gives no batch
    assert [b.tolist() for b in length_batches(order, np.array([5, 5, 5, 4, 4, 1]), 16, 0.0)] == [[0, 1, 2], [3, 4], [5]]
    assert length_batches(np.array([], dtype=int), np.array([], dtype=int), 8) == []


def test_the_defaults_are_the_fast_settings(smollm2):
    """Issue 17: nothing to switch on. Pointwise scorers batch within the padding budget and reuse shared prefixes;
    the HF backend prefills alone from shared prefixes on the CPU and decodes into a cache with room to grow."""
    from pyterrier_llmrank import UPR
    from pyterrier_llmrank.base import MAX_PADDING
    from pyterrier_llmrank.pointwise import ProRank, YesNo
    for rr in (UPR(smollm2), YesNo(smollm2), ProRank(smollm2)):
        assert rr.max_padding == MAX_PADDING == 0.1
    assert YesNo(smollm2).prefix_reuse and ProRank(smollm2).prefix_reuse
    be = HFGenerationBackend(smollm2, device='cpu')
    assert be.prefill_alone is None  # None: alone on the CPU
    be.generate([ChatPrompt.of([{'role': 'user', 'content': 'Say hi.'}])], 3)
    assert be._prompt_kv.calls == 1  # the prompt was prefilled alone, through the prompt cache
