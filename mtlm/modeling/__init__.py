"""The model families (modeling_<model_type>.py), the blocks they share, and the Flax twins.

In a checkpoint folder every code file sits beside the others, so a modeling file imports its configuration as a
flat sibling (`from .configuration_<model_type> import ...`). Inside the package the configurations live in
mtlm.configuration; registering those modules under this package's name too makes the same import line resolve to
the same module objects here.
"""

import importlib
import pkgutil
import sys

from .. import configuration

for _module in pkgutil.iter_modules(configuration.__path__):
    if _module.name.startswith("configuration_"):
        sys.modules[f"{__name__}.{_module.name}"] = importlib.import_module(f"{configuration.__name__}.{_module.name}")
