"""Depth growth: map a trained model's layers onto a deeper config of the same family.

A layer map lists, for every layer of the grown model, the source layer whose weights it starts from, or None for a
freshly initialised layer. Embeddings, final norm and LM head are carried over unchanged.

    stack       the whole stack repeated: 4 -> 8 is [0 1 2 3 0 1 2 3] (G_stack, Du et al. 2024; MTLM1)
    interleave  each layer repeated in place: 4 -> 8 is [0 0 1 1 2 2 3 3]
    random      the source layers, then fresh ones: 4 -> 8 is [0 1 2 3 - - - -] (the baseline)
    midas       the middle block repeated in place (MIDAS, Saunshi et al. 2024): 4 -> 6 is [0 1 2 1 2 3]; growing
                one block at a time (4 -> 5 -> 6 ...) is their recipe, a doubling repeats the whole stack

Growth factors need not be integers: 12 -> 18 stacks as [0..11, 0..5] and interleaves as [0 0 1 2 2 3 ...].
Function-preserving growth zeroes the residual output projections (the family's `residual_outputs` in its registry
entry: attention o_proj, MLP down_proj, every expert's down_proj in MoE; biases too) of every layer that is not the
first use of its source layer: those layers then add nothing to the residual stream, and the grown model computes
exactly the source model's function.
"""

import copy
import os
import re
from pathlib import Path

import torch
from transformers import PreTrainedModel

from ..errors import UsageError
from ..families import FAMILIES, Family
from ..files import load_causal_lm, read_checkpoint_config, read_json, save_checkpoint, source_tokenizer

METHODS = ("stack", "interleave", "random", "midas")


