"""IDCM: windows as the reference's unfold, ESM/ETM/aggregation equal to direct computations, the cascade's
selection, the reference checkpoint layout, and both training stages on a tiny DistilBERT."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from pyterrier_llmrank.testing import corpus_lines
from pyterrier_llmrank.idcm import (IDCM, IDCM_CHUNK_SIZE, IDCM_KERNEL_MU, IDCM_KERNEL_SIGMA, IDCM_MAX_DOC_TOKENS,
                                    IDCM_MAX_QUERY_TOKENS, IDCM_OVERLAP, IDCM_SAMPLE_N, IDCM_TOP_K_CHUNKS, IDCMModel,
                                    split_windows)
from pyterrier_llmrank.train.idcm import distill_esm, lambda_loss, train_etm


def fresh_model(tiny_distilbert, seed=0, **kw):
    """A fresh IDCMModel around a copy of the tiny DistilBERT (the shared fixture is never modified)."""
    from transformers import AutoModel
    bert = AutoModel.from_pretrained(tiny_distilbert.path)
    torch.manual_seed(seed)
    model = IDCMModel(bert, **kw)
    with torch.no_grad():  # spread the student's and the aggregation's weights so that the tests discriminate
        model.sampling_binweights.weight.normal_(0, 1.0)
        model.top_k_scoring.copy_(torch.tensor([[1.0, 0.5, 0.25]]))
    return model.eval()


def long_text(i, n):
    return ' '.join(corpus_lines(400)[i:i + n])


@pytest.fixture(scope='module')
def idcm(tiny_distilbert):
    return IDCM(fresh_model(tiny_distilbert), tokenizer=tiny_distilbert.tokenizer, device='cpu', batch_size=4)


def frame():
    rows = [('1', 'what is the capital of france', 'd1', long_text(0, 8), 'a'),
            ('1', 'what is the capital of france', 'd2', long_text(10, 3), 'b'),
            ('1', 'what is the capital of france', 'd3', 'paris', 'c'),
            ('2', 'how to cook pasta', 'd4', long_text(20, 12), 'd'),
            ('2', 'how to cook pasta', 'd5', '', 'e')]
    return pd.DataFrame(rows, columns=['qid', 'query', 'docno', 'text', 'extra'])


def test_constants_golden():
    assert IDCM_KERNEL_MU == (1.0, 0.9, 0.7, 0.5, 0.3, 0.1, -0.1, -0.3, -0.5, -0.7, -0.9)
    assert IDCM_KERNEL_SIGMA == 0.1
    assert (IDCM_CHUNK_SIZE, IDCM_OVERLAP, IDCM_SAMPLE_N, IDCM_TOP_K_CHUNKS) == (50, 7, 4, 3)
    assert (IDCM_MAX_QUERY_TOKENS, IDCM_MAX_DOC_TOKENS) == (30, 2000)


def reference_unfold(doc_ids, chunk=50, overlap=7, pad=0):
    """The reference's forward: pad by its needed_padding formula, unfold, keep windows with a non-pad middle."""
    ids = torch.tensor([doc_ids])
    ext = chunk + 2 * overlap
    if ids.shape[1] > overlap:
        need = ext - ((ids.shape[1] % chunk) - overlap)
    else:
        need = ext - overlap - ids.shape[1]
    padded = torch.nn.functional.pad(ids, (overlap, need), value=pad)
    windows = padded.unfold(1, ext, chunk).reshape(-1, ext)
    keep = (windows[:, overlap:-overlap] != pad).any(-1)
    return windows[keep].numpy()


