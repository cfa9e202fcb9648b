"""The model families.

In a checkpoint folder every code file sits beside the others, so a modeling file imports its configuration as a
flat sibling (`from .configuration_mtlm_llama import ...`). Inside the package the configurations live in
mtlm.configuration; registering those modules under this package's name too makes the same import line resolve to
the same module objects here.
"""

import importlib
import sys

for _name in ("configuration_mtlm_utils", "configuration_mtlm_llama", "configuration_mtlm_gpt", "configuration_mtlm_moe"):
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"mtlm.configuration.{_name}")

from .modeling_mtlm_gpt import MtlmGPTForCausalLM, MtlmGPTModel  # noqa: E402
from .modeling_mtlm_llama import MtlmLlamaForCausalLM, MtlmLlamaModel  # noqa: E402
from .modeling_mtlm_moe import MtlmMoeForCausalLM, MtlmMoeModel  # noqa: E402

__all__ = [
    "MtlmGPTForCausalLM",
    "MtlmGPTModel",
    "MtlmLlamaForCausalLM",
    "MtlmLlamaModel",
    "MtlmMoeForCausalLM",
    "MtlmMoeModel",
]
