"""The tokenizers mtlm trains with, each a `PreTrainedTokenizerFast` over a plain `tokenizers` JSON, so that
`AutoTokenizer.from_pretrained(folder)` loads them anywhere, without mtlm and without remote code.

- arithmetic: MLM's 18 ids (<pad> 0, <bos> 1, <eos> 2, digits 3-12, + - * / 13-16, = 17);
- byte: one id per UTF-8 byte (0-255), then the specials; lossless for any text;
- char: one id per character of a corpus, plus specials and <unk>;
- bpe: byte-level BPE trained with tokenizers' BpeTrainer;
- word: words and punctuation marks (line breaks are words too), the most frequent up to a cap, <unk> for the rest;
- byte_chunks: `mtlm_byte`'s bytes and end-of-chunk marks (`MtlmByteTokenizer`, which travels as remote code), with
  chunk boundaries from a BPE trained on the corpus, from a tokenizer folder, or after spaces.
"""

import os
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ..errors import UsageError
from ..files import read_text
from .tokenization_mtlm_byte import MtlmByteTokenizer

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
ARITHMETIC_SYMBOLS = [str(digit) for digit in range(10)] + ["+", "-", "*", "/", "="]
_EACH_CHARACTER = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
# Words, punctuation marks and line breaks, each a token of its own; spaces go. `<unk>` (in PTB's text) stays whole.
_WORDS = pre_tokenizers.Split(Regex(rf"{UNK}|\w+|[^\w\s]|\n"), behavior="removed", invert=True)


