"""The registry of model families: each family is declared here once, and every part of mtlm that handles a family
(the Auto classes, checkpoint folders, conversion, growth, model cards, `mtlm presets`, the Flax twin and its
trainer) reads its entry instead of naming it.

Adding a family: write its configuration and modeling files (they travel into checkpoint folders, so they import
only torch, transformers and flat siblings), add its presets to mtlm/configuration/presets.py if it has any, and
pass a `Family` to `register_family` below. README "Adding a family" walks through it.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    MixtralForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
)

from . import upstream
from .configuration.configuration_mtlm_attention import MtlmAttentionConfig
from .configuration.configuration_mtlm_byte import MtlmByteConfig
from .configuration.configuration_mtlm_gpt import MtlmGPTConfig
from .configuration.configuration_mtlm_linear import MtlmLinearConfig
from .configuration.configuration_mtlm_llama import MtlmLlamaConfig
from .configuration.configuration_mtlm_mlp import MtlmMLPConfig
from .configuration.configuration_mtlm_moe import MtlmMoeConfig
from .data.tokenization_mtlm_byte import MtlmByteTokenizer
from .modeling import modeling_mtlm_byte
from .modeling.modeling_mtlm_attention import MtlmAttentionForCausalLM, MtlmAttentionModel
from .modeling.modeling_mtlm_byte import MtlmByteForCausalLM, MtlmByteModel
from .modeling.modeling_mtlm_gpt import MtlmGPTForCausalLM, MtlmGPTModel
from .modeling.modeling_mtlm_linear import MtlmLinearForCausalLM
from .modeling.modeling_mtlm_llama import MtlmLlamaForCausalLM, MtlmLlamaModel
from .modeling.modeling_mtlm_mlp import MtlmMLPForCausalLM
from .modeling.modeling_mtlm_moe import MtlmMoeForCausalLM, MtlmMoeModel, MtlmSparseMoeBlock
from .modeling.mtlm_blocks import MtlmGatedMLP, MtlmMLP, decoder_flops_per_token


def _keep_names(state_dict: dict) -> dict:
    return dict(state_dict)


@dataclass(frozen=True)
class UpstreamTwin:
    """A transformers class computing the same function as the family, and the translations both ways."""

    causal_lm_class: type[PreTrainedModel]
    config_to_mtlm: Callable[[PreTrainedConfig, type[PreTrainedConfig]], PreTrainedConfig]
    config_from_mtlm: Callable[[PreTrainedConfig], PreTrainedConfig]
    weights_to_mtlm: Callable[[dict], dict] = _keep_names
    weights_from_mtlm: Callable[[dict], dict] = _keep_names


@dataclass(frozen=True)
class Family:
    """One model family.

    describe: the one-line description of a config of the family (the model card, `mtlm presets`).
    flops_per_token: analytic forward FLOPs per token of a config at a sequence length (training FLOPs are 3x).
    card_rows: the family's own rows of the card's architecture table, (name, value) pairs.
    model_class: the backbone AutoModel builds, if the family has one apart from its head.
    flax_class: "module:Class" of the Flax twin, imported on first use (jax is the optional [flax] extra).
    layers: the module path of the decoder layers, which growth maps onto a deeper model (every other weight is
        carried over unchanged); None for a family without layers to grow.
    residual_outputs: the modules, by their path inside a layer, whose outputs are added to the residual stream:
        function-preserving growth zeroes them (weights and biases) in every repeated layer.
    """

    config_class: type[PreTrainedConfig]
    model_class: type[PreTrainedModel] | None
    causal_lm_class: type[PreTrainedModel]
    describe: Callable[[PreTrainedConfig], str]
    flops_per_token: Callable[[PreTrainedConfig, int], int]
    card_rows: Callable[[PreTrainedConfig], list[tuple[str, str]]] = lambda config: []
    upstream: UpstreamTwin | None = None
    flax_class: str | None = None
    layers: str | None = "model.layers"
    residual_outputs: tuple[str, ...] = ("self_attn.o_proj", "mlp.down_proj")

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    def load_flax_class(self) -> type:
        if self.flax_class is None:
            raise ValueError(f"The {self.model_type} family has no Flax twin; the families with one are "
                             f"{', '.join(name for name, family in FAMILIES.items() if family.flax_class)}.")
        module, name = self.flax_class.split(":")
        return getattr(importlib.import_module(module), name)


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add `family` to the registry and to transformers' Auto classes (AutoConfig, AutoModel,
    AutoModelForCausalLM); registering the same model_type again replaces its entry."""
    FAMILIES[family.model_type] = family
    AutoConfig.register(family.model_type, family.config_class, exist_ok=True)
    if family.model_class is not None:
        AutoModel.register(family.config_class, family.model_class, exist_ok=True)
    AutoModelForCausalLM.register(family.config_class, family.causal_lm_class, exist_ok=True)
    return family


