"""Generation backends: chat prompts in, text out, with token and time accounts.

Every backend implements one interface (:class:`GenerationBackend`), so every generative reranker and every
LLM step of :mod:`~pyterrier_llmrank.query` runs unchanged on any of them:

* :class:`HFGenerationBackend` -- Hugging Face ``model.generate`` over batches of prompts (left padding, greedy by
  default, ``max_new_tokens``, stops at EOS or the chat template's end-of-turn token); choose it to run a model
  in this process;
* :class:`VLLMBackend` -- vLLM's offline ``LLM.generate`` when vLLM is installed (optional: ``pip install vllm``);
  choose it on a GPU machine for large models and many queries;
* :class:`ScriptedBackend` -- a deterministic stand-in that answers from a list, a table or a function and records
  every prompt it received, for exact tests of the ranking algorithms.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pyterrier_llmrank import models
from pyterrier_llmrank.causal import left_pad
from pyterrier_llmrank.prefill import PromptKV, batch_cache

__all__ = ['ChatPrompt', 'Generation', 'share_cost', 'GenerationBackend', 'HFGenerationBackend', 'VLLMBackend',
           'ScriptedBackend', 'resolve_backend']

@dataclass(frozen=True)
class ChatPrompt:
    """One chat prompt: a list of ``{'role', 'content'}`` messages, and text that starts the assistant's answer.

    ``prefix`` is appended after the chat template's generation prompt (e.g. ``' Passage:'`` in Setwise) and is
    part of the prompt, not of the generated text. ``add_special_tokens`` tokenizes the rendered text with the
    tokenizer's special tokens (a second BOS on tokenizers that add one), for rerankers whose reference code
    tokenizes the rendered template with default settings (Setwise); by default the template alone writes them.
    """

    messages: Tuple[Tuple[str, str], ...]
    prefix: str = ''
    add_special_tokens: bool = False

    @classmethod
    def of(cls, messages: Sequence[Mapping[str, str]], prefix: str = '',
           add_special_tokens: bool = False) -> 'ChatPrompt':
        """Build from a list of message dicts."""
        return cls(tuple((m['role'], m['content']) for m in messages), prefix, add_special_tokens)

    def as_dicts(self) -> List[Dict[str, str]]:
        """The messages as the ``[{'role': ..., 'content': ...}]`` list chat templates take."""
        return [{'role': r, 'content': c} for r, c in self.messages]

    @property
    def last_user(self) -> str:
        """Content of the last user message."""
        return next(c for r, c in reversed(self.messages) if r == 'user')

    def render(self, tokenizer: Any = None) -> str:
        """The prompt as text: the tokenizer's chat template when given, else ``role: content`` lines."""
        if tokenizer is not None:
            if not getattr(tokenizer, 'chat_template', None):
                raise ValueError('the tokenizer has no chat template; generative rerankers need a chat (instruct) '
                                 'model')
            text = tokenizer.apply_chat_template(self.as_dicts(), tokenize=False, add_generation_prompt=True)
            return text + self.prefix
        return ''.join(f'{r}: {c}\n' for r, c in self.messages) + 'assistant:' + self.prefix


@dataclass
class Generation:
    """The answer to one prompt, with its share of the cost of the batch that produced it.

    Attributes:
        text: generated text (special tokens and the stop token removed).
        prompt_tokens: tokens of the prompt (no padding).
        generated_tokens: tokens generated, the stop token included.
        padded_tokens: prompt width of the batch (the prompt plus its left padding).
        seconds: the batch's wall-clock time shared in proportion to each prompt's tokens.
        calls: the share of one ``generate`` call (1 / prompts in the batch).
    """

    text: str
    prompt_tokens: int = 0
    generated_tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0
    calls: float = 1.0


def share_cost(gens: List[Generation], seconds: float) -> None:
    """Share one batched call among its generations: ``seconds`` in proportion to each one's prompt and generated
    tokens, and ``1 / len(gens)`` of a call each."""
    tot = float(sum(g.prompt_tokens + g.generated_tokens for g in gens)) or 1.0
    for g in gens:
        g.seconds = seconds * (g.prompt_tokens + g.generated_tokens) / tot
        g.calls = 1.0 / len(gens)


