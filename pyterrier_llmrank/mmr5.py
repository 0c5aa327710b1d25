"""MM-R5: a multimodal reasoning listwise reranker of page images.

Paper: "MM-R5: MultiModal Reasoning-Enhanced ReRanker via Reinforcement Learning for Document Retrieval", 2025.
Reference code: i2vec/MM-R5 (MIT) at commit 0806019b6c07b676973f3877739bbea8aa330ab4, ``examples/reranker.py``
(inference) and ``src/rl/VLM-R1/...`` (training, :mod:`pyterrier_llmrank.train.mmr5`).
"""
from __future__ import annotations

import re
from typing import Any, List, Optional, Sequence, Tuple

import pandas as pd

from pyterrier_llmrank.backends import GenerationBackend
from pyterrier_llmrank.base import AtLeast
from pyterrier_llmrank.generative import Algorithm, GenerativeReranker, QueryState, backend_budget
from pyterrier_llmrank.images import IMAGE_FIELD, check_images
from pyterrier_llmrank.listwise import sliding_windows
from pyterrier_llmrank.vlm import VLChat, VLGenerationBackend

__all__ = ['MMR5', 'MMR5_SYSTEM', 'MMR5_USER', 'MMR5_IMAGE_LABEL', 'MMR5_ANSWER_PATTERN', 'MMR5_TEMPERATURE',
           'MMR5_MAX_NEW_TOKENS', 'mmr5_messages', 'mmr5_chat', 'parse_mmr5_answer']

# i2vec/MM-R5 examples/reranker.py (commit 0806019b6c07b676973f3877739bbea8aa330ab4): SYSTEM_PROMPT
MMR5_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant "
    "first thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning "
    "process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think><answer> answer here </answer>"
)

# i2vec/MM-R5 examples/reranker.py: question_template, verbatim (no space after "analysis process.", "images'id")
MMR5_USER = (
    "Please rank the following images according to their relevance to the question. "
    "Provide your response in the format: <think>your reasoning process here</think><answer>[image_id_1, image_id_2, ...]</answer> "
    "where the numbers in the list represent the ranking order of images'id from most to least relevant. "
    "Before outputting the answer, you need to analyze each image and provide your analysis process."
    "For example: <think>Image 1 shows the most relevant content because...</think><answer>[id_most_relevant, id_second_relevant, ...]</answer>"
    "\nThe question is: {Question}"
    "\n\nThere are {image_num} images, id from 1 to {image_num_end}, Image ID to image mapping:\n"
)

# i2vec/MM-R5 examples/reranker.py: the text part before each image (1-based)
MMR5_IMAGE_LABEL = "\nImage {i}: "

# i2vec/MM-R5 examples/reranker.py: re.search(r'<answer>\[(.*?)\]</answer>', output_text) (no flags)
MMR5_ANSWER_PATTERN = r'<answer>\[(.*?)\]</answer>'

# i2vec/MM-R5 examples/reranker.py: generate(do_sample=True, temperature=0.3, max_new_tokens=8192)
MMR5_TEMPERATURE = 0.3
MMR5_MAX_NEW_TOKENS = 8192


def mmr5_messages(query: str, images: Sequence[Any]) -> List[dict]:
    """The reference's chat for one query and its images (paths or PIL images): the system turn
    :data:`MMR5_SYSTEM`, one user turn with :data:`MMR5_USER` and, for each image, the text
    ``"\\nImage {i}: "`` followed by the image."""
    content: List[dict] = [{'type': 'text', 'text': MMR5_USER.format(Question=query, image_num=len(images),
                                                                     image_num_end=len(images))}]
    for i, image in enumerate(images):
        content.extend([{'type': 'text', 'text': MMR5_IMAGE_LABEL.format(i=i + 1)}, {'type': 'image', 'image': image}])
    return [{'role': 'system', 'content': [{'type': 'text', 'text': MMR5_SYSTEM}]},
            {'role': 'user', 'content': content}]