def family_of(config_or_model_type: PreTrainedConfig | str) -> Family:
    """The registered family of a config (or model_type); a ValueError listing the families otherwise."""
    model_type = getattr(config_or_model_type, "model_type", config_or_model_type)
    if model_type not in FAMILIES:
        raise ValueError(f"{model_type!r} is not an mtlm family; the families are {', '.join(FAMILIES)}.")
    return FAMILIES[model_type]


def upstream_model_types() -> set[str]:
    """The model_type of every upstream twin (what `mtlm convert` turns into an mtlm family)."""
    return {family.upstream.causal_lm_class.config_class.model_type for family in FAMILIES.values()
            if family.upstream}


def decoder_rows(config, mlp: bool = True) -> list[tuple[str, str]]:
    """The model card's rows for a decoder's shape."""
    rows = [("layers", str(config.num_hidden_layers)), ("hidden size", str(config.hidden_size)),
            ("attention heads (query / key-value)", f"{config.num_attention_heads} / {config.num_key_value_heads}")]
    return rows + ([("MLP width", f"{config.intermediate_size} ({config.hidden_act})")] if mlp else [])


def _rotary_row(config) -> list[tuple[str, str]]:
    theta = (config.rope_parameters or {}).get("rope_theta")
    return [("positions", f"rotary (θ = {theta:g})" if theta else "rotary")]


_LLAMA_STYLE = "Llama-style: pre-norm RMSNorm, rotary positions, SwiGLU"

register_family(Family(
    MtlmLlamaConfig, MtlmLlamaModel, MtlmLlamaForCausalLM,
    describe=lambda config: _LLAMA_STYLE,
    flops_per_token=partial(decoder_flops_per_token, mlp_class=MtlmGatedMLP),
    card_rows=lambda config: [*decoder_rows(config), *_rotary_row(config)],
    upstream=UpstreamTwin(LlamaForCausalLM, upstream.llama_to_mtlm, upstream.mtlm_to_llama),
    flax_class="mtlm.modeling.flax_mtlm:FlaxMtlmLlamaForCausalLM",
))
register_family(Family(
    MtlmGPTConfig, MtlmGPTModel, MtlmGPTForCausalLM,
    describe=lambda config: (f"GPT-2-style: learned positions, pre-norm "
                             f"{'RMSNorm' if config.norm_type == 'rmsnorm' else 'LayerNorm'}, {config.hidden_act} MLP"),
    flops_per_token=partial(decoder_flops_per_token, mlp_class=MtlmMLP),
    card_rows=lambda config: [*decoder_rows(config), ("positions", "learned")],
    upstream=UpstreamTwin(GPT2LMHeadModel, upstream.gpt2_to_mtlm, upstream.mtlm_to_gpt2,
                          upstream.gpt2_weights_to_mtlm, upstream.gpt2_weights_from_mtlm),
    flax_class="mtlm.modeling.flax_mtlm:FlaxMtlmGPTForCausalLM",
))
register_family(Family(
    MtlmMoeConfig, MtlmMoeModel, MtlmMoeForCausalLM,
    describe=lambda config: (f"{_LLAMA_STYLE} experts ({config.num_local_experts}, top-{config.num_experts_per_tok} "
                             "routing)"),
    flops_per_token=partial(decoder_flops_per_token, mlp_class=MtlmSparseMoeBlock),
    card_rows=lambda config: [*decoder_rows(config),
                              ("experts", f"{config.num_local_experts}, {config.num_experts_per_tok} per token"),
                              *_rotary_row(config)],
    upstream=UpstreamTwin(MixtralForCausalLM, upstream.mixtral_to_mtlm, upstream.mtlm_to_mixtral),
    flax_class="mtlm.modeling.flax_mtlm:FlaxMtlmMoeForCausalLM",
    residual_outputs=("self_attn.o_proj", "mlp.experts.down_proj"),
))

