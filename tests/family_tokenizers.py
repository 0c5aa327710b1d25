"""Offline stand-ins for the tokenizers of two model families: Llama-3.x and Mistral-Instruct.

Each is a small byte-level BPE trained on the spot (on the DL19 passages, see :func:`pyterrier_llmrank.testing.corpus_lines`)
with the family's special tokens, the BOS token its tokenizer adds to every text, and (a shortened form of) the
family's chat template, so that code which must *not* use the chat template for these families (ICR) can be
tested against the real markup without the hub.

* :func:`train_llama3_tokenizer`: Llama-3's pre-tokenizer split pattern (``tokenizer.json`` of
  meta-llama/Llama-3.1-8B-Instruct), ``<|begin_of_text|>`` added before every text, header/eot special tokens,
  and the Llama-3.1 chat template's shape: a system block with the "Cutting Knowledge Date" lines, and
  ``"\\n\\n"`` after every header.
* :func:`train_mistral_tokenizer`: ``<s>`` added before every text, ``[INST]``/``[/INST]`` as special tokens and
  the chat template of mistralai/Mistral-7B-Instruct-v0.2 (``'[INST] ' + content + ' [/INST]'``).
"""
from __future__ import annotations

from typing import Any, List

from pyterrier_llmrank.testing import corpus_lines

__all__ = ['LLAMA3_SPLIT_PATTERN', 'LLAMA3_CHAT_TEMPLATE', 'MISTRAL_CHAT_TEMPLATE', 'train_llama3_tokenizer',
           'train_mistral_tokenizer']

#: Pre-tokenizer split of the Llama-3 tokenizers (``tokenizer.json``, ``pre_tokenizer.pretokenizers[0]``).
LLAMA3_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                        r"|\s*[\r\n]+|\s+(?!\S)|\s+")

#: The Llama-3.1-Instruct chat template reduced to what it renders for user/assistant turns without tools: the
#: default system block ("Cutting Knowledge Date" ...) and ``"\n\n"`` after each header.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n' }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}")

#: Chat template of mistralai/Mistral-7B-Instruct-v0.2 (``tokenizer_config.json``).
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")


_PARAGRAPHS = ('First paragraph.\n\nSecond paragraph.\n\nThird.', 'A list: \n\n[1] one \n\n[2] two \n\nEnd.')


def _train(specials: List[str], bos: str, pre_tokenizer: Any, vocab_size: int, n_lines: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizer
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # a few texts with blank lines, so that (as in the real vocabularies) "\n\n" and " \n\n" are merged tokens
    bpe.train_from_iterator(list(corpus_lines(n_lines)) + list(_PARAGRAPHS) * 50, trainer=trainer)
    bpe.post_processor = processors.TemplateProcessing(single=f'{bos} $A', pair=f'{bos} $A {bos} $B',
                                                       special_tokens=[(bos, bpe.token_to_id(bos))])
    return bpe


def train_llama3_tokenizer(vocab_size: int = 2000, n_lines: int = 2000) -> Any:
    """A Llama-3-style ``PreTrainedTokenizerFast`` (see the module docstring)."""
    from tokenizers import Regex, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    specials = ['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>']
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior='isolated', invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe = _train(specials, '<|begin_of_text|>', pre, vocab_size, n_lines)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token='<|begin_of_text|>', eos_token='<|eot_id|>',
                                  pad_token='<|end_of_text|>')
    tok.chat_template = LLAMA3_CHAT_TEMPLATE
    return tok


def train_mistral_tokenizer(vocab_size: int = 2000, n_lines: int = 2000) -> Any:
    """A Mistral-Instruct-style ``PreTrainedTokenizerFast`` (see the module docstring)."""
    from tokenizers import pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    specials = ['<unk>', '<s>', '</s>', '[INST]', '[/INST]']
    bpe = _train(specials, '<s>', pre_tokenizers.ByteLevel(add_prefix_space=False), vocab_size, n_lines)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token='<s>', eos_token='</s>', unk_token='<unk>',
                                  pad_token='</s>')
    tok.chat_template = MISTRAL_CHAT_TEMPLATE
    return tok
