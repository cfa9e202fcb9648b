"""Weights both ways between the mtlm families and their upstream twins in transformers.

    mtlm_llama <-> LlamaForCausalLM    mtlm_gpt <-> GPT2LMHeadModel    mtlm_moe <-> MixtralForCausalLM

The two sides compute the same function, so logits agree to float rounding. Going upstream publishes a checkpoint
that needs no remote code; an mtlm option the upstream class cannot express raises a ValueError that names it.
"""

import os
import re
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PreTrainedModel,
)
from transformers.utils import logging

from .configuration import MtlmGPTConfig, MtlmLlamaConfig, MtlmMoeConfig
from .files import save_checkpoint, source_tokenizer
from .modeling import MtlmGPTForCausalLM, MtlmLlamaForCausalLM, MtlmMoeForCausalLM
from .modeling.mtlm_blocks import MtlmPreTrainedModel

logger = logging.get_logger(__name__)

# Fields that carry over unchanged between mtlm_llama / mtlm_moe and Llama / Mixtral.
_LLAMA_SHARED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "rope_parameters",
    "attention_dropout",
    "tie_word_embeddings",
    "use_cache",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
)
_MIXTRAL_SHARED_FIELDS = _LLAMA_SHARED_FIELDS + (
    "num_local_experts",
    "num_experts_per_tok",
    "router_aux_loss_coef",
    "output_router_logits",
    "router_jitter_noise",
)


def _copy_fields(config, names) -> dict:
    return {name: getattr(config, name) for name in names}


def _refuse(option: str, target: str, why: str):
    raise ValueError(f"Cannot convert to {target}: {option} {why}.")


def _drop_residual_dropout(config, target: str) -> None:
    if config.hidden_dropout:
        logger.warning(
            f"{target} has no residual dropout; hidden_dropout={config.hidden_dropout} is dropped. Inference is "
            "unchanged; fine-tuning the converted model trains without it."
        )


def _same_names(state_dict: dict) -> dict:
    """mtlm_llama and mtlm_moe name and lay out every weight as Llama and Mixtral do."""
    return dict(state_dict)


# GPT-2 name prefix <-> mtlm_gpt name prefix ({} is the layer), and whether GPT-2 stores the weight transposed
# (Conv1D). GPT-2's fused c_attn maps to `self_attn.qkv.`, which mtlm_gpt holds as q_proj, k_proj and v_proj.
_GPT2_NAMES = [
    ("transformer.wte.", "model.embed_tokens.", False),
    ("transformer.wpe.", "model.embed_positions.", False),
    ("transformer.ln_f.", "model.norm.", False),
    ("transformer.h.{}.ln_1.", "model.layers.{}.input_layernorm.", False),
    ("transformer.h.{}.ln_2.", "model.layers.{}.post_attention_layernorm.", False),
    ("transformer.h.{}.attn.c_attn.", "model.layers.{}.self_attn.qkv.", True),
    ("transformer.h.{}.attn.c_proj.", "model.layers.{}.self_attn.o_proj.", True),
    ("transformer.h.{}.mlp.c_fc.", "model.layers.{}.mlp.up_proj.", True),
    ("transformer.h.{}.mlp.c_proj.", "model.layers.{}.mlp.down_proj.", True),
    ("lm_head.", "lm_head.", False),
]
_ATTENTION_INPUT = re.compile(r"(model\.layers\.\d+\.self_attn\.)(qkv|[qkv]_proj)\.(weight|bias)")


def _rename_gpt2(state_dict: dict, to_mtlm: bool) -> dict:
    if not to_mtlm:
        state_dict = _join_qkv(state_dict)
    renamed = {}
    for name, tensor in state_dict.items():
        for upstream, ours, conv1d in _GPT2_NAMES:
            source, target = (upstream, ours) if to_mtlm else (ours, upstream)
            pattern = "^" + re.escape(source).replace(r"\{\}", r"(\d+)")
            new_name, found = re.subn(pattern, target.replace("{}", r"\1"), name)
            if found:
                transpose = conv1d and new_name.endswith("weight")
                renamed[new_name] = tensor.t().contiguous() if transpose else tensor
                break
        else:
            raise ValueError(f"Unexpected weight {name!r} while converting GPT-2; is this a GPT-2 checkpoint?")
    return _split_qkv(renamed) if to_mtlm else renamed