def mmr5_chat(query: str, images: Sequence[Any]) -> VLChat:
    """:func:`mmr5_messages` as a :class:`~pyterrier_llmrank.vlm.VLChat` prompt."""
    return VLChat.of(mmr5_messages(query, images))


def parse_mmr5_answer(text: str, n: int) -> Tuple[List[int], str]:
    """The reference's answer parse and repair (i2vec/MM-R5 ``examples/reranker.py``), 0-based positions and a status.

    The first ``<answer>[...]</answer>`` (:data:`MMR5_ANSWER_PATTERN`, not across lines) is split on commas; each
    non-blank piece is read with ``int`` as a 1-based id; ids outside ``1..n`` are dropped; the ids never named are
    appended in increasing order. No match, or a piece that is not an integer (the reference's ``except``), keeps
    the order unchanged. One deliberate difference: an id named twice is kept at its first place only (the
    reference keeps the duplicate, which would rank a document twice).

    Returns:
        ``(order, status)``: ``'ok'`` when the answer is a permutation of ``1..n``, ``'unparsable'`` when nothing
        valid was read (order unchanged), ``'repaired'`` otherwise.
    """
    m = re.search(MMR5_ANSWER_PATTERN, text)
    if m is None:
        return list(range(n)), 'unparsable'
    try:
        ids = [int(x) - 1 for x in m.group(1).strip().split(',') if x.strip()]
    except ValueError:
        return list(range(n)), 'unparsable'
    order: List[int] = []
    for i in ids:
        if 0 <= i < n and i not in order:
            order.append(i)
    if not order:
        return list(range(n)), 'unparsable'
    status = 'ok' if len(ids) == n and len(order) == n else 'repaired'
    order.extend(sorted(set(range(n)) - set(order)))
    return order, status


