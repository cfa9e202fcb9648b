"""Configuration of `mtlm_attention`: token and learned position embeddings through pre-LN causal self-attention
layers with no MLP (Tiny-LM's self-attention-only model)."""

from transformers import PreTrainedConfig

from .configuration_mtlm_utils import check_attention_shape, require_choice

NORM_TYPES = ("layernorm", "rmsnorm")


class MtlmAttentionConfig(PreTrainedConfig):
    r"""
    `num_hidden_layers` blocks of x + drop(attn(norm(x))), a final norm and a linear head (with bias) to the
    vocabulary. `max_position_embeddings` is the context: `generate()` keeps the last that many tokens.

    loss_chunk_size: in training, compute the loss this many positions at a time, recomputing each chunk's logits in
        the backward pass, so that the (batch, seq, vocab) logits never exist whole; the forward then returns no
        logits. `None` computes them at once.
    head_bias: a bias on the output layer (Tiny-LM's head has one).
    """

    model_type = "mtlm_attention"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    vocab_size: int = 69
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 64
    norm_type: str = "layernorm"
    norm_eps: float = 1e-5
    attention_bias: bool = True
    head_bias: bool = True
    initializer_range: float = 0.02
    scale_residual_init: bool = False
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.1
    tie_word_embeddings: bool = False
    loss_chunk_size: int | None = None
    use_cache: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)
        check_attention_shape(self, mlp=False)
        require_choice(self, "norm_type", NORM_TYPES)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def context_size(self) -> int:
        return self.max_position_embeddings


__all__ = ["MtlmAttentionConfig"]
