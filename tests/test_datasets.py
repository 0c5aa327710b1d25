"""Tests of pyterrier_llmrank.datasets on the real offline collections (../shared/data)."""
import gzip
import json

import pandas as pd
import pyterrier as pt
import pytest
from ir_measures import nDCG

from pyterrier_llmrank import datasets
from pyterrier_llmrank.datasets import DatasetFormatError, UnknownDocnoError

DL19 = 'msmarco-passage-trec-dl-2019'


@pytest.fixture(scope='module')
def dl19(data_dir):
    return datasets.load(data_dir / DL19)


@pytest.fixture(scope='module')
def vaswani(data_dir):
    return datasets.load(data_dir / 'vaswani')


def _write_collection(root, docs=None, topics=None, qrels=None, runs=None):
    """A tiny collection in the folder format; ``None`` leaves a file out."""
    root.mkdir(parents=True, exist_ok=True)
    if docs is not None:
        with gzip.open(root / 'docs.jsonl.gz', 'wt', encoding='utf-8') as f:
            for line in docs:
                f.write((line if isinstance(line, str) else json.dumps(line)) + '\n')
    if topics is not None:
        (root / 'topics.tsv').write_text(''.join(line + '\n' for line in topics), encoding='utf-8')
    if qrels is not None:
        (root / 'qrels.txt').write_text(''.join(line + '\n' for line in qrels), encoding='utf-8')
    for name, lines in (runs or {}).items():
        (root / 'runs').mkdir(exist_ok=True)
        (root / 'runs' / f'{name}.run').write_text(''.join(line + '\n' for line in lines), encoding='utf-8')
    return root


GOOD_DOCS = [{'docno': 'd1', 'text': 'one'}, {'docno': 'd2', 'text': 'two'}, {'docno': 'd3', 'text': 'three'}]
GOOD_TOPICS = ['q1\tfirst query', 'q2\tsecond query']
GOOD_QRELS = ['q1 0 d1 1', 'q2 0 d2 2']
GOOD_RUN = ['q1 Q0 d2 1 3.5 t', 'q1 Q0 d1 2 2.5 t', 'q2 Q0 d3 1 9.0 t']


# ---------------------------------------------------------------------------------------------
# real collections


def test_dl19_topics_and_qrels(dl19):
    topics, qrels = dl19.get_topics(), dl19.get_qrels()
    assert len(topics) == 43 and list(topics.columns) == ['qid', 'query']
    assert len(qrels) == 9260 and list(qrels.columns) == ['qid', 'docno', 'label']
    assert all(isinstance(q, str) for q in topics['qid'])
    assert pd.api.types.is_integer_dtype(qrels['label']) and set(qrels['label']) == {0, 1, 2, 3}
    assert set(qrels['qid']) == set(topics['qid'])
    assert dl19.name == DL19 and DL19 in repr(dl19)
    assert dl19.runs() == ['bm25', 'splade-pp-ed']


def test_vaswani_counts(vaswani):
    assert len(vaswani.get_topics()) == 93
    assert len(vaswani.get_qrels()) == 2083
    docs = list(vaswani.get_corpus_iter())
    assert len(docs) == 11429 and set(docs[0]) == {'docno', 'text'}
    assert vaswani.docs() is vaswani.docs()  # read once, kept in memory


def test_dl19_stored_bm25_run(dl19, data_dir):
    topics = dl19.get_topics().iloc[::-1].reset_index(drop=True).assign(extra=lambda d: d['qid'] + '!')
    res = dl19.get_run('bm25')(topics)
    assert list(res.columns) == ['qid', 'query', 'extra', 'docno', 'score', 'rank', 'text']
    assert len(res) == 43 * 100
    assert (res.groupby('qid').size() == 100).all()
    assert list(dict.fromkeys(res['qid'])) == list(topics['qid'])  # topics order kept
    assert (res['extra'] == res['qid'] + '!').all()
    assert res['text'].map(lambda t: isinstance(t, str) and len(t) > 0).all()
    for _, group in res.groupby('qid'):
        assert list(group['rank']) == list(range(100))
        assert group['score'].is_monotonic_decreasing
    # the order of the file is kept
    first = topics['qid'][0]
    with open(data_dir / DL19 / 'runs' / 'bm25.run') as f:
        file_docnos = [line.split()[2] for line in f if line.split()[0] == first]
    assert list(res[res['qid'] == first]['docno']) == file_docnos


