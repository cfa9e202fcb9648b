"""Corpora larger than memory: a folder of text, JSONL or parquet shards of any size, tokenized once, in parallel
worker processes that each hold one piece of a few MB, into a single file of token ids that later runs reuse (found
by the shards' names, sizes and times and the tokenizer). Training reads its blocks from that file through a memory
map, so neither the text nor the ids are ever loaded whole.

Text shards are running text, each file a document; JSONL and parquet shards hold one document per row in a "text"
field. Every document ends with the tokenizer's eos where it has one. Byte and character vocabularies are decoded
with numpy (one id per byte or character needs no tokenizer call); other tokenizers run their Rust `encode_batch`.
"""

import hashlib
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from datasets import config as datasets_config
from filelock import FileLock
from tqdm.auto import tqdm
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ..errors import UsageError
from ..files import staged
from .sources import line_pieces

SHARD_FORMATS = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".parquet": "parquet"}
PIECE_BYTES = 8 << 20  # text handed to one worker at a time
SAMPLE_BYTES = 16 << 20  # text a learned vocabulary (char, bpe, word) is trained on
STORE_VERSION = 1


def shard_files(folder: str | os.PathLike) -> tuple[list[Path], str]:
    """The shards of `folder` (every file below it, hidden ones aside, in name order) and their format; a UsageError
    for a folder with no readable shard, or with files of another or of mixed formats."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"data.path {folder} is not a folder: data.source: shards reads a folder of .txt, .jsonl or "
                         ".parquet files (for one file use data.source: text or files).")
    files = sorted(path for path in folder.rglob("*") if path.is_file()
                   and not any(part.startswith(".") for part in path.relative_to(folder).parts))
    by_format: dict[str, list[Path]] = {}
    for path in files:
        by_format.setdefault(SHARD_FORMATS.get(path.suffix.lower(), path.suffix or "no suffix"), []).append(path)
    if len(by_format) > 1:
        counts = ", ".join(f"{len(paths)} {kind} ({paths[0].name}, ...)" for kind, paths in by_format.items())
        raise UsageError(f"{folder} mixes formats: {counts}. A shard folder holds one format (.txt, .jsonl or "
                         ".parquet): move the others out.")
    readable = [path for path in files if path.stat().st_size > 0]
    if not readable or next(iter(by_format)) not in SHARD_FORMATS.values():
        found = f"only {', '.join(path.name for path in files[:3])}" if files else "nothing"
        raise UsageError(f"{folder} holds no readable shard ({found}): put non-empty .txt, .jsonl or .parquet files "
                         "in it.")
    return readable, next(iter(by_format))


def _pieces(files: list[Path], kind: str) -> list[tuple[str, int, int]]:
    """Work items: (file, start, stop) byte ranges of about PIECE_BYTES (whole lines once read), or for parquet
    (file, row group, -1)."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        return [(str(path), group, -1) for path in files for group in range(pq.ParquetFile(path).num_row_groups)]
    return [(str(path), start, min(start + PIECE_BYTES, path.stat().st_size)) for path in files
            for start in range(0, path.stat().st_size, PIECE_BYTES)]


def _line_range(path: str, start: int, stop: int) -> tuple[int, bytes]:
    """Where they begin, and the whole lines that begin in [start, stop) of the file (a line belongs to the piece its
    first byte is in)."""
    with open(path, "rb") as handle:
        if start > 0:
            handle.seek(start - 1)
            handle.readline()  # the line that began before `start` belongs to the previous piece
        begin = handle.tell()
        if begin >= stop:
            return begin, b""
        data = handle.read(stop - begin)
        return begin, data + (handle.readline() if not data.endswith(b"\n") else b"")


def _documents(piece: tuple[str, int, int], kind: str) -> Iterator[tuple[str, bool]]:
    """(text, ends a document) for one piece."""
    path, start, stop = piece
    if kind == "parquet":
        import pyarrow.parquet as pq

        shard = pq.ParquetFile(path)
        if "text" not in shard.schema_arrow.names:
            raise UsageError(f"{path} has no 'text' column: shards hold their documents in a text column.")
        for text in shard.read_row_group(start, columns=["text"]).column("text").to_pylist():
            yield text or "", True
        return
    begin, data = _line_range(path, start, stop)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"{path} is not UTF-8 text (byte {begin + error.start:,}): convert it to UTF-8.") from None
    if kind == "text":
        yield text, stop >= os.path.getsize(path)
        return
    for number, line in enumerate(text.split("\n")):  # JSON strings may hold U+2028 and the like raw: not splitlines
        if line.strip():
            try:
                document = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError):
                document = None
            if not isinstance(document, str):
                raise UsageError(f"{path}: a line in bytes {start:,}-{stop:,} (line {number + 1} of that piece) is "
                                 f"not a JSON object with a string 'text' field: {line[:80]!r}")
            yield document, True


