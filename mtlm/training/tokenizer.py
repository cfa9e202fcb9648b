"""Step 2 of a run: the tokenizer its tokenizer section describes."""

from datasets import DatasetDict
from transformers import AutoTokenizer

from ..data.tokenization import make_tokenizer


def build_tokenizer(spec: dict, texts: DatasetDict, init_from: str | None = None):
    """The tokenizer the tokenizer section describes; with no section, a run that starts from a checkpoint uses the
    checkpoint's."""
    if init_from and not spec:
        return AutoTokenizer.from_pretrained(init_from)
    kind = spec.get("kind", "char")
    if kind == "pretrained":
        return AutoTokenizer.from_pretrained(spec["path"])
    learns = kind in ("char", "bpe", "word") or (kind == "byte_chunks" and spec.get("chunk_boundary", "bpe") == "bpe"
                                                and "path" not in spec)
    # A word vocabulary is learned from the training split only, so that held-out words are <unk> as PTB's are; chunk
    # boundaries too, so that held-out text is cut by rules it did not shape.
    splits = ["train"] if kind in ("word", "byte_chunks") and "train" in texts else list(texts)
    corpus = ["".join(texts[split]["text"]) for split in splits] if learns else []
    if kind == "byte_chunks":
        chunking = {key: spec[key] for key in ("chunk_boundary", "max_chunk_bytes") if key in spec}
        return make_tokenizer(kind, corpus, spec.get("vocab_size"), boundary_path=spec.get("path"), **chunking)
    return make_tokenizer(kind, corpus, spec.get("vocab_size"), spec.get("max_vocab"))
