"""A multimodal yes/no reranker: a vision-language model judges a (query, document) pair, each text and/or image.

Paper: Dai et al., "Supervised Fine-Tuning or Contrastive Learning? Towards Better Multimodal LLM Reranking",
arXiv 2510.14824, 2025 (released models ``vec-ai/lychee-rerank-mm``, Qwen2.5-VL based; GMR template).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import pandas as pd
import torch

from pyterrier_llmrank import models
from pyterrier_llmrank.base import PointwiseReranker
from pyterrier_llmrank.images import IMAGE_FIELD, check_images
from pyterrier_llmrank.vlm import EncodedChat, VLChat, encode_chat, vl_model_inputs

__all__ = ['VLYesNo', 'LYCHEE_SYSTEM', 'LYCHEE_INSTRUCT', 'LYCHEE_QUERY', 'LYCHEE_DOCUMENT', 'LYCHEE_DEFAULT_INSTRUCTION',
           'LYCHEE_YES', 'LYCHEE_NO', 'lychee_messages']

# Source: the template as stated for vec-ai/lychee-rerank-mm (arXiv 2510.14824 and its model card); its inference code
# could not be read offline, so this is unverified against it. Qwen3-Reranker (QwenLM/Qwen3-Embedding) has the same
# system text and user layout but ends the prompt with an empty "<think>\n\n</think>\n\n" after the assistant
# header; the Qwen2.5-VL base of Lychee has no thinking block, so none is added here.
#: The system turn of the Lychee/GMR template.
LYCHEE_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
                 'Note that the answer can only be "yes" or "no".')
#: The user turn's parts: the instruction, then the query (image, text), then the document (image, text).
LYCHEE_INSTRUCT = '<Instruct>: {instruction}'
LYCHEE_QUERY = '\n<Query>:'
LYCHEE_DOCUMENT = '\n<Document>:'
#: The default instruction (Qwen3-Reranker's default, whose system text the template shares); pass the task's own.
LYCHEE_DEFAULT_INSTRUCTION = 'Given a web search query, retrieve relevant passages that answer the query'
LYCHEE_YES = 'yes'
LYCHEE_NO = 'no'


def lychee_messages(instruction: str, query: Optional[str], document: Optional[str], query_image: Any = None,
                    document_image: Any = None) -> List[Dict[str, Any]]:
    """The chat of one pair: system :data:`LYCHEE_SYSTEM`; user ``<Instruct>: {instruction}``, ``\\n<Query>:``
    followed by the query's image (when given) and ``' ' + query`` (when not ``None``), ``\\n<Document>:``
    followed by the document's image and ``' ' + document`` likewise."""
    content: List[Dict[str, Any]] = [{'type': 'text', 'text': LYCHEE_INSTRUCT.format(instruction=instruction)
                                      + LYCHEE_QUERY}]
    for marker, image, text in ((None, query_image, query), (LYCHEE_DOCUMENT, document_image, document)):
        if marker is not None:
            content.append({'type': 'text', 'text': marker})
        if image is not None:
            content.append({'type': 'image', 'image': image})
        if text is not None:
            content.append({'type': 'text', 'text': ' ' + text})
    return [{'role': 'system', 'content': LYCHEE_SYSTEM}, {'role': 'user', 'content': content}]