def _split_qkv(state_dict: dict) -> dict:
    """`...self_attn.qkv.{weight,bias}` -> q_proj, k_proj, v_proj (GPT-2 has as many kv heads as query heads)."""
    split = {}
    for name, tensor in state_dict.items():
        match = _ATTENTION_INPUT.fullmatch(name)
        if match and match.group(2) == "qkv":
            for part, piece in zip("qkv", tensor.chunk(3)):
                split[f"{match.group(1)}{part}_proj.{match.group(3)}"] = piece
        else:
            split[name] = tensor
    return split


def _join_qkv(state_dict: dict) -> dict:
    """q_proj, k_proj, v_proj -> `...self_attn.qkv.{weight,bias}`."""
    joined = {}
    for name, tensor in state_dict.items():
        match = _ATTENTION_INPUT.fullmatch(name)
        if not match:
            joined[name] = tensor
        elif match.group(2) == "q_proj":
            prefix, kind = match.group(1), match.group(3)
            joined[f"{prefix}qkv.{kind}"] = torch.cat([state_dict[f"{prefix}{part}_proj.{kind}"] for part in "qkv"])
    return joined


def _llama_to_mtlm(config: LlamaConfig) -> MtlmLlamaConfig:
    if config.head_dim != config.hidden_size // config.num_attention_heads:
        _refuse(f"head_dim={config.head_dim}", "mtlm_llama", "differs from hidden_size / num_attention_heads")
    return MtlmLlamaConfig(
        **_copy_fields(config, _LLAMA_SHARED_FIELDS), attention_bias=config.attention_bias, mlp_bias=config.mlp_bias
    )


def _mixtral_to_mtlm(config: MixtralConfig) -> MtlmMoeConfig:
    if config.sliding_window is not None:
        _refuse(f"sliding_window={config.sliding_window}", "mtlm_moe", "is not supported (attention is full-length)")
    if config.head_dim not in (None, config.hidden_size // config.num_attention_heads):
        _refuse(f"head_dim={config.head_dim}", "mtlm_moe", "differs from hidden_size / num_attention_heads")
    return MtlmMoeConfig(**_copy_fields(config, _MIXTRAL_SHARED_FIELDS))


def _gpt2_to_mtlm(config: GPT2Config) -> MtlmGPTConfig:
    if config.scale_attn_by_inverse_layer_idx or not config.scale_attn_weights:
        _refuse("the GPT-2 attention scaling option", "mtlm_gpt", "is not supported (scores are scaled by 1/sqrt(d))")
    if config.add_cross_attention:
        _refuse("add_cross_attention=True", "mtlm_gpt", "is not supported (decoder-only)")
    return MtlmGPTConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=config.n_inner or 4 * config.n_embd,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        hidden_act=config.activation_function,
        max_position_embeddings=config.n_positions,
        norm_type="layernorm",
        norm_eps=config.layer_norm_epsilon,
        attention_bias=True,
        mlp_bias=True,
        initializer_range=config.initializer_range,
        scale_residual_init=True,
        attention_dropout=config.attn_pdrop,
        hidden_dropout=config.resid_pdrop,
        tie_word_embeddings=config.tie_word_embeddings,
        use_cache=config.use_cache,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
    )


def _mtlm_to_llama(config: MtlmLlamaConfig) -> LlamaConfig:
    _drop_residual_dropout(config, "LlamaForCausalLM")
    return LlamaConfig(
        **_copy_fields(config, _LLAMA_SHARED_FIELDS), attention_bias=config.attention_bias, mlp_bias=config.mlp_bias
    )


def _mtlm_to_mixtral(config: MtlmMoeConfig) -> MixtralConfig:
    if config.attention_bias:
        _refuse("attention_bias=True", "MixtralForCausalLM", "is not expressible (Mixtral's attention has no biases)")
    _drop_residual_dropout(config, "MixtralForCausalLM")
    return MixtralConfig(**_copy_fields(config, _MIXTRAL_SHARED_FIELDS))


