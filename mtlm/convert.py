"""Weights both ways between the mtlm families and their upstream twins in transformers (each family's twin and
translations are in its registry entry, mtlm/families.py):

    mtlm_llama <-> LlamaForCausalLM    mtlm_gpt <-> GPT2LMHeadModel    mtlm_moe <-> MixtralForCausalLM

The two sides compute the same function, so logits agree to float rounding. Going upstream publishes a checkpoint
that needs no remote code; an mtlm option the upstream class cannot express raises a ValueError that names it.
"""

import os
from pathlib import Path

from transformers import PreTrainedModel

from .families import FAMILIES, Family
from .files import load_causal_lm, save_checkpoint, source_tokenizer


def _twin_of_upstream(model: PreTrainedModel) -> Family:
    for family in FAMILIES.values():
        if family.upstream and type(model) is family.upstream.causal_lm_class:
            return family
    known = ", ".join(family.upstream.causal_lm_class.__name__ for family in FAMILIES.values() if family.upstream)
    raise ValueError(f"from_upstream converts {known}; got {type(model).__name__}.")


def _family_with_twin(model: PreTrainedModel) -> Family:
    family = FAMILIES.get(getattr(model.config, "model_type", None))
    if family is None or type(model) is not family.causal_lm_class or family.upstream is None:
        known = ", ".join(family.causal_lm_class.__name__ for family in FAMILIES.values() if family.upstream)
        raise ValueError(f"to_upstream converts {known}; got {type(model).__name__}.")
    return family


def _rebuild(model: PreTrainedModel, target_class: type, config, weights: dict) -> PreTrainedModel:
    converted = target_class(config).to(model.dtype)
    converted.load_state_dict(weights, strict=True)
    converted.generation_config = model.generation_config
    return converted.eval() if not model.training else converted


def from_upstream(model: PreTrainedModel) -> PreTrainedModel:
    """The mtlm model computing the same function as a transformers model that is a family's upstream twin
    (LlamaForCausalLM, GPT2LMHeadModel, MixtralForCausalLM)."""
    family = _twin_of_upstream(model)
    twin = family.upstream
    return _rebuild(model, family.causal_lm_class, twin.config_to_mtlm(model.config, family.config_class),
                    twin.weights_to_mtlm(model.state_dict()))


def to_upstream(model: PreTrainedModel) -> PreTrainedModel:
    """The transformers model (the family's upstream twin) computing the same function as an mtlm model; ValueError
    naming the option when the config has no upstream equivalent."""
    twin = _family_with_twin(model).upstream
    if getattr(model.config, "residual_gates", None):
        raise ValueError(f"Cannot convert to {twin.causal_lm_class.__name__}: residual_gates="
                         f"{model.config.residual_gates} (a checkpoint saved while gated growth ramped its new layers "
                         "in) is not expressible; convert a checkpoint from after the ramp.")
    return _rebuild(model, twin.causal_lm_class, twin.config_from_mtlm(model.config),
                    twin.weights_from_mtlm(model.state_dict()))


def convert_folder(
    source: str | os.PathLike, destination: str | os.PathLike, to: str | None = None, overwrite: bool = False
) -> str:
    """Convert the checkpoint folder `source` to `to` ("upstream" or "mtlm"; by default the other side) and write it,
    with its tokenizer, to `destination`. Returns the direction taken."""
    source = Path(source)
    model = load_causal_lm(source)
    is_mtlm = model.config.model_type in FAMILIES
    to = to or ("upstream" if is_mtlm else "mtlm")
    if to not in ("upstream", "mtlm"):
        raise ValueError(f"to must be 'upstream' or 'mtlm', got {to!r}.")
    if (to == "mtlm") == is_mtlm:
        raise ValueError(f"{source} already holds a{'n mtlm' if is_mtlm else 'n upstream'} model ({type(model).__name__}).")
    converted = to_upstream(model) if to == "upstream" else from_upstream(model)
    save_checkpoint(converted, source_tokenizer(source), destination, overwrite=overwrite)
    return to