def test_dl19_bm25_ndcg(dl19):
    result = pt.Experiment([dl19.get_run('bm25')], dl19.get_topics(), dl19.get_qrels(), [nDCG @ 10])
    assert result['nDCG@10'][0] == pytest.approx(0.5058, abs=5e-4)


def test_run_cutoff_and_unknown_run(dl19):
    res = (dl19.get_run('splade-pp-ed') % 10)(dl19.get_topics().head(3))
    assert len(res) == 30 and res['rank'].max() == 9
    with pytest.raises(DatasetFormatError, match="no run 'nope'.*bm25"):
        dl19.get_run('nope')


def test_text_loader(vaswani):
    frame = pd.DataFrame({'qid': ['1', '1', '2'], 'query': ['a', 'a', 'b'], 'docno': ['3', '1', '3'],
                          'score': [2., 1., 5.], 'rank': [0, 1, 0], 'extra': [7, 8, 9], 'text': ['x', 'y', 'z']})
    out = vaswani.text_loader()(frame)
    assert list(out.columns) == ['qid', 'query', 'docno', 'score', 'rank', 'extra', 'text']
    assert list(out['extra']) == [7, 8, 9]
    assert out['text'][1].startswith('compact memories have flexible capacities')
    assert out['text'][0] == out['text'][2] == vaswani.docs()['3']
    assert pt.text.get_text(vaswani)(frame)['text'].tolist() == out['text'].tolist()
    with pytest.raises(UnknownDocnoError, match="'no-such-doc'"):
        vaswani.text_loader()(frame.assign(docno=['1', 'no-such-doc', '2']))
    with pytest.raises(Exception, match='docno'):
        vaswani.text_loader()(frame.drop(columns=['docno']))
    assert len(vaswani.text_loader()(frame.iloc[:0])) == 0


def test_scifact_train_split(data_dir):
    train = datasets.load(data_dir / 'beir-scifact' / 'train')
    assert train.name == 'beir-scifact/train'
    assert len(train.get_topics()) == 505 and len(train.get_qrels()) == 564
    assert train.docs_path == data_dir / 'beir-scifact' / 'docs.jsonl.gz'
    assert len(train.docs()) == 5183
    assert set(train.get_qrels()['docno']) <= set(train.docs())


def test_split_under_symlinked_data_folder(tmp_path):
    real = _write_collection(tmp_path / 'real' / 'col', GOOD_DOCS, GOOD_TOPICS, GOOD_QRELS)
    _write_collection(real / 'train', topics=GOOD_TOPICS, qrels=GOOD_QRELS)
    (tmp_path / 'link').symlink_to(tmp_path / 'real')
    train = datasets.load(tmp_path / 'link' / 'col' / 'train')
    assert train.name == 'col/train' and train.docs_path == tmp_path / 'link' / 'col' / 'docs.jsonl.gz'
    assert sorted(train.docs()) == ['d1', 'd2', 'd3']


