"""Steps 1 and 3 of a run: the text splits the data section names, and the training datasets made from them with
the run's tokenizer (packed blocks of text, or prompt/target rows)."""

from pathlib import Path

from datasets import Dataset, DatasetDict

from ..data import arithmetic
from ..data.processing import pack, tokenize, tokenize_prompt_target
from ..data.shards import sample_text, shard_splits, token_store
from ..data.sources import TINY_SHAKESPEARE, contiguous_splits, load_hub_dataset, load_local_files


def load_texts(data: dict) -> DatasetDict:
    """The text splits the data section names (a "text" column per split)."""
    source = data.get("source", "tinyshakespeare")
    if source in ("tinyshakespeare", "text"):
        path = TINY_SHAKESPEARE if source == "tinyshakespeare" else data["path"]
        return contiguous_splits(path, data.get("splits") or {"train": 0.9, "validation": 0.1})
    if source == "files":
        return load_local_files(data["files"])
    if source == "shards":  # the text a learned vocabulary is trained on; the corpus itself is read by build_datasets
        return DatasetDict({"train": Dataset.from_dict({"text": sample_text(data["path"])})})
    if source == "hub":
        return load_hub_dataset(data["name"], data.get("config"), data.get("splits"))
    settings = dict(data.get("arithmetic") or {})
    folder = Path(settings.pop("out_dir", "data/arithmetic"))
    arithmetic.ensure_splits(
        folder, n_samples=settings.get("n_samples", 70000), n_operands=settings.get("N", 2),
        low=settings.get("A", 0), high=settings.get("B", 999), ops=settings.get("ops", "+"),
        seed=settings.get("seed", 0), reverse=settings.get("reverse", False),
        division=settings.get("division", "reject"), scratchpad=settings.get("scratchpad", False),
    )
    return arithmetic.load_splits(folder)


def build_datasets(data: dict, texts: DatasetDict, tokenizer) -> dict:
    """The training examples of each split: packed blocks of a corpus, or prompt/target rows."""
    num_proc = data.get("num_proc")
    if data.get("source") == "shards":
        store = token_store(data["path"], tokenizer, num_proc, data.get("cache_dir"))
        return shard_splits(store, data.get("splits") or {"train": 0.99, "validation": 0.01},
                            data.get("block_size", 128))
    if data.get("source") == "arithmetic":
        return DatasetDict({split: tokenize_prompt_target(texts[split], tokenizer, num_proc=num_proc)
                            for split in texts})
    block_size = data.get("block_size", 128)
    return DatasetDict({split: pack(tokenize(texts[split], tokenizer, num_proc=num_proc), block_size,
                                    num_proc=num_proc) for split in texts})