class VLYesNo(PointwiseReranker):
    """Pointwise multimodal relevance: p("yes") of a vision-language model judging a (query, document) pair.

    Dai et al., "Supervised Fine-Tuning or Contrastive Learning? Towards Better Multimodal LLM Reranking",
    arXiv 2510.14824 (models ``vec-ai/lychee-rerank-mm``, Qwen2.5-VL). Choose it to rerank documents that are
    images, texts or both (page images, captioned pictures, interleaved sections) against text and/or image
    queries; train it with the ``vl-sft`` / ``vl-contrastive`` recipes (:mod:`pyterrier_llmrank.train.vlyesno`).

    The prompt is the Lychee/GMR template (:func:`lychee_messages`, the model's chat template around it, generation
    prompt last): system :data:`LYCHEE_SYSTEM`; user ``<Instruct>: {instruction}``, ``\\n<Query>:`` with the
    query's image and text, ``\\n<Document>:`` with the document's image and text. The score is p(yes) of a
    softmax over the logits of the first tokens of ``"yes"`` and ``"no"`` at the last position. The template is
    the one stated for the released model; its own inference code could not be read offline, so the space before
    a text after a marker or image is our reading (as Qwen3-Reranker's ``<Query>: {query}``).

    Batches are left-padded with positions (3-D, mrope) from the mask: a pair's score does not depend on its batch.

    Input: a result frame with ``qid, query, docno``, the document's image column ``image_field`` and/or text
    column ``text_field``, and optionally a query image column ``query_image_field``. Images are paths or PIL
    images, checked before the model runs (:mod:`pyterrier_llmrank.images`); a missing text reads as empty.

    Args:
        model: a Qwen2.5-VL checkpoint (name, folder, LoRA adapter folder), ``(model, processor)`` pair or
            :class:`~pyterrier_llmrank.models.LoadedVLM`.
        instruction: the ``<Instruct>`` text (:data:`LYCHEE_DEFAULT_INSTRUCTION`).
        image_field: the document image column (``'image'``; ``None``: text documents).
        text_field: the document text column (``'text'``; ``None``: image documents).
        query_image_field: a query image column (``None``: text queries).
        yes, no: the answer words (``'yes'``, ``'no'``).
        min_pixels, max_pixels: image resolution bounds (``None``: the checkpoint's).
        batch_size, verbose, device, dtype: as every reranker.
    """

    label = 'VLYesNo'

    def __init__(self, model: Any, *, instruction: str = LYCHEE_DEFAULT_INSTRUCTION,
                 image_field: Optional[str] = IMAGE_FIELD, text_field: Optional[str] = 'text',
                 query_image_field: Optional[str] = None, yes: str = LYCHEE_YES, no: str = LYCHEE_NO,
                 min_pixels: Optional[int] = None, max_pixels: Optional[int] = None, batch_size: int = 8,
                 verbose: bool = False, device: Any = 'auto', dtype: Any = 'auto') -> None:
        if image_field is None and text_field is None:
            raise ValueError('VLYesNo: give image_field, text_field or both (the document columns)')
        super().__init__(text_field=text_field or image_field, batch_size=batch_size, verbose=verbose)
        self.lm = models.load_vlm(model, device=device, dtype=dtype, min_pixels=min_pixels, max_pixels=max_pixels)
        self.model, self.tokenizer, self.processor = self.lm.model, self.lm.tokenizer, self.lm.processor
        self.model_name = self.lm.name
        self.instruction = instruction
        self.image_field = image_field
        self.doc_text_field = text_field
        self.query_image_field = query_image_field
        self.yes, self.no = yes, no
        yes_ids, no_ids = self.lm.ids(yes), self.lm.ids(no)
        if not yes_ids or not no_ids or yes_ids[0] == no_ids[0]:
            raise ValueError(f'VLYesNo: the answer words {yes!r} and {no!r} need distinct first tokens')
        self.yes_id, self.no_id = yes_ids[0], no_ids[0]
        self.pad = self.lm.pad_id

    def _repr_args(self) -> str:
        return f'{self.model_name!r}'

    def _extra_columns(self) -> List[str]:
        return [c for c in (self.image_field, self.query_image_field) if c is not None]

    def _text_columns(self) -> List[str]:
        return [self.doc_text_field] if self.doc_text_field else []

    # -- prompts ---------------------------------------------------------------------------------------------

    def chat(self, query: Optional[str], document: Optional[str], query_image: Any = None,
             document_image: Any = None) -> VLChat:
        """The prompt of one pair (:func:`lychee_messages` with this reranker's instruction)."""
        return VLChat.of(lychee_messages(self.instruction, query, document, query_image, document_image))

    def encode_pair(self, query: Optional[str], document: Optional[str], query_image: Any = None,
                    document_image: Any = None, row: Any = None) -> EncodedChat:
        """Token ids (image pads expanded) and images of one pair's prompt."""
        chat = self.chat(query, document, query_image, document_image)
        return encode_chat(self.processor, chat.render(self.processor), chat.images,
                           rows=[row] * len(chat.images))

    def model_inputs(self, items: Sequence[EncodedChat]) -> Dict[str, torch.Tensor]:
        """A left-padded batch of encoded pairs, ready for the model."""
        return vl_model_inputs(self.processor, items, self.pad, self.lm.device, self.lm.dtype)

    # -- PointwiseReranker -----------------------------------------------------------------------------------

    def _rerank(self, inp: pd.DataFrame) -> pd.DataFrame:
        check_images(inp, self._extra_columns(), type(self).__name__)
        return super()._rerank(inp)

    @property
    def max_length(self) -> Optional[int]:
        """The model's context in tokens (its text model's ``max_position_embeddings``), ``None`` when unknown."""
        for cfg in (getattr(self.model.config, 'text_config', None), self.model.config):
            value = getattr(cfg, 'max_position_embeddings', None) if cfg is not None else None
            if value:
                return int(value)
        return None

    def _fitted_pair(self, qid: Any, query: Optional[str], text: Optional[str], query_image: Any, image: Any,
                     row: int) -> EncodedChat:
        """One pair's prompt within the model's context: the document text is cut (in tokens, decoded back) by
        what the prompt exceeds, counted in ``truncated_prompts``; a prompt that does not fit even without the
        document text is a ``ValueError`` naming the query (the query and images are never cut)."""
        item = self.encode_pair(query, text, query_image, image, row=row)
        limit = self.max_length
        if limit is None or len(item.ids) <= limit:
            return item
        excess = len(item.ids) - limit
        ids = self.lm.ids(text) if text else []
        if excess <= len(ids):
            item = self.encode_pair(query, self.tokenizer.decode(ids[:len(ids) - excess]), query_image, image, row=row)
        if len(item.ids) > limit:
            item = self.encode_pair(query, '' if text is not None else None, query_image, image, row=row)
            if len(item.ids) > limit:
                raise ValueError(f'VLYesNo: query {qid!r}: the prompt without document text is {len(item.ids)} '
                                 f'tokens, more than the model\'s context of {limit}; shorten the query')
        self.stats.add(qid, truncated_prompts=1)
        return item

    def _encode(self, inp: pd.DataFrame) -> List[EncodedChat]:
        n = len(inp)
        qids = inp['qid'].tolist()
        queries = inp['query'].tolist()
        texts = inp[self.doc_text_field].tolist() if self.doc_text_field else [None] * n
        images = inp[self.image_field].tolist() if self.image_field else [None] * n
        qimages = inp[self.query_image_field].tolist() if self.query_image_field else [None] * n
        return [self._fitted_pair(qids[i], queries[i], texts[i], qimages[i], images[i], i) for i in range(n)]

    @torch.inference_mode()
    def _score_batch(self, items: List[EncodedChat]) -> List[float]:
        logits = self.model(**self.model_inputs(items), logits_to_keep=1).logits[:, -1]
        pair = torch.stack([logits[:, self.no_id], logits[:, self.yes_id]], dim=-1).float()
        return torch.softmax(pair, dim=-1)[:, 1].tolist()
