"""How the mtlm families translate to and from their upstream twins in transformers: configs field by field (an
option the other side cannot express raises a ValueError that names it) and weight names. The registry
(mtlm/families.py) pairs each family with its twin's translations; mtlm/convert.py applies them."""

import re

import torch
from transformers import GPT2Config, LlamaConfig, MixtralConfig, PreTrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Fields that carry over unchanged between the Llama-style families and Llama / Mixtral.
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


# GPT-2 name prefix <-> the GPT-style family's name prefix ({} is the layer), and whether GPT-2 stores the weight
# transposed (Conv1D). GPT-2's fused c_attn maps to `self_attn.qkv.`, held on our side as q_proj, k_proj and v_proj.
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


def llama_to_mtlm(config: LlamaConfig, config_class: type[PreTrainedConfig]) -> PreTrainedConfig:
    if config.head_dim != config.hidden_size // config.num_attention_heads:
        _refuse(f"head_dim={config.head_dim}", config_class.model_type, "differs from hidden_size / num_attention_heads")
    return config_class(
        **_copy_fields(config, _LLAMA_SHARED_FIELDS), attention_bias=config.attention_bias, mlp_bias=config.mlp_bias
    )


def mixtral_to_mtlm(config: MixtralConfig, config_class: type[PreTrainedConfig]) -> PreTrainedConfig:
    target = config_class.model_type
    if config.sliding_window is not None:
        _refuse(f"sliding_window={config.sliding_window}", target, "is not supported (attention is full-length)")
    if config.head_dim not in (None, config.hidden_size // config.num_attention_heads):
        _refuse(f"head_dim={config.head_dim}", target, "differs from hidden_size / num_attention_heads")
    return config_class(**_copy_fields(config, _MIXTRAL_SHARED_FIELDS))


def gpt2_to_mtlm(config: GPT2Config, config_class: type[PreTrainedConfig]) -> PreTrainedConfig:
    target = config_class.model_type
    if config.scale_attn_by_inverse_layer_idx or not config.scale_attn_weights:
        _refuse("the GPT-2 attention scaling option", target, "is not supported (scores are scaled by 1/sqrt(d))")
    if config.add_cross_attention:
        _refuse("add_cross_attention=True", target, "is not supported (decoder-only)")
    return config_class(
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


def mtlm_to_llama(config) -> LlamaConfig:
    _drop_residual_dropout(config, "LlamaForCausalLM")
    return LlamaConfig(
        **_copy_fields(config, _LLAMA_SHARED_FIELDS), attention_bias=config.attention_bias, mlp_bias=config.mlp_bias
    )


def mtlm_to_mixtral(config) -> MixtralConfig:
    if config.attention_bias:
        _refuse("attention_bias=True", "MixtralForCausalLM", "is not expressible (Mixtral's attention has no biases)")
    _drop_residual_dropout(config, "MixtralForCausalLM")
    return MixtralConfig(**_copy_fields(config, _MIXTRAL_SHARED_FIELDS))


def mtlm_to_gpt2(config) -> GPT2Config:
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


def gpt2_weights_to_mtlm(state_dict: dict) -> dict:
    return _rename_gpt2(state_dict, to_mtlm=True)


def gpt2_weights_from_mtlm(state_dict: dict) -> dict:
    return _rename_gpt2(state_dict, to_mtlm=False)