class MMR5(GenerativeReranker):
    """MM-R5: a vision-language model reasons over a query's page images and answers their ranking.

    Wang et al., "MM-R5: MultiModal Reasoning-Enhanced ReRanker via Reinforcement Learning for Document Retrieval",
    2025; reference i2vec/MM-R5 ``examples/reranker.py`` (a Qwen2.5-VL-7B fine-tuned by SFT then GRPO). Choose it to
    rerank page images (screenshots, rendered pages) with a reasoning VLM; for page images with a text reranker,
    OCR them first.

    Each prompt is the reference's: system :data:`MMR5_SYSTEM`, user :data:`MMR5_USER` (verbatim, quirks included)
    followed by ``"\\nImage {i}: "`` and the image for each candidate. The answer is read from
    ``<answer>[...]</answer>`` with the reference's repair (:func:`parse_mmr5_answer`); an answer needing repair
    is counted ``repaired``, one with nothing valid ``unparsable`` (the window keeps its order). The whole answer,
    reasoning included, is kept in :meth:`trace`.

    The reference ranks one list in one prompt; longer lists are ranked here in sliding windows
    (:func:`~pyterrier_llmrank.listwise.sliding_windows`, bottom to top, ``window`` images a prompt moving up by
    ``step``): with ``window`` at least the list length it is the reference's single call. Score = -rank; rows
    below ``depth`` keep their first-stage order beneath the reranked ones.

    Decoding is greedy by default; ``sample=True`` is the reference's sampling (temperature 0.3, seeded by
    ``seed``). The reference leaves top-p/top-k/repetition penalty to the checkpoint's ``generation_config``; here
    top-p is 1 and top-k off in both modes. ``max_new_tokens`` is the reference's 8192.

    Input: a result frame with ``qid, query, docno`` and an image column ``image_field`` (paths or PIL images,
    checked before the model runs: see :mod:`pyterrier_llmrank.images`).

    Args:
        model: a Qwen2.5-VL checkpoint (name, folder), a ``(model, processor)`` pair, a
            :class:`~pyterrier_llmrank.models.LoadedVLM`, or a
            :class:`~pyterrier_llmrank.vlm.VLGenerationBackend` (any backend answering
            :class:`~pyterrier_llmrank.vlm.VLChat` prompts, e.g. a scripted one in tests).
        image_field: the image column (``'image'``).
        window, step, depth: images per prompt (20), how far a window moves up (10), candidates reranked
            (``None``: all).
        sample: sample with the reference's temperature 0.3 instead of greedy decoding.
        max_new_tokens: the most tokens generated per prompt (8192).
        seed: seed of the sampler.
        min_pixels, max_pixels: image resolution bounds (``None``: the checkpoint's).
        batch_size: prompts per ``generate`` call (``None``: the backend's, 4 for a model loaded here).
        verbose, device, dtype: as every reranker.
    """

    label = 'MMR5'
    ARGUMENTS = {'window': AtLeast(2), 'step': AtLeast(1), 'depth': AtLeast(1, optional=True)}

    def __init__(self, model: Any, *, image_field: str = IMAGE_FIELD, window: int = 20, step: int = 10,
                 depth: Optional[int] = None, sample: bool = False, max_new_tokens: int = MMR5_MAX_NEW_TOKENS,
                 seed: int = 929, min_pixels: Optional[int] = None, max_pixels: Optional[int] = None,
                 batch_size: Optional[int] = None, verbose: bool = False, device: Any = 'auto',
                 dtype: Any = 'auto') -> None:
        self.check_arguments(window=window, step=step, depth=depth, batch_size=batch_size)
        backend = model if isinstance(model, GenerationBackend) else VLGenerationBackend(
            model, batch_size=batch_size or 4, device=device, dtype=dtype, min_pixels=min_pixels,
            max_pixels=max_pixels)
        # the image column plays the part of the text column of the generative base (no title)
        super().__init__(backend, max_new_tokens=max_new_tokens, temperature=MMR5_TEMPERATURE if sample else 0.0,
                         top_p=1.0, seed=seed, title_field=None, text_field=image_field, batch_size=batch_size,
                         verbose=verbose)
        self.image_field = image_field
        self.window = window
        self.step = step
        self.depth = depth
        self.sample = sample

    def _repr_args(self) -> str:
        return (f'{self.backend.name!r}, window={self.window}, step={self.step}, depth={self.depth}'
                + (', sample=True' if self.sample else ''))

    def _text_columns(self) -> List[str]:
        return []  # images are not texts: no string conversion

    def _rerank(self, inp: pd.DataFrame) -> pd.DataFrame:
        check_images(inp, [self.image_field], type(self).__name__)
        return super()._rerank(inp)

    def _check_length(self, st: QueryState, chat: Any, n_images: int) -> None:
        """Images cannot be cut: a window whose prompt and answer exceed the model's context is a ``ValueError``."""
        budget, room = backend_budget(self.backend, self.max_new_tokens)
        if budget is None or not hasattr(self.backend, 'prompt_length'):
            return
        n = self.backend.prompt_length(chat)
        if n > budget:
            raise ValueError(f'MMR5: query {st.qid!r}: the prompt of {n_images} images and the query takes {n} tokens, '
                             f'more than the {budget} available{room}; shorten the query, use a smaller window or '
                             f'lower max_pixels')

    def _algorithm(self, st: QueryState) -> Algorithm:
        n = len(st.rows) if self.depth is None else min(self.depth, len(st.rows))
        order = list(range(len(st.rows)))
        for start, end in sliding_windows(n, self.window, self.step):
            cut = order[start:end]
            chat = mmr5_chat(st.query, [st.texts[p] for p in cut])
            self._check_length(st, chat, len(cut))
            gen = yield chat
            perm, status = parse_mmr5_answer(gen.text, len(cut))
            order[start:end] = [cut[j] for j in perm]
            self._record(st, 'window', cut, gen, [st.docnos[cut[j]] for j in perm], status)
        return order
