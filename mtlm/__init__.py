"""mtlm: a transformers-native zoo of tiny language models.

Importing mtlm registers every family with transformers' Auto classes, so `AutoConfig.for_model("mtlm_llama")`,
`AutoModelForCausalLM.from_config(...)` and `from_pretrained(folder)` work without `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration import MtlmGPTConfig, MtlmLlamaConfig, MtlmMoeConfig
from .modeling import (
    MtlmGPTForCausalLM,
    MtlmGPTModel,
    MtlmLlamaForCausalLM,
    MtlmLlamaModel,
    MtlmMoeForCausalLM,
    MtlmMoeModel,
)

FAMILIES = {
    MtlmLlamaConfig: (MtlmLlamaModel, MtlmLlamaForCausalLM),
    MtlmGPTConfig: (MtlmGPTModel, MtlmGPTForCausalLM),
    MtlmMoeConfig: (MtlmMoeModel, MtlmMoeForCausalLM),
}

for _config_class, (_model_class, _lm_class) in FAMILIES.items():
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModel.register(_config_class, _model_class, exist_ok=True)
    AutoModelForCausalLM.register(_config_class, _lm_class, exist_ok=True)

__version__ = "0.2.0"

__all__ = [
    "FAMILIES",
    "MtlmGPTConfig",
    "MtlmGPTForCausalLM",
    "MtlmGPTModel",
    "MtlmLlamaConfig",
    "MtlmLlamaForCausalLM",
    "MtlmLlamaModel",
    "MtlmMoeConfig",
    "MtlmMoeForCausalLM",
    "MtlmMoeModel",
]


def __getattr__(name: str):
    # The Flax twins load on first use: jax and flax are the optional [flax] extra.
    if name in ("FlaxAutoModelForCausalLM", "FlaxMtlmForCausalLM"):
        from .modeling import flax_mtlm

        return getattr(flax_mtlm, name)
    raise AttributeError(f"module 'mtlm' has no attribute {name!r}")