def test_bare_name_lookup(data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv('PYTERRIER_LLMRANK_DATA', str(data_dir))
    monkeypatch.chdir(tmp_path)  # not found relative to the working directory: only via the env
    assert datasets.find_shared('vaswani') == data_dir / 'vaswani'
    assert datasets.load('beir-scifact/train').name == 'beir-scifact/train'
    with pytest.raises(DatasetFormatError, match='no-such-collection') as e:
        datasets.load('no-such-collection')
    assert str(data_dir / 'no-such-collection') in str(e.value)


# ---------------------------------------------------------------------------------------------
# errors on bad input


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(DatasetFormatError, match='not found'):
        datasets.load(tmp_path / 'absent')
    with pytest.raises(DatasetFormatError, match='not found'):
        datasets.load(str(tmp_path / 'absent'))
    root = _write_collection(tmp_path / 'c', docs=GOOD_DOCS, qrels=GOOD_QRELS)
    with pytest.raises(DatasetFormatError, match=r'no topics\.tsv.*docs\.jsonl\.gz.*qrels\.txt'):
        datasets.load(root)
    root = _write_collection(tmp_path / 'd', topics=GOOD_TOPICS, qrels=GOOD_QRELS)
    with pytest.raises(DatasetFormatError, match=r'no docs\.jsonl\.gz'):
        datasets.load(root)
    root = _write_collection(tmp_path / 'e', docs=GOOD_DOCS, topics=GOOD_TOPICS)
    with pytest.raises(DatasetFormatError, match=r'no qrels\.txt'):
        datasets.load(root).get_qrels()


@pytest.mark.parametrize('kind,lines,expected', [
    ('topics', ['q1\tfine', 'q2 no tab here'], r'topics\.tsv:2: .*q2 no tab here'),
    ('topics', ['q1\tfine', '', 'q1\tagain'], r'topics\.tsv:3: duplicate qid'),
    ('qrels', ['q1 0 d1 1', 'q2 0 d2 high'], r'qrels\.txt:2: .*not an integer.*q2 0 d2 high'),
    ('qrels', ['q1 0 d1'], r'qrels\.txt:1: .*found 3 fields'),
    ('docs', [GOOD_DOCS[0], '{"docno": "d2", "text": '], r'docs\.jsonl\.gz:2: invalid JSON'),
    ('docs', [GOOD_DOCS[0], {'docno': 'd2'}], r'docs\.jsonl\.gz:2: .*"docno" and "text"'),
    ('docs', [GOOD_DOCS[0], GOOD_DOCS[1], GOOD_DOCS[0]],
     r'docs\.jsonl\.gz:3: duplicate docno .d1. \(first on line 1\)'),
    ('docs', [], r'docs\.jsonl\.gz: no documents'),
    ('run', ['q1 Q0 d1 1 2.0 t', 'q1 Q0 d2 2 x t'], r'r\.run:2: .*q1 Q0 d2 2 x t'),
    ('run', ['q1 Q0 d1 1 2.0 t', 'q1 Q0 d9 2 1.0 t'], r"r\.run:2: docno 'd9' has no text"),
])
def test_malformed_lines(tmp_path, kind, lines, expected):
    files = {'docs': GOOD_DOCS, 'topics': GOOD_TOPICS, 'qrels': GOOD_QRELS, 'runs': {}}
    if kind == 'run':
        files['runs'] = {'r': lines}
    else:
        files[kind] = lines
    col = datasets.load(_write_collection(tmp_path / 'c', **files))
    with pytest.raises(DatasetFormatError, match=expected):
        {'topics': col.get_topics, 'qrels': col.get_qrels, 'docs': col.docs,
         'run': lambda: col.get_run('r')}[kind]()


def test_tiny_collection_roundtrip(tmp_path):
    col = datasets.load(_write_collection(tmp_path / 'c', GOOD_DOCS, GOOD_TOPICS, GOOD_QRELS, {'r': GOOD_RUN}))
    res = col.get_run('r')(col.get_topics())
    assert list(res['docno']) == ['d2', 'd1', 'd3'] and list(res['rank']) == [0, 1, 0]
    assert list(res['text']) == ['two', 'one', 'three']
    with pytest.warns(UserWarning, match='no results for 1 topic'):
        assert len(col.get_run('r')(pd.DataFrame({'qid': ['q1', 'q9'], 'query': ['a', 'b']}))) == 2
    assert issubclass(DatasetFormatError, ValueError)


# ---------------------------------------------------------------------------------------------
# ir_datasets (offline: only what needs no download)


def test_irds_offline():
    col = datasets.load('irds:msmarco-passage/trec-dl-2019/judged')
    assert col.name == 'irds:msmarco-passage/trec-dl-2019/judged'
    assert col.irds_id == 'msmarco-passage/trec-dl-2019/judged'
    assert col.runs() == ['scoreddocs']
    vas = datasets.load('irds:vaswani')
    assert vas.runs() == []
    with pytest.raises(DatasetFormatError, match='no scoreddocs'):
        vas.get_run('scoreddocs')
    with pytest.raises(KeyError, match='no-such-dataset'):
        datasets.load('irds:no-such-dataset/really')
    assert vas.cache_path().name.startswith('irds-vaswani-')


def test_irds_local_dataset(tmp_path, monkeypatch):
    """The ir_datasets code path on a local dataset registered in ir_datasets (no download)."""
    import uuid
    from typing import NamedTuple

    import ir_datasets
    from ir_datasets.datasets.base import Dataset
    from ir_datasets.formats import TrecQrels, TrecScoredDocs, TsvDocs, TsvQueries
    from ir_datasets.util import LocalDownload

    class Doc(NamedTuple):
        doc_id: str
        title: str
        text: str

    (tmp_path / 'docs.tsv').write_text('d1\tTitle One\tbody one\nd2\t\tbody two\nd3\tT3\tthree\n')
    (tmp_path / 'queries.tsv').write_text('q1\tbody\nq2\ttitles\n')
    (tmp_path / 'qrels').write_text('q1 0 d1 1\nq2 0 d3 2\n')
    (tmp_path / 'run').write_text('q1 Q0 d2 1 3.5 t\nq1 Q0 d1 2 2.5 t\nq2 Q0 d3 1 9 t\n')
    irds_id = f'llmrank-test/{uuid.uuid4().hex[:8]}'
    ir_datasets.registry.register(irds_id, Dataset(
        TsvDocs(LocalDownload(str(tmp_path / 'docs.tsv')), doc_cls=Doc),
        TsvQueries(LocalDownload(str(tmp_path / 'queries.tsv'))),
        TrecQrels(LocalDownload(str(tmp_path / 'qrels')), {}),
        TrecScoredDocs(LocalDownload(str(tmp_path / 'run')))))

    col = datasets.load(f'irds:{irds_id}')
    assert col.get_topics().values.tolist() == [['q1', 'body'], ['q2', 'titles']]
    qrels = col.get_qrels()
    assert qrels.values.tolist() == [['q1', 'd1', 1], ['q2', 'd3', 2]]
    assert pd.api.types.is_integer_dtype(qrels['label'])
    assert list(col.get_corpus_iter()) == [{'docno': 'd1', 'text': 'Title One body one'},
                                           {'docno': 'd2', 'text': 'body two'},
                                           {'docno': 'd3', 'text': 'T3 three'}]
    res = col.get_run('scoreddocs')(col.get_topics())
    assert res[['qid', 'docno', 'rank', 'text']].values.tolist() == [
        ['q1', 'd2', 0, 'body two'], ['q1', 'd1', 1, 'Title One body one'], ['q2', 'd3', 0, 'T3 three']]
    with pytest.raises(UnknownDocnoError, match="'d9'"):
        col.text_loader()(res.assign(docno=['d1', 'd9', 'd3']))
    import pyterrier_pisa  # noqa: F401  (a test dependency: fail, never skip, when it is missing)
    monkeypatch.setenv('PYTERRIER_LLMRANK_CACHE', str(tmp_path / 'cache'))
    out = (col.bm25() % 5 >> col.text_loader())(col.get_topics())
    assert set(out[out['qid'] == 'q1']['docno']) == {'d1', 'd2'}
    assert out[out['qid'] == 'q2']['text'].tolist() == ['Title One body one']  # title indexed (porter2)


# ---------------------------------------------------------------------------------------------
# PISA BM25


def test_pisa_bm25_vaswani(data_dir, monkeypatch, tmp_path):
    import pyterrier_pisa  # noqa: F401
    monkeypatch.setenv('PYTERRIER_LLMRANK_CACHE', str(tmp_path / 'cache'))
    vaswani = datasets.load(data_dir / 'vaswani')
    bm25 = vaswani.bm25()
    path = vaswani.cache_path()
    assert path.parent == tmp_path / 'cache' / 'pisa' and path.name.startswith('vaswani-')
    meta = path / 'pt_meta.json'
    stamp = (meta.stat().st_ino, meta.stat().st_mtime_ns)
    assert not [p for p in path.parent.iterdir() if p.name.startswith('.')]  # no temporary folder left

    # a fresh collection object reuses the index on disk: indexing again would fail here
    def no_index(*args, **kwargs):
        raise AssertionError('index rebuilt')
    monkeypatch.setattr(pyterrier_pisa.PisaIndex, 'index', no_index)
    again = datasets.load(data_dir / 'vaswani')
    assert again.cache_path() == path
    again.bm25(num_results=10)
    assert (meta.stat().st_ino, meta.stat().st_mtime_ns) == stamp

    pipeline = bm25 % 100 >> vaswani.text_loader()
    topics = vaswani.get_topics()
    res = pipeline(topics)
    assert (res.groupby('qid').size() <= 100).all() and res['text'].map(len).gt(0).all()
    ndcg = pt.Experiment([pipeline], topics, vaswani.get_qrels(), [nDCG @ 10])['nDCG@10'][0]
    assert 0.38 <= ndcg <= 0.50


def test_pisa_interrupted_build_is_not_reused(data_dir, monkeypatch, tmp_path):
    import pyterrier_pisa  # noqa: F401
    monkeypatch.setenv('PYTERRIER_LLMRANK_CACHE', str(tmp_path / 'cache'))
    cran = datasets.load(data_dir / 'cranfield')

    def broken_corpus(verbose=False):
        for i, doc in enumerate(datasets.FolderCollection.get_corpus_iter(cran)):
            if i == 500:
                raise RuntimeError('interrupted')
            yield doc
    monkeypatch.setattr(cran, 'get_corpus_iter', broken_corpus)
    with pytest.raises(RuntimeError, match='interrupted'):
        cran.bm25()
    path = cran.cache_path()
    assert not path.exists()
    assert not [p for p in path.parent.iterdir() if p.name.startswith('.')]
    monkeypatch.delattr(cran, 'get_corpus_iter')
    res = cran.bm25(num_results=5)(cran.get_topics().head(2))
    assert len(res) == 10 and (path / 'pt_meta.json').exists()


def test_pisa_rejects_docno_with_space(tmp_path, monkeypatch):
    import pyterrier_pisa  # noqa: F401
    monkeypatch.setenv('PYTERRIER_LLMRANK_CACHE', str(tmp_path / 'cache'))
    docs = GOOD_DOCS + [{'docno': 'd 4', 'text': 'four'}]
    col = datasets.load(_write_collection(tmp_path / 'c', docs, GOOD_TOPICS, GOOD_QRELS))
    with pytest.raises(DatasetFormatError, match="'d 4'.*whitespace"):
        col.bm25()
    assert not col.cache_path().exists()
    assert not [p for p in col.cache_path().parent.iterdir() if p.name.startswith('.')]


def test_undecodable_line(tmp_path):
    root = _write_collection(tmp_path / 'c', GOOD_DOCS, GOOD_TOPICS, GOOD_QRELS)
    (root / 'topics.tsv').write_bytes(b'q1\tok\n\nq2\t\xff bad\n')
    with pytest.raises(DatasetFormatError, match=r'topics\.tsv:3: not UTF-8'):
        datasets.load(root).get_topics()


# ---------------------------------------------------------------------------------------------
# corrupted and truncated files, documents without text


def test_layout_exports():
    """The package keeps every public name of the former single module, each defined once."""
    from pyterrier_llmrank.datasets import core, errors, folder, irds, locate, pisa, transformers
    for name in datasets.__all__:
        assert getattr(datasets, name) is not None, name
    assert datasets.load is locate.load and datasets.Collection is core.Collection
    assert datasets.FolderCollection is folder.FolderCollection and datasets.IRDSCollection is irds.IRDSCollection
    assert datasets.TextLoader is transformers.TextLoader and datasets.StoredRun is transformers.StoredRun
    assert datasets.DatasetFormatError is errors.DatasetFormatError and datasets.DOCS_FILE == 'docs.jsonl.gz'
    assert pisa.MARKER == 'pt_meta.json'


def _gzip_bytes(lines):
    return gzip.compress(''.join(json.dumps(d) + '\n' for d in lines).encode('utf-8'), mtime=0)


def _with_docs_bytes(tmp_path, data):
    root = _write_collection(tmp_path / 'c', GOOD_DOCS, GOOD_TOPICS, GOOD_QRELS)
    (root / 'docs.jsonl.gz').write_bytes(data)
    return datasets.load(root)


MANY_DOCS = [{'docno': f'd{i}', 'text': f'document number {i} ' * 20} for i in range(400)]


def test_gzip_corrupted_bytes(tmp_path):
    data = bytearray(_gzip_bytes(MANY_DOCS))
    data[10] = 0xFF  # the first deflate block header (after the 10-byte gzip header): a reserved block type
    col = _with_docs_bytes(tmp_path, bytes(data))
    with pytest.raises(DatasetFormatError, match=r'docs\.jsonl\.gz: corrupted or truncated gzip file '
                                                  r'\(before the first line\): error: .*invalid block type') as e:
        col.docs()
    assert str(col.docs_path) in str(e.value)
    with pytest.raises(DatasetFormatError, match='corrupted or truncated gzip'):
        list(col.get_corpus_iter())


def test_gzip_crc_mismatch(tmp_path):
    data = bytearray(_gzip_bytes(GOOD_DOCS))
    data[-8] ^= 0xFF  # the CRC32 in the gzip trailer: the data decompresses but does not check
    with pytest.raises(DatasetFormatError, match=r'docs\.jsonl\.gz: corrupted or truncated gzip file.*CRC'):
        _with_docs_bytes(tmp_path, bytes(data)).docs()


def test_gzip_truncated(tmp_path):
    data = _gzip_bytes(MANY_DOCS)
    col = _with_docs_bytes(tmp_path, data[:len(data) // 2])
    with pytest.raises(DatasetFormatError, match=r'docs\.jsonl\.gz: corrupted or truncated gzip file \(after line '
                                                  r'\d+\): EOFError'):
        col.docs()


def test_gzip_not_gzip(tmp_path):
    col = _with_docs_bytes(tmp_path, b''.join(json.dumps(d).encode() + b'\n' for d in GOOD_DOCS))  # plain JSONL
    with pytest.raises(DatasetFormatError, match=r'docs\.jsonl\.gz: corrupted or truncated gzip file '
                                                  r'\(before the first line\): BadGzipFile'):
        col.docs()


def test_docs_truncated_inside_a_line(tmp_path):
    text = ''.join(json.dumps(d) + '\n' for d in GOOD_DOCS)
    col = _with_docs_bytes(tmp_path, gzip.compress(text[:-12].encode(), mtime=0))  # valid gzip, cut JSON
    with pytest.raises(DatasetFormatError, match=r'docs\.jsonl\.gz:3: invalid JSON'):
        col.docs()


def test_topics_truncated_or_corrupted(tmp_path):
    root = _write_collection(tmp_path / 'c', GOOD_DOCS, GOOD_TOPICS, GOOD_QRELS)
    (root / 'topics.tsv').write_bytes(b'q1\tfirst query\nq2')  # cut before the tab of line 2
    with pytest.raises(DatasetFormatError, match=r"topics\.tsv:2: expected \"qid<TAB>query\".*'q2'"):
        datasets.load(root).get_topics()
    (root / 'topics.tsv').write_bytes(b'q1\tfirst query\nq2\tsecond\x00\x00\x00\x00\n')  # zero-filled tail
    with pytest.raises(DatasetFormatError, match=r'topics\.tsv:2: contains NUL bytes'):
        datasets.load(root).get_topics()
    (root / 'topics.tsv').write_bytes(b'q1\tfirst query\n' + gzip.compress(b'q2\tsecond\n', mtime=0))
    with pytest.raises(DatasetFormatError, match=r'topics\.tsv:2: not UTF-8'):
        datasets.load(root).get_topics()


def test_qrels_corrupted(tmp_path):
    root = _write_collection(tmp_path / 'c', GOOD_DOCS, GOOD_TOPICS, GOOD_QRELS)
    (root / 'qrels.txt').write_bytes(b'q1 0 d1 1\n\x00\x00\x00\x00\n')
    with pytest.raises(DatasetFormatError, match=r'qrels\.txt:2: contains NUL bytes'):
        datasets.load(root).get_qrels()


def test_docs_null_text_names_docno(tmp_path):
    for text in ('null', 'NaN'):
        root = _write_collection(tmp_path / f'c-{text}', [GOOD_DOCS[0], '{"docno": "d2", "text": %s}' % text],
                                 GOOD_TOPICS, GOOD_QRELS)
        with pytest.raises(DatasetFormatError, match=r"docs\.jsonl\.gz:2: .*document 'd2' has text (None|nan)"):
            datasets.load(root).docs()


@pytest.mark.parametrize('position', [0, 2])
@pytest.mark.parametrize('bad_text', [float('nan'), None, 3])
def test_pisa_rejects_document_without_text(tmp_path, monkeypatch, position, bad_text):
    """The PISA rule: a document's text must be a string ("" is an empty document); else an error names it."""
    import pyterrier_pisa  # noqa: F401
    monkeypatch.setenv('PYTERRIER_LLMRANK_CACHE', str(tmp_path / 'cache'))
    col = datasets.load(_write_collection(tmp_path / 'c', GOOD_DOCS, GOOD_TOPICS, GOOD_QRELS))
    docs = [dict(d) for d in GOOD_DOCS]
    docs[position]['text'] = bad_text
    bad = docs[position]['docno']
    monkeypatch.setattr(col, 'get_corpus_iter', lambda verbose=False: iter(docs))
    with pytest.raises(DatasetFormatError, match=rf"document '{bad}' has no text string"):
        col.bm25()
    assert not col.cache_path().exists()
    assert not [p for p in col.cache_path().parent.iterdir() if p.name.startswith('.')]


def test_pisa_indexes_empty_text(tmp_path, monkeypatch):
    import pyterrier_pisa  # noqa: F401
    monkeypatch.setenv('PYTERRIER_LLMRANK_CACHE', str(tmp_path / 'cache'))
    docs = GOOD_DOCS + [{'docno': 'd4', 'text': ''}, {'docno': 'd5', 'text': 'sparse retrieval'}]
    col = datasets.load(_write_collection(tmp_path / 'c', docs, GOOD_TOPICS, GOOD_QRELS))
    assert col.pisa_index().num_docs() == 5
    res = col.bm25(num_results=5)(pd.DataFrame({'qid': ['q'], 'query': ['retrieval']}))
    assert res['docno'].tolist() == ['d5']
