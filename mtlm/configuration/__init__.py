"""One PreTrainedConfig per family, and the named presets of the originals."""

from .configuration_mtlm_gpt import MtlmGPTConfig
from .configuration_mtlm_llama import MtlmLlamaConfig
from .configuration_mtlm_moe import MtlmMoeConfig

__all__ = ["MtlmGPTConfig", "MtlmLlamaConfig", "MtlmMoeConfig"]
