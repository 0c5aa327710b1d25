"""Interleaved-document retrieval: embed each section, merge the sections into one document vector, then pick the
relevant section inside a retrieved document.

Lee, Ko, Baek, Jeong, Hwang, "Unified Multimodal Interleaved Document Representation for Retrieval" (IDentIfy;
arXiv 2410.02729, Findings of EACL 2026). No reference code is published; this follows the paper's description.
A document whose sections interleave text, images and tables is embedded section by section, the section vectors
are merged (mean) into one document vector for a dense index, and a reranker then returns the section of each
retrieved document that best matches the query.

Pieces:

* section encoders, both with ``encode_sections(frame)`` (a frame of sections, :func:`explode_sections`) and
  ``encode_queries(queries)``:

  - :class:`TextSectionEncoder`: any pyterrier-dr text encoder (:func:`pyterrier_llmrank.dense.bi_encoder`,
    MiniLM offline) on the text sections, and on the image and table sections after :class:`~pyterrier_llmrank.OCR`;
    choose it when no vision-language embedding model is at hand (every real run here);
  - :class:`VLMEndTokenEncoder`: the paper's embedding, a vision-language model's last-layer hidden state at the end
    token appended to each section (text, or the image itself), for the Qwen2.5-VL family given a
    ``(model, processor)`` pair;

* :func:`embed_documents` -> :class:`SectionEmbeddings`, whose :meth:`SectionEmbeddings.merged` gives one vector per
  document: ``'mean'`` (the paper's merge), ``'max'`` (element-wise max) or ``'first'`` (the first section), so they
  can be compared;
* :class:`InterleavedRetriever` (exhaustive dot-product search over the merged vectors) or
  :func:`interleaved_index` (the same vectors in a pyterrier-dr FlexIndex, for a large collection);
* :class:`SectionReranker`: the best section of each retrieved document and its score (optionally re-ranking the
  documents by it, i.e. max-passage scoring).

Documents and sections come from :func:`pyterrier_llmrank.datasets.interleaved_documents` or any frame with an
interleaved-sections column (a list of ``{'kind', 'text', 'image'}`` dicts per document).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta
import torch

from pyterrier_llmrank.base import EfficiencyStats, OneOf, check_arguments, empty_retrieval, require_values
from pyterrier_llmrank.datasets.multimodal import explode_sections
from pyterrier_llmrank.folders import build_folder

__all__ = ['MERGE_MODES', 'QWEN_VISION_START', 'QWEN_IMAGE_PAD', 'QWEN_VISION_END', 'TextSectionEncoder',
           'VLMEndTokenEncoder', 'SectionEmbeddings', 'embed_documents', 'merge_sections', 'InterleavedRetriever',
           'interleaved_index', 'SectionReranker']

#: Ways of merging section vectors into a document vector: the paper's mean, element-wise max, the first section.
MERGE_MODES = ('mean', 'max', 'first')

# Qwen2.5-VL's image placeholder (huggingface/transformers src/transformers/models/qwen2_5_vl/
# processing_qwen2_5_vl.py: image_token "<|image_pad|>", repeated image_grid_thw.prod() // merge_size**2 times,
# between "<|vision_start|>" and "<|vision_end|>" as the chat template writes an image).
QWEN_VISION_START = '<|vision_start|>'
QWEN_IMAGE_PAD = '<|image_pad|>'
QWEN_VISION_END = '<|vision_end|>'


def _open_image(image: Any) -> Any:
    """A PIL RGB image from a path or a PIL image (minimal; the toolkit's image-column helpers may replace it)."""
    from PIL import Image
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            return im.convert('RGB')
    if hasattr(image, 'convert'):
        return image.convert('RGB')
    raise TypeError(f'an image must be a file path or a PIL image, not {type(image).__name__}')


def _check_sections(frame: pd.DataFrame) -> None:
    pta.validate.columns(frame, includes=['kind', 'text', 'image'])
    no_text = frame['kind'].eq('text') & frame['text'].isna()
    no_image = frame['kind'].ne('text') & frame['image'].isna()
    if no_text.any() or no_image.any():
        rows = np.flatnonzero((no_text | no_image).to_numpy()).tolist()
        raise ValueError(f'sections at positions {rows[:10]} lack their content: a text section needs "text", an '
                         'image or table section needs "image"')


class TextSectionEncoder:
    """Embeds sections with a text encoder: text sections as they are, image and table sections through OCR.

    Args:
        model: a pyterrier-dr encoder or a name for :func:`pyterrier_llmrank.dense.bi_encoder` (default the offline
            all-MiniLM-L6-v2).
        ocr: the :class:`~pyterrier_llmrank.OCR` that reads image and table sections (default ``OCR()``). Each image
            file is read once per encoder: the text is remembered by path, so indexing and section re-ranking do not
            read the same page twice.
        batch_size, device: of the text encoder.
    """

    def __init__(self, model: Any = 'all-minilm-l6-v2', *, ocr: Any = None, batch_size: int = 32,
                 device: Any = 'cpu') -> None:
        from pyterrier_llmrank.dense import bi_encoder
        from pyterrier_llmrank.ocr import OCR
        self.text_encoder = bi_encoder(model, batch_size=batch_size, device=device)
        self.ocr = ocr if ocr is not None else OCR()
        self._read: Dict[str, str] = {}

    def section_texts(self, frame: pd.DataFrame) -> List[str]:
        """The text of each section: its text, or the OCR text of its image."""
        _check_sections(frame)
        texts: Dict[Any, str] = {}
        unread, seen = [], set()
        for image in frame.loc[frame['kind'].ne('text'), 'image']:
            key = os.fspath(image) if isinstance(image, (str, os.PathLike)) else id(image)
            if key not in self._read and key not in seen:
                seen.add(key)
                unread.append(image)
        if unread:
            read = self.ocr(pd.DataFrame({'image': pd.Series(unread, dtype=object)}))
            for image, text in zip(unread, read['text']):
                if isinstance(image, (str, os.PathLike)):
                    self._read[os.fspath(image)] = text
                else:
                    texts[id(image)] = text
        out = []
        for kind, text, image in zip(frame['kind'], frame['text'], frame['image']):
            if kind == 'text':
                out.append(str(text))
            elif isinstance(image, (str, os.PathLike)):
                out.append(self._read[os.fspath(image)])
            else:
                out.append(texts[id(image)])
        return out

    def encode_sections(self, frame: pd.DataFrame) -> np.ndarray:
        """One vector per section row (``kind``, ``text``, ``image``)."""
        texts = self.section_texts(frame)
        return np.asarray(self.text_encoder.encode_docs(texts)) if texts else np.zeros((0, 0), dtype=np.float32)

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """One vector per query."""
        return np.asarray(self.text_encoder.encode_queries(list(queries)))


class VLMEndTokenEncoder:
    """The paper's section embedding: a vision-language model reads a section (its text, or its image) followed by
    an end token, and the section vector is the last layer's hidden state at that end token, L2-normalised.

    Choose it with a Qwen2.5-VL-family model (the family of the paper's encoder and of this toolkit's VLM
    rerankers). The input of a text section (and of a query) is ``text + end``; of an image or table section
    ``<|vision_start|><|image_pad|>...<|vision_end|> + end``, with one ``<|image_pad|>`` per merged image patch
    (``image_grid_thw.prod() // merge_size**2``) and the token modalities (``mm_token_type_ids``, from which the
    model builds its 3D positions), built here from the processor's tokenizer and image processor, so no
    torchvision-dependent ``Qwen2_5_VLProcessor`` is needed. ``end`` is the tokenizer's EOS token unless given.
    Batches are right-padded and the vector read at each sequence's last real token, so it does not depend on the
    batch.

    IDentIfy (arXiv 2410.02729) states the end-token pooling but publishes no code; the prompt-free input and the
    normalisation are our choices.

    Args:
        model: a Qwen2.5-VL model (``Qwen2_5_VLForConditionalGeneration`` or any model taking ``pixel_values`` and
            ``image_grid_thw`` and returning ``hidden_states``).
        processor: an object with ``tokenizer`` and ``image_processor`` (a Qwen2-VL image processor; the PIL one
            works without torchvision).
        end_token: the token appended to every input (default the tokenizer's EOS).
        batch_size: sections per forward pass.
        normalize: L2-normalise the vectors (dot product = cosine).
    """

    def __init__(self, model: Any, processor: Any, *, end_token: Optional[str] = None, batch_size: int = 8,
                 normalize: bool = True) -> None:
        for attr in ('tokenizer', 'image_processor'):
            if not hasattr(processor, attr):
                raise TypeError(f'processor must have a {attr!r} attribute (a Qwen2.5-VL processor or an object '
                                f'holding the tokenizer and image processor), got {type(processor).__name__}')
        self.model = model
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.end_token = end_token if end_token is not None else self.tokenizer.eos_token
        if self.end_token is None:
            raise ValueError('the tokenizer has no EOS token: give end_token')
        self.batch_size = batch_size
        self.normalize = normalize
        self.stats = EfficiencyStats()

    def _inputs(self, items: Sequence[Tuple[bool, Any]]) -> Dict[str, torch.Tensor]:
        """Right-padded model inputs for ``(is_image, text or image)`` items."""
        images = [_open_image(x) for is_image, x in items if is_image]
        pixel = grid = None
        counts: List[int] = []
        if images:
            proc = self.image_processor(images=images, return_tensors='pt')
            pixel, grid = proc['pixel_values'], proc['image_grid_thw']
            merge = int(getattr(self.image_processor, 'merge_size', 2))
            counts = [int(g.prod()) // merge ** 2 for g in grid]
        strings, k = [], 0
        for is_image, x in items:
            if not is_image:
                strings.append(str(x) + self.end_token)
            else:
                strings.append(QWEN_VISION_START + QWEN_IMAGE_PAD * counts[k] + QWEN_VISION_END + self.end_token)
                k += 1
        ids = [self.tokenizer(s, add_special_tokens=False)['input_ids'] for s in strings]
        width = max(len(i) for i in ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
        out = {'input_ids': input_ids, 'attention_mask': mask}
        if pixel is not None:
            # modality of each token (0 text, 1 image), from which Qwen2.5-VL builds its 3D (mrope) positions
            image_id = self.tokenizer.convert_tokens_to_ids(QWEN_IMAGE_PAD)
            out['pixel_values'], out['image_grid_thw'] = pixel, grid
            out['mm_token_type_ids'] = (input_ids == image_id).long()
        return out

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """One vector per text."""
        return self.embed([(False, t) for t in texts])

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """One vector per image (a file path or a PIL image)."""
        return self.embed([(True, i) for i in images])

    @torch.no_grad()
    def embed(self, items: Sequence[Tuple[bool, Any]]) -> np.ndarray:
        """One vector per ``(is_image, value)`` item: texts and images may share a batch."""
        vectors = []
        device = next(self.model.parameters()).device
        for start in range(0, len(items), self.batch_size):
            batch = list(items[start:start + self.batch_size])
            t0 = time.perf_counter()
            inputs = {k: v.to(device) for k, v in self._inputs(batch).items()}
            out = self.model(**inputs, output_hidden_states=True, use_cache=False)
            last = inputs['attention_mask'].sum(dim=1) - 1
            hidden = out.hidden_states[-1][torch.arange(len(batch), device=device), last].float()
            if self.normalize:
                hidden = torch.nn.functional.normalize(hidden, dim=-1)
            vectors.append(hidden.cpu().numpy())
            lengths = inputs['attention_mask'].sum(dim=1).tolist()
            self.stats.add_batch([None] * len(batch), lengths, inputs['input_ids'].shape[1],
                                 time.perf_counter() - t0)
        return np.concatenate(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)

    def encode_sections(self, frame: pd.DataFrame) -> np.ndarray:
        """One vector per section row: the text of text sections, the image of the others."""
        _check_sections(frame)
        return self.embed([(False, str(t)) if k == 'text' else (True, i)
                           for k, t, i in zip(frame['kind'], frame['text'], frame['image'])])

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """One vector per query (text)."""
        return self.embed_texts([str(q) for q in queries])


def merge_sections(vectors: np.ndarray, owners: np.ndarray, n_docs: int, mode: str = 'mean',
                   normalize: bool = True) -> np.ndarray:
    """Document vectors from section vectors: row ``i`` merges the sections whose ``owners`` entry is ``i``.

    Args:
        vectors: ``(sections, dim)``.
        owners: the document index of each section; sections of a document in their order.
        n_docs: the number of documents (each must own at least one section).
        mode: ``'mean'``, ``'max'`` (element-wise) or ``'first'``.
        normalize: L2-normalise the merged vectors (so a dot product is a cosine; the mean of unit vectors is
            shorter than one, and by how much depends on how alike the sections are).
    """
    check_arguments('merge_sections', {'mode': OneOf(*MERGE_MODES)}, {'mode': mode})
    owners = np.asarray(owners)
    counts = np.bincount(owners, minlength=n_docs)
    if (counts == 0).any():
        raise ValueError(f'documents {np.flatnonzero(counts == 0)[:10].tolist()} have no section')
    vectors = np.asarray(vectors, dtype=np.float32)
    if mode == 'mean':
        out = np.zeros((n_docs, vectors.shape[1]), dtype=np.float32)
        np.add.at(out, owners, vectors)
        out /= counts[:, None]
    elif mode == 'max':
        out = np.full((n_docs, vectors.shape[1]), -np.inf, dtype=np.float32)
        np.maximum.at(out, owners, vectors)
    else:
        first = np.full(n_docs, -1)
        for i in range(len(owners) - 1, -1, -1):
            first[owners[i]] = i
        out = vectors[first].copy()
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


@dataclass
class SectionEmbeddings:
    """The section vectors of a set of documents (from :func:`embed_documents`).

    Attributes:
        docnos: the documents, in order.
        owners: for each section, the index of its document in ``docnos``.
        sections: for each section, its position in its document.
        vectors: ``(sections, dim)``.
    """

    docnos: List[str]
    owners: np.ndarray
    sections: np.ndarray
    vectors: np.ndarray

    def merged(self, mode: str = 'mean', normalize: bool = True) -> np.ndarray:
        """One vector per document (see :func:`merge_sections`)."""
        return merge_sections(self.vectors, self.owners, len(self.docnos), mode, normalize)


def embed_documents(encoder: Any, documents: pd.DataFrame, sections_field: str = 'sections') -> SectionEmbeddings:
    """Embeds every section of ``documents`` (``docno`` and the interleaved-sections column) with ``encoder``."""
    pta.validate.columns(documents, includes=['docno', sections_field])
    docs = documents[['docno', sections_field]].reset_index(drop=True)
    docs = docs.assign(_owner=np.arange(len(docs)))
    flat = explode_sections(docs, sections_field)
    vectors = encoder.encode_sections(flat) if len(flat) else np.zeros((0, 0), dtype=np.float32)
    return SectionEmbeddings([str(d) for d in docs['docno']], flat['_owner'].to_numpy(), flat['section'].to_numpy(),
                             vectors)


class InterleavedRetriever(pt.Transformer):
    """Dense retrieval of interleaved documents by their merged section vectors (exhaustive dot product).

    Args:
        encoder: the section encoder that made ``embeddings`` (it encodes the queries).
        embeddings: :class:`SectionEmbeddings` of the collection.
        merge: ``'mean'`` (the paper), ``'max'`` or ``'first'`` (see :func:`merge_sections`).
        num_results: documents per query.
        normalize: L2-normalise the merged vectors.

    Output: the query frame's columns, then ``docno``, ``score`` and ``rank`` (ties in collection order).
    """

    ARGUMENTS = {'merge': OneOf(*MERGE_MODES)}

    def __init__(self, encoder: Any, embeddings: SectionEmbeddings, *, merge: str = 'mean', num_results: int = 100,
                 normalize: bool = True) -> None:
        check_arguments('InterleavedRetriever', self.ARGUMENTS, {'merge': merge})
        if num_results < 1:
            raise ValueError('num_results must be >= 1')
        self.encoder = encoder
        self.embeddings = embeddings
        self.merge = merge
        self.num_results = num_results
        self.normalize = normalize
        self.doc_vectors = embeddings.merged(merge, normalize)
        self.stats = EfficiencyStats()

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:  # noqa: D102
        pta.validate.query_frame(inp, extra_columns=['query'])
        if len(inp) == 0:
            return empty_retrieval(inp)
        inp = inp.reset_index(drop=True)
        require_values(inp, ['qid', 'query'], 'InterleavedRetriever')
        start = time.perf_counter()
        scores = self.encoder.encode_queries(inp['query'].tolist()) @ self.doc_vectors.T
        k = min(self.num_results, scores.shape[1])
        order = np.argsort(-scores, axis=1, kind='stable')[:, :k]
        seconds = time.perf_counter() - start
        rows = []
        for i, qid in enumerate(inp['qid']):
            self.stats.add(qid, sequences=1, seconds=seconds / len(inp))
            rows.append(pd.DataFrame({'_row': i, 'docno': [self.embeddings.docnos[j] for j in order[i]],
                                      'score': scores[i, order[i]].astype('float64'), 'rank': np.arange(k)}))
        res = pd.concat(rows, ignore_index=True)
        keep = inp.drop(columns=['docno', 'score', 'rank'], errors='ignore')
        out = keep.iloc[res['_row']].reset_index(drop=True)
        for c in ('docno', 'score', 'rank'):
            out[c] = res[c].to_numpy()
        return out

    def __repr__(self) -> str:
        return f'InterleavedRetriever(merge={self.merge!r}, num_results={self.num_results})'


def interleaved_index(embeddings: SectionEmbeddings, path: Any, merge: str = 'mean', normalize: bool = True) -> Any:
    """The merged document vectors in a :class:`pyterrier_dr.FlexIndex` at ``path``, built once (by
    :func:`~pyterrier_llmrank.folders.build_folder`); search it with ``encoder`` query vectors, e.g.
    ``index.np_retriever()`` on a frame with ``query_vec``."""
    import pyterrier_dr
    vectors = embeddings.merged(merge, normalize)

    def write(tmp: Path) -> None:
        index = pyterrier_dr.FlexIndex(str(tmp))
        index.indexer().index({'docno': d, 'doc_vec': v} for d, v in zip(embeddings.docnos, vectors))

    build_folder(Path(path), write, marker='pt_meta.json', create=False)
    return pyterrier_dr.FlexIndex(str(path))


class SectionReranker(pt.Transformer):
    """Returns the section of each retrieved interleaved document that best matches the query, and its score.

    Choose it after an :class:`InterleavedRetriever` (the paper's coarse-to-fine pipeline: retrieve documents, then
    identify the relevant section) or to measure section picking. Each section is embedded by ``encoder`` and
    scored by its dot product with the query vector.

    Output: the input's rows and columns, plus ``section`` (0-based position of the best section; the first one on
    ties), ``section_score`` and ``section_scores`` (every section's score). The documents keep their ``score`` and
    ``rank`` unless ``rerank_documents=True``, which ranks them by ``section_score`` (max-passage scoring).

    Args:
        encoder: a section encoder (:class:`TextSectionEncoder`, :class:`VLMEndTokenEncoder`).
        sections_field: the interleaved-sections column.
        rerank_documents: replace ``score`` by the best section's score and re-rank.
    """

    schematic = {'label': 'SectionReranker'}

    def __init__(self, encoder: Any, *, sections_field: str = 'sections', rerank_documents: bool = False) -> None:
        self.encoder = encoder
        self.sections_field = sections_field
        self.rerank_documents = rerank_documents
        self.stats = EfficiencyStats()

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:  # noqa: D102
        pta.validate.result_frame(inp, extra_columns=['query', self.sections_field])
        out = inp.copy()
        if len(inp) == 0:
            out['section'] = pd.Series(dtype='int64')
            out['section_score'] = pd.Series(dtype='float64')
            out['section_scores'] = pd.Series(dtype=object)
            return out
        empty = [i for i, s in enumerate(inp[self.sections_field]) if not isinstance(s, (list, tuple)) or not s]
        if empty:
            raise ValueError(f'SectionReranker: column {self.sections_field!r} holds no sections in {len(empty)} '
                             f'row(s) (positions {empty[:10]}); every document needs at least one section')
        start = time.perf_counter()
        frame = inp[['query', self.sections_field]].reset_index(drop=True).assign(_row=np.arange(len(inp)))
        flat = explode_sections(frame, self.sections_field)
        svecs = self.encoder.encode_sections(flat)
        queries = list(dict.fromkeys(inp['query'].astype(str)))
        qvecs = self.encoder.encode_queries(queries)
        qpos = {q: i for i, q in enumerate(queries)}
        sscores = np.einsum('ij,ij->i', svecs, qvecs[[qpos[q] for q in flat['query'].astype(str)]])
        per_row: List[List[float]] = [[] for _ in range(len(inp))]
        for row, score in zip(flat['_row'], sscores):
            per_row[row].append(float(score))
        seconds = time.perf_counter() - start
        for qid, n in zip(inp['qid'], (len(s) for s in per_row)):
            self.stats.add(qid, sequences=n, seconds=seconds * n / len(flat))
        out['section'] = np.array([int(np.argmax(s)) for s in per_row], dtype='int64')
        out['section_score'] = np.array([max(s) for s in per_row], dtype='float64')
        out['section_scores'] = pd.Series(per_row, index=out.index, dtype=object)
        if self.rerank_documents:
            out['score'] = out['section_score']
            out = pt.model.add_ranks(out.sort_values(['qid', 'score'], ascending=[True, False], kind='stable'))
        return out

    def __repr__(self) -> str:
        return f'SectionReranker({type(self.encoder).__name__}, rerank_documents={self.rerank_documents})'
