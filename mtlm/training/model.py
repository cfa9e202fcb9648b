"""Step 4 of a run: the model config its model section describes, fitted to the tokenizer, and the model."""

import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils import is_flash_attn_2_available

from ..configuration.presets import PRESETS, preset_config
from ..errors import UsageError
from ..files import check_checkpoint_files
from . import run_config


def build_model_config(model: dict, tokenizer):
    """The model config of the run, with the tokenizer's size and special ids."""
    fields = {key: value for key, value in model.items() if key not in run_config.MODEL_SOURCE_KEYS}
    if "init_from" in model:
        config = AutoConfig.from_pretrained(model["init_from"], **fields)
        if config.vocab_size != len(tokenizer):
            raise UsageError(f"{model['init_from']} has vocab_size={config.vocab_size} but the tokenizer has "
                             f"{len(tokenizer)} ids: leave the tokenizer section out to use the checkpoint's own.")
        chunking_of(config.model_type, tokenizer, config.to_dict())
        return config
    model_type = PRESETS[model["preset"]].model_type if "preset" in model else model["model_type"]
    special = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id)
    if "vocab_size" in fields and fields["vocab_size"] != len(tokenizer):
        raise UsageError(
            f"model.vocab_size={fields['vocab_size']} does not fit the tokenizer's {len(tokenizer)} ids: drop "
            "model.vocab_size (it is taken from the tokenizer) or use the matching tokenizer."
        )
    fields = {**special, **chunking_of(model_type, tokenizer, fields), **fields, "vocab_size": len(tokenizer)}
    if "preset" in model:
        return preset_config(model["preset"], **fields)
    return AutoConfig.for_model(model["model_type"], **fields)


CHUNK_FIELDS = ("chunk_boundary", "max_chunk_bytes", "end_of_chunk_token_id")


def chunking_of(model_type: str, tokenizer, fields: dict) -> dict:
    """How an `mtlm_byte` model cuts chunks, as its tokenizer marks them; {} for the other families. A model field that
    disagrees with the tokenizer is an error."""
    if model_type != "mtlm_byte":
        return {}
    if not hasattr(tokenizer, "chunk_boundary"):
        raise UsageError("An mtlm_byte model reads bytes and chunk marks: set tokenizer.kind: byte_chunks (with "
                         "tokenizer.chunk_boundary: bpe or space).")
    chunking = dict(chunk_boundary=tokenizer.chunk_boundary, max_chunk_bytes=tokenizer.max_chunk_bytes,
                    end_of_chunk_token_id=tokenizer.end_of_chunk_token_id)
    for key, value in chunking.items():
        if key in fields and fields[key] != value:
            raise UsageError(f"model.{key}={fields[key]!r} disagrees with the tokenizer's {value!r}: the tokenizer "
                             f"marks the chunks, so drop model.{key} (and set tokenizer.{key}, where the tokenizer has it).")
    return chunking


def check_attention(config) -> None:
    """FlashAttention-2 runs only on a CUDA GPU with flash-attn installed: say so before anything is built."""
    if config._attn_implementation == "flash_attention_2" and not (torch.cuda.is_available()
                                                                    and is_flash_attn_2_available()):
        raise UsageError("model.attn_implementation = 'flash_attention_2' needs a CUDA GPU and flash-attn (pip "
                         "install 'mtlm[cuda]'); this machine has "
                         f"{'no CUDA GPU' if not torch.cuda.is_available() else 'no flash-attn'}. Choose sdpa (the "
                         "default), eager or flex_attention.")


def build_model(config, init_from: str | None = None):
    """A freshly initialised model, or the weights of `init_from` under `config`, which must then fit them exactly."""
    check_attention(config)
    if not init_from:
        return AutoModelForCausalLM.from_config(config)
    check_checkpoint_files(init_from)
    model, info = AutoModelForCausalLM.from_pretrained(init_from, config=config, output_loading_info=True)
    problems = {kind: names for kind, names in info.items() if kind != "error_msgs" and names}
    if problems:
        raise UsageError(f"The model section changes the shape of {init_from}'s weights ({problems}): set only fields "
                         "that keep every weight's shape (dropout, initializer_range, ...), or grow it with mtlm grow.")
    return model