def layer_map(method: str, source_layers: int, num_layers: int) -> list[int | None]:
    """The source layer each of `num_layers` grown layers starts from (None: freshly initialised)."""
    check_depths(source_layers, num_layers)
    if method == "stack":
        return [index % source_layers for index in range(num_layers)]
    if method == "interleave":
        return [index * source_layers // num_layers for index in range(num_layers)]
    if method == "random":
        return list(range(source_layers)) + [None] * (num_layers - source_layers)
    if method == "midas":
        added = num_layers - source_layers
        if added > source_layers:
            return [index % source_layers for index in range(num_layers)]
        start = (source_layers - added) // 2
        middle = list(range(start, start + added))
        return list(range(start + added)) + middle + list(range(start + added, source_layers))
    raise UsageError(f"Unknown growth method {method!r}: choose one of {', '.join(METHODS)}, or give a layer map.")


def check_depths(source_layers: int, num_layers: int) -> None:
    if num_layers <= source_layers:
        raise UsageError(
            f"Growth needs more layers than the source's {source_layers}; got num_layers={num_layers}. Pass a larger "
            "--num-layers."
        )


def check_layer_map(mapping: list[int | None], source_layers: int, num_layers: int,
                    function_preserving: bool) -> None:
    """Raise a ValueError naming the problem when `mapping` cannot grow `source_layers` into `num_layers`."""
    check_depths(source_layers, num_layers)
    if len(mapping) != num_layers:
        raise UsageError(f"The layer map has {len(mapping)} entries but the grown model has {num_layers} layers: give "
                         "one source layer per grown layer.")
    out_of_range = [index for index in mapping if index is not None and not 0 <= index < source_layers]
    if out_of_range:
        raise UsageError(f"The layer map names layers {sorted(set(out_of_range))} but the source has layers 0 to "
                         f"{source_layers - 1}.")
    if function_preserving and first_uses(mapping) != list(range(source_layers)):
        raise UsageError(
            f"A function-preserving layer map must use every source layer, first uses in order 0..{source_layers - 1} "
            f"(the copies after them are zeroed); {mapping} does not. Reorder the map or drop --function-preserving."
        )


def first_uses(mapping: list[int | None]) -> list[int]:
    """The source layers in the order of their first use in `mapping`."""
    seen: dict[int, None] = {}
    for index in mapping:
        if index is not None:
            seen.setdefault(index, None)
    return list(seen)


def zeroed_layers(mapping: list[int | None]) -> list[int]:
    """Grown layers that function-preserving growth silences: fresh layers and repeated uses of a source layer."""
    seen: set[int] = set()
    silenced = []
    for position, index in enumerate(mapping):
        if index is None or index in seen:
            silenced.append(position)
        seen.add(index)
    return silenced


def is_residual_output(family: Family, name: str) -> bool:
    """Whether the parameter `name` (its path inside a layer) belongs to a module writing the residual stream."""
    return any(name == output or name.startswith(output + ".") for output in family.residual_outputs)


@torch.no_grad()
def grow_model(
    model: PreTrainedModel,
    num_layers: int | None = None,
    method: str = "stack",
    mapping: list[int | None] | None = None,
    function_preserving: bool = False,
    source: str | None = None,
) -> PreTrainedModel:
    """A deeper copy of `model` (same family, `num_layers` layers) initialised from its layers by `method`, or by an
    explicit `mapping` (which then decides the depth). The growth is appended to `config.growth_history`; `model` is
    left untouched."""
    family = FAMILIES.get(getattr(model.config, "model_type", None))
    if family is None or not isinstance(model, family.causal_lm_class):
        raise TypeError(f"grow_model grows mtlm models; got {type(model).__name__} (convert it with "
                        "mtlm.convert.from_upstream first).")
    if family.layers is None:
        raise UsageError(f"The {family.model_type} family has no layers to grow; depth growth works on the decoder "
                         f"families ({', '.join(name for name, other in FAMILIES.items() if other.layers)}).")
    source_layers = model.config.num_hidden_layers
    if mapping is None:
        mapping = layer_map(method, source_layers, num_layers)
    else:
        method, num_layers = "map", num_layers or len(mapping)
    check_layer_map(mapping, source_layers, num_layers, function_preserving)

    config = copy.deepcopy(model.config)
    config.num_hidden_layers = num_layers
    config.growth_history = [*getattr(model.config, "growth_history", []), {
        "source": source or model.config.name_or_path or None,
        "method": method,
        "layer_map": mapping,
        "function_preserving": function_preserving,
        "source_num_layers": source_layers,
        "num_layers": num_layers,
    }]
    grown = type(model)(config).to(model.dtype)  # fresh layers keep this initialisation
    grown.generation_config = copy.deepcopy(model.generation_config)

    state = grown.state_dict()
    layer_parameter = re.compile(rf"^{re.escape(family.layers)}\.(\d+)\.(.+)$")
    by_source_layer: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in model.state_dict().items():
        match = layer_parameter.match(name)
        if match:
            by_source_layer.setdefault(int(match[1]), {})[match[2]] = tensor
        else:
            state[name] = tensor
    silenced = set(zeroed_layers(mapping)) if function_preserving else set()
    for position, index in enumerate(mapping):
        layer = by_source_layer[index] if index is not None else {
            name: state[f"{family.layers}.{position}.{name}"] for name in by_source_layer[0]
        }
        for name, tensor in layer.items():
            zero = position in silenced and is_residual_output(family, name)
            state[f"{family.layers}.{position}.{name}"] = torch.zeros_like(tensor) if zero else tensor.clone()
    grown.load_state_dict(state, strict=True)
    return grown.train(model.training)


def grow_folder(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    num_layers: int | None = None,
    method: str = "stack",
    mapping: list[int | None] | None = None,
    function_preserving: bool = False,
    overwrite: bool = False,
) -> PreTrainedModel:
    """Grow the checkpoint folder `source` into `destination`: weights, config (with the growth recorded), remote
    code, generation config and the source's tokenizer. Everything is checked before anything is written, and
    `source` is never modified. Returns the grown model."""
    source, destination = Path(source), Path(destination)
    if destination.resolve() == source.resolve():
        raise UsageError(f"The grown model would replace its source {source}: choose another --out folder.")
    source_layers = read_checkpoint_config(source)["num_hidden_layers"]
    planned = mapping if mapping is not None else layer_map(method, source_layers, num_layers)
    check_layer_map(planned, source_layers, num_layers or len(planned), function_preserving)
    if destination.is_dir() and any(destination.iterdir()) and not overwrite:
        raise FileExistsError(f"{destination} exists and is not empty: choose another path or pass --overwrite.")

    model = load_causal_lm(source, dtype="auto")
    grown = grow_model(model, num_layers, method, mapping, function_preserving, source=str(source.resolve()))
    trainer_state = source / "trainer_state.json"
    if trainer_state.is_file():  # what the source cost, for the model card's training totals
        state = read_json(trainer_state, "trainer state")
        grown.config.growth_history[-1]["source_training"] = {
            key: state[key] for key in ("global_step", "total_flos") if key in state
        }
    save_checkpoint(grown, source_tokenizer(source), destination, overwrite=overwrite)
    return grown