@pytest.mark.parametrize('length', [1, 5, 7, 8, 49, 50, 51, 100, 123, 777, 1999])
def test_windows_equal_reference_unfold(length):
    ids = list(range(1, length + 1))
    ours = split_windows(ids)
    ref = reference_unfold(ids)
    assert ours.shape == ref.shape and (ours == ref).all()
    assert ours.shape[1] == 64 and len(ours) == -(-length // 50)
    # window i holds tokens 50 i - 7 .. 50 i + 56 of the document
    for i, w in enumerate(ours):
        expect = [ids[j] if 0 <= j < length else 0 for j in range(50 * i - 7, 50 * i + 57)]
        assert w.tolist() == expect


def direct_esm(model, q, windows, loops=True):
    """The CK student by explicit loops over tokens, kernels and query terms."""
    emb = model.bert_model.embeddings
    conv = model.sample_cnn3[1]
    W, b = conv.weight.detach(), conv.bias.detach()  # [out, in, 3]

    def ck(ids):
        e = emb(torch.tensor([ids]))[0].detach()  # [L, d]
        e = torch.cat([e, torch.zeros(2, e.shape[1])])
        rows = []
        for t in range(len(ids)):
            v = b + sum(W[:, :, k] @ e[t + k] for k in range(3))
            v = torch.relu(v)
            rows.append(v / max(v.norm(), 1e-12))
        return torch.stack(rows)

    qc = ck(q)
    scores = []
    for w in windows:
        dc = ck(list(w))
        keep = torch.tensor([float(t != 0) for t in w])
        pooled = torch.zeros(11)
        for i in range(len(q)):
            for k, mu in enumerate(IDCM_KERNEL_MU):
                if loops:
                    s = sum(float(torch.exp(-(qc[i] @ dc[j] - mu) ** 2 / (2 * IDCM_KERNEL_SIGMA ** 2)))
                            for j in range(len(w)) if w[j] != 0)
                else:  # the same sum over the window's tokens, as one vector operation
                    s = float((torch.exp(-(dc @ qc[i] - mu) ** 2 / (2 * IDCM_KERNEL_SIGMA ** 2)) * keep).sum())
                pooled[k] += np.log(max(s * float(model.kernel_alpha_scaler[0, 0, k].detach()), 1e-4))
        with torch.no_grad():
            scores.append(float(model.sampling_binweights(pooled)))
    return np.array(scores)


def test_esm_equals_direct_loops(idcm):
    q = idcm.query_ids('what is the capital of france')
    windows = idcm.document_windows(long_text(0, 3))[:3]
    with torch.no_grad():
        ours = idcm.model.esm_scores(torch.tensor(q), torch.tensor(windows)).numpy()
    np.testing.assert_allclose(ours, direct_esm(idcm.model, q, windows), rtol=1e-4, atol=1e-4)


def direct_etm(model, q, window):
    """One window alone: ``q + window`` through the encoder, pad ids masked, [CLS] through the linear layer."""
    ids = torch.tensor([q + list(window)])
    mask = torch.tensor([[1] * len(q) + [int(t != 0) for t in window]])
    with torch.no_grad():
        cls = model.bert_model(input_ids=ids, attention_mask=mask)[0][0, 0]
        return float(model._classification_layer(cls))


def direct_document_score(model, q, windows, sample_n):
    esm = direct_esm(model, q, windows, loops=False) if sample_n != -1 and sample_n < len(windows) else None
    if esm is None:
        chosen = list(range(len(windows)))
    else:
        chosen = sorted(np.argsort(-esm, kind='stable')[:sample_n].tolist())
    etm = sorted((direct_etm(model, q, windows[i]) for i in chosen), reverse=True)
    weights = model.top_k_scoring[0].detach().numpy()
    return sum(s * weights[i] for i, s in enumerate(etm[:model.top_k_chunks])), chosen


@pytest.mark.parametrize('sample_n', [2, -1])
def test_document_scores_equal_direct_cascade(tiny_distilbert, sample_n):
    model = fresh_model(tiny_distilbert)
    reranker = IDCM(model, tokenizer=tiny_distilbert.tokenizer, sample_n=sample_n, device='cpu', batch_size=3)
    inp = frame()
    out = reranker(inp).set_index('docno')
    windows_total, etm_total = 0, 0
    for _, row in inp.iterrows():
        q = reranker.query_ids(row['query'])
        windows = reranker.document_windows(row['text'])
        expect, chosen = direct_document_score(model, q, windows, sample_n)
        assert out.loc[row['docno'], 'score'] == pytest.approx(expect, rel=1e-4, abs=1e-5)
        windows_total += len(windows)
        etm_total += len(chosen)
    stats = reranker.stats.per_query()
    assert stats['windows'].sum() == windows_total and stats['etm_windows'].sum() == etm_total
    assert stats['sequences'].sum() == etm_total  # the ETM saw exactly the selected windows
    if sample_n == 2:
        assert etm_total < windows_total


def test_cascade_with_enough_samples_is_no_cascade(tiny_distilbert):
    inp = frame()
    model = fresh_model(tiny_distilbert)
    full = IDCM(model, tokenizer=tiny_distilbert.tokenizer, sample_n=-1, device='cpu')(inp)
    many = IDCM(model, tokenizer=tiny_distilbert.tokenizer, sample_n=1000, device='cpu')(inp)
    np.testing.assert_allclose(full['score'], many['score'], rtol=1e-5)
    one = IDCM(model, tokenizer=tiny_distilbert.tokenizer, sample_n=1, device='cpu')(inp)
    # a one-window document scores the same with any sample_n; longer ones differ with sample_n 1
    d3 = [float(x[x.docno == 'd3'].score.iloc[0]) for x in (one, full)]
    assert d3[0] == pytest.approx(d3[1], rel=1e-5)
    d1 = [float(x[x.docno == 'd1'].score.iloc[0]) for x in (one, full)]
    assert d1[0] != pytest.approx(d1[1], rel=1e-3)


def test_batch_invariance_and_independence(tiny_distilbert):
    model = fresh_model(tiny_distilbert)
    a = IDCM(model, tokenizer=tiny_distilbert.tokenizer, device='cpu', batch_size=1)
    b = IDCM(model, tokenizer=tiny_distilbert.tokenizer, device='cpu', batch_size=64)
    out = a(frame())
    other = b(frame())
    np.testing.assert_allclose(out.sort_values('docno')['score'], other.sort_values('docno')['score'], rtol=1e-5, atol=1e-6)
    alone = b(frame()[frame().docno == 'd1'])  # a document's score does not depend on the other documents
    assert float(alone.score.iloc[0]) == pytest.approx(float(other[other.docno == 'd1'].score.iloc[0]), rel=1e-5)
    assert repr(a).startswith('IDCM(') and 'sample_n=4' in repr(a)


def test_save_load_reference_layout(tiny_distilbert, tmp_path):
    model = fresh_model(tiny_distilbert, sample_n=2)
    reranker = IDCM(model, tokenizer=tiny_distilbert.tokenizer, device='cpu')
    reranker.save_pretrained(tmp_path / 'ckpt')
    cfg = json.loads((tmp_path / 'ckpt' / 'config.json').read_text())
    for key, value in {'model_type': 'IDCM', 'sample_n': 2, 'top_k_chunks': 3, 'chunk_size': 50, 'overlap': 7,
                       'padding_idx': 0, 'sample_context': 'ck'}.items():
        assert cfg[key] == value
    loaded = IDCM.from_pretrained(tmp_path / 'ckpt', device='cpu')
    assert loaded.sample_n == 2
    np.testing.assert_allclose(loaded(frame())['score'], reranker(frame())['score'], rtol=1e-6)
    # the published layout: only the reference's keys (no bert_config; bert_model names the encoder), the
    # weights in pytorch_model.bin under the reference's names, with an old-style position_ids buffer
    pub = tmp_path / 'published'
    pub.mkdir()
    (pub / 'config.json').write_text(json.dumps({
        'architectures': ['IDCM_InferenceOnly'], 'bert_model': tiny_distilbert.path, 'chunk_size': 50,
        'model_type': 'IDCM', 'overlap': 7, 'padding_idx': 0, 'sample_context': 'ck', 'sample_n': 4,
        'top_k_chunks': 3}))
    state = dict(model.state_dict())
    assert {'top_k_scoring', 'sample_cnn3.1.weight', 'sampling_binweights.weight', 'kernel_alpha_scaler', 'mu',
            'sigma', '_classification_layer.weight', 'bert_model.embeddings.word_embeddings.weight'} <= set(state)
    state['bert_model.embeddings.position_ids'] = torch.arange(512)[None]
    torch.save(state, pub / 'pytorch_model.bin')
    published = IDCM.from_pretrained(pub, device='cpu', sample_n=2)
    np.testing.assert_allclose(published(frame())['score'], reranker(frame())['score'], rtol=1e-6)
    assert IDCM.from_pretrained(pub, device='cpu').sample_n == 4
    (pub / 'pytorch_model.bin').unlink()
    torch.save({k: v for k, v in state.items() if k != 'top_k_scoring'}, pub / 'pytorch_model.bin')
    with pytest.raises(ValueError, match='top_k_scoring'):
        IDCM.from_pretrained(pub, device='cpu')


def direct_lambda_loss(pred, gains):
    """NDCG-Loss2 LambdaLoss by explicit loops over rank pairs (one slate, no padding)."""
    order = np.argsort(-pred, kind='stable')
    s, g = pred[order], gains[order]
    ideal = sorted(gains, reverse=True)
    max_dcg = sum((2 ** x - 1) / np.log2(2 + r) for r, x in enumerate(ideal))
    G = (2 ** g - 1) / max_dcg
    total = 0.
    for i in range(len(s)):
        for j in range(len(s)):
            if g[i] > g[j]:
                d = abs(i - j)
                w = abs(1 / np.log2(1 + d) - 1 / np.log2(2 + d)) * abs(G[i] - G[j])
                total -= np.log2(max(max(1 / (1 + np.exp(-(s[i] - s[j]))), 1e-6) ** w, 1e-6))
    return total


def test_lambda_loss_equals_direct():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=7)
    gains = np.array([0., 4., 0., 2., 3., 0., 1.])
    ours = float(lambda_loss(torch.tensor(pred[None]), torch.tensor(gains[None])))
    assert ours == pytest.approx(direct_lambda_loss(pred, gains), rel=1e-5)
    # a padded entry changes nothing
    padded = float(lambda_loss(torch.tensor(np.append(pred, 5.0)[None]), torch.tensor(np.append(gains, -9000.)[None])))
    assert padded == pytest.approx(ours, rel=1e-6)
    # a perfect ordering costs less than the reverse one
    assert float(lambda_loss(torch.tensor(gains[None]), torch.tensor(gains[None]))) < \
        float(lambda_loss(torch.tensor(-gains[None]), torch.tensor(gains[None])))


