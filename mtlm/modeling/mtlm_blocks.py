"""Blocks shared by the mtlm families, and the base classes their PreTrainedModels derive from.

This file travels into every checkpoint folder beside the family's modeling file, so it imports only torch,
transformers and flat siblings.
"""

import importlib
import math
import os
import shutil
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.dynamic_module_utils import get_relative_imports
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

# transformers 5.24 renamed the KV cache from `past_key_values` to `cache`: in the arguments `generate()` passes to
# `forward`, in the output field it reads the cache back from, and in what GradientCheckpointingLayer switches off.
# This file travels in checkpoint folders to machines with either, so it speaks both.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def pick_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache, whichever of its two names it was passed under."""
    if cache is not None and past_key_values is not None:
        raise ValueError("Pass the KV cache once, as `cache` or as `past_key_values` (its name before transformers "
                         "5.24), not as both.")
    return cache if cache is not None else past_key_values


class MtlmRMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale, computed in float32."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: (..., hidden_size) -> same shape and dtype."""
        # torch's fused kernel computes what Llama's pow / mean / rsqrt / mul steps do, bit for bit, at a fraction of
        # the time and the saved activations of the backward pass.
        normalized = nn.functional.rms_norm(hidden_states.to(torch.float32), self.weight.shape,
                                            eps=self.variance_epsilon)
        return self.weight * normalized.to(hidden_states.dtype)

    def extra_repr(self):
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class MtlmLayerNorm(nn.LayerNorm):
    """LayerNorm with weight and bias (GPT-2); named so transformers' default init resets it to (1, 0)."""


def make_norm(config) -> nn.Module:
    """The family's norm: RMSNorm unless the config asks for LayerNorm."""
    if getattr(config, "norm_type", "rmsnorm") == "layernorm":
        return MtlmLayerNorm(config.hidden_size, eps=config.norm_eps)
    return MtlmRMSNorm(config.hidden_size, eps=getattr(config, "rms_norm_eps", getattr(config, "norm_eps", 1e-6)))


class MtlmRotaryEmbedding(nn.Module):
    """cos/sin tables of rotary position embeddings for the positions asked for (any `rope_type` transformers has)."""

    def __init__(self, config):
        super().__init__()
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.config = config
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn: Callable = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config, **kwargs) -> tuple[torch.Tensor, float]:
        """Inverse frequencies (head_dim / 2,) of the original RoPE, and an attention scaling of 1."""
        base = config.rope_parameters["rope_theta"]
        dim = config.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids: (batch, seq) -> cos, sin: (batch, seq, head_dim) in x's dtype."""
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    """q: (batch, heads, seq, head_dim), k: (batch, kv_heads, seq, head_dim), cos/sin: (batch, seq, head_dim)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(batch, kv_heads, seq, head_dim) -> (batch, kv_heads * n_rep, seq, head_dim), each kv head repeated in place."""
    batch, num_key_value_heads, seq_len, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, seq_len, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, seq_len, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention. query: (batch, heads, q_len, head_dim); key, value: (batch, kv_heads, kv_len,
    head_dim); attention_mask: additive (batch, 1, q_len, kv_len). Returns (batch, q_len, heads, head_dim) and the
    attention weights (batch, heads, q_len, kv_len)."""
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


# GPT-2's `gelu_new` is the tanh approximation of GELU written out in Python: eight kernels, each input saved for the
# backward pass. torch's fused kernel computes the same function (within 1e-6) in under a third of the time.
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}


def activation(name: str) -> nn.Module:
    """The activation a config names (transformers' ACT2FN), through a fused kernel where one computes it."""
    return ACT2FN[FUSED_ACTIVATIONS.get(name, name)]


def residual_projection(linear: nn.Linear) -> nn.Linear:
    """Mark a projection whose output is added to the residual stream: with `scale_residual_init` it starts with
    std initializer_range / sqrt(2L)."""
    linear.writes_residual = True
    return linear


def residual_init_std(config) -> float:
    if config.scale_residual_init:
        return config.initializer_range / math.sqrt(2 * config.num_hidden_layers)
    return config.initializer_range


class MtlmAttention(nn.Module):
    """Causal multi-head attention with grouped kv heads and optional rotary embeddings.

    Dispatches to `config._attn_implementation` (eager, sdpa, flash_attention_2, flex_attention, ...)."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        query_size = config.num_attention_heads * self.head_dim
        key_value_size = config.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, query_size, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, key_value_size, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, key_value_size, bias=config.attention_bias)
        self.o_proj = residual_projection(nn.Linear(query_size, config.hidden_size, bias=config.attention_bias))

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states: (batch, seq, hidden) -> (batch, seq, hidden) and the attention weights if eager. `cache`
        receives this layer's keys and values and returns all of them so far."""
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if position_embeddings is not None:
            cos, sin = position_embeddings
            query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class MtlmGatedMLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x))."""

    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = residual_projection(
            nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        )
        self.act_fn = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., hidden) -> (..., hidden)."""
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    @staticmethod
    def flops_per_token(config) -> int:
        return 2 * 3 * config.hidden_size * config.intermediate_size