def numpy_encoder(tokenizer) -> Callable[[str], np.ndarray] | None:
    """An encoder that decodes text with numpy where the tokenizer has one id per byte (mtlm's byte kind) or per
    character (its char kind), else None. Text that spells a special token goes to the tokenizer itself."""
    if not tokenizer.is_fast:
        return None
    structure = json.loads(tokenizer.backend_tokenizer.to_str())
    model = structure["model"]
    if model["type"] != "BPE" or model.get("merges") or structure.get("normalizer"):
        return None
    vocab, pre = model["vocab"], structure.get("pre_tokenizer")
    if pre and pre.get("type") == "ByteLevel" and not pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        symbols = bytes_to_unicode()
        if not all(symbols[byte] in vocab for byte in range(256)):
            return None
        table = np.array([vocab[symbols[byte]] for byte in range(256)], dtype=np.int64)
        return lambda text: table[np.frombuffer(text.encode("utf-8"), np.uint8)]
    if pre is not None or not all(len(token) == 1 for token in vocab if token not in tokenizer.all_special_tokens):
        return None
    characters = {token: index for token, index in vocab.items() if len(token) == 1}
    unknown = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else -1
    table = np.full(max(256, max(map(ord, characters)) + 1), unknown, dtype=np.int64)
    for character, index in characters.items():
        table[ord(character)] = index

    def encode(text: str) -> np.ndarray:
        if text.isascii():  # one byte a character: a quarter of the memory traffic, and every code is in the table
            ids = table[np.frombuffer(text.encode("ascii"), np.uint8)]
        else:
            codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
            ids = np.full(len(codes), unknown, dtype=np.int64)
            known = codes < len(table)
            ids[known] = table[codes[known]]
        if unknown < 0 and (ids < 0).any():
            bad = text[int(np.argmax(ids < 0))]
            raise UsageError(f"The tokenizer cannot encode {bad!r}: it has no unknown token. Use a tokenizer built "
                             "for this corpus.")
        return ids

    return encode


def matched_whole(tokenizer) -> list[str]:
    """The tokens a tokenizer finds whole in text (special or added ones): text spelling one goes to the tokenizer."""
    return [token for token in {*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()} if token]


_worker: dict = {}


def _start_worker(tokenizer, kind: str, dtype: str, folder: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # a forked worker must not start the Rust thread pool
    _worker.update(tokenizer=tokenizer, kind=kind, dtype=dtype, folder=folder, fast=numpy_encoder(tokenizer),
                   specials=matched_whole(tokenizer))


def _encode_piece(numbered: tuple[int, tuple[str, int, int]]) -> int:
    """Tokenize one piece into the part file named by its number; returns its token count."""
    number, piece = numbered
    tokenizer, eos = _worker["tokenizer"], _worker["tokenizer"].eos_token_id
    arrays = []
    for text, ends_document in _documents(piece, _worker["kind"]):
        if _worker["fast"] is not None and not any(special in text for special in _worker["specials"]):
            arrays.append(_worker["fast"](text))
        elif text and tokenizer.is_fast:  # in pieces of whole lines: the Rust tokenizer is faster on those
            for encoding in tokenizer.backend_tokenizer.encode_batch_fast(line_pieces(text), add_special_tokens=False):
                arrays.append(np.asarray(encoding.ids, dtype=np.int64))
        elif text:  # a Python tokenizer (mtlm_byte's)
            arrays.append(np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64))
        if ends_document and eos is not None:
            arrays.append(np.array([eos], dtype=np.int64))
    ids = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    ids.astype(_worker["dtype"]).tofile(os.path.join(_worker["folder"], f"part-{number:08d}.bin"))
    return len(ids)


def store_key(files: list[Path], tokenizer) -> str:
    """What a token store depends on: the shards (names, sizes, modification times) and the tokenizer."""
    digest = hashlib.sha256(f"mtlm-tokens-{STORE_VERSION}".encode())
    for path in files:
        status = path.stat()
        digest.update(f"{path.resolve()}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    vocabulary = tokenizer.backend_tokenizer.to_str() if tokenizer.is_fast else json.dumps(tokenizer.get_vocab(),
                                                                                          sort_keys=True)
    digest.update(vocabulary.encode())
    digest.update(f"eos={tokenizer.eos_token_id}".encode())
    return digest.hexdigest()[:24]


