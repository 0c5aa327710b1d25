"""Vision-language models (Qwen2.5-VL family) without torchvision: the processor, multimodal chat prompts, batched
inputs and a generation backend.

* :class:`ImageTextProcessor` -- a ``Qwen2_5_VLProcessor`` built from an image processor, a tokenizer and a chat
  template only. transformers' own processor cannot be built without torchvision (it needs a video processor);
  this one can, and it is what trl's ``GRPOTrainer`` takes as ``processing_class``.
* :class:`VLChat` -- a chat prompt whose messages interleave text and images (paths or PIL images).
* :func:`encode_chat` / :func:`vl_model_inputs` -- token ids of a chat with each ``<|image_pad|>`` repeated as the
  image processor will cut the image (``grid_thw.prod() // merge_size**2``), and left-padded batches with the
  pixel values, grids and the ``mm_token_type_ids`` the model's 3-D (mrope) positions are computed from; the
  positions follow the attention mask, so a sequence scores the same in any batch.
* :class:`VLGenerationBackend` -- ``generate`` over batches of :class:`VLChat` prompts, the interface of
  :class:`~pyterrier_llmrank.backends.GenerationBackend`, so the generative reranker machinery
  (:class:`~pyterrier_llmrank.generative.GenerativeReranker`) runs multimodal prompts unchanged.

Models are loaded by :func:`pyterrier_llmrank.models.load_vlm`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.processing_utils import ProcessorMixin

from pyterrier_llmrank.backends import (Generation, GenerationBackend, decoding_kwargs, record_batch,
                                       stop_token_ids)
from pyterrier_llmrank.causal import left_pad
from pyterrier_llmrank.images import image_size, load_image

__all__ = ['QWEN2_VL_CHAT_TEMPLATE', 'QWEN_VISION_TOKENS', 'IMAGE_TOKEN', 'ImageTextProcessor', 'VLChat',
           'EncodedChat', 'encode_chat', 'image_token_count', 'vl_model_inputs', 'VLGenerationBackend']

#: The special tokens of Qwen2-VL/Qwen2.5-VL's tokenizer around and inside images and videos.
QWEN_VISION_TOKENS = ['<|vision_start|>', '<|vision_end|>', '<|vision_pad|>', '<|image_pad|>', '<|video_pad|>']

#: The placeholder of one image patch group in the text.
IMAGE_TOKEN = '<|image_pad|>'

#: The chat template of Qwen2-VL-Instruct and Qwen2.5-VL-Instruct (``chat_template.json`` of
#: ``Qwen/Qwen2.5-VL-3B-Instruct``): a default system turn when none is given, each image written
#: ``<|vision_start|><|image_pad|><|vision_end|>``, text parts concatenated as they are.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content "
    "or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' "
    "or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")


class ImageTextProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor without a video processor (and so without torchvision).

    Built from an image processor (``Qwen2VLImageProcessorPil``), a tokenizer with Qwen's vision tokens and a chat
    template; called as transformers' processor (``processor(text=[...], images=[...], padding=True,
    padding_side='left', return_tensors='pt')``), it expands each ``<|image_pad|>`` to the image's patch groups.
    Videos are not supported.
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Optional[str] = None,
                 **kwargs: Any) -> None:
        self.image_token = getattr(tokenizer, 'image_token', None) or IMAGE_TOKEN
        self.video_token = getattr(tokenizer, 'video_token', None) or '<|video_pad|>'
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


@dataclass(frozen=True)
class VLChat:
    """A chat prompt whose messages interleave text and images.

    ``messages`` is a tuple of ``(role, parts)``, ``parts`` a tuple of ``('text', str)`` and ``('image', value)``
    (a path or a PIL image); ``prefix`` is text appended after the generation prompt.
    """

    messages: Tuple[Tuple[str, Tuple[Tuple[str, Any], ...]], ...]
    prefix: str = ''

    @classmethod
    def of(cls, messages: Sequence[Mapping[str, Any]], prefix: str = '') -> 'VLChat':
        """Build from chat dicts: ``content`` a string or a list of ``{'type': 'text', 'text': ...}`` and
        ``{'type': 'image', 'image': value}``."""
        out = []
        for m in messages:
            content = m['content']
            if isinstance(content, str):
                parts: Tuple[Tuple[str, Any], ...] = (('text', content),)
            else:
                parts = tuple(('image', c['image']) if c['type'] == 'image' else ('text', c['text']) for c in content)
            out.append((m['role'], parts))
        return cls(tuple(out), prefix)

    @property
    def images(self) -> List[Any]:
        """The image values in the order they appear."""
        return [v for _, parts in self.messages for kind, v in parts if kind == 'image']

    def as_dicts(self, with_images: bool = False) -> List[Dict[str, Any]]:
        """Messages as chat-template dicts (images as ``{'type': 'image'}``, with their value when
        ``with_images``)."""
        out = []
        for role, parts in self.messages:
            content = []
            for kind, v in parts:
                if kind == 'image':
                    content.append({'type': 'image', 'image': v} if with_images else {'type': 'image'})
                else:
                    content.append({'type': 'text', 'text': v})
            out.append({'role': role, 'content': content})
        return out

    def render(self, processor: Any = None) -> str:
        """The prompt as text (chat template with the generation prompt, then ``prefix``); one
        ``<|image_pad|>`` per image. Without a processor (scripted tests): ``role: content`` lines, each image
        written ``<image>``."""
        if processor is None:
            return ''.join(f'{r}: ' + ''.join('<image>' if k == 'image' else v for k, v in parts) + '\n'
                           for r, parts in self.messages) + 'assistant:' + self.prefix
        text = processor.apply_chat_template(self.as_dicts(), tokenize=False, add_generation_prompt=True)
        return text + self.prefix

    @property
    def last_user(self) -> str:
        """The text of the last user message (images left out)."""
        parts = next(p for r, p in reversed(self.messages) if r == 'user')
        return ''.join(v for kind, v in parts if kind == 'text')


@dataclass
class EncodedChat:
    """Token ids of a prompt (image pads expanded) and its images (values, in order)."""

    ids: List[int]
    images: List[Any]

    def __len__(self) -> int:
        return len(self.ids)


def image_token_count(processor: Any, value: Any, row: Any = None, column: str = 'image') -> int:
    """How many ``<|image_pad|>`` tokens the image ``value`` becomes (its patches over ``merge_size**2``), from its
    size only."""
    ip = processor.image_processor
    width, height = image_size(value, row=row, column=column)
    return int(ip.get_number_of_image_patches(height, width, {})) // int(ip.merge_size) ** 2


def encode_chat(processor: Any, text: str, images: Sequence[Any], rows: Optional[Sequence[Any]] = None) -> EncodedChat:
    """Token ids of a rendered prompt ``text`` with its ``i``-th ``<|image_pad|>`` repeated as image ``images[i]``
    needs (:func:`image_token_count`); ``rows`` name the images' rows in error messages."""
    tok = processor.tokenizer
    pad = processor.image_token_id
    ids = tok(text, add_special_tokens=False)['input_ids']
    n_pads = sum(1 for t in ids if t == pad)
    if n_pads != len(images):
        raise ValueError(f'the prompt has {n_pads} image placeholders for {len(images)} images')
    out: List[int] = []
    k = 0
    for t in ids:
        if t == pad:
            out.extend([pad] * image_token_count(processor, images[k], None if rows is None else rows[k]))
            k += 1
        else:
            out.append(t)
    return EncodedChat(out, list(images))


