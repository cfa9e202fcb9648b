"""Configuration of `mtlm_linear`: softmax regression on the one-hot characters of a fixed context (Tiny-LM's Linear
baseline)."""

from transformers import PreTrainedConfig

from .configuration_mtlm_utils import require_positive


class MtlmLinearConfig(PreTrainedConfig):
    r"""
    The logits of a position are one `Linear(vocab_size * context_size -> vocab_size)` of the one-hot tokens of its
    last `context_size` positions (left padding, all zeros, before the context is full).

    context_size: tokens each prediction reads.
    max_position_embeddings: the longest input a forward pass or a training block takes (the window slides, so any
        length works; this bounds what training and generation are given).
    """

    model_type = "mtlm_linear"

    vocab_size: int = 69
    context_size: int = 128
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    use_cache: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        require_positive(self, "vocab_size", "context_size", "max_position_embeddings")
        if self.context_size > self.max_position_embeddings:
            raise ValueError(f"context_size ({self.context_size}) cannot exceed max_position_embeddings "
                             f"({self.max_position_embeddings}), the longest input the model takes.")
        if self.tie_word_embeddings:
            raise ValueError("tie_word_embeddings=True is not possible for mtlm_linear: it has no embeddings to tie.")


__all__ = ["MtlmLinearConfig"]
