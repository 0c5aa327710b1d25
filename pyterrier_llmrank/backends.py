"""Generation backends: chat prompts in, text out, with token and time accounts.

Every backend implements one interface (:class:`GenerationBackend`), so every generative reranker and every
LLM step of :mod:`~pyterrier_llmrank.query` runs unchanged on any of them:

* :class:`HFGenerationBackend` -- Hugging Face ``model.generate`` over batches of prompts (left padding, greedy by
  default, ``max_new_tokens``, stops at EOS or the chat template's end-of-turn token); choose it to run a model
  in this process;
* :class:`VLLMBackend` -- vLLM's offline ``LLM.generate`` when vLLM is installed (optional: ``pip install vllm``);
  choose it on a GPU machine for large models and many queries;
* :class:`OpenAIBackend` -- chat completions from any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp,
  Ollama, ``transformers serve``, OpenAI itself) through the official ``openai`` client, many requests in flight;
  choose it when the model is served by an engine of its own;
* :class:`ScriptedBackend` -- a deterministic stand-in that answers from a list, a table or a function and records
  every prompt it received, for exact tests of the ranking algorithms.
"""
from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pyterrier_llmrank import models
from pyterrier_llmrank.causal import left_pad
from pyterrier_llmrank.prefill import PromptKV, batch_cache

__all__ = ['ChatPrompt', 'Generation', 'share_cost', 'stop_token_ids', 'decoding_kwargs', 'answer_tokens', 'record_batch',
           'GenerationBackend', 'HFGenerationBackend', 'VLLMBackend', 'OpenAIBackend', 'OpenAIServerError', 'PREFIX_MODES', 'PREFIX_INSTRUCTION', 'ScriptedBackend',
           'resolve_backend']

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


def stop_token_ids(lm: Any) -> List[int]:
    """Where generation stops for a loaded model: its EOS token(s) (generation config and tokenizer) and the first
    token of the chat template's end of turn."""
    stops = set()
    for src in (getattr(lm.model, 'generation_config', None), lm.tokenizer):
        eos = getattr(src, 'eos_token_id', None)
        if eos is not None:
            stops.update([eos] if isinstance(eos, int) else list(eos))
    end_ids = lm.ids(lm.chat_parts()[2]) if lm.has_chat_template else []
    if end_ids:
        stops.add(end_ids[0])
    return sorted(int(s) for s in stops if s is not None and int(s) < len(lm.tokenizer))


def decoding_kwargs(max_new_tokens: int, pad: int, stop_ids: Sequence[int], temperature: float,
                    top_p: float) -> Dict[str, Any]:
    """``generate`` arguments: greedy when ``temperature`` is 0, else sampling with ``top_p`` (``top_k`` off)."""
    kwargs: Dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=list(stop_ids))
    if temperature and temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=None)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def answer_tokens(tokens: Sequence[int], stops: Any) -> Tuple[List[int], int]:
    """The generated ``tokens`` up to the first stop token: the text's ids (stop tokens removed) and how many tokens
    were generated (the stop token included)."""
    n = len(tokens)
    for j, t in enumerate(tokens):
        if t in stops:
            n = j + 1
            break
    return [t for t in tokens[:n] if t not in stops], n


def record_batch(out: List[Any], idx: Sequence[int], new_tokens: Sequence[Sequence[int]], tokenizer: Any,
                 prompt_lengths: Sequence[int], width: int, stops: Any, seconds: float,
                 progress: Optional[Callable[[int], None]]) -> None:
    """Put the :class:`Generation` of each prompt of one ``generate`` call (prompts ``idx``, their new tokens) into
    ``out``: the text up to the first stop token, its token counts, and the call's cost shared (:func:`share_cost`);
    then report the prompts answered to ``progress``."""
    gens = []
    for i, toks in zip(idx, new_tokens):
        text_ids, n = answer_tokens(toks, stops)
        out[i] = Generation(tokenizer.decode(text_ids, skip_special_tokens=True), prompt_tokens=prompt_lengths[i],
                            generated_tokens=n, padded_tokens=width)
        gens.append(out[i])
    share_cost(gens, seconds)
    if progress is not None:
        progress(len(idx))