# The Tiny-LM baselines: fixed-context models with no upstream or Flax twin.
register_family(Family(
    MtlmLinearConfig, None, MtlmLinearForCausalLM,
    describe=lambda config: f"softmax regression on the one-hot tokens of a {config.context_size}-token context",
    flops_per_token=MtlmLinearForCausalLM.flops_per_token,
    card_rows=lambda config: [("context window", f"{config.context_size} one-hot tokens into one linear layer")],
    layers=None,
))
register_family(Family(
    MtlmMLPConfig, None, MtlmMLPForCausalLM,
    describe=lambda config: (f"MLP over {config.context_size} concatenated {config.embedding_size}-d embeddings, "
                             f"hidden {'-'.join(map(str, config.hidden_sizes))}, {config.hidden_act}"),
    flops_per_token=MtlmMLPForCausalLM.flops_per_token,
    card_rows=lambda config: [("embedding size", str(config.embedding_size)),
                              ("hidden layers", ", ".join(map(str, config.hidden_sizes)) + f" ({config.hidden_act})")],
    layers=None,
))
register_family(Family(
    MtlmAttentionConfig, MtlmAttentionModel, MtlmAttentionForCausalLM,
    describe=lambda config: (f"self-attention only: learned positions, pre-norm "
                             f"{'RMSNorm' if config.norm_type == 'rmsnorm' else 'LayerNorm'}, no MLP"),
    flops_per_token=partial(decoder_flops_per_token, mlp_class=None),
    card_rows=lambda config: [*decoder_rows(config, mlp=False), ("positions", "learned")],
    residual_outputs=("self_attn.o_proj",),
))

# STLM's byte model: growth deepens its core.
register_family(Family(
    MtlmByteConfig, MtlmByteModel, MtlmByteForCausalLM,
    describe=lambda config: (f"bytes pooled into {config.chunk_boundary} chunks of at most {config.max_chunk_bytes} "
                             f"by a bidirectional encoder, a {_LLAMA_STYLE} core over the chunks, a "
                             f"{config.decoder_type} byte decoder"),
    flops_per_token=modeling_mtlm_byte.flops_per_token,
    card_rows=lambda config: [
        ("chunks", f"{config.chunk_boundary} boundaries, at most {config.max_chunk_bytes} ids"),
        ("encoder widths", " → ".join(map(str, config.encoder_hidden_sizes)) + f" ({config.pooling} pooling)"),
        *decoder_rows(config), *_rotary_row(config),
        ("byte decoder", f"{config.decoder_type}, {config.decoder_num_hidden_layers} layers of "
                         f"{config.decoder_hidden_size}"),
    ],
    layers="model.core.layers",
))
AutoTokenizer.register(MtlmByteConfig, tokenizer_class=MtlmByteTokenizer, exist_ok=True)

__all__ = [
    "FAMILIES",
    "MtlmByteConfig",
    "MtlmByteForCausalLM",
    "MtlmByteModel",
    "MtlmByteTokenizer",
    "MtlmAttentionConfig",
    "MtlmAttentionForCausalLM",
    "MtlmAttentionModel",
    "MtlmLinearConfig",
    "MtlmLinearForCausalLM",
    "MtlmMLPConfig",
    "MtlmMLPForCausalLM",
    "Family",
    "MtlmGPTConfig",
    "MtlmGPTForCausalLM",
    "MtlmGPTModel",
    "MtlmLlamaConfig",
    "MtlmLlamaForCausalLM",
    "MtlmLlamaModel",
    "MtlmMoeConfig",
    "MtlmMoeForCausalLM",
    "MtlmMoeModel",
    "UpstreamTwin",
    "family_of",
    "register_family",
]