def vl_model_inputs(processor: Any, items: Sequence[EncodedChat], pad: int, device: torch.device,
                    dtype: Optional[torch.dtype] = None) -> Dict[str, torch.Tensor]:
    """A left-padded batch of encoded prompts with the pixel values and grids of all their images (in order) and the
    ``mm_token_type_ids`` the model computes its 3-D positions from (over the unpadded tokens, so positions follow
    the attention mask)."""
    ids, mask, _ = left_pad([it.ids for it in items], pad, device)
    inputs: Dict[str, torch.Tensor] = {'input_ids': ids, 'attention_mask': mask,
                                       'mm_token_type_ids': (ids == processor.image_token_id).long()}
    images = [load_image(v) for it in items for v in it.images]
    if images:
        pix = processor.image_processor(images=images, return_tensors='pt')
        grid = pix['image_grid_thw']
        merge = int(processor.image_processor.merge_size) ** 2
        expected = int(inputs['mm_token_type_ids'].sum())
        if int((grid.prod(-1) // merge).sum()) != expected:
            raise RuntimeError('image placeholders and image patches disagree (an image changed size since encoding?)')
        pixel_values = pix['pixel_values'].to(device)
        inputs['pixel_values'] = pixel_values.to(dtype) if dtype is not None else pixel_values
        inputs['image_grid_thw'] = grid.to(device)
    return inputs


class VLGenerationBackend(GenerationBackend):
    """Hugging Face ``generate`` over batches of :class:`VLChat` prompts (a vision-language model).

    As :class:`~pyterrier_llmrank.backends.HFGenerationBackend`: prompts rendered with the processor's chat
    template, sorted by length and left-padded in batches of ``batch_size`` (positions from the mask), greedy by
    default or sampled with ``temperature``/``top_p`` (``top_k`` off), stopping at the model's EOS tokens and the
    template's end-of-turn token; generated text decoded without special tokens.

    Args:
        model: anything :func:`pyterrier_llmrank.models.load_vlm` takes (name, folder, ``(model, processor)``
            pair, handle).
        batch_size: the most prompts per ``generate`` call.
        device, dtype: see :mod:`pyterrier_llmrank.models`.
        min_pixels, max_pixels: image resolution bounds of the image processor (``None``: the model's own).
    """

    def __init__(self, model: Any, *, batch_size: int = 4, device: Any = 'auto', dtype: Any = 'auto',
                 min_pixels: Optional[int] = None, max_pixels: Optional[int] = None) -> None:
        from pyterrier_llmrank import models
        if batch_size < 1:
            raise ValueError(f'VLGenerationBackend: batch_size must be >= 1, got {batch_size!r}')
        self.lm = models.load_vlm(model, device=device, dtype=dtype, min_pixels=min_pixels, max_pixels=max_pixels)
        self.model, self.tokenizer, self.processor = self.lm.model, self.lm.tokenizer, self.lm.processor
        self.name = self.lm.name
        self.batch_size = batch_size
        self.pad = self.lm.pad_id
        self.stop_ids = stop_token_ids(self.lm)
        cfg = getattr(self.model.config, 'text_config', None) or self.model.config
        self.context_length = getattr(cfg, 'max_position_embeddings', None)

    def encode(self, prompt: VLChat) -> EncodedChat:
        """The prompt's token ids (image pads expanded) and images."""
        return encode_chat(self.processor, prompt.render(self.processor), prompt.images)

    def prompt_length(self, prompt: VLChat) -> int:
        """Tokens of ``prompt`` as the model reads it (image pads included)."""
        return len(self.encode(prompt).ids)

    @torch.inference_mode()
    def generate(self, prompts: Sequence[VLChat], max_new_tokens: int, *, temperature: float = 0.0,
                 top_p: float = 1.0, seed: Optional[int] = None, progress: Optional[Callable[[int], None]] = None,
                 batch_size: Optional[int] = None) -> List[Generation]:  # noqa: D102
        out: List[Optional[Generation]] = [None] * len(prompts)
        if not prompts:
            return []
        items = [self.encode(p) for p in prompts]
        lengths = [len(it) for it in items]
        order = np.argsort([-n for n in lengths], kind='stable')
        dev = self.lm.device
        kwargs = decoding_kwargs(max_new_tokens, self.pad, self.stop_ids, temperature, top_p)
        stops = set(self.stop_ids)
        size = batch_size or self.batch_size
        for b in range(0, len(order), size):
            idx = order[b:b + size]
            inputs = vl_model_inputs(self.processor, [items[i] for i in idx], self.pad, dev, self.lm.dtype)
            if kwargs['do_sample'] and seed is not None:
                torch.manual_seed(seed + b)
            start = time.perf_counter()
            res = self.model.generate(**inputs, **kwargs)
            seconds = time.perf_counter() - start
            width = inputs['input_ids'].shape[1]
            record_batch(out, idx, res[:, width:].tolist(), self.tokenizer, lengths, width, stops, seconds, progress)
        return out  # type: ignore[return-value]
