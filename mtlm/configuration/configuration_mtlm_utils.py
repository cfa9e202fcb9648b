"""Checks shared by every mtlm configuration. They run at construction and name the field and the rule."""

from transformers.activations import ACT2FN


def require_positive(config, *fields: str) -> None:
    for field in fields:
        value = getattr(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{field} must be a positive integer, got {value!r}.")


def require_probability(config, *fields: str) -> None:
    for field in fields:
        value = getattr(config, field)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{field} is a dropout probability and must lie in [0, 1), got {value!r}.")


def require_choice(config, field: str, choices) -> None:
    value = getattr(config, field)
    if value not in choices:
        raise ValueError(f"{field}={value!r} is not supported; choose one of {sorted(choices)}.")


def check_attention_shape(config, mlp: bool = True) -> None:
    """Sizes every attention block needs: heads split the width evenly, query heads group evenly over kv heads; and,
    with `mlp`, the MLP's width and activation."""
    require_positive(config, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings", *(["intermediate_size"] if mlp else []))
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"hidden_size ({config.hidden_size}) must be divisible by num_attention_heads "
            f"({config.num_attention_heads})."
        )
    if config.num_attention_heads % config.num_key_value_heads:
        raise ValueError(
            f"num_attention_heads ({config.num_attention_heads}) must be divisible by num_key_value_heads "
            f"({config.num_key_value_heads}) for grouped-query attention."
        )
    if mlp:
        require_choice(config, "hidden_act", ACT2FN.keys())
    require_probability(config, "attention_dropout", "hidden_dropout")
    if getattr(config, "loss_chunk_size", None) is not None:
        require_positive(config, "loss_chunk_size")
    if config.initializer_range <= 0:
        raise ValueError(f"initializer_range must be positive, got {config.initializer_range!r}.")
