"""Configuration of `mtlm_mlp`: the embeddings of a fixed context, concatenated, through a GELU MLP (Tiny-LM's MLP
baseline)."""

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

from .configuration_mtlm_utils import require_choice, require_positive, require_probability


class MtlmMLPConfig(PreTrainedConfig):
    r"""
    A position's logits: its last `context_size` token embeddings (`embedding_size` each, zeros before the context
    is full) concatenated, then one hidden layer per entry of `hidden_sizes` (activation, dropout), then a linear
    layer to the vocabulary.

    hidden_dropout: dropout after every hidden layer.
    max_position_embeddings: the longest input a forward pass or a training block takes (the window slides).
    """

    model_type = "mtlm_mlp"

    vocab_size: int = 69
    context_size: int = 64
    embedding_size: int = 32
    hidden_sizes: list[int] | None = None
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    use_cache: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.hidden_sizes is None:
            self.hidden_sizes = [256, 256, 256]
        super().__post_init__(**kwargs)
        require_positive(self, "vocab_size", "context_size", "embedding_size", "max_position_embeddings")
        if not self.hidden_sizes or not all(isinstance(size, int) and size > 0 for size in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must list at least one positive layer width, got {self.hidden_sizes!r}.")
        if self.context_size > self.max_position_embeddings:
            raise ValueError(f"context_size ({self.context_size}) cannot exceed max_position_embeddings "
                             f"({self.max_position_embeddings}), the longest input the model takes.")
        require_choice(self, "hidden_act", ACT2FN.keys())
        require_probability(self, "hidden_dropout")
        if self.tie_word_embeddings:
            raise ValueError("tie_word_embeddings=True is not possible for mtlm_mlp: its embeddings and output layer "
                             "have different widths.")


__all__ = ["MtlmMLPConfig"]