class GenerationBackend:
    """Interface of a text generator for chat prompts.

    Subclasses implement :meth:`generate`. ``tokenizer`` (or ``None``) is used by the rerankers to truncate
    passages in tokens; ``batch_size`` is the most prompts per model call. ``context_length`` (or ``None``: unknown)
    is the model's context in tokens: with a tokenizer, the generative rerankers fit their prompts into it
    (:meth:`prompt_length`; :func:`pyterrier_llmrank.generative.fit_to_budget`); without one they skip the check.
    """

    tokenizer: Any = None
    batch_size: int = 8
    name: str = 'backend'
    context_length: Optional[int] = None

    def encode(self, prompt: ChatPrompt) -> List[int]:
        """Token ids of a prompt (chat template + prefix; special tokens added when the prompt asks for them)."""
        return self.tokenizer(prompt.render(self.tokenizer), add_special_tokens=prompt.add_special_tokens)['input_ids']

    def prompt_length(self, prompt: ChatPrompt) -> Optional[int]:
        """Tokens of ``prompt`` as the model reads it (``None`` without a tokenizer)."""
        return None if self.tokenizer is None else len(self.encode(prompt))

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

    Pickles through its model handle ``lm`` (by load spec when loaded by name; see
    :class:`~pyterrier_llmrank.models.LoadedModel`), so that rerankers over it run in ``pipeline.parallel(n)``.

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
        self.context_length = self.lm.max_positions
        self.pad = self.lm.pad_id
        self.stop_ids = stop_token_ids(self.lm)

    def __getstate__(self) -> Dict[str, Any]:
        return models.state_without_weights(self.__dict__)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(models.restore_weights(dict(state)))

    def prefilled(self, batch: Sequence[Sequence[int]], width: int, room: int = 0) -> Any:
        """The key/value cache of the left-padded ``batch`` (``width`` tokens wide) but its last
        :attr:`GENERATE_TAIL` positions, each prompt prefilled alone from its longest stored prefix; ``None`` when the
        model's cache cannot be laid out so (sliding-window or hybrid layers) or a prompt is too short. The cache has
        room for ``room`` more tokens (:func:`~pyterrier_llmrank.prefill.batch_cache`)."""
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
        return batch_cache(states, width - tail, room=tail + room)

    @torch.inference_mode()
    def generate(self, prompts: Sequence[ChatPrompt], max_new_tokens: int, *, temperature: float = 0.0,
                 top_p: float = 1.0, seed: Optional[int] = None, progress: Optional[Callable[[int], None]] = None,
                 batch_size: Optional[int] = None) -> List[Generation]:  # noqa: D102
        out: List[Optional[Generation]] = [None] * len(prompts)
        if not prompts:
            return []
        seqs = [self.encode(p) for p in prompts]
        lengths = [len(s) for s in seqs]
        order = np.argsort([-n for n in lengths], kind='stable')
        dev = next(self.model.parameters()).device
        kwargs = decoding_kwargs(max_new_tokens, self.pad, self.stop_ids, temperature, top_p)
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
            cache = self.prefilled(batch, ids.shape[1], room=max_new_tokens) if alone else None
            extra = {} if cache is None else {'cache': cache}
            res = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs, **extra)
            seconds = time.perf_counter() - start
            record_batch(out, idx, res[:, ids.shape[1]:].tolist(), self.tokenizer, lengths, ids.shape[1], stops,
                         seconds, progress)
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
        config = getattr(getattr(self.llm, 'llm_engine', None), 'model_config', None)
        self.context_length = getattr(config, 'max_model_len', None)
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


# The ways OpenAIBackend answers a prompt whose assistant answer must start with a prefix (ChatPrompt.prefix)
PREFIX_MODES = ('auto', 'completions', 'continue', 'instruct')
# this toolkit's own wording (no reference prompt exists): appended to the last user message in prefix mode
# 'instruct', where neither the server nor a local chat template can continue the assistant's answer
PREFIX_INSTRUCTION = '\n\nBegin your answer with "{prefix}".'


class OpenAIServerError(RuntimeError):
    """A request to an OpenAI-compatible server failed (after the client's retries, or rejected outright)."""


