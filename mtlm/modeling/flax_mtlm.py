"""Flax NNX twins of the mtlm families (transformers 5 has no Flax classes).

Every parameter is named and laid out as in the PyTorch model (`model.layers.0.self_attn.q_proj.weight`, linear
weights (out, in)), so a checkpoint folder's `model.safetensors` loads here unchanged and `save_pretrained` writes a
folder the PyTorch classes (and `trust_remote_code`) load as they stand. The math is the PyTorch modules', step by
step: pre-norm blocks, grouped-query attention with rotary (llama, moe) or learned (gpt) positions, SwiGLU / GELU MLPs
or top-k routed experts, a tied or untied head.
"""

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file
from transformers import AutoConfig, GenerationConfig

from ..families import FAMILIES, family_of
from ..files import weight_files
from .mtlm_blocks import auto_map, copy_code_files

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act={name!r} has no Flax twin yet; the Flax models support "
                         f"{', '.join(sorted(ACTIVATIONS))}.")
    return ACTIVATIONS[name]


def normal(rngs: nnx.Rngs, shape: tuple, std: float, dtype) -> jax.Array:
    return std * jax.random.normal(rngs.params(), shape, dtype)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; none without a key (inference) or at rate 0. Keys are passed in, not kept in the model,
    so that a training step is a pure function of (parameters, batch, step)."""
    if key is None or not rate:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def residual_std(config) -> float:
    if config.scale_residual_init:
        return config.initializer_range / math.sqrt(2 * config.num_hidden_layers)
    return config.initializer_range


def project(x: jax.Array, weight: jax.Array) -> jax.Array:
    """x: (..., in), weight: (out, in) -> x @ weight.T: (..., out) in x's dtype."""
    # as one 2-D matmul: XLA's CPU backward of the 3-D one (batch and sequence contracted together) is ~1.4x slower
    flat = x.reshape(-1, x.shape[-1]) @ weight.astype(x.dtype).T
    return flat.reshape(*x.shape[:-1], weight.shape[0])