class GenerationBackend:
    """Interface of a text generator for chat prompts.

    Subclasses implement :meth:`generate`. ``tokenizer`` (or ``None``) is used by the rerankers to truncate
    passages in tokens; ``batch_size`` is the most prompts per model call.
    """

    tokenizer: Any = None
    batch_size: int = 8
    name: str = 'backend'

    def generate(self, prompts: Sequence[ChatPrompt], max_new_tokens: int, *, temperature: float = 0.0,
                 top_p: float = 1.0, seed: Optional[int] = None, progress: Optional[Callable[[int], None]] = None,
                 batch_size: Optional[int] = None) -> List[Generation]:
        """Generate an answer to every prompt, in order.

        Args:
            prompts: the chat prompts.
            max_new_tokens: the most tokens generated per prompt.
            temperature: 0 (the default) decodes greedily; above 0 samples with ``top_p``.
            top_p: nucleus sampling mass when sampling.
            seed: seed of the sampler (used only when sampling).
            progress: called with the number of prompts answered after each model call (progress bars).
            batch_size: the most prompts per model call for this call (default: the backend's ``batch_size``).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.name!r})'


class HFGenerationBackend(GenerationBackend):
    """Hugging Face ``generate`` over batches of chat prompts.

    Prompts are rendered with the tokenizer's chat template (``add_generation_prompt=True``), tokenized without
    added special tokens (the template writes them; with them when the prompt's ``add_special_tokens`` asks, as
    Setwise's reference does), sorted by length and left-padded in batches of
    ``batch_size``; position ids follow the attention mask, so a prompt's answer does not depend on its batch
    (up to floating-point noise). Generation stops at the EOS token(s) of the model and at the chat template's
    end-of-turn token.

    Args:
        model: hub name / local folder / short name (``smollm2-135m-instruct``) or a ``(model, tokenizer)`` pair.
        batch_size: the most prompts per ``generate`` call.
        device, dtype: see :mod:`pyterrier_llmrank.models`.

    Prefill on the CPU (``prefill_alone``, on by default there): each prompt is prefilled alone, without padding, from
    the longest token prefix it shares with a recent prompt (:class:`~pyterrier_llmrank.prefill.PromptKV`, at most
    ``prompt_cache_bytes`` of key/value states kept), and only the decoding steps run batched: a left-padded batch
    is slower to prefill on the CPU than its prompts one by one. Set ``prefill_alone = False`` to prefill whole
    batches (the default on accelerators). Either way each prompt's answer is what it gets alone (up to
    floating-point rounding).
    """

    #: prefill prompts one by one with prefix reuse (``None``: on the CPU only)
    prefill_alone: Optional[bool] = None
    #: the most bytes of key/value states of recent prompts kept for prefix reuse
    prompt_cache_bytes: int = 1 << 30
    #: prompt tokens left to ``generate``'s first step after a prefill (a pass over several tokens, like a prefill
    #: step, so that hooks and logits processors tell it from the decoding steps that follow)
    GENERATE_TAIL = 2

    def __init__(self, model: Any = 'smollm2-135m-instruct', *, batch_size: int = 8, device: Any = 'auto',
                 dtype: Any = 'auto') -> None:
        if batch_size < 1:
            raise ValueError(f'HFGenerationBackend: batch_size must be >= 1, got {batch_size!r}')
        self.lm = models.load_causal_lm(model, device=device, dtype=dtype)
        self.model, self.tokenizer = self.lm.model, self.lm.tokenizer
        self.name = self.lm.name
        self.batch_size = batch_size
        self.pad = self.lm.pad_id
        stops = set()
        for src in (getattr(self.model, 'generation_config', None), self.tokenizer):
            eos = getattr(src, 'eos_token_id', None)
            if eos is not None:
                stops.update([eos] if isinstance(eos, int) else list(eos))
        if self.lm.has_chat_template:
            end = self.lm.chat_parts()[2]
            end_ids = self.lm.ids(end)
            if end_ids:
                stops.add(end_ids[0])
        self.stop_ids = sorted(int(s) for s in stops)

    def encode(self, prompt: ChatPrompt) -> List[int]:
        """Token ids of a prompt (chat template + prefix; special tokens added when the prompt asks for them)."""
        return self.tokenizer(prompt.render(self.tokenizer), add_special_tokens=prompt.add_special_tokens)['input_ids']

    def prefilled(self, batch: Sequence[Sequence[int]], width: int) -> Any:
        """The key/value cache of the left-padded ``batch`` (``width`` tokens wide) but its last
        :attr:`GENERATE_TAIL` positions, each prompt prefilled alone from its longest stored prefix; ``None`` when the
        model's cache cannot be laid out so (sliding-window or hybrid layers) or a prompt is too short."""
        tail = self.GENERATE_TAIL
        if any(len(s) <= tail for s in batch):
            return None
        kv = getattr(self, '_prompt_kv', None)
        if kv is None:
            kv = self._prompt_kv = PromptKV(self.model, budget_bytes=self.prompt_cache_bytes)
        if kv is False:
            return None
        kv.budget_bytes = self.prompt_cache_bytes
        try:
            states = [kv.prefill(list(s)[:len(s) - tail]) for s in batch]
        except ValueError:  # not a plain key/value cache: prefill whole batches
            self._prompt_kv = False
            return None
        return batch_cache(states, width - tail)

    @torch.inference_mode()
    def generate(self, prompts: Sequence[ChatPrompt], max_new_tokens: int, *, temperature: float = 0.0,
                 top_p: float = 1.0, seed: Optional[int] = None, progress: Optional[Callable[[int], None]] = None,
                 batch_size: Optional[int] = None) -> List[Generation]:  # noqa: D102
        out: List[Optional[Generation]] = [None] * len(prompts)
        if not prompts:
            return []
        seqs = [self.encode(p) for p in prompts]
        order = np.argsort([-len(s) for s in seqs], kind='stable')
        dev = next(self.model.parameters()).device
        kwargs: Dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=self.pad, eos_token_id=self.stop_ids)
        if temperature and temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=None)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        stops = set(self.stop_ids)
        size = batch_size or self.batch_size
        alone = self.prefill_alone if self.prefill_alone is not None else dev.type == 'cpu'
        for b in range(0, len(order), size):
            idx = order[b:b + size]
            batch = [seqs[i] for i in idx]
            ids, mask, _ = left_pad(batch, self.pad, dev)
            if kwargs['do_sample'] and seed is not None:
                torch.manual_seed(seed + b)
            start = time.perf_counter()
            cache = self.prefilled(batch, ids.shape[1]) if alone else None
            extra = {} if cache is None else {'cache': cache}
            res = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs, **extra)
            seconds = time.perf_counter() - start
            new = res[:, ids.shape[1]:].tolist()
            gens = []
            for i, toks in zip(idx, new):
                n = len(toks)
                for j, t in enumerate(toks):
                    if t in stops:
                        n = j + 1
                        break
                text_ids = [t for t in toks[:n] if t not in stops]
                g = Generation(self.tokenizer.decode(text_ids, skip_special_tokens=True), prompt_tokens=len(seqs[i]),
                               generated_tokens=n, padded_tokens=ids.shape[1])
                out[i] = g
                gens.append(g)
            share_cost(gens, seconds)
            if progress is not None:
                progress(len(idx))
        return out  # type: ignore[return-value]


