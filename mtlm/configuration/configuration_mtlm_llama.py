"""Configuration of `mtlm_llama`: pre-norm RMSNorm, SwiGLU, RoPE, grouped-query attention (MTLM1, MLM Llama-2,
STLM baseline)."""

from transformers import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

from .configuration_mtlm_utils import check_attention_shape


class MtlmLlamaConfig(PreTrainedConfig):
    r"""
    Defaults are MTLM1's 88M base model (d=768, 12 layers, SwiGLU 1280, tied, context 1024).

    num_key_value_heads: kv heads for grouped-query attention; `None` means one per query head.
    hidden_dropout: dropout on the embeddings and on each residual branch's output.
    loss_chunk_size: in training, compute the loss this many positions at a time, recomputing each chunk's logits in
        the backward pass, so that the (batch, seq, vocab) logits never exist whole; the forward then returns no
        logits. `None` computes them at once.
    scale_residual_init: initialise residual output projections (attention `o_proj`, MLP `down_proj`) with
        std `initializer_range / sqrt(2 * num_hidden_layers)`, as GPT-2 and MTLM2 do.
    """

    model_type = "mtlm_llama"
    # The cache, by its names before and since transformers 5.24.
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 1280
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 1024
    initializer_range: float = 0.02
    scale_residual_init: bool = False
    rms_norm_eps: float = 1e-6
    rope_parameters: RopeParameters | dict | None = None
    attention_bias: bool = False
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    tie_word_embeddings: bool = True
    loss_chunk_size: int | None = None
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)
        check_attention_shape(self)
        if self.head_dim % 2:
            raise ValueError(
                f"head_dim = hidden_size / num_attention_heads = {self.head_dim} must be even for rotary embeddings."
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


__all__ = ["MtlmLlamaConfig"]
