"""Named configurations of the models mtlm reproduces (facts from SEEDS.md).

`reference_parameters` is the count SEEDS.md gives for the original, where it gives one; tests hold the built
model's exact count against it.
"""

import difflib
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig

from ..errors import UsageError


@dataclass(frozen=True)
class Preset:
    name: str
    model_type: str
    description: str
    fields: dict = field(default_factory=dict)
    reference_parameters: int | None = None

    def config(self, **overrides) -> PreTrainedConfig:
        return AutoConfig.for_model(self.model_type, **{**self.fields, **overrides})


# MLM's synthetic-arithmetic vocabulary: <pad> 0, <bos> 1, <eos> 2, digits, + - * /, =.
_ARITHMETIC_TOKENS = dict(vocab_size=18, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# The char tokenizer of Tiny Shakespeare: 65 characters and 4 specials (the seed's vocabulary is the 65 characters).
_TLM_CHARACTERS = dict(vocab_size=69, bos_token_id=None, eos_token_id=None)
_MTLM1 = dict(
    vocab_size=32000,
    hidden_size=768,
    intermediate_size=1280,
    num_attention_heads=12,
    max_position_embeddings=1024,
    hidden_dropout=0.05,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)

PRESETS = {
    preset.name: preset
    for preset in [
        Preset(
            "mtlm1-88m",
            "mtlm_llama",
            "MTLM1 base before growth: Llama-style, d768, 12 layers, SwiGLU 1280, tied, Mistral vocabulary",
            dict(_MTLM1, num_hidden_layers=12),
            reference_parameters=88_300_000,
        ),
        Preset(
            "mtlm1-152m",
            "mtlm_llama",
            "MTLM1 after doubling the depth by stacking: 24 layers at d768 (published as '200M')",
            dict(_MTLM1, num_hidden_layers=24),
            reference_parameters=152_000_000,
        ),
        Preset(
            "tinygpt-41m",
            "mtlm_gpt",
            "MTLM2 TinyGPT (JAX/TPU): d384, 12 layers of 6 heads, RMSNorm, biased attention, GELU MLP 1024, untied",
            dict(
                vocab_size=32000,
                hidden_size=384,
                intermediate_size=1024,
                num_hidden_layers=12,
                num_attention_heads=6,
                max_position_embeddings=1024,
                hidden_act="gelu_pytorch_tanh",
                norm_type="rmsnorm",
                norm_eps=1e-6,
                tie_word_embeddings=False,
                scale_residual_init=True,
                hidden_dropout=0.0,
                attention_dropout=0.0,
                bos_token_id=1,
                eos_token_id=2,
            ),
            reference_parameters=41_500_000,
        ),
        Preset(
            "stlm-50m",
            "mtlm_llama",
            "STLM '50M' baseline: h512, 8 layers, 16 heads over 4 kv heads, SwiGLU 1320, GPT-2 vocabulary, tied",
            dict(
                vocab_size=50257,
                hidden_size=512,
                intermediate_size=1320,
                num_hidden_layers=8,
                num_attention_heads=16,
                num_key_value_heads=4,
                max_position_embeddings=512,
                tie_word_embeddings=True,
                bos_token_id=50256,
                eos_token_id=50256,
            ),
            reference_parameters=47_200_000,
        ),
        Preset(
            "gpt2-124m",
            "mtlm_gpt",
            "GPT-2 small: d768, 12 layers, LayerNorm, gelu_new, tied (the OPT-125M/GPT-2 comparison row)",
            dict(),
            reference_parameters=124_400_000,
        ),
        Preset(
            "mlm-gpt2",
            "mtlm_gpt",
            "MLM GPT-2 on arithmetic: d128, 4 heads, 4 layers, MLP 512, context 20, LayerNorm, GELU, tied",
            dict(
                _ARITHMETIC_TOKENS,
                hidden_size=128,
                num_attention_heads=4,
                num_hidden_layers=4,
                intermediate_size=512,
                max_position_embeddings=20,
                hidden_act="gelu",
            ),
        ),
        Preset(
            "mlm-llama2",
            "mtlm_llama",
            "MLM Llama-2 on arithmetic: d128, 4 heads, 4 layers, SwiGLU 384, context 64, tied",
            dict(
                _ARITHMETIC_TOKENS,
                hidden_size=128,
                num_attention_heads=4,
                num_hidden_layers=4,
                intermediate_size=384,
                max_position_embeddings=64,
                hidden_dropout=0.1,
            ),
        ),
        Preset(
            "mlm-mixtral",
            "mtlm_moe",
            "MLM Mixtral on arithmetic: d32, 2 heads, 2 layers, 4 SwiGLU experts of 64 (top-2), aux weight 0.01",
            dict(
                _ARITHMETIC_TOKENS,
                hidden_size=32,
                num_attention_heads=2,
                num_hidden_layers=2,
                intermediate_size=64,
                max_position_embeddings=64,
                num_local_experts=4,
                num_experts_per_tok=2,
                router_aux_loss_coef=0.01,
                hidden_dropout=0.1,
            ),
        ),
        *[Preset(
            f"tlm-linear-ctx{context}",
            "mtlm_linear",
            f"Tiny-LM Linear: the one-hot characters of a {context}-character context into one linear layer",
            dict(_TLM_CHARACTERS, context_size=context),
        ) for context in (16, 32, 64, 128)],
        *[Preset(
            f"tlm-mlp-{width}",
            "mtlm_mlp",
            f"Tiny-LM MLP: 64 characters' 32-d embeddings concatenated, 3 hidden layers of {width}, GELU, dropout 0.1",
            dict(_TLM_CHARACTERS, context_size=64, embedding_size=32, hidden_sizes=[width] * 3, hidden_dropout=0.1),
        ) for width in (128, 256, 512)],
        *[Preset(
            f"tlm-attention-h{heads}",
            "mtlm_attention",
            f"Tiny-LM self-attention only: d128, 2 pre-LN layers of {heads} heads, no MLP, learned positions, "
            "context 64",
            dict(_TLM_CHARACTERS, hidden_size=128, num_hidden_layers=2, num_attention_heads=heads,
                 max_position_embeddings=64, hidden_dropout=0.1),
        ) for heads in (1, 2, 4, 8)],
        *[Preset(
            "tlm-transformer" if layers == 4 else f"tlm-transformer-l{layers}",
            "mtlm_gpt",
            f"Tiny-LM Transformer on Tiny Shakespeare characters: d128, 4 heads, {layers} layers, MLP 4x, GELU, tied, "
            "context 128",
            dict(_TLM_CHARACTERS, hidden_size=128, num_attention_heads=4, num_hidden_layers=layers,
                 intermediate_size=512, max_position_embeddings=128, hidden_act="gelu"),
        ) for layers in (2, 4, 6)],
        Preset(
            "stlm-byte",
            "mtlm_byte",
            "STLM byte_level: GPT-2-token chunks of 12 bytes, encoder 128→256→256→256→768 with STLM's mean over pads, "
            "core 10 layers d768 16 heads (4 kv) SwiGLU 1536, parallel decoder 7 layers d128",
            dict(chunk_boundary="bpe", max_chunk_bytes=12, encoder_hidden_sizes=[128, 256, 256, 256, 768],
                 encoder_num_attention_heads=8, pooling="stlm", hidden_size=768, num_hidden_layers=10,
                 num_attention_heads=16, num_key_value_heads=4, intermediate_size=1536,
                 max_position_embeddings=512 * 12, hidden_dropout=0.1, decoder_type="parallel",
                 decoder_hidden_size=128, decoder_num_hidden_layers=7, decoder_num_attention_heads=8,
                 local_intermediate_ratio=3, reconstruction_loss_weight=1.0),
        ),
        Preset(
            "byte-small",
            "mtlm_byte",
            "CPU-sized mtlm_byte: BPE chunks of 12, encoder 64→128→256 (mean over real bytes), core 4 layers d256, "
            "causal decoder 2 layers d128",
            dict(chunk_boundary="bpe", max_chunk_bytes=12, encoder_hidden_sizes=[64, 128, 256], hidden_size=256,
                 num_hidden_layers=4, num_attention_heads=4, intermediate_size=768, max_position_embeddings=1024,
                 decoder_type="causal", decoder_hidden_size=128, decoder_num_hidden_layers=2),
        ),
    ]
}


def preset_config(name: str, **overrides) -> PreTrainedConfig:
    """The configuration of preset `name`, with `overrides` applied."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"Unknown preset {name!r}.{hint} Known presets: {', '.join(PRESETS)} (see `mtlm presets`).")
    return PRESETS[name].config(**overrides)


def count_parameters(config: PreTrainedConfig) -> int:
    """Exact number of distinct parameters (tied weights once) of the causal LM `config` describes, built on the
    meta device so that nothing is allocated."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(parameter.numel() for parameter in model.parameters())