def _mtlm_to_gpt2(config: MtlmGPTConfig) -> GPT2Config:
    if config.norm_type != "layernorm":
        _refuse(f"norm_type={config.norm_type!r}", "GPT2LMHeadModel", "is not expressible (GPT-2 uses LayerNorm)")
    for option in ("attention_bias", "mlp_bias"):
        if not getattr(config, option):
            _refuse(f"{option}=False", "GPT2LMHeadModel", "is not expressible (GPT-2 always has biases)")
    if config.num_key_value_heads != config.num_attention_heads:
        _refuse(
            f"num_key_value_heads={config.num_key_value_heads}",
            "GPT2LMHeadModel",
            "is not expressible (GPT-2 has no grouped-query attention)",
        )
    return GPT2Config(
        vocab_size=config.vocab_size,
        n_embd=config.hidden_size,
        n_inner=config.intermediate_size,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        activation_function=config.hidden_act,
        n_positions=config.max_position_embeddings,
        layer_norm_epsilon=config.norm_eps,
        initializer_range=config.initializer_range,
        attn_pdrop=config.attention_dropout,
        resid_pdrop=config.hidden_dropout,
        embd_pdrop=config.hidden_dropout,
        tie_word_embeddings=config.tie_word_embeddings,
        use_cache=config.use_cache,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
    )


# upstream class -> (its mtlm class, config translation up->mtlm, weights up->mtlm)
_FROM_UPSTREAM = {
    LlamaForCausalLM: (MtlmLlamaForCausalLM, _llama_to_mtlm, _same_names),
    MixtralForCausalLM: (MtlmMoeForCausalLM, _mixtral_to_mtlm, _same_names),
    GPT2LMHeadModel: (MtlmGPTForCausalLM, _gpt2_to_mtlm, lambda state_dict: _rename_gpt2(state_dict, to_mtlm=True)),
}
# mtlm class -> (its upstream class, config translation mtlm->up, weights mtlm->up)
_TO_UPSTREAM = {
    MtlmLlamaForCausalLM: (LlamaForCausalLM, _mtlm_to_llama, _same_names),
    MtlmMoeForCausalLM: (MixtralForCausalLM, _mtlm_to_mixtral, _same_names),
    MtlmGPTForCausalLM: (GPT2LMHeadModel, _mtlm_to_gpt2, lambda state_dict: _rename_gpt2(state_dict, to_mtlm=False)),
}


def _convert(model: PreTrainedModel, table: dict, direction: str) -> PreTrainedModel:
    entry = table.get(type(model))
    if entry is None:
        known = ", ".join(cls.__name__ for cls in table)
        raise ValueError(f"{direction} converts {known}; got {type(model).__name__}.")
    target_class, translate_config, translate_weights = entry
    config = translate_config(model.config)
    converted = target_class(config).to(model.dtype)
    converted.load_state_dict(translate_weights(model.state_dict()), strict=True)
    converted.generation_config = model.generation_config
    return converted.eval() if not model.training else converted


def from_upstream(model: PreTrainedModel) -> MtlmPreTrainedModel:
    """The mtlm model computing the same function as a transformers LlamaForCausalLM, GPT2LMHeadModel or
    MixtralForCausalLM."""
    return _convert(model, _FROM_UPSTREAM, "from_upstream")


def to_upstream(model: MtlmPreTrainedModel) -> PreTrainedModel:
    """The transformers LlamaForCausalLM, GPT2LMHeadModel or MixtralForCausalLM computing the same function as an
    mtlm model; ValueError naming the option when the config has no upstream equivalent."""
    return _convert(model, _TO_UPSTREAM, "to_upstream")


def convert_folder(
    source: str | os.PathLike, destination: str | os.PathLike, to: str | None = None, overwrite: bool = False
) -> str:
    """Convert the checkpoint folder `source` to `to` ("upstream" or "mtlm"; by default the other side) and write it,
    with its tokenizer, to `destination`. Returns the direction taken."""
    source = Path(source)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source} is not a checkpoint folder (no config.json).")
    model = AutoModelForCausalLM.from_pretrained(source)
    is_mtlm = isinstance(model, MtlmPreTrainedModel)
    to = to or ("upstream" if is_mtlm else "mtlm")
    if to not in ("upstream", "mtlm"):
        raise ValueError(f"to must be 'upstream' or 'mtlm', got {to!r}.")
    if (to == "mtlm") == is_mtlm:
        raise ValueError(f"{source} already holds a{'n mtlm' if is_mtlm else 'n upstream'} model ({type(model).__name__}).")
    converted = to_upstream(model) if to == "upstream" else from_upstream(model)
    save_checkpoint(converted, source_tokenizer(source), destination, overwrite=overwrite)
    return to