def test_training_stages(tiny_distilbert):
    """Stage 1 lowers the ranking loss on all windows; stage 2 makes the ESM agree with the frozen ETM."""
    lines = corpus_lines(400)
    model = fresh_model(tiny_distilbert, seed=1)
    tok = tiny_distilbert.tokenizer
    triples = [(lines[i].split('.')[0], ' '.join(lines[i:i + 4]), ' '.join(lines[i + 200:i + 204]))
               for i in range(0, 48, 4)]
    losses = train_etm(model, tok, triples, epochs=4, lr=2e-3, batch_size=4)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    etm_before = [p.detach().clone() for p in model.etm_parameters()]

    pairs = [(q, d) for q, p, n in triples for d in (p, n)]

    def agreement():
        """Mean overlap of the ESM's top 2 windows with the ETM's top 2 over documents with > 2 windows."""
        hits = []
        with torch.no_grad():
            for q, d in pairs:
                qi = torch.tensor(tok(q, truncation=True, max_length=30)['input_ids'])
                w = torch.tensor(split_windows(tok(d, truncation=True, max_length=2000)['input_ids'][1:]))
                if len(w) <= 2:
                    continue
                esm, etm = model.esm_scores(qi, w), model.etm_scores(qi, w)
                hits.append(len(set(esm.topk(2).indices.tolist()) & set(etm.topk(2).indices.tolist())) / 2)
        return float(np.mean(hits))

    before = agreement()
    losses = distill_esm(model, tok, pairs, epochs=6, lr=5e-3, batch_size=4, sample_n=2)
    after = agreement()
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert after > before
    for p, q in zip(model.etm_parameters(), etm_before):  # the teacher stayed frozen
        assert torch.equal(p, q)
    for loss in ('mse', 'kl'):
        values = distill_esm(model, tok, pairs[:8], epochs=2, lr=1e-3, batch_size=4, loss=loss)
        assert all(np.isfinite(values))