class MtlmMLP(nn.Module):
    """Two-layer MLP: down(act(up(x))) (GPT-2's c_fc / c_proj)."""

    def __init__(self, config):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = residual_projection(
            nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        )
        self.act_fn = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., hidden) -> (..., hidden)."""
        return self.down_proj(self.act_fn(self.up_proj(x)))

    @staticmethod
    def flops_per_token(config) -> int:
        return 2 * 2 * config.hidden_size * config.intermediate_size


def residual_dropout(hidden_states: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    # A plain function rather than an nn.Dropout module: without dropout (inference, p=0) it costs nothing per token.
    return nn.functional.dropout(hidden_states, p, training) if training and p else hidden_states


class MtlmDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x))). The MLP is the family's; without one
    (`mlp=None`) the block is attention only. A layer added by gated growth scales both residual branches by its
    `residual_gate` (config.residual_gates) while the gate ramps from 0 to 1."""

    def __init__(self, config, layer_idx: int, mlp: nn.Module | None):
        super().__init__()
        self.self_attn = MtlmAttention(config, layer_idx)
        self.mlp = mlp
        self.input_layernorm = make_norm(config)
        if mlp is not None:
            self.post_attention_layernorm = make_norm(config)
        self.hidden_dropout = config.hidden_dropout
        gates = getattr(config, "residual_gates", None)
        self.residual_gate = gates[layer_idx] if gates and gates[layer_idx] != 1.0 else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """hidden_states: (batch, seq, hidden) -> (batch, seq, hidden). The model passes the cache under
        `CACHE_NAME`, the name GradientCheckpointingLayer drops it by."""
        attn_output, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            cache=pick_cache(cache, past_key_values),
            **kwargs,
        )
        if self.residual_gate is not None:
            attn_output = attn_output * self.residual_gate
        hidden_states = hidden_states + residual_dropout(attn_output, self.hidden_dropout, self.training)
        if self.mlp is None:
            return hidden_states
        mlp_output = self.mlp(self.post_attention_layernorm(hidden_states))
        if self.residual_gate is not None:
            mlp_output = mlp_output * self.residual_gate
        return hidden_states + residual_dropout(mlp_output, self.hidden_dropout, self.training)


def host_check_is_free(tensor: torch.Tensor, training: bool) -> bool:
    """Whether an input check that reads `tensor` back on the host costs nothing: always on the CPU; on an accelerator
    the read stalls the device, which matters per training step (the Trainer's batches come from the run's own
    tokenizer, so its ids are in range) but not in generation or evaluation, which read back every step anyway."""
    return not torch.compiler.is_compiling() and (tensor.device.type == "cpu" or not training)


def check_token_ids(input_ids: torch.Tensor, vocab_size: int, training: bool = False) -> None:
    """An out-of-range id would otherwise fail deep inside nn.Embedding (or assert on the GPU)."""
    if not host_check_is_free(input_ids, training):
        return
    lowest, highest = torch.aminmax(input_ids)
    if lowest < 0 or highest >= vocab_size:
        bad = sorted(set(input_ids[(input_ids < 0) | (input_ids >= vocab_size)].tolist()))[:8]
        raise ValueError(
            f"input_ids hold ids {bad} outside the vocabulary [0, {vocab_size}) of this model: use the tokenizer "
            "the model was trained with, or resize the embeddings with model.resize_token_embeddings()."
        )


def decoder_flops_per_token(config, sequence_length: int, mlp_class: type | None) -> int:
    """Analytic forward FLOPs per token at `sequence_length` (2 per multiply-add) of a decoder whose layers hold
    `mlp_class`: projections, attention scores and values over the whole sequence, MLP (active experts only), LM
    head; embedding lookups are free."""
    head_dim, heads, kv_heads = config.head_dim, config.num_attention_heads, config.num_key_value_heads
    hidden = config.hidden_size
    projections = 2 * hidden * head_dim * (2 * heads + 2 * kv_heads)
    attention = 2 * 2 * sequence_length * heads * head_dim
    mlp = mlp_class.flops_per_token(config) if mlp_class is not None else 0
    return config.num_hidden_layers * (projections + attention + mlp) + 2 * hidden * config.vocab_size


