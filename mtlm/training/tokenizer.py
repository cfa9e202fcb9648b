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
    learns = kind in ("char", "bpe", "word")
    # A word vocabulary is learned from the training split only, so that held-out words are <unk> as PTB's are.
    splits = ["train"] if kind == "word" and "train" in texts else list(texts)
    corpus = ["".join(texts[split]["text"]) for split in splits] if learns else []
    return make_tokenizer(kind, corpus, spec.get("vocab_size"), spec.get("max_vocab"))
