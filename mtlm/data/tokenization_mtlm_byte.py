"""The tokenizer of `mtlm_byte`: one id per UTF-8 byte (id = byte value), then <pad> 256, <bos> 257, <eos> 258 and
<eoc> 259, the mark that ends a chunk.

With `chunk_boundary="bpe"` the text is cut where a subword tokenizer (any `tokenizers` JSON, STLM used GPT-2's)
cuts it, and every chunk is followed by <eoc>; a chunk longer than `max_chunk_bytes - 1` bytes is split into pieces
that are each followed by <eoc>, so nothing is truncated. With `chunk_boundary="space"` the ids are the bytes alone:
the model ends a chunk after every space-like byte itself.

Text is encoded with "surrogateescape": bytes that are not valid UTF-8, read with
`raw.decode("utf-8", "surrogateescape")`, encode as themselves and decode back to the same string. Decoding drops
<eoc>. This file travels into checkpoint folders and imports only transformers and tokenizers.
"""

import os
import re

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.tokenization_python import AddedToken

BYTE_TO_SYMBOL = bytes_to_unicode()
SYMBOL_TO_BYTE = {symbol: byte for byte, symbol in BYTE_TO_SYMBOL.items()}
END_OF_CHUNK = "<eoc>"
# The lone surrogates that "surrogateescape" makes of bytes that are not UTF-8: the boundary tokenizer cannot read
# them, so each run of them becomes chunks of its own.
_ESCAPED_BYTES = re.compile("[\udc80-\udcff]+")


class MtlmByteTokenizer(PreTrainedTokenizer):
    """Bytes and chunk marks for `mtlm_byte`.

    boundary_file: a `tokenizers` JSON whose tokens are the chunks (`chunk_boundary="bpe"`); `boundary_tokenizer` is
        the same as an object. Saved as boundary_tokenizer.json.
    chunk_boundary: "bpe" (marks from the boundary tokenizer) or "space" (no marks: the model cuts after spaces).
    max_chunk_bytes: the model's chunk length; a chunk holds at most max_chunk_bytes - 1 bytes and its mark.
    """

    vocab_files_names = {"boundary_file": "boundary_tokenizer.json"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        boundary_file: str | None = None,
        chunk_boundary: str = "bpe",
        max_chunk_bytes: int = 12,
        boundary_tokenizer: Tokenizer | None = None,
        pad_token: str = "<pad>",
        bos_token: str = "<bos>",
        eos_token: str = "<eos>",
        eoc_token: str = END_OF_CHUNK,
        **kwargs,
    ):
        if chunk_boundary not in ("bpe", "space"):
            raise ValueError(f"chunk_boundary={chunk_boundary!r} is not supported; choose 'bpe' or 'space'.")
        if not isinstance(max_chunk_bytes, int) or max_chunk_bytes < 2:
            raise ValueError(f"max_chunk_bytes={max_chunk_bytes!r} must be at least 2: a chunk holds a byte and the "
                             "mark that ends it.")
        if boundary_tokenizer is None and boundary_file is not None:
            boundary_tokenizer = Tokenizer.from_file(boundary_file)
        if chunk_boundary == "bpe" and boundary_tokenizer is None:
            raise ValueError("chunk_boundary='bpe' cuts text where a subword tokenizer cuts it, and none was given: "
                             "pass boundary_file (a tokenizers JSON, e.g. a BPE trained on the training text) or "
                             "use chunk_boundary='space'.")
        self.chunk_boundary = chunk_boundary
        self.max_chunk_bytes = max_chunk_bytes
        self.boundary_tokenizer = boundary_tokenizer if chunk_boundary == "bpe" else None
        specials = [pad_token, bos_token, eos_token, eoc_token]
        self._added_tokens_decoder = {
            256 + index: AddedToken(token, special=True, normalized=False) if isinstance(token, str) else token
            for index, token in enumerate(specials)
        }
        defaults = {"extra_special_tokens": {"eoc_token": eoc_token}, "clean_up_tokenization_spaces": False}
        super().__init__(pad_token=pad_token, bos_token=bos_token, eos_token=eos_token, chunk_boundary=chunk_boundary,
                         max_chunk_bytes=max_chunk_bytes, **{**defaults, **kwargs})

    @property
    def vocab_size(self) -> int:
        return 256

    @property
    def end_of_chunk_token_id(self) -> int:
        return self.convert_tokens_to_ids(END_OF_CHUNK)

    def get_vocab(self) -> dict[str, int]:
        vocab = {symbol: byte for byte, symbol in BYTE_TO_SYMBOL.items()}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        if self.chunk_boundary == "space":
            return self._symbols(text)
        tokens = []
        for chunk in self._chunks(text):
            symbols = self._symbols(chunk)
            for start in range(0, len(symbols), self.max_chunk_bytes - 1):
                tokens += symbols[start: start + self.max_chunk_bytes - 1] + [END_OF_CHUNK]
        return tokens

    def _chunks(self, text: str) -> list[str]:
        """The pieces of `text` the boundary tokenizer cuts it into (text between its tokens is a piece too, and
        tokens that share characters, as byte-level tokens of one character do, merge)."""
        chunks, position = [], 0
        for escaped in _ESCAPED_BYTES.finditer(text):
            chunks += self._subwords(text[position: escaped.start()]) + [escaped.group()]
            position = escaped.end()
        return chunks + self._subwords(text[position:])

    def _subwords(self, text: str) -> list[str]:
        if not text:
            return []
        cuts = {0, len(text)}
        for start, end in self.boundary_tokenizer.encode(text, add_special_tokens=False).offsets:
            cuts.update((start, end))
        cuts = sorted(cuts)
        return [text[start:end] for start, end in zip(cuts, cuts[1:])]

    @staticmethod
    def _symbols(text: str) -> list[str]:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as error:
            raise ValueError(f"The text holds {text[error.start:error.end]!r}, a lone surrogate that is no byte: "
                             "read bytes that are not UTF-8 with raw.decode('utf-8', 'surrogateescape').") from None
        return [BYTE_TO_SYMBOL[byte] for byte in raw]

    def _convert_token_to_id(self, token: str) -> int:
        return SYMBOL_TO_BYTE[token]

    def _convert_id_to_token(self, index: int) -> str:
        return BYTE_TO_SYMBOL[index]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        pieces, raw = [], bytearray()
        for token in tokens:
            if token in SYMBOL_TO_BYTE:
                raw.append(SYMBOL_TO_BYTE[token])
            elif token != END_OF_CHUNK:  # a mark may split a character's bytes: it never ends a run of them
                pieces += [raw.decode("utf-8", "surrogateescape"), token]
                raw = bytearray()
        return "".join(pieces) + raw.decode("utf-8", "surrogateescape")

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        if self.boundary_tokenizer is None:
            return ()
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") +
                            self.vocab_files_names["boundary_file"])
        partial = path + ".partial"
        with open(partial, "w", encoding="utf-8") as file:
            file.write(self.boundary_tokenizer.to_str())
        os.replace(partial, path)
        return (path,)


MtlmByteTokenizer.register_for_auto_class("AutoTokenizer")

__all__ = ["MtlmByteTokenizer"]