def token_store(folder: str | os.PathLike, tokenizer, num_proc: int | None = None,
                cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding tokens.bin (the corpus's ids, in shard order) and index.json for the shards in `folder`
    and this tokenizer: built on first use by `num_proc` processes (default: every core), reused afterwards."""
    files, kind = shard_files(folder)
    cache = Path(cache_dir or Path(datasets_config.HF_DATASETS_CACHE) / "mtlm-tokens")
    store = cache / store_key(files, tokenizer)
    if (store / "index.json").is_file():
        return store
    cache.mkdir(parents=True, exist_ok=True)
    # One builder per store: another run (another node sharing the cache) waits here, then finds the store built.
    with FileLock(cache / f".{store.name}.lock"):
        if not (store / "index.json").is_file():
            for leftover in cache.glob(f".{store.name}.partial-*"):  # of a build that was killed
                shutil.rmtree(leftover, ignore_errors=True)
            _build_store(store, files, kind, tokenizer, num_proc, folder)
    return store


def _build_store(store: Path, files: list[Path], kind: str, tokenizer, num_proc: int | None, folder) -> None:
    dtype = "uint16" if len(tokenizer) <= 1 << 16 else "uint32"
    pieces = list(enumerate(_pieces(files, kind)))
    workers = max(1, min(num_proc or os.cpu_count() or 1, len(pieces)))
    with staged(store, folder=True) as staging:
        parts = staging / "parts"
        parts.mkdir()
        progress = tqdm(total=sum(os.path.getsize(path) for path in files), unit="B", unit_scale=True,
                        desc=f"Tokenizing {len(files)} shard{'s' * (len(files) > 1)} of {folder}")
        arguments = (tokenizer, kind, dtype, str(parts))
        if workers == 1:
            _start_worker(*arguments)
            counts = [_advance(progress, piece, _encode_piece(piece)) for piece in pieces]
        else:
            with multiprocessing.get_context("fork").Pool(workers, _start_worker, arguments) as pool:
                counts = [_advance(progress, piece, count)
                          for piece, count in zip(pieces, pool.imap(_encode_piece, pieces))]
        progress.close()
        with open(staging / "tokens.bin", "wb") as tokens:
            for number, _ in pieces:
                part = parts / f"part-{number:08d}.bin"
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, tokens, 16 << 20)
                part.unlink()
        parts.rmdir()
        total = sum(counts)
        if total == 0:
            raise UsageError(f"The shards in {folder} hold no text to tokenize.")
        index = {"version": STORE_VERSION, "tokens": total, "dtype": dtype, "shards": [str(path) for path in files],
                 "bytes": sum(path.stat().st_size for path in files)}
        (staging / "index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")


def _advance(progress, piece: tuple[int, tuple[str, int, int]], count: int) -> int:
    path, start, stop = piece[1]
    if stop < 0:  # a parquet row group: its share of the file
        import pyarrow.parquet as pq

        progress.update(os.path.getsize(path) // pq.ParquetFile(path).num_row_groups)
    else:
        progress.update(stop - start)
    return count


def sample_text(folder: str | os.PathLike, limit: int = SAMPLE_BYTES) -> list[str]:
    """The first `limit` bytes' worth of documents of the shards, for a tokenizer that learns its vocabulary."""
    files, kind = shard_files(folder)
    texts, size = [], 0
    for piece in _pieces(files, kind):
        for text, _ in _documents(piece, kind):
            texts.append(text)
            size += len(text)
            if size >= limit:
                return texts
    return texts


class TokenBlocks(torch.utils.data.Dataset):
    """Consecutive blocks of `block_size` ids of a token store, between token `start` and `stop`, read through a
    memory map (opened in each process that reads it, so that data-loader workers share the file, not a copy)."""

    def __init__(self, store: str | os.PathLike, block_size: int, start: int, stop: int):
        self.store, self.block_size, self.start = Path(store), block_size, start
        self.index = json.loads((self.store / "index.json").read_text(encoding="utf-8"))
        self.count = (stop - start) // block_size
        self._tokens = None

    def rows(self) -> np.ndarray:
        """The blocks as a (blocks, block_size) memory-mapped array: nothing is read until indexed."""
        if self._tokens is None:
            self._tokens = np.memmap(self.store / "tokens.bin", dtype=self.index["dtype"], mode="r")
        end = self.start + self.count * self.block_size
        return self._tokens[self.start:end].reshape(self.count, self.block_size)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        ids = self.rows()[index].astype(np.int64).tolist()
        return {"input_ids": ids, "labels": ids}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}


class ShuffledBlocks(torch.utils.data.Sampler):
    """Every block once per epoch, in an order fixed by the seed and the epoch (so that every data-parallel process,
    and a run resumed inside an epoch, draws the same one; accelerate calls set_epoch), handed out in chunks: torch's
    RandomSampler turns the whole permutation into one Python list, 36 bytes a block, where this holds 4."""

    def __init__(self, count: int, seed: int):
        self.count, self.seed, self.epoch = count, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.count, generator=generator, dtype=torch.int32 if self.count < 2**31 else
                               torch.int64)
        for chunk in order.split(1 << 16):
            yield from chunk.tolist()


def shard_splits(store: Path, fractions: dict[str, float], block_size: int) -> dict[str, TokenBlocks]:
    """The token stream cut into contiguous splits by `fractions` ({"train": 0.99, "validation": 0.01}), in order."""
    total = json.loads((store / "index.json").read_text(encoding="utf-8"))["tokens"]
    splits, start, cumulative = {}, 0, 0.0
    for name, fraction in fractions.items():
        cumulative += fraction
        stop = total if abs(cumulative - 1.0) < 1e-9 else int(cumulative * total)
        splits[name] = TokenBlocks(store, block_size, start, stop)
        if len(splits[name]) == 0:
            raise UsageError(f"The {name} split ({fraction:g} of {total:,} tokens) holds no block of {block_size} "
                             "tokens: give it a larger fraction, or use a larger corpus.")
        start = stop
    return splits