def _wrap(tokenizer: Tokenizer, unk: bool = False) -> PreTrainedTokenizerFast:
    """Give a `tokenizers` object the transformers interface, with mtlm's special tokens."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK if unk else None,
        clean_up_tokenization_spaces=False,
    )


def arithmetic_tokenizer() -> PreTrainedTokenizerFast:
    """MLM's synthetic-arithmetic vocabulary, ids exactly as the seed fixes them. It has no unknown token: text with
    other characters fails to encode."""
    vocab = {token: index for index, token in enumerate([PAD, BOS, EOS, *ARITHMETIC_SYMBOLS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tokenizer.pre_tokenizer = _EACH_CHARACTER
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([PAD, BOS, EOS])
    return _wrap(tokenizer)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One id per UTF-8 byte (id = byte value), then <pad>, <bos>, <eos>. Every text round-trips."""
    # ByteLevel stands each byte for a printable character (GPT-2's map); the id of that character is the byte.
    vocab = {symbol: byte for byte, symbol in bytes_to_unicode().items()}
    tokenizer = Tokenizer(models.BPE(vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([PAD, BOS, EOS])
    return _wrap(tokenizer)


def char_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """<pad>, <bos>, <eos>, <unk>, then every character of `texts` in sorted order."""
    characters = set()
    for text in texts:
        characters.update(text)
    if not characters:
        raise ValueError("The corpus is empty: a character tokenizer needs at least one character of text.")
    vocab = {token: index for index, token in enumerate([PAD, BOS, EOS, UNK, *sorted(characters)])}
    # A BPE model without merges is a character vocabulary; with no pre-tokenizer it reads each text as one run of
    # characters, which the Rust side does several times faster than splitting every character apart.
    tokenizer = Tokenizer(models.BPE(vocab, merges=[], unk_token=UNK))
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([PAD, BOS, EOS, UNK])
    return _wrap(tokenizer, unk=True)


def bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2's scheme) trained on `texts` with `tokenizers`' trainer. Every text round-trips."""
    minimum = 256 + 3
    if vocab_size < minimum:
        raise UsageError(f"vocab_size={vocab_size} is too small for byte-level BPE: it needs at least {minimum} "
                         "(256 bytes and 3 special tokens).")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return _wrap(tokenizer)


def word_tokenizer(texts: Iterable[str], max_vocab: int) -> PreTrainedTokenizerFast:
    """<pad>, <bos>, <eos>, <unk>, then the most frequent words and punctuation marks of `texts`, `max_vocab` ids in
    all; any other word is <unk>, as PTB's own `<unk>` is. Decoding joins the words with single spaces."""
    specials = [PAD, BOS, EOS, UNK]
    if max_vocab <= len(specials):
        raise UsageError(f"max_vocab={max_vocab} leaves no room for words: it counts the {len(specials)} special "
                         f"tokens too, so give more than {len(specials)} (Tiny-LM uses 10000).")
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = _WORDS
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins the words with spaces
    trainer = trainers.WordLevelTrainer(vocab_size=max_vocab, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # A word spelled as a special token (PTB's own <unk>) takes a second id in the trainer's vocabulary, leaving a
    # gap below len(vocabulary): number the tokens again, specials first.
    trained = tokenizer.get_vocab()
    ordered = specials + [token for token in sorted(trained, key=trained.get) if token not in specials]
    tokenizer.model = models.WordLevel({token: index for index, token in enumerate(ordered)}, unk_token=UNK)
    return _wrap(tokenizer, unk=True)


def byte_chunk_tokenizer(texts: Iterable[str], chunk_boundary: str = "bpe", max_chunk_bytes: int = 12,
                         vocab_size: int | None = None, boundary_path: str | None = None) -> MtlmByteTokenizer:
    """Bytes and chunk marks. With `chunk_boundary="bpe"` the chunks are the tokens of the tokenizer folder
    `boundary_path`, or else of a byte-level BPE of `vocab_size` (default 2048) trained on `texts`."""
    boundary = None
    if chunk_boundary == "bpe":
        boundary = (AutoTokenizer.from_pretrained(boundary_path) if boundary_path
                    else bpe_tokenizer(texts, vocab_size or 2048))
        if not boundary.is_fast:
            raise UsageError(f"{boundary_path} has no tokenizer.json: chunk boundaries come from a `tokenizers` "
                             "(fast) tokenizer; give a folder with one, or leave tokenizer.path out to train a BPE.")
        boundary = boundary.backend_tokenizer
    return MtlmByteTokenizer(boundary_tokenizer=boundary, chunk_boundary=chunk_boundary,
                             max_chunk_bytes=max_chunk_bytes)


def read_corpus(path: str | os.PathLike) -> str:
    """The exact text of a corpus file (line endings as they are), with a clear error for a missing, empty or
    non-UTF-8 one."""
    text = read_text(path, "corpus file")
    if not text:
        raise ValueError(f"The corpus {path} is empty: a tokenizer needs text to learn from.")
    return text


def make_tokenizer(kind: str, texts: Iterable[str] = (), vocab_size: int | None = None,
                   max_vocab: int | None = None, **chunking) -> PreTrainedTokenizerFast | MtlmByteTokenizer:
    """The tokenizer of `kind` ("arithmetic", "byte", "char", "bpe" with `vocab_size`, "word" with `max_vocab`, or
    "byte_chunks" with the arguments of `byte_chunk_tokenizer`); char, bpe, word and BPE-bounded byte_chunks learn
    from `texts`."""
    if kind == "arithmetic":
        return arithmetic_tokenizer()
    if kind == "byte":
        return byte_tokenizer()
    if kind == "char":
        return char_tokenizer(texts)
    if kind == "bpe":
        if vocab_size is None:
            raise ValueError("A bpe tokenizer needs a vocab_size.")
        return bpe_tokenizer(texts, vocab_size)
    if kind == "word":
        if max_vocab is None:
            raise UsageError("A word tokenizer needs max_vocab, the cap on its vocabulary (specials included).")
        return word_tokenizer(texts, max_vocab)
    if kind == "byte_chunks":
        return byte_chunk_tokenizer(texts, vocab_size=vocab_size, **chunking)
    raise ValueError(f"Unknown tokenizer kind {kind!r}: choose arithmetic, byte, byte_chunks, char, bpe or word.")