def test_published_encoder_config_offline():
    """The published config names distilbert-base-uncased; its encoder is built offline from DistilBertConfig()."""
    from pyterrier_llmrank.idcm import backbone_config
    cfg = backbone_config({'bert_model': 'distilbert-base-uncased'})
    # distilbert-base-uncased's config.json (huggingface.co/distilbert/distilbert-base-uncased)
    golden = {'activation': 'gelu', 'attention_dropout': 0.1, 'dim': 768, 'dropout': 0.1, 'hidden_dim': 3072,
              'initializer_range': 0.02, 'max_position_embeddings': 512, 'model_type': 'distilbert', 'n_heads': 12,
              'n_layers': 6, 'pad_token_id': 0, 'qa_dropout': 0.1, 'seq_classif_dropout': 0.2,
              'sinusoidal_pos_embds': False, 'vocab_size': 30522}
    assert {k: getattr(cfg, k) for k in golden} == golden


def test_sample_n_is_the_rerankers_own(tiny_distilbert):
    model = fresh_model(tiny_distilbert)
    a = IDCM(model, tokenizer=tiny_distilbert.tokenizer, sample_n=1, device='cpu')
    b = IDCM(model, tokenizer=tiny_distilbert.tokenizer, device='cpu')
    assert (a.sample_n, b.sample_n, model.sample_n) == (1, 4, 4)
    with pytest.raises(ValueError):
        IDCM(model, tokenizer=tiny_distilbert.tokenizer, sample_n=0)