class VLLMBackend(GenerationBackend):
    """vLLM offline inference (optional: ``pip install vllm``; needs a GPU).

    Prompts are rendered with the tokenizer's chat template exactly as :class:`HFGenerationBackend` does (so that a
    ``prefix`` such as Setwise's ``' Passage:'`` can follow the generation prompt) and passed to ``LLM.generate`` as
    text; vLLM schedules the whole list at once (``batch_size`` only limits how many prompts one call submits).
    Greedy by default (``temperature=0``), as the Rank-R1 reference code.

    Args:
        model: a hub name or local folder, or an already built ``vllm.LLM``.
        batch_size: prompts submitted per ``LLM.generate`` call.
        **llm_kwargs: passed to ``vllm.LLM`` (e.g. ``dtype``, ``max_model_len``, ``enable_lora``).

    Raises:
        ImportError: when vLLM is not installed.
    """

    def __init__(self, model: Any, *, batch_size: int = 1024, **llm_kwargs: Any) -> None:
        try:
            import vllm
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError('VLLMBackend needs vLLM: pip install vllm (a CUDA machine is required); '
                              'or use HFGenerationBackend') from e
        self._vllm = vllm
        if isinstance(model, vllm.LLM):
            self.llm = model
        else:
            self.llm = vllm.LLM(model=models.resolve_model_path(model), **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.name = str(model) if not isinstance(model, vllm.LLM) else 'vllm.LLM'
        self.batch_size = batch_size

    def generate(self, prompts: Sequence[ChatPrompt], max_new_tokens: int, *, temperature: float = 0.0,
                 top_p: float = 1.0, seed: Optional[int] = None, progress: Optional[Callable[[int], None]] = None,
                 batch_size: Optional[int] = None) -> List[Generation]:  # pragma: no cover - needs vLLM
        params = self._vllm.SamplingParams(temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                                           max_tokens=max_new_tokens, seed=seed if temperature > 0 else None)
        result: List[Generation] = []
        size = batch_size or self.batch_size
        for b in range(0, len(prompts), size):
            texts = [p.render(self.tokenizer) for p in prompts[b:b + size]]
            start = time.perf_counter()
            outs = self.llm.generate(texts, params, use_tqdm=False)
            seconds = time.perf_counter() - start
            gens = [Generation(o.outputs[0].text, prompt_tokens=len(o.prompt_token_ids),
                               generated_tokens=len(o.outputs[0].token_ids), padded_tokens=len(o.prompt_token_ids))
                    for o in outs]
            share_cost(gens, seconds)
            result.extend(gens)
            if progress is not None:
                progress(len(gens))
        return result


Answer = Union[Callable[[ChatPrompt], str], Sequence[str], Mapping[str, str]]


class ScriptedBackend(GenerationBackend):
    """A deterministic backend for tests: answers from a function, a list or a table, and records every prompt.

    Args:
        answer: a function ``ChatPrompt -> str`` (its exceptions propagate), a list of answers given in turn
            (an ``IndexError`` when it runs out), or a mapping from the last user message of a prompt to its answer
            (a ``KeyError`` for an unknown prompt).
        tokenizer: optional; when given, it truncates passages and counts prompt tokens (with its chat template),
            otherwise tokens are whitespace-separated words.
        batch_size: prompts per simulated call.

    Attributes:
        prompts: every prompt received, in order.
        batches: the prompts of each simulated call.
        settings: the decoding settings of each :meth:`generate` call (``max_new_tokens``, ``temperature``,
            ``top_p``, ``seed``).
    """

    name = 'scripted'

    def __init__(self, answer: Answer, *, tokenizer: Any = None, batch_size: int = 8) -> None:
        self.answer = answer
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.prompts: List[ChatPrompt] = []
        self.batches: List[List[ChatPrompt]] = []
        self.settings: List[Dict[str, Any]] = []
        self._next = 0

    def _answer(self, prompt: ChatPrompt) -> str:
        if callable(self.answer):
            return self.answer(prompt)
        if isinstance(self.answer, Mapping):
            return self.answer[prompt.last_user]
        text = self.answer[self._next]
        self._next += 1
        return text

    def _count(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer(text, add_special_tokens=False)['input_ids'])
        return len(text.split())

    def generate(self, prompts: Sequence[ChatPrompt], max_new_tokens: int, *, temperature: float = 0.0,
                 top_p: float = 1.0, seed: Optional[int] = None, progress: Optional[Callable[[int], None]] = None,
                 batch_size: Optional[int] = None) -> List[Generation]:  # noqa: D102
        self.settings.append(dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed))
        out: List[Generation] = []
        size = batch_size or self.batch_size
        for b in range(0, len(prompts), size):
            chunk = list(prompts[b:b + size])
            self.batches.append(chunk)
            start = time.perf_counter()
            gens = []
            for p in chunk:
                self.prompts.append(p)
                text = self._answer(p)
                n = self._count(p.render(self.tokenizer))
                gens.append(Generation(text, prompt_tokens=n, generated_tokens=self._count(text), padded_tokens=n))
            share_cost(gens, time.perf_counter() - start)
            out.extend(gens)
            if progress is not None:
                progress(len(gens))
        return out


def resolve_backend(model: Any, *, batch_size: Optional[int] = None, device: Any = 'auto',
                    dtype: Any = 'auto') -> GenerationBackend:
    """A backend object as given, else an :class:`HFGenerationBackend` over the model name/path/pair/handle
    (``batch_size`` prompts per call, 8 when ``None``)."""
    if isinstance(model, GenerationBackend):
        return model
    return HFGenerationBackend(model, batch_size=batch_size or 8, device=device, dtype=dtype)
