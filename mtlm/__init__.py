"""mtlm: a transformers-native zoo of tiny language models.

Importing mtlm registers every family (mtlm/families.py) with transformers' Auto classes, so
`AutoConfig.for_model(model_type)`, `AutoModelForCausalLM.from_config(...)` and `from_pretrained(folder)` work without
`trust_remote_code`.
"""

from .families import *  # noqa: F403  (the registry, and each family's config and model classes)
from .families import __all__ as _family_names

__version__ = "0.2.0"

__all__ = list(_family_names)


def __getattr__(name: str):
    # The Flax twins load on first use: jax and flax are the optional [flax] extra.
    if name in ("FlaxAutoModelForCausalLM", "FlaxMtlmForCausalLM"):
        from .modeling import flax_mtlm

        return getattr(flax_mtlm, name)
    raise AttributeError(f"module 'mtlm' has no attribute {name!r}")