def test_idcm_recipe_cli_loads_into_idcm(tiny_distilbert, tmp_path):
    """The ``idcm`` recipe (example config, tiny encoder, two SciFact queries): both stages logged, the ETM frozen in
    stage 2, the output folder loading into IDCM with the trained weights, a restart reusing stage 1."""
    from pathlib import Path

    from pyterrier_llmrank.idcm import load_idcm_model
    from pyterrier_llmrank.train import load_reranker
    from pyterrier_llmrank.train.__main__ import main
    from pyterrier_llmrank.train.common import read_log
    example = Path(__file__).resolve().parent.parent / 'examples' / 'train' / 'idcm-cpu.yaml'
    out = tmp_path / 'idcm'
    args = ['idcm', '--config', str(example), f'encoder={tiny_distilbert.path}', f'output_dir={out}', 'max_queries=2',
            'max_doc_tokens=300', 'etm.lr=1e-3', 'etm.batch_size=1', 'esm.batch_size=1', 'esm.epochs=1',
            'verbose=false']
    assert main(args) == 0
    log = read_log(out / 'log.csv')
    stages = [r['stage'] for r in log]
    assert stages[0] == 'etm' and stages[-1] == 'esm' and stages == sorted(stages, reverse=True)
    assert [int(r['step']) for r in log] == list(range(1, len(log) + 1))
    etm, _ = load_idcm_model(out / 'etm')
    final, _ = load_idcm_model(out)
    fresh = fresh_model(tiny_distilbert)
    for a, b in zip(etm.etm_parameters(), final.etm_parameters()):  # stage 2 leaves the ETM as stage 1 wrote it
        assert torch.equal(a, b)
    assert not torch.equal(etm.bert_model.embeddings.word_embeddings.weight,
                           fresh.bert_model.embeddings.word_embeddings.weight)  # stage 1 trained the encoder
    assert any(not torch.equal(a, b) for a, b in zip(etm.esm_parameters(), final.esm_parameters()))
    reranker = load_reranker(out, device='cpu')
    assert type(reranker) is IDCM and reranker.max_doc_tokens == 300 and reranker.sample_n == 4
    direct = IDCM((final, reranker.tokenizer), device='cpu', max_doc_tokens=300)
    np.testing.assert_allclose(reranker(frame())['score'], direct(frame())['score'], rtol=1e-6)
    before = (out / 'etm' / 'pytorch_model.bin').read_bytes()
    assert main(args) == 0  # a restart: stage 1 reused (same log rows), stage 2 again, the same result
    assert (out / 'etm' / 'pytorch_model.bin').read_bytes() == before
    assert read_log(out / 'log.csv') == log
    with pytest.raises(ValueError, match='another configuration'):
        main(args[:-1] + ['etm.lr=2e-3'])
