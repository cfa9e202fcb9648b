"""Text sources as `datasets.DatasetDict`s with a "text" column: the bundled Tiny Shakespeare, local text / JSONL /
parquet files, and Hub datasets. Everything goes through `datasets.load_dataset`, so later `map` steps are cached
by fingerprint."""

import hashlib
import os
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

from ..files import read_json, read_jsonl, read_text

TINY_SHAKESPEARE = Path(__file__).parent / "corpora" / "tinyshakespeare.txt"
LOCAL_FORMATS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def line_pieces(text: str, size: int = 1 << 16) -> list[str]:
    """`text` cut after the first line break past every `size` characters: rows large enough that tokenizing them
    is bound by the Rust tokenizer, and many enough to share among workers."""
    pieces, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        pieces.append(text[start:end])
        start = end
    return pieces


def contiguous_splits(path: str | os.PathLike, fractions: dict[str, float]) -> DatasetDict:
    """Split one text file by characters into contiguous parts, in order: {"train": 0.9, "validation": 0.1} takes
    the first 90% of the characters for training and the rest for validation. Each split holds its part in pieces of
    whole lines, so concatenating a split's rows gives its exact text."""
    if abs(sum(fractions.values()) - 1.0) > 1e-9 or any(f <= 0 for f in fractions.values()):
        raise ValueError(f"Split fractions must be positive and sum to 1, got {fractions}.")
    document = _load_local(path, sample_by="document")["train"]
    length = len(document[0]["text"])
    splits, start, cumulative = {}, 0, 0.0
    for name, fraction in fractions.items():
        cumulative += fraction
        end = length if abs(cumulative - 1.0) < 1e-9 else int(cumulative * length)
        splits[name] = document.map(
            lambda batch, start=start, end=end: {"text": [p for text in batch["text"] for p in line_pieces(text[start:end])]},
            batched=True,
            desc=f"{name} characters {start:,}-{end:,}",
        )
        start = end
    return DatasetDict(splits)


def _load_local(path: str | os.PathLike, sample_by: str = "line") -> DatasetDict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No data file at {path}: pass an existing .txt, .jsonl or .parquet file.")
    if path.stat().st_size == 0:
        raise ValueError(f"The data file {path} is empty.")
    builder = LOCAL_FORMATS.get(path.suffix)
    if builder is None:
        raise ValueError(f"Cannot tell the format of {path}: use a {', '.join(LOCAL_FORMATS)} file.")
    if builder == "text":
        # datasets' text builder reads with universal newlines (\r\n becomes \n); these rows are the file's exact
        # text. The digest of the bytes keys datasets' cache, so an edited file is read again.
        digest = hashlib.sha256(read_text(path, "data file").encode()).hexdigest()  # names a non-UTF-8 file
        rows = Dataset.from_generator(_text_rows, gen_kwargs={"path": str(path), "sample_by": sample_by,
                                                              "digest": digest})
        return DatasetDict({"train": rows})
    try:
        return load_dataset(builder, data_files=str(path))
    except Exception as error:  # datasets wraps the parser's error; name the file, the line and the problem
        if builder == "json":
            read_jsonl(path, "data file") if path.suffix == ".jsonl" else read_json(path, "data file")
        raise ValueError(f"{path} cannot be read as {builder}: {error.__cause__ or error}") from None


def _text_rows(path: str, sample_by: str, digest: str):
    """The text file as one row ("document") or a row per line, line endings kept as they are."""
    text = read_text(path, "data file")  # names a file that is not UTF-8
    for row in [text] if sample_by == "document" else text.splitlines(keepends=True):
        yield {"text": row}


def load_local_files(files: dict[str, str | os.PathLike]) -> DatasetDict:
    """One split per file, e.g. {"train": "train.jsonl", "validation": "val.jsonl"} (text, JSONL or parquet)."""
    return DatasetDict({split: _load_local(path)["train"] for split, path in files.items()})


def load_hub_dataset(name: str, config: str | None = None, splits: dict[str, str] | None = None) -> DatasetDict:
    """A dataset from the Hugging Face Hub (needs the network, or the datasets cache), renaming its splits by
    `splits` ({our name: its split}, default: as they are)."""
    loaded = load_dataset(name, config)
    if splits is None:
        return loaded
    missing = [their for their in splits.values() if their not in loaded]
    if missing:
        raise ValueError(f"{name} has no split(s) {missing}; it has {list(loaded)}.")
    return DatasetDict({ours: loaded[their] for ours, their in splits.items()})


def tiny_shakespeare(train_fraction: float = 0.9) -> DatasetDict:
    """The bundled Tiny Shakespeare (karpathy/char-rnn, public domain): the first `train_fraction` of the characters
    for training, the rest for validation."""
    return contiguous_splits(TINY_SHAKESPEARE, {"train": train_fraction, "validation": 1.0 - train_fraction})


def require_text(dataset: Dataset, column: str = "text") -> None:
    if column not in dataset.column_names:
        raise ValueError(f"The dataset has no {column!r} column (it has {dataset.column_names}): name the text column.")
