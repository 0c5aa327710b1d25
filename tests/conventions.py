"""The PyTerrier conventions every reranker of the toolkit keeps, checked in one place."""
import numpy as np
import pandas as pd
import pyterrier_alpha as pta
import pytest


def check_rerank_conventions(reranker, inp: pd.DataFrame) -> pd.DataFrame:
    """Re-rank ``inp`` (which carries an ``extra`` column) and check the frame conventions; returns the output.

    Input columns kept in order (old score/rank replaced), one output row per input row, ranks 0..n-1 per
    query with scores descending, an empty input giving an empty frame with the output columns, and a missing
    ``text`` or ``query`` column named in the error.
    """
    out = reranker(inp)
    expected = [c for c in inp.columns if c not in ('score', 'rank')] + ['score', 'rank']
    assert list(out.columns) == expected
    assert len(out) == len(inp) and sorted(out['extra'].tolist()) == sorted(inp['extra'].tolist())
    for _, g in out.groupby('qid'):
        g = g.sort_values('rank')
        assert g['rank'].tolist() == list(range(len(g)))
        assert (np.diff(g['score']) <= 0).all()
    empty = reranker(inp.iloc[:0])
    assert len(empty) == 0 and {'score', 'rank', 'extra'} <= set(empty.columns)
    for column in ('text', 'query'):
        with pytest.raises(pta.validate.InputValidationError, match=column):
            reranker(inp.drop(columns=[column]))
    return out
