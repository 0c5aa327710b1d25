"""Multimodal test collections built from the real text collections: page images and interleaved documents.

No multimodal retrieval collection can be had offline, so these builders make them from a judged text collection
(``../shared/data``), deterministically, into the toolkit's cache (:func:`pyterrier_llmrank.folders.cache_dir`),
each built once by :func:`pyterrier_llmrank.folders.build_folder` (never into the repository):

* :func:`page_images`: every passage rendered as a page image (:func:`render_page`); topics, qrels and runs are the
  collection's own, and a result frame gains an ``image`` column (the file path). Choose it to compare a reranker
  on page images (``OCR() >> UPR(...)``, a vision-language reranker) with the same reranker on the original text.
* :func:`interleaved_documents`: documents made of several judged passages of one topic, some sections kept as
  text, some rendered as page images or as tables (:func:`render_table`), chosen by a seeded draw. A document is
  relevant to its topic when one of its sections is (its label is the highest section label), and the section
  labels are kept (:meth:`InterleavedDocuments.get_section_qrels`) so that picking the relevant section inside a
  document can be measured. The interleaved-sections column (``sections``) is a list of dicts ``{'kind': 'text' |
  'image' | 'table', 'text': str or None, 'image': path or None}``; :func:`explode_sections` gives one row per
  section. This is the document form of Lee et al., "Unified Multimodal Interleaved Document Representation for
  Retrieval" (arXiv 2410.02729), whose own collections (Encyclopedic-VQA, InfoSeek, ViQuAE, Open-WikiTable) are
  not available offline.

Rendering uses Pillow's built-in font (``ImageFont.load_default(size)``, the Aileron face shipped with Pillow),
black on white, greyscale PNG: the same text gives the same bytes on every run with the same Pillow.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta

from pyterrier_llmrank.datasets.errors import UnknownDocnoError, preview
from pyterrier_llmrank.folders import build_folder, cache_dir

__all__ = ['PAGE_WIDTH', 'FONT_SIZE', 'MARGIN', 'LINE_GAP', 'SECTION_KINDS', 'render_page', 'render_table',
           'page_images', 'PageImages', 'ImageLoader', 'PageRun', 'interleaved_documents', 'InterleavedDocuments',
           'SectionsLoader', 'explode_sections']

#: Page width in pixels, font size in points (pixels at 72 dpi), margin and gap between lines in pixels.
PAGE_WIDTH = 800
FONT_SIZE = 20
MARGIN = 32
LINE_GAP = 6

#: The kinds of sections of an interleaved document, and the default draw weights of :func:`interleaved_documents`.
SECTION_KINDS = ('text', 'image', 'table')
DEFAULT_KIND_WEIGHTS = {'text': 0.4, 'image': 0.4, 'table': 0.2}

_PAGES_MARKER = 'pages.tsv'
_DOCS_MARKER = 'documents.jsonl'
_SENTENCE = re.compile(r'(?<=[.!?;:])\s+')


def _font(font_size: int) -> Any:
    from PIL import ImageFont
    font = ImageFont.load_default(size=font_size)
    if not hasattr(font, 'getlength') or type(font).__name__ != 'FreeTypeFont':
        raise RuntimeError('rendering needs Pillow built with FreeType (the wheels on PyPI are); this Pillow has only '
                           'its fixed-size bitmap font')
    return font


def _wrap(text: str, font: Any, width: int) -> List[str]:
    """Greedy word wrap to ``width`` pixels; a word wider than a line is cut between characters."""
    lines: List[str] = []
    current = ''
    for word in text.split():
        while font.getlength(word) > width:   # a word wider than a whole line
            cut = max(1, max(i for i in range(1, len(word) + 1) if font.getlength(word[:i]) <= width or i == 1))
            if current:
                lines.append(current)
                current = ''
            lines.append(word[:cut])
            word = word[cut:]
        trial = f'{current} {word}' if current else word
        if font.getlength(trial) <= width:
            current = trial
        else:
            lines.append(current)
            current = word
    if current or not lines:
        lines.append(current)
    return lines


def render_page(text: str, *, width: int = PAGE_WIDTH, font_size: int = FONT_SIZE, margin: int = MARGIN,
                line_gap: int = LINE_GAP) -> Any:
    """A passage as a page: a greyscale PIL image ``width`` pixels wide, the words wrapped, as tall as needed.

    Deterministic: the same arguments give the same pixels.
    """
    from PIL import Image, ImageDraw
    font = _font(font_size)
    lines = _wrap(str(text), font, width - 2 * margin)
    ascent, descent = font.getmetrics()
    height = ascent + descent + line_gap
    image = Image.new('L', (width, 2 * margin + height * len(lines)), 255)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((margin, margin + i * height), line, font=font, fill=0)
    return image


def render_table(text: str, *, width: int = PAGE_WIDTH, font_size: int = FONT_SIZE, margin: int = MARGIN,
                 line_gap: int = LINE_GAP, padding: int = 8) -> Any:
    """A passage as a one-column table: one bordered row per sentence (split after ``. ! ? ; :``), as an image.

    Deterministic like :func:`render_page`.
    """
    from PIL import Image, ImageDraw
    font = _font(font_size)
    rows = [s for s in _SENTENCE.split(' '.join(str(text).split())) if s] or ['']
    inner = width - 2 * margin - 2 * padding
    wrapped = [_wrap(r, font, inner) for r in rows]
    ascent, descent = font.getmetrics()
    height = ascent + descent + line_gap
    row_heights = [len(w) * height + 2 * padding for w in wrapped]
    image = Image.new('L', (width, 2 * margin + sum(row_heights)), 255)
    draw = ImageDraw.Draw(image)
    top = margin
    for lines, h in zip(wrapped, row_heights):
        draw.rectangle([margin, top, width - margin - 1, top + h], outline=0, width=1)
        for i, line in enumerate(lines):
            draw.text((margin + padding, top + padding + i * height), line, font=font, fill=0)
        top += h
    return image


def _save_png(image: Any, path: Path) -> None:
    image.save(path, format='PNG', optimize=False, compress_level=6)


def _settings_key(**settings: Any) -> str:
    from PIL import __version__ as pil_version
    blob = json.dumps({**settings, 'pillow': pil_version}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _collection(collection: Any) -> Any:
    from pyterrier_llmrank.datasets.locate import load
    return load(collection)


# -- page images -------------------------------------------------------------------------------------------------

class _DocnoLoader(pt.Transformer):
    """Adds one column looked up by ``docno`` (:meth:`_lookup`, into :meth:`_field`), keeping every other column;
    a rank cutoff after it moves before it."""

    def _field(self) -> str:
        raise NotImplementedError

    def _lookup(self, docnos: List[Any]) -> List[Any]:
        raise NotImplementedError

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:  # noqa: D102
        pta.validate.columns(inp, includes=['docno'])
        values = self._lookup(inp['docno'].tolist()) if len(inp) else []
        field = self._field()
        out = inp.drop(columns=[field], errors='ignore').copy()
        out[field] = pd.Series(values, index=out.index, dtype=object)
        return out

    def fuse_rank_cutoff(self, k: int) -> pt.Transformer:
        """Moves a rank cutoff before the loader."""
        return pt.RankCutoff(k) >> self


class ImageLoader(_DocnoLoader):
    """Adds the ``image`` column (the page file's path) by ``docno``, keeping every other column.

    Raises :class:`~pyterrier_llmrank.datasets.errors.UnknownDocnoError` naming the docnos without a page.
    """

    schematic = {'label': 'ImageLoader'}

    def __init__(self, pages: 'PageImages', image_field: str = 'image') -> None:
        self.pages = pages
        self.image_field = image_field

    def _field(self) -> str:
        return self.image_field

    def _lookup(self, docnos: List[Any]) -> List[Any]:
        return self.pages.image_paths(docnos)

    def __repr__(self) -> str:
        return f'ImageLoader({self.pages!r})'


class PageRun(pt.Transformer):
    """A stored run of the collection whose rows carry the page image (``image``) instead of the ``text``.

    Obtained from :meth:`PageImages.get_run`. ``keep_text=True`` keeps the original ``text`` beside the image.
    """

    schematic = {'label': 'PageRun'}

    def __init__(self, pages: 'PageImages', run: Any, keep_text: bool = False) -> None:
        self.pages = pages
        self.run = run
        self.keep_text = keep_text

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:  # noqa: D102
        out = self.run(inp)
        if not self.keep_text:
            out = out.drop(columns=['text'], errors='ignore')
        return self.pages.image_loader()(out)

    def fuse_rank_cutoff(self, k: int) -> Optional['PageRun']:
        """Applies a rank cutoff ``% k`` to the stored run."""
        cut = self.run.fuse_rank_cutoff(k)
        return None if cut is None else PageRun(self.pages, cut, self.keep_text)

    def __repr__(self) -> str:
        return f'PageRun({self.pages!r}, {self.run!r}{", keep_text=True" if self.keep_text else ""})'


class PageImages:
    """A collection whose passages are page images (built by :func:`page_images`).

    Topics, qrels and stored runs are those of ``collection``; :meth:`get_run` returns result frames with an
    ``image`` column (the page file path) and, by default, without ``text``, so that a pipeline can only read the
    pages. ``path`` is the cache folder; ``pages.tsv`` in it maps docno to file.
    """

    def __init__(self, collection: Any, path: Path) -> None:
        self.collection = collection
        self.path = Path(path)
        self._files: Optional[Dict[str, str]] = None

    @property
    def name(self) -> str:
        """``'<collection>/pages'``."""
        return f'{self.collection.name}/pages'

    def files(self) -> Dict[str, str]:
        """docno -> absolute path of its page image."""
        if self._files is None:
            files = {}
            with open(self.path / _PAGES_MARKER, encoding='utf-8') as f:
                for line in f:
                    docno, name = line.rstrip('\n').split('\t')
                    files[docno] = str(self.path / name)
            self._files = files
        return self._files

    def image_paths(self, docnos: Sequence[Any]) -> List[str]:
        """The page files of ``docnos``, in order; :class:`UnknownDocnoError` names the docnos without a page."""
        files = self.files()
        docnos = [str(d) for d in docnos]
        missing = [d for d in dict.fromkeys(docnos) if d not in files]
        if missing:
            raise UnknownDocnoError(f'{len(missing)} docno(s) have no page image in {self.path}: {preview(missing)}',
                                    missing)
        return [files[d] for d in docnos]

    def image_loader(self, image_field: str = 'image') -> ImageLoader:
        """A transformer adding ``image_field`` (the page path) by docno."""
        return ImageLoader(self, image_field)

    def get_topics(self, variant: Optional[str] = None) -> pd.DataFrame:
        """The collection's topics."""
        return self.collection.get_topics(variant)

    def get_qrels(self, variant: Optional[str] = None) -> pd.DataFrame:
        """The collection's qrels."""
        return self.collection.get_qrels(variant)

    def get_run(self, name: str, num_results: Optional[int] = None, keep_text: bool = False) -> PageRun:
        """The stored run ``name`` of the collection with an ``image`` column (and no ``text`` unless ``keep_text``)."""
        return PageRun(self, self.collection.get_run(name, num_results=num_results), keep_text)

    def __repr__(self) -> str:
        return f'PageImages({self.collection.name!r}, {str(self.path)!r})'


def page_images(collection: Any = 'msmarco-passage-trec-dl-2019', *, docnos: Optional[Sequence[str]] = None,
                width: int = PAGE_WIDTH, font_size: int = FONT_SIZE, margin: int = MARGIN,
                verbose: bool = False) -> PageImages:
    """Every passage of ``collection`` (or only ``docnos``) rendered as a page (:func:`render_page`), built once.

    The pages are written under ``cache_dir()/pages/<collection>-<settings>`` by
    :func:`~pyterrier_llmrank.folders.build_folder` (an interrupted build is never used); the folder name changes
    with the collection's documents, the rendering settings, the Pillow version and ``docnos``.

    Args:
        collection: a collection or a name/path for :func:`pyterrier_llmrank.datasets.load` (DL19 by default: its
            7,055 candidate passages, about 100 MB of PNG).
        docnos: render only these passages (e.g. those of a run's top 20).
        width, font_size, margin: page layout (see :func:`render_page`).
        verbose: a progress bar while rendering.

    Raises:
        UnknownDocnoError: a docno of ``docnos`` is not in the collection.
    """
    collection = _collection(collection)
    wanted = None if docnos is None else sorted(dict.fromkeys(str(d) for d in docnos))
    key = _settings_key(kind='pages', width=width, font_size=font_size, margin=margin, line_gap=LINE_GAP,
                        docnos=hashlib.sha256('\n'.join(wanted).encode()).hexdigest() if wanted is not None else None)
    target = cache_dir() / 'pages' / f'{collection.cache_path().name}-{key}'

    def write(tmp: Path) -> None:
        (tmp / 'images').mkdir()
        if wanted is None:
            docs: Iterator[Tuple[str, str]] = ((d['docno'], d['text']) for d in collection.get_corpus_iter())
        else:
            docs = iter(zip(wanted, collection.get_texts(wanted)))
        lines = []
        for i, (docno, text) in enumerate(pt.tqdm(docs, desc='rendering pages', unit='page', disable=not verbose)):
            name = f'images/{i:07d}.png'
            _save_png(render_page(text, width=width, font_size=font_size, margin=margin), tmp / name)
            lines.append(f'{docno}\t{name}\n')
        (tmp / _PAGES_MARKER).write_text(''.join(lines), encoding='utf-8')

    build_folder(target, write, marker=_PAGES_MARKER)
    return PageImages(collection, target)


# -- interleaved documents ---------------------------------------------------------------------------------------

def explode_sections(frame: pd.DataFrame, sections_field: str = 'sections') -> pd.DataFrame:
    """One row per section of each row's interleaved document.

    The other columns of ``frame`` are repeated (an existing ``text``/``image`` is dropped), then ``section``
    (0-based position in the document), ``kind``, ``text`` (text sections) and ``image`` (image and table sections).
    """
    pta.validate.columns(frame, includes=[sections_field])
    rest = frame.drop(columns=[sections_field, 'text', 'image'], errors='ignore').reset_index(drop=True)
    rows, positions = [], []
    for i, sections in enumerate(frame[sections_field].tolist()):
        for j, s in enumerate(sections):
            rows.append({'section': j, 'kind': s['kind'], 'text': s.get('text'), 'image': s.get('image')})
            positions.append(i)
    out = rest.iloc[positions].reset_index(drop=True)
    extra = pd.DataFrame(rows, columns=['section', 'kind', 'text', 'image'])
    for c in extra.columns:
        out[c] = extra[c].to_numpy(dtype=object if c != 'section' else 'int64')
    return out


class SectionsLoader(_DocnoLoader):
    """Adds the ``sections`` column (the interleaved document) by ``docno``, keeping every other column."""

    schematic = {'label': 'SectionsLoader'}

    def __init__(self, documents: 'InterleavedDocuments', sections_field: str = 'sections') -> None:
        self.documents = documents
        self.sections_field = sections_field

    def _field(self) -> str:
        return self.sections_field

    def _lookup(self, docnos: List[Any]) -> List[Any]:
        return self.documents.get_sections([str(d) for d in docnos])

    def __repr__(self) -> str:
        return f'SectionsLoader({self.documents!r})'


class InterleavedDocuments:
    """Interleaved documents built by :func:`interleaved_documents` (see there how).

    ``documents.jsonl`` in the cache folder ``path`` holds, per document, its docno, the qid of its topic and its
    sections (kind, source passage docno, label, original passage text, image file).
    """

    def __init__(self, collection: Any, path: Path, relevant_label: int) -> None:
        self.collection = collection
        self.path = Path(path)
        self.relevant_label = relevant_label
        self._docs: Optional[List[dict]] = None
        self._by_docno: Optional[Dict[str, dict]] = None

    @property
    def name(self) -> str:
        """``'<collection>/interleaved'``."""
        return f'{self.collection.name}/interleaved'

    def manifest(self) -> List[dict]:
        """The documents as stored: ``{'docno', 'qid', 'sections': [{'kind', 'source', 'label', 'text', 'image'}]}``
        (``text`` is the original passage for every kind; ``image`` an absolute path or ``None``)."""
        if self._docs is None:
            docs = []
            with open(self.path / _DOCS_MARKER, encoding='utf-8') as f:
                for line in f:
                    d = json.loads(line)
                    for s in d['sections']:
                        s['image'] = str(self.path / s['image']) if s['image'] else None
                    docs.append(d)
            self._docs = docs
            self._by_docno = {d['docno']: d for d in docs}
        return self._docs

    def get_sections(self, docnos: Sequence[str]) -> List[List[dict]]:
        """The interleaved-sections value of each docno: the text of text sections, the image of the others."""
        self.manifest()
        missing = [d for d in dict.fromkeys(docnos) if d not in self._by_docno]
        if missing:
            raise UnknownDocnoError(f'{len(missing)} docno(s) not in {self.name}: {preview(missing)}', missing)
        return [[{'kind': s['kind'], 'text': s['text'] if s['kind'] == 'text' else None,
                  'image': s['image'] if s['kind'] != 'text' else None}
                 for s in self._by_docno[d]['sections']] for d in docnos]

    def get_corpus(self) -> pd.DataFrame:
        """All documents: ``docno`` and ``sections``."""
        docs = self.manifest()
        return pd.DataFrame({'docno': [d['docno'] for d in docs],
                             'sections': self.get_sections([d['docno'] for d in docs])})

    def get_corpus_iter(self, verbose: bool = False) -> Iterator[Dict[str, Any]]:
        """``{'docno', 'sections'}`` per document."""
        corpus = self.get_corpus()
        for row in pt.tqdm(corpus.itertuples(index=False), total=len(corpus), disable=not verbose):
            yield {'docno': row.docno, 'sections': row.sections}

    def sections_loader(self, sections_field: str = 'sections') -> SectionsLoader:
        """A transformer adding ``sections_field`` by docno."""
        return SectionsLoader(self, sections_field)

    def get_topics(self, variant: Optional[str] = None) -> pd.DataFrame:
        """The collection's topics that have documents."""
        qids = {d['qid'] for d in self.manifest()}
        topics = self.collection.get_topics(variant)
        return topics[topics['qid'].isin(qids)].reset_index(drop=True)

    def get_qrels(self) -> pd.DataFrame:
        """Document qrels: each document judged for the topic it was built from, label = its highest section label."""
        docs = self.manifest()
        return pd.DataFrame({'qid': [d['qid'] for d in docs], 'docno': [d['docno'] for d in docs],
                             'label': [max(s['label'] for s in d['sections']) for d in docs]})

    def get_section_qrels(self) -> pd.DataFrame:
        """Section labels: ``qid, docno, section, kind, source`` (the passage's docno) and ``label``."""
        rows = [{'qid': d['qid'], 'docno': d['docno'], 'section': j, 'kind': s['kind'], 'source': s['source'],
                 'label': s['label']} for d in self.manifest() for j, s in enumerate(d['sections'])]
        return pd.DataFrame(rows, columns=['qid', 'docno', 'section', 'kind', 'source', 'label'])

    def __repr__(self) -> str:
        return f'InterleavedDocuments({self.collection.name!r}, {str(self.path)!r})'


def interleaved_documents(collection: Any = 'msmarco-passage-trec-dl-2019', *, sections: int = 3,
                          relevant_per_topic: int = 4, nonrelevant_per_topic: int = 4, relevant_label: int = 2,
                          kind_weights: Optional[Dict[str, float]] = None, seed: int = 0,
                          verbose: bool = False) -> InterleavedDocuments:
    """Documents of ``sections`` judged passages of one topic, some sections rendered as images or tables.

    Per topic (judged passages with a text, in docno order, then shuffled by a generator seeded with ``seed`` and
    the qid):

    * up to ``relevant_per_topic`` relevant documents: one passage labelled ``>= relevant_label`` at a random
      position, the other sections passages labelled below it;
    * then up to ``nonrelevant_per_topic`` documents of passages labelled below ``relevant_label`` only;

    each passage used once; a topic stops when it runs out of passages. Each section's kind is drawn with
    ``kind_weights`` (default text 0.4, image 0.4, table 0.2): ``'text'`` keeps the passage text, ``'image'``
    renders it with :func:`render_page`, ``'table'`` with :func:`render_table`. A document's label is its highest
    section label, judged for its own topic only; so a relevant document has exactly one section at or above
    ``relevant_label``, the one a section reranker must pick. Documents are named ``<qid>-d<n>``.

    Built once under ``cache_dir()/interleaved/<collection>-<settings>`` by
    :func:`~pyterrier_llmrank.folders.build_folder`.

    DL19 is the default because its graded judgements include judged non-relevant passages for nearly every topic
    (1,122 label-0 and 2,082 label->=1 judged passages with text over 43 topics), so both the relevant and the
    non-relevant documents are made of judged passages of the same topic; SciFact's qrels hold positives only.
    """
    if sections < 1:
        raise ValueError(f'sections must be >= 1, not {sections}')
    weights = dict(DEFAULT_KIND_WEIGHTS if kind_weights is None else kind_weights)
    unknown = sorted(set(weights) - set(SECTION_KINDS))
    if unknown or not weights or any(w < 0 for w in weights.values()) or not sum(weights.values()) > 0:
        raise ValueError(f'kind_weights must map kinds of {SECTION_KINDS} to non-negative weights with a positive '
                         f'sum; got {weights}')
    collection = _collection(collection)
    key = _settings_key(kind='interleaved', sections=sections, rel=relevant_per_topic, nonrel=nonrelevant_per_topic,
                        relevant_label=relevant_label, weights=sorted(weights.items()), seed=seed, width=PAGE_WIDTH,
                        font_size=FONT_SIZE, margin=MARGIN, line_gap=LINE_GAP)
    target = cache_dir() / 'interleaved' / f'{collection.cache_path().name}-{key}'
    kinds, kind_w = list(weights), [weights[k] for k in weights]

    def write(tmp: Path) -> None:
        qrels = collection.get_qrels()
        qrels = qrels.assign(qid=qrels['qid'].astype(str), docno=qrels['docno'].astype(str))
        docnos = sorted(set(qrels['docno']))
        known = {}
        try:
            known = dict(zip(docnos, collection.get_texts(docnos)))
        except UnknownDocnoError as e:   # judged passages without a text (DL19: outside the candidate pool)
            absent = set(e.docnos)
            have = [d for d in docnos if d not in absent]
            known = dict(zip(have, collection.get_texts(have)))
        (tmp / 'images').mkdir()
        out = []
        topics = collection.get_topics()['qid'].astype(str).tolist()
        for qid in pt.tqdm(topics, desc='interleaved documents', unit='topic', disable=not verbose):
            judged = qrels[(qrels['qid'] == qid) & qrels['docno'].isin(known)].sort_values('docno', kind='stable')
            rng = random.Random(f'{seed}/{qid}')
            pos = [(d, int(l)) for d, l in zip(judged['docno'], judged['label']) if l >= relevant_label]
            neg = [(d, int(l)) for d, l in zip(judged['docno'], judged['label']) if l < relevant_label]
            rng.shuffle(pos)
            rng.shuffle(neg)
            plans = []
            for _ in range(relevant_per_topic):
                if not pos or len(neg) < sections - 1:
                    break
                members = [neg.pop() for _ in range(sections - 1)]
                members.insert(rng.randrange(sections), pos.pop())
                plans.append(members)
            for _ in range(nonrelevant_per_topic):
                if len(neg) < sections:
                    break
                plans.append([neg.pop() for _ in range(sections)])
            for n, members in enumerate(plans):
                docno = f'{qid}-d{n}'
                secs = []
                for j, (source, label) in enumerate(members):
                    kind = rng.choices(kinds, weights=kind_w)[0]
                    image = None
                    if kind != 'text':
                        image = f'images/{len(out):06d}-s{j}.png'
                        render = render_page if kind == 'image' else render_table
                        _save_png(render(known[source]), tmp / image)
                    secs.append({'kind': kind, 'source': source, 'label': label, 'text': known[source],
                                 'image': image})
                out.append(json.dumps({'docno': docno, 'qid': qid, 'sections': secs}) + '\n')
        (tmp / _DOCS_MARKER).write_text(''.join(out), encoding='utf-8')

    build_folder(target, write, marker=_DOCS_MARKER)
    return InterleavedDocuments(collection, target, relevant_label)
