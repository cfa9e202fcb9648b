"""Strided sliding-window perplexity (the method transformers documents), with per-byte and per-word figures that
compare models with different tokenizers.

Each document is tokenized whole and preceded by the tokenizer's bos (else eos), as lm-eval's rolling loglikelihood
does, so that its first token is predicted too. Windows of `max_length` inputs advance by `stride` tokens; a window
scores only the tokens no earlier window scored, with everything before them in the window as context. Every token
is scored exactly once; with `stride == max_length` the windows are lm-eval's `loglikelihood_rolling` windows.
"""

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import UsageError
from ..files import read_jsonl, read_text


def read_documents(path: str | Path, field: str = "text") -> list[str]:
    """A text file is one document; a .jsonl file holds one document per row, in `field`."""
    path = Path(path)
    if path.suffix != ".jsonl":
        return [read_text(path, "data file")]
    rows = read_jsonl(path, "data file")
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            found = f"its fields are {', '.join(row)}" if isinstance(row, dict) else "it is not a JSON object"
            raise ValueError(f"{path} row {number} has no text field {field!r} ({found}): pass --field NAME.")
    return [row[field] for row in rows]


def windows(num_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(input start, input end, tokens scored) per window over a sequence of `num_tokens` (prefix included), where
    logits at input position i predict token i + 1 and the last `tokens scored` predictions are counted."""
    spans = []
    scored_until = 1  # token 0 is the prefix
    while scored_until < num_tokens:
        end = min(scored_until + stride, num_tokens)  # score tokens [scored_until, end)
        start = max(0, end - 1 - max_length)
        spans.append((start, end - 1, end - scored_until))
        scored_until = end
    return spans


@torch.no_grad()
def sequence_nll(model, ids: list[int], spans: list[tuple[int, int, int]], batch_size: int = 8,
                 progress=None) -> float:
    """Summed negative log-likelihood (nats) of ids[1:] given what precedes each, over the `windows` `spans`."""
    sequence = torch.tensor(ids, device=model.device)
    total = 0.0
    for first in range(0, len(spans), batch_size):
        batch = spans[first : first + batch_size]
        width = max(end - start for start, end, _ in batch)
        inputs = torch.full((len(batch), width), ids[0], device=model.device)  # right padding never reaches the
        targets = torch.full((len(batch), width), -100, device=model.device)  # causal positions that are scored
        for row, (start, end, scored) in enumerate(batch):
            inputs[row, : end - start] = sequence[start:end]
            targets[row, end - start - scored : end - start] = sequence[end - scored + 1 : end + 1]
        logits = model(input_ids=inputs).logits.float()
        total += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum").item()
        if progress is not None:
            progress.update(len(batch))
    return total


def perplexity(model, tokenizer, documents: list[str], max_length: int | None = None, stride: int | None = None,
               batch_size: int = 8, show_progress: bool = True) -> dict:
    """Mean loss per token, token perplexity, bits per byte, byte and word perplexity (lm-eval's conventions: UTF-8
    bytes, words split on whitespace) over `documents`."""
    context = model.config.max_position_embeddings
    max_length = context if max_length is None else max_length
    stride = max(1, max_length // 2) if stride is None else stride
    if not 1 <= max_length <= context:
        raise UsageError(f"--max-length {max_length} must be between 1 and the model's context of {context} tokens.")
    if not 1 <= stride <= max_length:
        raise UsageError(f"--stride {stride} must be between 1 and --max-length {max_length}.")
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is None:
        raise ValueError("The tokenizer has neither a bos nor an eos token to start documents with.")
    encoded = [tokenizer(document, add_special_tokens=False)["input_ids"] for document in documents]
    num_tokens = sum(len(ids) for ids in encoded)
    if num_tokens < max_length:
        raise ValueError(f"The text has {num_tokens} tokens, fewer than one window of {max_length}: give a longer text "
                         "or a smaller --max-length.")
    was_training = model.training
    model.eval()
    spans = [windows(len(ids) + 1, max_length, stride) for ids in encoded]
    with tqdm(total=sum(map(len, spans)), desc="Perplexity windows", disable=not show_progress) as progress:
        nll = sum(sequence_nll(model, [prefix, *ids], document_spans, batch_size, progress)
                  for ids, document_spans in zip(encoded, spans) if ids)
    model.train(was_training)
    num_bytes = sum(len(document.encode("utf-8")) for document in documents)
    num_words = sum(len(re.split(r"\s+", document)) for document in documents)
    loss = nll / num_tokens
    return {
        "loss": loss,
        "token_perplexity": math.exp(loss),
        "bits_per_byte": nll / num_bytes / math.log(2),
        "byte_perplexity": math.exp(nll / num_bytes),
        "word_perplexity": math.exp(nll / num_words),
        "tokens": num_tokens,
        "bytes": num_bytes,
        "words": num_words,
        "documents": len(documents),
        "max_length": max_length,
        "stride": stride,
    }
