"""Configuration of `mtlm_gpt`: learned positions, GELU-family MLP, LayerNorm or RMSNorm (GPT-2, MLM GPT-2,
MTLM2's TinyGPT, tiny-LM Transformer)."""

from transformers import PreTrainedConfig

from .configuration_mtlm_utils import check_attention_shape, require_choice

NORM_TYPES = ("layernorm", "rmsnorm")


class MtlmGPTConfig(PreTrainedConfig):
    r"""
    Defaults are GPT-2 small's (d=768, 12 layers, 4d MLP, `gelu_new`, LayerNorm, biases, tied, context 1024).

    intermediate_size: MLP width; `None` means `4 * hidden_size`.
    norm_type: "layernorm" (with bias, GPT-2) or "rmsnorm" (TinyGPT).
    hidden_dropout: dropout on the embeddings and on each residual branch's output.
    loss_chunk_size: in training, compute the loss this many positions at a time, recomputing each chunk's logits in
        the backward pass, so that the (batch, seq, vocab) logits never exist whole; the forward then returns no
        logits. `None` computes them at once.
    scale_residual_init: initialise residual output projections with std `initializer_range / sqrt(2L)` (GPT-2).
    """

    model_type = "mtlm_gpt"
    # The cache, by its names before and since transformers 5.24.
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    vocab_size: int = 50257
    hidden_size: int = 768
    intermediate_size: int | None = None
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None
    hidden_act: str = "gelu_new"
    max_position_embeddings: int = 1024
    norm_type: str = "layernorm"
    norm_eps: float = 1e-5
    attention_bias: bool = True
    mlp_bias: bool = True
    initializer_range: float = 0.02
    scale_residual_init: bool = True
    attention_dropout: float = 0.1
    hidden_dropout: float = 0.1
    tie_word_embeddings: bool = True
    loss_chunk_size: int | None = None
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)
        check_attention_shape(self)
        require_choice(self, "norm_type", NORM_TYPES)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


__all__ = ["MtlmGPTConfig"]
