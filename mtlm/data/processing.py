"""From text datasets to training examples, with `Dataset.map(batched=True, num_proc=...)` so that `datasets` caches
every step by fingerprint: a changed tokenizer or block size recomputes, an unchanged one reloads.

- corpora: tokenize, then pack into fixed blocks of `block_size` tokens (labels = input ids; the model shifts);
- prompt/target data: one example per sequence, labels -100 on the prompt (everything up to and including the last
  "=", as MLM's `make_loss_mask`) and, after collation, on padding.
"""

import os

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from ..errors import UsageError
from .shards import matched_whole, numpy_encoder
from .sources import require_text


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids straight from the Rust tokenizer (no offsets, no Python-side post-processing); a Python tokenizer
    (mtlm_byte's) encodes them itself."""
    if not tokenizer.is_fast:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    try:
        return [encoding.ids for encoding in tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    except Exception as error:  # tokenizers raises a bare Exception for text its vocabulary cannot encode
        if tokenizer.unk_token is not None:
            raise
        bad = next((text for text in texts if not _encodable(tokenizer, text)), texts[0])
        raise ValueError(
            f"The tokenizer cannot encode {bad[:60]!r}: it has no unknown token and this text holds characters "
            f"outside its vocabulary ({error}). Use a tokenizer built for this data (char, byte or bpe)."
        ) from None


def _encodable(tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    try:
        tokenizer(text, add_special_tokens=False)
    except Exception:
        return False
    return True


def _tokenize_batch(batch: dict, tokenizer: PreTrainedTokenizerBase, column: str, append_eos: bool) -> dict:
    texts = batch[column]
    encode = numpy_encoder(tokenizer)  # one id per byte or character: numpy decodes it, no tokenizer call
    specials = matched_whole(tokenizer)
    if encode is not None and not any(special in text for text in texts for special in specials):
        ids = [encode(text).astype(np.int32) for text in texts]
    else:
        ids = [np.asarray(sequence, dtype=np.int32) for sequence in _encode(tokenizer, texts)]
    if append_eos:
        ids = [np.append(sequence, np.int32(tokenizer.eos_token_id)) for sequence in ids]
    return {"input_ids": ids}


def tokenize(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    column: str = "text",
    append_eos: bool = False,
    num_proc: int | None = None,
) -> Dataset:
    """Token ids of every row's text. `append_eos` ends each row (document) with eos; leave it off for a corpus
    split into lines, whose rows join back into one running text."""
    require_text(dataset, column)
    return _map_with_tokenizer(
        dataset, _tokenize_batch, num_proc, "Tokenizing", tokenizer=tokenizer, column=column, append_eos=append_eos
    )


def _pack_batch(batch: pa.Table, block_size: int) -> pa.Table:
    # In Arrow throughout: the ids are one buffer, and blocks of it a fixed-size list over that buffer, with no
    # Python row ever built (several times faster than numpy rows converted back to Arrow).
    stream = batch.column("input_ids").combine_chunks().flatten()
    blocks = pa.FixedSizeListArray.from_arrays(stream.slice(0, len(stream) - len(stream) % block_size), block_size)
    return pa.table({"input_ids": blocks, "labels": blocks})


def pack(dataset: Dataset, block_size: int, num_proc: int | None = None, batch_size: int = 1000) -> Dataset:
    """Concatenate the token stream and cut it into blocks of `block_size` (the tail of each map batch that does not
    fill a block is dropped: at most block_size - 1 tokens per `batch_size` rows)."""
    if block_size <= 0:
        raise ValueError(f"block_size must be a positive number of tokens, got {block_size}.")
    return dataset.with_format("arrow").map(
        _pack_batch,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        fn_kwargs={"block_size": block_size},
        desc=f"Packing into blocks of {block_size}",
    ).with_format(None)


def check_block_size(block_size: int, config) -> None:
    """A block must fit the model's context when its positions are learned (RoPE models extrapolate, but training
    past `max_position_embeddings` still exceeds what the config promises)."""
    limit = config.max_position_embeddings
    if block_size > limit:
        raise UsageError(
            f"data.block_size={block_size} is larger than the model's context (max_position_embeddings={limit}): "
            f"set the block size to at most {limit}, or build the model with a longer context."
        )


def _prompt_target_batch(batch: dict, tokenizer: PreTrainedTokenizerBase, separator_id: int) -> dict:
    ids = _encode(tokenizer, batch["text"])
    labels = []
    for sequence in ids:
        if separator_id not in sequence:
            raise ValueError(f"An example has no answer separator (id {separator_id}): {tokenizer.decode(sequence)!r}")
        answer_start = sequence.index(separator_id) + 1
        labels.append([-100] * answer_start + sequence[answer_start:])
    return {"input_ids": ids, "labels": labels}


def tokenize_prompt_target(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase, separator: str = "=", num_proc: int | None = None
) -> Dataset:
    """One example per row of `text` (e.g. "<bos>554+456=1010<eos>"): loss only on the tokens after the first
    `separator` — a scratchpad's steps where there are any ("579+789="), the answer and eos."""
    require_text(dataset)
    separator_id = tokenizer.convert_tokens_to_ids(separator)
    if separator_id is None or separator_id == tokenizer.unk_token_id:
        raise ValueError(f"The tokenizer has no token {separator!r} to mark where the answer starts.")
    return _map_with_tokenizer(
        dataset, _prompt_target_batch, num_proc, "Tokenizing prompt/target pairs", tokenizer=tokenizer,
        separator_id=separator_id,
    )


def collator(tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = None) -> DataCollatorForSeq2Seq:
    """Pads input ids with the tokenizer's pad id (on its padding side, right for mtlm's tokenizers), labels with
    -100, and builds the attention mask."""
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token: set tokenizer.pad_token before batching.")
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, pad_to_multiple_of=pad_to_multiple_of)


class RandomPositionOffsets:
    """A collator whose batches read each row at positions shifted by a random offset in [0, max_positions - the
    row's length] (`position_ids`), so that every position is trained in every role (randomized positional encodings,
    Ruoss et al. 2023). A model with learned absolute positions otherwise finds a digit by where it sits, and learns
    each prompt layout (operand lengths) as its own problem, the rare ones from few rows. Offsets come from torch's
    global generator, which the Trainer seeds and saves in its checkpoints."""

    def __init__(self, collate, max_positions: int):
        self.collate, self.max_positions = collate, max_positions

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collate(features)
        mask = batch["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # counts real tokens, whichever side the padding is on
        room = (self.max_positions - mask.sum(-1)).clamp(min=0)
        offsets = (torch.rand(room.shape) * (room + 1)).long()
        # Padding past the context keeps the last position: it is never attended to and never a target.
        batch["position_ids"] = (positions + offsets[:, None]).clamp(max=self.max_positions - 1)
        return batch


def _map_with_tokenizer(dataset: Dataset, function, num_proc: int | None, desc: str, **fn_kwargs) -> Dataset:
    """`dataset.map` of a batched function that replaces every column."""
    if num_proc and num_proc > 1:
        # Forked workers each run the Rust tokenizer; its own thread pool must stay off there to avoid deadlocks.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return dataset.map(
        function,
        batched=True,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        fn_kwargs=fn_kwargs,
        desc=desc,
    )