def code_files(*classes: type) -> list[str]:
    """Source files of the modules defining `classes` and of every flat sibling they import, recursively.

    Inside the mtlm package a modeling file's `from .configuration_x import` resolves to mtlm.configuration (see
    mtlm/modeling/__init__.py); inside a checkpoint folder all files are siblings. Either way the module objects know
    their files, so both cases are answered the same way."""
    files: dict[str, None] = {}
    pending = [importlib.import_module(cls.__module__) for cls in classes]
    while pending:
        module = pending.pop()
        if module.__file__ in files:
            continue
        files[module.__file__] = None
        for name in get_relative_imports(module.__file__):
            pending.append(importlib.import_module(f".{name}", module.__package__))
    return list(files)


def auto_map(config_class: type, model_class: type) -> dict[str, str]:
    """A config's `auto_map`: the classes by their flat module names, as the files lie in a checkpoint folder."""
    return {
        "AutoConfig": f"{config_class.__module__.rsplit('.', 1)[-1]}.{config_class.__name__}",
        "AutoModelForCausalLM": f"{model_class.__module__.rsplit('.', 1)[-1]}.{model_class.__name__}",
    }


def copy_code_files(config_class: type, model_class: type, folder: str | os.PathLike) -> None:
    """Copy the code defining `config_class` and `model_class` into the checkpoint `folder`, flat."""
    for path in code_files(config_class, model_class):
        shutil.copyfile(path, os.path.join(folder, os.path.basename(path)))


class SelfContainedCheckpoint:
    """Saves the flat code files and `auto_map` beside the weights and config, so that the folder loads with
    `trust_remote_code=True` where mtlm is not installed."""

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        self.config.auto_map = auto_map(type(self.config), type(self))
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            copy_code_files(type(self.config), type(self), save_directory)


class MtlmPreTrainedModel(SelfContainedCheckpoint, PreTrainedModel):
    """Base of every mtlm decoder: attention backends, weight init and self-contained remote-code checkpoints."""

    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MtlmDecoderLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {"hidden_states": MtlmDecoderLayer, "attentions": MtlmAttention}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """N(0, initializer_range) for matrices and embeddings (transformers' default); projections into the residual
        stream get `residual_init_std`."""
        super()._init_weights(module)
        if getattr(module, "writes_residual", False):
            init.normal_(module.weight, mean=0.0, std=residual_init_std(self.config))

    def forward_flops_per_token(self, sequence_length: int) -> int:
        """Analytic forward FLOPs per token at `sequence_length` (see decoder_flops_per_token)."""
        backbone = self.model if hasattr(self, "model") else self
        mlp = backbone.layers[0].mlp
        return decoder_flops_per_token(self.config, sequence_length, type(mlp) if mlp is not None else None)

    def floating_point_ops(self, input_dict: dict, exclude_embeddings: bool = True) -> int:
        """Training FLOPs of a batch: 3 x forward (the backward pass costs two forwards). Used by the Trainer."""
        input_ids = input_dict.get("input_ids")
        if input_ids is None:
            return super().floating_point_ops(input_dict, exclude_embeddings)
        return 3 * self.forward_flops_per_token(input_ids.shape[-1]) * input_ids.numel()


