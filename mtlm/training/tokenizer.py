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
    corpus = ["".join(texts[split]["text"]) for split in texts] if kind in ("char", "bpe") else []
    return make_tokenizer(kind, corpus, spec.get("vocab_size"))