class OpenAIBackend(GenerationBackend):
    """Chat completions from an OpenAI-compatible server, through the official ``openai`` client.

    Choose it when the model runs in a serving engine of its own -- vLLM's or SGLang's OpenAI server, TGI,
    llama.cpp's server, Ollama, ``transformers serve`` -- or is an API model (RankGPT's GPT-4): every generative
    reranker and LLM step runs over it unchanged. Each prompt is one request; up to ``concurrency`` requests are
    in flight at once (a thread pool), and the engine batches them on its side. Answers come back in prompt order.

    Decoding: ``temperature=0`` (the default of the rerankers) is greedy, as in :class:`HFGenerationBackend`;
    above 0 the server samples with ``top_p`` and ``seed`` (sent only when sampling). ``max_new_tokens`` is sent as
    ``max_tokens``; ``stop`` (strings) with every request. Retries: the client's own, with exponential backoff
    (0.5 s doubling to 8 s, with jitter) on connection errors, timeouts, 408/409/429 and 5xx, ``max_retries``
    times, each attempt limited to ``timeout`` seconds; then an :class:`OpenAIServerError` naming the URL and the
    model. A 200 answer that is not a completion (no choices, no text, not JSON) gives an empty text, counted
    in ``counts['malformed']`` -- the rerankers then count the prompt as unparsable and go on.

    Accounting: ``prompt_tokens`` and ``generated_tokens`` come from the response's ``usage`` (counted locally
    with ``tokenizer``, or in words, when a server sends none: ``counts['usage_missing']``); ``padded_tokens`` is
    the prompt (a server's padding is not visible); ``calls`` is 1 per request; ``seconds`` is the wall-clock
    time of the whole :meth:`generate` call shared among its prompts in proportion to their tokens (so they add
    up to the wall-clock time, not to the sum of the latencies of concurrent requests).

    Assistant prefix (``ChatPrompt.prefix``, Setwise's ``' Passage:'``): the chat API has no way to continue an
    answer, so ``prefix_mode`` says how such prompts are sent (prompts without a prefix always go to
    ``/chat/completions``):

    * ``'completions'``: the chat template of the local ``tokenizer`` is rendered here exactly as
      :class:`HFGenerationBackend` renders it (generation prompt + prefix) and sent as text to the legacy
      ``/completions`` endpoint (vLLM, SGLang, TGI, llama.cpp, Ollama and ``transformers serve`` have it); the
      server tokenizes it with its default special tokens -- as Setwise's reference does
      (``add_special_tokens=True``); for prompts that ask for none, a leading BOS written by the template is
      dropped when the tokenizer adds one itself, so that the model reads a single BOS. The model reads the same
      tokens as in process; the tokenizer must be the served model's.
    * ``'continue'``: the prefix is sent as a final assistant message with ``continue_final_message=True`` and
      ``add_generation_prompt=False`` in the request body (vLLM's and SGLang's chat extensions; other servers
      reject or ignore them). Exact when the chat template writes the message verbatim (templates that trim the
      content drop the prefix's leading space).
    * ``'instruct'``: :data:`PREFIX_INSTRUCTION` is appended to the last user message, ``max_tokens`` grows by
      the prefix's length in characters (a bound on its tokens), and the prefix is cut from the answer when the
      model repeats it. An approximation for APIs that allow nothing else (OpenAI); the model reads a different
      prompt from the reference's.
    * ``'auto'`` (default): ``'completions'`` when a ``tokenizer`` is given, else ``'instruct'``.

    ``counts`` records per mode the prompts sent that way (``chat``, ``completions``, ``continue``,
    ``instruct``), and ``malformed``, ``usage_missing``, ``reasoning_joined`` (answers whose reasoning the server
    split into ``reasoning_content``, joined back as ``<think>...</think>`` before the content, as Rank-R1's
    answer pattern reads it; better: serve Rank-R1 without a reasoning parser).

    Args:
        model: the model name the server knows (``transformers serve``: the path or hub name it was started with).
        base_url: the server's ``/v1`` URL; default ``$OPENAI_BASE_URL``, else OpenAI's.
        api_key: default ``$OPENAI_API_KEY``, else ``'EMPTY'`` (local servers ignore it).
        tokenizer: the served model's tokenizer (object, or a name/folder loaded with ``AutoTokenizer``), for
            passage truncation in tokens and prefix mode ``'completions'``; ``None``: passages are cut in words.
        concurrency: the most requests in flight (also the ``batch_size`` the rerankers take by default; a
            smaller ``batch_size`` given to :meth:`generate` lowers it for that call).
        timeout: seconds per request attempt.
        max_retries: retries after the first attempt.
        stop: stop strings sent with every request (``None``: the server stops at the model's end of turn).
        prefix_mode: one of :data:`PREFIX_MODES` (above).
        extra_body: more JSON fields for every request (server-specific options, e.g. vLLM's ``top_k``).

    Raises:
        ImportError: when the ``openai`` package is missing (``pip install pyterrier-llmrank[openai]``).
    """

    def __init__(self, model: str, *, base_url: Optional[str] = None, api_key: Optional[str] = None,
                 tokenizer: Any = None, concurrency: int = 8, timeout: float = 120.0, max_retries: int = 3,
                 stop: Optional[Sequence[str]] = None, prefix_mode: str = 'auto',
                 extra_body: Optional[Mapping[str, Any]] = None) -> None:
        try:
            import openai
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError('OpenAIBackend needs the openai client: pip install openai') from e
        if not isinstance(model, str) or not model:
            raise ValueError(f'OpenAIBackend: model must be the model name the server knows, got {model!r}')
        if concurrency < 1:
            raise ValueError(f'OpenAIBackend: concurrency must be >= 1, got {concurrency!r}')
        if not timeout or timeout <= 0:
            raise ValueError(f'OpenAIBackend: timeout must be > 0 seconds, got {timeout!r}')
        if max_retries < 0:
            raise ValueError(f'OpenAIBackend: max_retries must be >= 0, got {max_retries!r}')
        if prefix_mode not in PREFIX_MODES:
            raise ValueError(f'OpenAIBackend: prefix_mode must be one of {PREFIX_MODES}, got {prefix_mode!r}')
        if isinstance(tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(models.resolve_model_path(tokenizer))
        if prefix_mode == 'completions' and tokenizer is None:
            raise ValueError("OpenAIBackend: prefix_mode='completions' renders the chat template here and needs "
                             'the served model\'s tokenizer (tokenizer=...)')
        self._openai = openai
        self.model = model
        self.name = model
        self.base_url = (base_url or os.environ.get('OPENAI_BASE_URL') or 'https://api.openai.com/v1').rstrip('/')
        self.api_key = api_key or os.environ.get('OPENAI_API_KEY') or 'EMPTY'
        self.tokenizer = tokenizer
        self.concurrency = self.batch_size = concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.stop = list(stop) if stop else None
        self.prefix_mode = ('completions' if tokenizer is not None else 'instruct') if prefix_mode == 'auto' \
            else prefix_mode
        self.extra_body = dict(extra_body or {})
        self.counts: Counter = Counter()
        self._lock = threading.Lock()
        self._client: Any = None

    # -- client ---------------------------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The ``openai.OpenAI`` client (made on first use; not pickled)."""
        if self._client is None:
            self._client = self._openai.OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout,
                                               max_retries=self.max_retries)
        return self._client

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_client=None, _lock=None, _openai=None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        import openai
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._openai = openai

    def __repr__(self) -> str:
        return f'OpenAIBackend({self.name!r}, base_url={self.base_url!r})'

    # -- one request ----------------------------------------------------------------------------------------------

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def _local_tokens(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer(text, add_special_tokens=False)['input_ids'])
        return len(text.split())

    def _completion_text(self, prompt: ChatPrompt) -> str:
        """The prompt rendered here for ``/completions`` (one BOS in all, see the class docstring)."""
        text = prompt.render(self.tokenizer)
        bos = getattr(self.tokenizer, 'bos_token', None)
        if not prompt.add_special_tokens and bos and text.startswith(bos):
            added = self.tokenizer('', add_special_tokens=True)['input_ids']
            if getattr(self.tokenizer, 'bos_token_id', None) in added:
                text = text[len(bos):]
        return text

    def _request(self, prompt: ChatPrompt, max_new_tokens: int, decoding: Dict[str, Any]) -> Generation:
        openai = self._openai
        kwargs: Dict[str, Any] = dict(model=self.model, max_tokens=max_new_tokens, **decoding)
        if self.stop:
            kwargs['stop'] = self.stop
        extra = dict(self.extra_body)
        mode = self.prefix_mode if prompt.prefix else 'chat'
        if mode == 'completions':
            endpoint, create = '/completions', self.client.completions.create
            kwargs['prompt'] = self._completion_text(prompt)
        else:
            endpoint, create = '/chat/completions', self.client.chat.completions.create
            messages = prompt.as_dicts()
            if mode == 'continue':
                messages.append({'role': 'assistant', 'content': prompt.prefix})
                extra.update(continue_final_message=True, add_generation_prompt=False)
            elif mode == 'instruct':
                last = max(i for i, m in enumerate(messages) if m['role'] == 'user')
                messages[last] = {'role': 'user', 'content': messages[last]['content']
                                  + PREFIX_INSTRUCTION.format(prefix=prompt.prefix.strip())}
                kwargs['max_tokens'] = max_new_tokens + len(prompt.prefix)
            kwargs['messages'] = messages
        where = f'{self.base_url}{endpoint} (model {self.model!r})'
        try:
            resp = create(extra_body=extra or None, **kwargs)
        except openai.APIStatusError as e:
            code = e.status_code
            retried = f' after {self.max_retries} retries' if code in (408, 409, 429) or code >= 500 else ''
            raise OpenAIServerError(f'OpenAIBackend: {where} answered HTTP {code}{retried}: {e.message}') from e
        except openai.APIConnectionError as e:  # also APITimeoutError
            raise OpenAIServerError(
                f'OpenAIBackend: no answer from {where} after {self.max_retries} retries with backoff, '
                f'{self.timeout:g} s per attempt ({type(e).__name__}: {e}); is the server running at this URL?') from e
        except (openai.APIResponseValidationError, ValueError):  # a 200 whose body is not JSON
            resp = None
        self._count(mode)
        text, reasoning = self._read(resp, mode)
        if text is None:
            self._count('malformed')
            text = ''
        if reasoning:
            self._count('reasoning_joined')
            text = f'<think>{reasoning}</think>{text}'
        if mode == 'instruct':
            head, lead = prompt.prefix.strip(), text.lstrip()
            if head and lead.startswith(head):
                text = lead[len(head):]
        usage = getattr(resp, 'usage', None)
        n_in, n_out = getattr(usage, 'prompt_tokens', None), getattr(usage, 'completion_tokens', None)
        if not isinstance(n_in, int) or not isinstance(n_out, int):
            self._count('usage_missing')
            n_in = self._local_tokens(prompt.render(self.tokenizer) if self.tokenizer is not None
                                      else prompt.render())
            n_out = self._local_tokens(text)
        return Generation(text, prompt_tokens=n_in, generated_tokens=n_out, padded_tokens=n_in)

    @staticmethod
    def _read(resp: Any, mode: str) -> Tuple[Optional[str], Optional[str]]:
        """(text, reasoning) of a response; text ``None`` when the response is not a completion."""
        choices = getattr(resp, 'choices', None)
        if not choices or not isinstance(choices, list):
            return None, None
        choice = choices[0]
        if mode == 'completions':
            text = getattr(choice, 'text', None)
            return (text if isinstance(text, str) else None), None
        message = getattr(choice, 'message', None)
        text = getattr(message, 'content', None)
        reasoning = getattr(message, 'reasoning_content', None) or getattr(message, 'reasoning', None)
        return (text if isinstance(text, str) else None), (reasoning if isinstance(reasoning, str) else None)

    # -- interface ------------------------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[ChatPrompt], max_new_tokens: int, *, temperature: float = 0.0,
                 top_p: float = 1.0, seed: Optional[int] = None, progress: Optional[Callable[[int], None]] = None,
                 batch_size: Optional[int] = None) -> List[Generation]:  # noqa: D102
        if not prompts:
            return []
        decoding: Dict[str, Any] = {'temperature': 0.0}
        if temperature and temperature > 0:
            decoding = {'temperature': float(temperature), 'top_p': float(top_p)}
            if seed is not None:
                decoding['seed'] = int(seed)
        out: List[Optional[Generation]] = [None] * len(prompts)
        workers = min(self.concurrency, batch_size or self.concurrency, len(prompts))
        self.client  # noqa: B018 - made once here, before the threads share it
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix='openai-backend') as pool:
            futures = {pool.submit(self._request, p, max_new_tokens, decoding): i for i, p in enumerate(prompts)}
            try:
                for fut in as_completed(futures):
                    out[futures[fut]] = fut.result()
                    if progress is not None:
                        progress(1)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
        gens: List[Generation] = out  # type: ignore[assignment]
        share_cost(gens, time.perf_counter() - start)
        for g in gens:
            g.calls = 1.0
        return gens


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
        context_length: the context of the simulated model in tokens (``None``: unbounded); with a tokenizer, the
            rerankers fit their prompts into it as they do for a real model.

    Attributes:
        prompts: every prompt received, in order.
        batches: the prompts of each simulated call.
        settings: the decoding settings of each :meth:`generate` call (``max_new_tokens``, ``temperature``,
            ``top_p``, ``seed``).
    """

    name = 'scripted'

    def __init__(self, answer: Answer, *, tokenizer: Any = None, batch_size: int = 8,
                 context_length: Optional[int] = None) -> None:
        self.answer = answer
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.context_length = context_length
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