class MtlmModel(MtlmPreTrainedModel):
    """Decoder backbone: embeddings, pre-norm layers, final norm. Subclasses build the modules and say how positions
    enter (`apply_positions`)."""

    output_class = BaseModelOutputWithPast

    def apply_positions(
        self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Returns the hidden states entering layer 0 and the rotary (cos, sin) the attention layers apply, if any."""
        raise NotImplementedError

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """input_ids: (batch, seq) or inputs_embeds: (batch, seq, hidden); attention_mask: (batch, past + seq) with 0
        on padding; cache (or past_key_values): the keys and values of the past tokens. Returns last_hidden_state
        (batch, seq, hidden) and the cache, under `CACHE_NAME`."""
        cache = pick_cache(cache, past_key_values)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            check_token_ids(input_ids, self.config.vocab_size, self.training)
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None and not self.training:  # a cache only serves decoding
            cache = DynamicCache(config=self.config)
        # Positions given by the caller may pack several sequences in a row, which the mask then separates (reading
        # them back on the host); the default positions cannot.
        packed_positions = position_ids
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        # The cache goes by position: its keyword is the one transformers renamed.
        causal_mask = create_causal_mask(self.config, inputs_embeds, attention_mask, cache,
                                         position_ids=packed_positions)
        hidden_states, position_embeddings = self.apply_positions(inputs_embeds, position_ids)
        hidden_states = residual_dropout(hidden_states, self.config.hidden_dropout, self.training)
        for decoder_layer in self.layers:
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                use_cache=use_cache,
                **{CACHE_NAME: cache},
                **kwargs,
            )
        return self.output_class(last_hidden_state=self.norm(hidden_states), **{CACHE_NAME: cache})


def chunked_next_token_loss(hidden_states: torch.Tensor, lm_head: nn.Module, labels: torch.Tensor, chunk_size: int,
                            num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """The next-token cross-entropy of lm_head(hidden_states) (batch, seq, hidden) against labels (batch, seq; -100
    where no loss is taken; shifted here), summed over `chunk_size` positions at a time and divided by the labelled
    positions (or `num_items_in_batch`, as transformers' loss does). Each chunk's logits are recomputed in the backward
    pass, so the (batch, seq, vocab) logits never exist whole: with a large vocabulary they are most of a step's
    activation memory."""
    targets = nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1)
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])

    def summed_loss(hidden_chunk: torch.Tensor, target_chunk: torch.Tensor) -> torch.Tensor:
        logits = lm_head(hidden_chunk).float()
        return nn.functional.cross_entropy(logits, target_chunk, ignore_index=-100, reduction="sum")

    total = sum(checkpoint(summed_loss, hidden[start:start + chunk_size], targets[start:start + chunk_size],
                           use_reentrant=False) for start in range(0, hidden.shape[0], chunk_size))
    count = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum()
    return total / count


class MtlmForCausalLM(MtlmPreTrainedModel, GenerationMixin):
    """A backbone (`self.model`) with a linear head over the vocabulary, tied to the embeddings when configured."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    output_class = CausalLMOutputWithPast

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ):
        """labels: (batch, seq), -100 where no loss is taken; shifted inside. Returns logits (batch, kept, vocab),
        the mean next-token loss if labels are given, and whatever the backbone returned besides its last state (the
        cache under `CACHE_NAME`)."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=pick_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        chunk_size = getattr(self.config, "loss_chunk_size", None)
        if chunk_size and labels is not None and self.training and logits_to_keep == 0:
            # Training with a chunked loss: the loss, and no logits, which are what it avoids holding.
            loss = chunked_next_token_loss(hidden_states, self.lm_head, labels, chunk_size,
                                           kwargs.get("num_items_in_batch"))
            logits = None
        else:
            slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(hidden_states[:, slice_indices, :])
            loss = None
            if labels is not None:
                loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        extras = {key: value for key, value in outputs.items() if key != "last_hidden_state"}
        return self.output_class(loss=loss, logits=logits, **extras)


def sliding_window_linear(inputs: torch.Tensor, linear: nn.Linear, context_size: int) -> torch.Tensor:
    """inputs: (batch, seq, width) -> (batch, seq, out): `linear` (context_size * width -> out) applied at every
    position to the inputs of its last `context_size` positions concatenated, oldest first, with zeros before the
    sequence starts. One convolution computes all positions; a position never sees a later one."""
    width = inputs.shape[-1]
    kernel = linear.weight.view(linear.out_features, context_size, width).transpose(1, 2).contiguous()
    padded = nn.functional.pad(inputs.transpose(1, 2), (context_size - 1, 0))  # (batch, width, context - 1 + seq)
    return nn.functional.conv1d(padded, kernel, linear.bias).transpose(1, 2).contiguous()


def window_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, length: int) -> dict:
    """What `generate()` hands a model without a cache at every step: the last `length` tokens and their mask."""
    window = slice(-length, None)
    return {"input_ids": input_ids[:, window], "use_cache": False,
            "attention_mask": attention_mask[:, window] if attention_mask is not None else None}


class MtlmFixedContextForCausalLM(SelfContainedCheckpoint, PreTrainedModel, GenerationMixin):
    """A causal LM whose every prediction reads the last `config.context_size` tokens (the Tiny-LM baselines).
    Subclasses give `window_logits(input_ids, keep)`: logits for every position, where `keep` (batch, seq, 1) is 0 on
    padding, which then reads as the zeros before the sequence starts. It keeps no cache: `generate()` hands it the
    last `context_size` tokens at every step."""

    base_model_prefix = "model"
    _can_compile_fullgraph = True

    def window_logits(self, input_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """input_ids: (batch, seq); attention_mask: (batch, seq), 0 on padding; labels: (batch, seq), -100 where no
        loss is taken, shifted inside. Returns logits (batch, kept, vocab) and the mean next-token loss."""
        if input_ids is None:
            raise ValueError(f"{type(self).__name__} reads token ids: pass input_ids.")
        check_token_ids(input_ids, self.config.vocab_size, self.training)
        keep = attention_mask.unsqueeze(-1).to(torch.float32) if attention_mask is not None else \
            torch.ones(*input_ids.shape, 1, device=input_ids.device)
        logits = self.window_logits(input_ids, keep)
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = logits[:, slice_indices, :]
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return window_inputs(input_ids, attention_mask, self.config.context_size)