class Linear(nnx.Module):
    """x @ weight.T + bias, with weight (out, in) as in torch.nn.Linear."""

    def __init__(self, in_features: int, out_features: int, bias: bool, std: float, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        self.weight = nnx.Param(normal(rngs, (out_features, in_features), std, param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (..., in) -> (..., out), computed in x's dtype."""
        y = project(x, self.weight[...])
        return y + self.bias[...].astype(x.dtype) if self.bias is not None else y


class Embedding(nnx.Module):
    def __init__(self, num_embeddings: int, features: int, std: float, padding_idx: int | None, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        table = normal(rngs, (num_embeddings, features), std, param_dtype)
        if padding_idx is not None:
            table = table.at[padding_idx].set(0.0)
        self.weight = nnx.Param(table)

    def __call__(self, ids: jax.Array, dtype) -> jax.Array:
        """ids: (batch, seq) int -> (batch, seq, features)."""
        return jnp.take(self.weight[...], ids, axis=0).astype(dtype)


class RMSNorm(nnx.Module):
    """Root-mean-square norm with a learned scale, computed in float32."""

    def __init__(self, features: int, eps: float, param_dtype=jnp.float32):
        self.weight = nnx.Param(jnp.ones((features,), param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        normed = x.astype(jnp.float32) * jax.lax.rsqrt(jnp.mean(jnp.square(x.astype(jnp.float32)), -1, keepdims=True)
                                                       + self.eps)
        return self.weight[...].astype(x.dtype) * normed.astype(x.dtype)


class LayerNorm(nnx.Module):
    def __init__(self, features: int, eps: float, param_dtype=jnp.float32):
        self.weight = nnx.Param(jnp.ones((features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((features,), param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, -1, keepdims=True)
        variance = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
        normed = ((x32 - mean) * jax.lax.rsqrt(variance + self.eps)).astype(x.dtype)
        return normed * self.weight[...].astype(x.dtype) + self.bias[...].astype(x.dtype)


def make_norm(config, param_dtype):
    if getattr(config, "norm_type", "rmsnorm") == "layernorm":
        return LayerNorm(config.hidden_size, config.norm_eps, param_dtype)
    return RMSNorm(config.hidden_size, getattr(config, "rms_norm_eps", getattr(config, "norm_eps", 1e-6)),
                   param_dtype)


def rotary_tables(config, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """positions: (batch, seq) -> cos, sin: (batch, seq, 1, head_dim), float32 (RoPE's default type only)."""
    rope = config.rope_parameters or {}
    if rope.get("rope_type", "default") != "default":
        raise NotImplementedError(f"The Flax twin implements default RoPE only, not rope_type={rope['rope_type']!r}.")
    dim = config.head_dim
    inv_freq = 1.0 / (rope["rope_theta"] ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    freqs = positions[..., None].astype(jnp.float32) * inv_freq
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(angles), jnp.sin(angles)


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: (batch, seq, heads, head_dim) rotated as transformers' apply_rotary_pos_emb does."""
    half = x.shape[-1] // 2
    rotated_half = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos.astype(x.dtype)) + (rotated_half * sin.astype(x.dtype))


@dataclass
class KVCache:
    """Keys and values of every layer for `length` positions: keys/values (layers, batch, length, kv_heads, head_dim),
    mask (batch, length) with 1 where a token was written, index the next position to write."""

    keys: jax.Array
    values: jax.Array
    mask: jax.Array
    index: jax.Array


jax.tree_util.register_dataclass(KVCache, data_fields=["keys", "values", "mask", "index"], meta_fields=[])


class Attention(nnx.Module):
    def __init__(self, config, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.num_heads, self.num_kv_heads, self.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                            config.head_dim)
        hidden, std, bias = config.hidden_size, config.initializer_range, config.attention_bias
        self.q_proj = Linear(hidden, self.num_heads * self.head_dim, bias, std, rngs=rngs, param_dtype=param_dtype)
        self.k_proj = Linear(hidden, self.num_kv_heads * self.head_dim, bias, std, rngs=rngs, param_dtype=param_dtype)
        self.v_proj = Linear(hidden, self.num_kv_heads * self.head_dim, bias, std, rngs=rngs, param_dtype=param_dtype)
        self.o_proj = Linear(self.num_heads * self.head_dim, hidden, bias, residual_std(config), rngs=rngs,
                             param_dtype=param_dtype)
        self.dropout_rate = config.attention_dropout

    def __call__(self, x: jax.Array, rotary, key_mask: jax.Array, query_positions: jax.Array,
                 layer_cache: tuple[jax.Array, jax.Array] | None, write_at: jax.Array | None,
                 dropout_key: jax.Array | None = None):
        """x: (batch, seq, hidden); key_mask: (batch, keys) 1 for real tokens; query_positions: (batch, seq) index
        of each query among the keys. Returns (batch, seq, hidden) and the layer's updated (keys, values)."""
        batch, seq, _ = x.shape
        query = self.q_proj(x).reshape(batch, seq, self.num_heads, self.head_dim)
        key = self.k_proj(x).reshape(batch, seq, self.num_kv_heads, self.head_dim)
        value = self.v_proj(x).reshape(batch, seq, self.num_kv_heads, self.head_dim)
        if rotary is not None:
            query, key = rotate(query, *rotary), rotate(key, *rotary)
        if layer_cache is not None:
            key = jax.lax.dynamic_update_slice_in_dim(layer_cache[0], key.astype(layer_cache[0].dtype), write_at, 1)
            value = jax.lax.dynamic_update_slice_in_dim(layer_cache[1], value.astype(layer_cache[1].dtype), write_at,
                                                        1)
        groups = self.num_heads // self.num_kv_heads  # query head h reads kv head h // groups, as repeat_kv does
        query = query.reshape(batch, seq, self.num_kv_heads, groups, self.head_dim)
        scores = jnp.einsum("bqhgd,bkhd->bhgqk", query, key.astype(query.dtype)) / math.sqrt(self.head_dim)
        key_positions = jnp.arange(key.shape[1])
        allowed = (key_positions[None, None, :] <= query_positions[:, :, None]) & (key_mask[:, None, :] > 0)
        scores = jnp.where(allowed[:, None, None], scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        probabilities = dropout(jax.nn.softmax(scores, axis=-1).astype(x.dtype), self.dropout_rate, dropout_key)
        output = jnp.einsum("bhgqk,bkhd->bqhgd", probabilities, value.astype(x.dtype))
        return self.o_proj(output.reshape(batch, seq, -1)), (key, value)


class GatedMLP(nnx.Module):
    """SwiGLU: down(act(gate(x)) * up(x))."""

    def __init__(self, config, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        hidden, inner, std, bias = config.hidden_size, config.intermediate_size, config.initializer_range, \
            config.mlp_bias
        self.gate_proj = Linear(hidden, inner, bias, std, rngs=rngs, param_dtype=param_dtype)
        self.up_proj = Linear(hidden, inner, bias, std, rngs=rngs, param_dtype=param_dtype)
        self.down_proj = Linear(inner, hidden, bias, residual_std(config), rngs=rngs, param_dtype=param_dtype)
        self.act = activation(config.hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class MLP(nnx.Module):
    """down(act(up(x))), GPT-2's c_fc / c_proj."""

    def __init__(self, config, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        hidden, inner, std, bias = config.hidden_size, config.intermediate_size, config.initializer_range, \
            config.mlp_bias
        self.up_proj = Linear(hidden, inner, bias, std, rngs=rngs, param_dtype=param_dtype)
        self.down_proj = Linear(inner, hidden, bias, residual_std(config), rngs=rngs, param_dtype=param_dtype)
        self.act = activation(config.hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(self.act(self.up_proj(x)))


class Experts(nnx.Module):
    """Mixtral's stacked experts: gate_up_proj (experts, 2 * inner, hidden), down_proj (experts, hidden, inner)."""

    def __init__(self, config, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        experts, hidden, inner = config.num_local_experts, config.hidden_size, config.intermediate_size
        self.gate_up_proj = nnx.Param(normal(rngs, (experts, 2 * inner, hidden), config.initializer_range,
                                             param_dtype))
        self.down_proj = nnx.Param(normal(rngs, (experts, hidden, inner), residual_std(config), param_dtype))
        self.act = activation(config.hidden_act)

    def __call__(self, x: jax.Array, weights: jax.Array) -> jax.Array:
        """x: (tokens, hidden); weights: (tokens, experts), zero outside each token's top k -> (tokens, hidden).
        Every expert runs on every token (dense): simple and jit-friendly at the sizes mtlm trains."""
        gate, up = jnp.split(jnp.einsum("th,eih->tei", x, self.gate_up_proj[...].astype(x.dtype)), 2, axis=-1)
        outputs = jnp.einsum("tei,ehi->teh", self.act(gate) * up, self.down_proj[...].astype(x.dtype))
        return jnp.einsum("teh,te->th", outputs, weights.astype(x.dtype))


class Router(nnx.Module):
    def __init__(self, config, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.weight = nnx.Param(normal(rngs, (config.num_local_experts, config.hidden_size), config.initializer_range,
                                       param_dtype))
        self.top_k = config.num_experts_per_tok

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: (tokens, hidden) -> router logits (tokens, experts) and the renormalised top-k weights, dense
        (tokens, experts) with zeros elsewhere."""
        logits = x @ self.weight[...].astype(x.dtype).T
        probabilities = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        top_weights, top_index = jax.lax.top_k(probabilities, self.top_k)
        top_weights = top_weights / top_weights.sum(-1, keepdims=True)
        dense = jnp.zeros_like(probabilities).at[jnp.arange(x.shape[0])[:, None], top_index].set(top_weights)
        return logits, dense


class SparseMoeBlock(nnx.Module):
    def __init__(self, config, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.gate = Router(config, rngs=rngs, param_dtype=param_dtype)
        self.experts = Experts(config, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        tokens = x.reshape(-1, x.shape[-1])
        router_logits, weights = self.gate(tokens)
        if hasattr(self, "__captures__"):  # inside nnx.capture (training): keep them for the load-balancing loss
            self.sow(nnx.Intermediate, "router_logits", router_logits)
        return self.experts(tokens, weights).reshape(x.shape)


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x)))."""

    def __init__(self, config, mlp_class, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.self_attn = Attention(config, rngs=rngs, param_dtype=param_dtype)
        self.mlp = mlp_class(config, rngs=rngs, param_dtype=param_dtype)
        self.input_layernorm = make_norm(config, param_dtype)
        self.post_attention_layernorm = make_norm(config, param_dtype)
        self.dropout_rate = config.hidden_dropout

    def __call__(self, x, rotary, key_mask, query_positions, layer_cache, write_at, dropout_key=None):
        keys = jax.random.split(dropout_key, 3) if dropout_key is not None else [None] * 3
        attention, layer_cache = self.self_attn(self.input_layernorm(x), rotary, key_mask, query_positions,
                                                layer_cache, write_at, keys[0])
        x = x + dropout(attention, self.dropout_rate, keys[1])
        return x + dropout(self.mlp(self.post_attention_layernorm(x)), self.dropout_rate, keys[2]), layer_cache


class Backbone(nnx.Module):
    def __init__(self, config, mlp_class, learned_positions: bool, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        std = config.initializer_range
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, std, config.pad_token_id, rngs=rngs,
                                      param_dtype=param_dtype)
        if learned_positions:
            self.embed_positions = Embedding(config.max_position_embeddings, config.hidden_size, std, None, rngs=rngs,
                                             param_dtype=param_dtype)
        self.layers = nnx.List([DecoderLayer(config, mlp_class, rngs=rngs, param_dtype=param_dtype)
                                for _ in range(config.num_hidden_layers)])
        self.norm = make_norm(config, param_dtype)


@dataclass
class FlaxCausalLMOutput:
    """logits: (batch, seq, vocab) float32; cache: the updated KVCache when one was passed."""

    logits: jax.Array
    cache: KVCache | None = None


class FlaxMtlmForCausalLM(nnx.Module):
    """The Flax twin of an mtlm causal LM. `dtype` is the compute dtype (bfloat16 on TPU), parameters stay in
    `param_dtype`; `remat` recomputes each layer in the backward pass instead of storing its activations.
    Subclasses name their MLP, whether positions are learned embeddings (else rotary) and whether the MLP routes
    tokens to experts (then training adds the load-balancing loss)."""

    mlp_class = None
    learned_positions = False
    routes_experts = False

    def __init__(self, config, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32, remat: bool = False):
        if getattr(config, "residual_gates", None):
            raise ValueError("This checkpoint was saved while gated growth ramped its new layers in "
                             f"(residual_gates={config.residual_gates}), which the Flax twin does not implement: "
                             "use a checkpoint from after the ramp, or the PyTorch model.")
        self.config = config
        self.dtype = dtype
        self.remat = remat
        self.model = Backbone(config, self.mlp_class, self.learned_positions, rngs=rngs, param_dtype=param_dtype)
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, False, config.initializer_range, rngs=rngs,
                                  param_dtype=param_dtype)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 position_ids: jax.Array | None = None, cache: KVCache | None = None,
                 dropout_key: jax.Array | None = None) -> FlaxCausalLMOutput:
        """input_ids: (batch, seq); attention_mask: (batch, seq), 0 on padding; position_ids: (batch, seq), by
        default counted from the cache's index. With `cache`, the new keys and values are written at its index.
        `dropout_key` turns on the config's dropout (training)."""
        batch, seq = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((batch, seq), jnp.int32)
        start = cache.index if cache is not None else 0
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(seq) + start, (batch, seq))
        query_positions = jnp.broadcast_to(jnp.arange(seq) + start, (batch, seq))
        backbone = self.model
        hidden = backbone.embed_tokens(input_ids, self.dtype)
        rotary = None
        if self.learned_positions:
            hidden = hidden + backbone.embed_positions(position_ids, self.dtype)
        else:
            rotary = rotary_tables(self.config, position_ids)
        layer_keys = jax.random.split(dropout_key, len(backbone.layers) + 1) if dropout_key is not None else \
            [None] * (len(backbone.layers) + 1)
        hidden = dropout(hidden, self.config.hidden_dropout, layer_keys[-1])
        if cache is not None:
            key_mask = jax.lax.dynamic_update_slice_in_dim(cache.mask, attention_mask.astype(cache.mask.dtype), start,
                                                           1)
        else:
            key_mask = attention_mask
        new_keys, new_values = [], []
        for index, layer in enumerate(backbone.layers):
            layer_cache = (cache.keys[index], cache.values[index]) if cache is not None else None
            call = nnx.remat(type(layer).__call__) if self.remat else type(layer).__call__
            hidden, (keys, values) = call(layer, hidden, rotary, key_mask, query_positions, layer_cache, start,
                                          layer_keys[index])
            new_keys.append(keys)
            new_values.append(values)
        hidden = backbone.norm(hidden)
        head = backbone.embed_tokens.weight[...] if self.config.tie_word_embeddings else self.lm_head.weight[...]
        logits = project(hidden, head).astype(jnp.float32)
        if cache is not None:
            cache = KVCache(jnp.stack(new_keys), jnp.stack(new_values), key_mask, start + seq)
        return FlaxCausalLMOutput(logits=logits, cache=cache)

    def init_cache(self, batch: int, length: int) -> KVCache:
        config = self.config
        shape = (config.num_hidden_layers, batch, length, config.num_key_value_heads, config.head_dim)
        return KVCache(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype), jnp.zeros((batch, length),
                                                                                               jnp.int32),
                       jnp.array(0, jnp.int32))

    # ---- checkpoints: the PyTorch classes' config.json and model.safetensors ----

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters by their PyTorch names, as float32 numpy arrays in PyTorch layouts."""
        flat = nnx.to_flat_state(nnx.state(self, nnx.Param))
        return {".".join(str(part) for part in path): np.asarray(jax.device_get(variable.get_value()), np.float32)
                for path, variable in flat}

    def load_state_dict(self, weights: dict[str, np.ndarray]) -> None:
        """Set every parameter from `weights` (PyTorch names); a missing, unexpected or misshapen one is an error."""
        state = nnx.state(self, nnx.Param)
        flat = nnx.to_flat_state(state)
        expected = {".".join(str(part) for part in path): variable for path, variable in flat}
        ignored = {"lm_head.weight"} if self.config.tie_word_embeddings else set()
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected) - ignored)
        if missing or unexpected:
            raise ValueError(f"The weights do not fit the {type(self).__name__} of this config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}. Load them with the config.json saved beside them.")
        for name, variable in expected.items():
            array = weights[name]
            if tuple(array.shape) != tuple(variable.get_value().shape):
                raise ValueError(f"{name} has shape {tuple(array.shape)}, the model expects "
                                 f"{tuple(variable.get_value().shape)}: the weights belong to another config; load "
                                 "them with the config.json saved beside them.")
            variable.set_value(jnp.asarray(array, dtype=variable.get_value().dtype))
        nnx.update(self, nnx.from_flat_state(flat))

    @classmethod
    def from_config(cls, config, seed: int = 0, **options) -> "FlaxMtlmForCausalLM":
        """A freshly initialised Flax twin of the config's family (its registry entry names the class)."""
        return family_of(config).load_flax_class()(config, rngs=nnx.Rngs(seed), **options)

    @classmethod
    def from_pretrained(cls, folder, **options) -> "FlaxMtlmForCausalLM":
        """The model in the checkpoint folder `folder` (written by PyTorch or Flax), its class chosen by
        config.model_type."""
        folder = Path(folder)
        config = AutoConfig.from_pretrained(folder)
        twins = [name for name, family in FAMILIES.items() if family.flax_class]
        if config.model_type not in twins:
            raise ValueError(f"{folder} holds a {config.model_type!r} model; the Flax twins are {', '.join(twins)}.")
        model = cls.from_config(config, **options)
        model.load_state_dict(read_safetensors(folder))
        return model

    def save_pretrained(self, folder) -> None:
        """config.json (with auto_map), model.safetensors in PyTorch names and layouts, the PyTorch code files, and the
        generation config: the folder loads with AutoModelForCausalLM, with or without mtlm installed."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config_class = type(self.config)
        torch_class = family_of(self.config).causal_lm_class
        self.config.auto_map = auto_map(config_class, torch_class)
        self.config.architectures = [torch_class.__name__]
        self.config.save_pretrained(folder)
        save_file(self.state_dict(), str(folder / "model.safetensors"), metadata={"format": "pt"})
        GenerationConfig.from_model_config(self.config).save_pretrained(folder)
        copy_code_files(config_class, torch_class, folder)

    # ---- generation ----

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int = 0, seed: int = 0) -> jax.Array:
        """Greedy or sampled continuation with a KV cache; the prompt (batch, seq) may be left-padded (mask 0).
        Returns (batch, seq + max_new_tokens): the prompt and the new tokens (eos does not stop a row early)."""
        input_ids = jnp.asarray(input_ids)
        batch, prompt_length = input_ids.shape
        length = prompt_length + max_new_tokens
        if length > self.config.max_position_embeddings and self.learned_positions:
            raise ValueError(f"{prompt_length} prompt + {max_new_tokens} new tokens exceed the "
                             f"{self.config.max_position_embeddings} learned positions: shorten the prompt or ask "
                             "for fewer new tokens.")
        mask = jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask)
        positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
        cache = self.init_cache(batch, length)
        logits, cache = _forward(self, input_ids, mask, positions, cache)
        key = jax.random.key(seed)
        tokens = [input_ids]
        next_position = positions[:, -1:] + 1
        for step in range(max_new_tokens):
            key, subkey = jax.random.split(key)
            next_token = _choose(logits[:, -1], subkey, do_sample, temperature, top_k)[:, None]
            tokens.append(next_token)
            if step + 1 < max_new_tokens:
                logits, cache = _forward(self, next_token, jnp.ones_like(next_token), next_position, cache)
                next_position = next_position + 1
        return jnp.concatenate(tokens, axis=1)


@nnx.jit
def _forward(model, input_ids, attention_mask, position_ids, cache):
    output = model(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache)
    return output.logits, output.cache


@functools.partial(jax.jit, static_argnames=("do_sample", "top_k"))
def _choose(logits, key, do_sample: bool, temperature, top_k: int):
    """logits: (batch, vocab) -> (batch,) token ids."""
    if not do_sample:
        return jnp.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_k:
        threshold = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


def read_safetensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of a (possibly sharded) model.safetensors, as float32 numpy arrays."""
    weights = {}
    for name in weight_files(folder):
        weights.update({key: value.astype(np.float32) for key, value in load_file(str(folder / name)).items()})
    return weights


class FlaxMtlmLlamaForCausalLM(FlaxMtlmForCausalLM):
    mlp_class = GatedMLP


class FlaxMtlmGPTForCausalLM(FlaxMtlmForCausalLM):
    mlp_class = MLP
    learned_positions = True


class FlaxMtlmMoeForCausalLM(FlaxMtlmForCausalLM):
    mlp_class = SparseMoeBlock
    routes_experts = True


class FlaxAutoModelForCausalLM:
    """`FlaxAutoModelForCausalLM.from_pretrained(folder)` / `.from_config(config)`: the Flax twin of the config's
    family."""

    from_pretrained = FlaxMtlmForCausalLM.from_pretrained
    from_config = FlaxMtlmForCausalLM.from_config
