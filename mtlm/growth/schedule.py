"""Growth as a training schedule: the model deepens at given steps inside one `mtlm train` run, under one optimizer
and one learning-rate schedule (gradual stacking: Gong et al. 2019, MSG 2023, MIDAS 2024).

A run config's growth section lists the stages:

    growth:
      - {at_step: 200, num_layers: 4}                       # stack the 2 layers into 4 after step 200
      - {at_step: 500, num_layers: 8, method: midas, gate_steps: 50, lr_ramp_steps: 20}
      - {at_step: 800, width_factor: 2}                     # twice as wide (HyperCloning, width.py)

At each stage the model grows in place: a layer's first use in the layer map keeps its parameters (and their
optimizer state), each further use is a copy of it, and AdamW's moment estimates are copied along the same map with
the step count kept, so bias correction does not restart. The learning-rate schedule goes on without a jump:

    method               the layer map (depth.layer_map: stack, interleave, random, midas)
    function_preserving  zero the copies' residual outputs, so the grown model computes the same function
    gate_steps           scale the copies' residual branches by a gate ramping from 0 to 1 over this many steps
                         (MSG's mask): the function is the same at the growth, and the copies' weights, kept, learn
                         from the next step on
    lr_ramp_steps        take the learning rate from 0 back to its scheduled value over this many steps
    width_factor         make the model this many times wider, function kept (width.widen_in_place), after any
                         depth growth of the same stage; width_noise_std: the noise that makes the copies differ
                         (default initializer_range / 10)
"""

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import TrainerCallback

from ..errors import UsageError
from ..families import FAMILIES
from .depth import METHODS, is_residual_output, layer_map, zeroed_layers
from .width import check_width_family, widen_in_place

STAGE_KEYS = {"at_step": int, "num_layers": int, "method": str, "function_preserving": bool, "gate_steps": int,
              "lr_ramp_steps": int, "width_factor": int, "width_noise_std": float}


@dataclass(frozen=True)
class GrowthStage:
    at_step: int  # the model grows after this many optimizer steps
    num_layers: int | None = None  # None: the depth stays
    method: str = "stack"
    function_preserving: bool = False
    gate_steps: int = 0
    lr_ramp_steps: int = 0
    width_factor: int = 1
    width_noise_std: float | None = None

    def gate(self, step: int) -> float:
        """The new layers' residual gate once `step` optimizer steps are done."""
        return min(1.0, (step - self.at_step) / self.gate_steps) if self.gate_steps else 1.0

    def lr_factor(self, step: int) -> float:
        """What the ramp multiplies the scheduled learning rate by at optimizer step `step` (0-based)."""
        if not self.lr_ramp_steps or step < self.at_step:
            return 1.0
        return min(1.0, (step - self.at_step + 1) / (self.lr_ramp_steps + 1))


def growth_stages(growth: dict, max_steps: int | None = None) -> list[GrowthStage]:
    """The stages of a run config's growth section, checked: steps increasing and inside max_steps, depths growing,
    known methods. Errors name the stage."""
    stages = []
    for index, entry in enumerate(growth.get("stages") or []):
        where = f"growth stage {index + 1} ({entry})"
        if not isinstance(entry, dict):
            raise UsageError(f"{where}: a stage is a mapping such as {{at_step: 200, num_layers: 4}}.")
        unknown = sorted(set(entry) - set(STAGE_KEYS))
        if unknown:
            raise UsageError(f"{where}: unknown keys {unknown}; a stage takes {', '.join(STAGE_KEYS)}.")
        if "at_step" not in entry or not {"num_layers", "width_factor"} & set(entry):
            raise UsageError(f"{where}: set at_step, and num_layers (depth) or width_factor (width).")
        for key, value in entry.items():
            if not is_a(value, STAGE_KEYS[key]):
                raise UsageError(f"{where}: {key} must be {STAGE_KEYS[key].__name__}, got {value!r}.")
        stage = GrowthStage(**entry)
        if "width_factor" in entry and stage.width_factor < 2:
            raise UsageError(f"{where}: width_factor must be an integer of at least 2.")
        if stage.method not in METHODS:
            raise UsageError(f"{where}: unknown method {stage.method!r}; choose one of {', '.join(METHODS)}.")
        if stage.at_step < 1 or stage.gate_steps < 0 or stage.lr_ramp_steps < 0:
            raise UsageError(f"{where}: at_step must be at least 1, gate_steps and lr_ramp_steps at least 0.")
        if stages and stage.at_step <= stages[-1].at_step:
            raise UsageError(f"{where}: at_step must come after the previous stage's {stages[-1].at_step}.")
        if stages and stage.at_step < stages[-1].at_step + stages[-1].gate_steps:
            raise UsageError(f"{where}: the previous stage's gates ramp until step "
                             f"{stages[-1].at_step + stages[-1].gate_steps}; grow after that, or shorten its "
                             "gate_steps.")
        depths = [earlier.num_layers for earlier in stages if earlier.num_layers]
        if stage.num_layers and depths and stage.num_layers <= depths[-1]:
            raise UsageError(f"{where}: num_layers must grow past the previous stage's {depths[-1]}.")
        if max_steps is not None and max_steps > 0 and stage.at_step >= max_steps:
            raise UsageError(f"{where}: at_step is not before training.max_steps={max_steps}, so it would never "
                             "train the grown model; grow earlier or train longer.")
        if stage.function_preserving and stage.gate_steps:
            raise UsageError(f"{where}: choose function_preserving (copies zeroed) or gate_steps (copies kept, "
                             "gated), not both.")
        stages.append(stage)
    return stages


def is_a(value, kind: type) -> bool:
    """YAML's value fits the key's type: booleans are not numbers, integers are floats."""
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def check_first_stage(stages: list[GrowthStage], config) -> None:
    """Refuse, before training, a schedule the model cannot follow: a family without layers, a first depth that does
    not deepen the model, or width growth of a family without a widening rule."""
    if not stages:
        return
    family = FAMILIES.get(config.model_type)
    if family is None or family.layers is None:
        raise UsageError(f"growth: the {config.model_type} family has no layers to grow; growth works on "
                         f"{', '.join(name for name, other in FAMILIES.items() if other.layers)}.")
    depths = [stage for stage in stages if stage.num_layers]
    if depths and depths[0].num_layers <= config.num_hidden_layers:
        raise UsageError(f"growth stage {stages.index(depths[0]) + 1} ({depths[0]}): num_layers must grow past the "
                         f"model's {config.num_hidden_layers} layers.")
    if any(stage.width_factor > 1 for stage in stages):
        check_width_family(config.model_type)


def decoder_layers(model: nn.Module) -> tuple[nn.Module, str]:
    """The module holding the model's layer list, and the list's attribute name (by the family's registry entry)."""
    path = FAMILIES[model.config.model_type].layers.split(".")
    parent = model
    for name in path[:-1]:
        parent = getattr(parent, name)
    return parent, path[-1]


def set_residual_gates(model: nn.Module, gates: list[float] | None) -> None:
    """Give each layer its gate (None: no gates), and record them in the config, so that a checkpoint saved while they
    ramp computes the same function when loaded."""
    parent, name = decoder_layers(model)
    for index, layer in enumerate(getattr(parent, name)):
        layer.residual_gate = None if gates is None or gates[index] == 1.0 else gates[index]
    model.config.residual_gates = gates


@torch.no_grad()
def grow_in_place(model: nn.Module, stage: GrowthStage, optimizer: torch.optim.Optimizer | None = None,
                  decay_names: Callable[[nn.Module], set[str]] = lambda model: set()) -> list[int | None]:
    """Deepen `model` (an mtlm model of a family with layers) to `stage.num_layers` by the stage's layer map, copying
    `optimizer`'s state along the map; the optimizer's groups are then rebuilt as the Trainer builds them: weight decay
    for the grown model's parameters `decay_names(model)` names, none for the rest. Returns the layer map."""
    family = FAMILIES[model.config.model_type]
    parent, name = decoder_layers(model)
    layers = getattr(parent, name)
    mapping = layer_map(stage.method, len(layers), stage.num_layers)
    silenced = set(zeroed_layers(mapping))
    model.config.num_hidden_layers = stage.num_layers  # fresh layers initialise for the grown depth
    state = optimizer.state if optimizer is not None else {}
    grown, used = [], set()
    for position, source in enumerate(mapping):
        if source is not None and source not in used:
            layer = layers[source]
            used.add(source)
        else:
            layer = copy.deepcopy(layers[source if source is not None else 0])
            if source is None:
                layer.apply(model._init_weights)
            else:
                for copied, original in zip(layer.parameters(), layers[source].parameters()):
                    if original in state:
                        state[copied] = copy_state(state[original])
        if stage.function_preserving and position in silenced:
            for parameter_name, parameter in layer.named_parameters():
                if is_residual_output(family, parameter_name):
                    parameter.zero_()
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = position
        grown.append(layer)
    setattr(parent, name, nn.ModuleList(grown))
    if stage.gate_steps:
        set_residual_gates(model, [0.0 if position in silenced else 1.0 for position in range(len(mapping))])
    if optimizer is not None:
        regroup(model, optimizer, decay_names(model))
    model.config.growth_history = [*getattr(model.config, "growth_history", []), {
        "source": None, "method": stage.method, "layer_map": mapping,
        "function_preserving": stage.function_preserving, "source_num_layers": len(layers),
        "num_layers": stage.num_layers, "at_step": stage.at_step, "gate_steps": stage.gate_steps,
        "lr_ramp_steps": stage.lr_ramp_steps,
    }]
    return mapping


def grow_stage(model: nn.Module, stage: GrowthStage, optimizer: torch.optim.Optimizer | None = None,
               decay_names: Callable[[nn.Module], set[str]] = lambda model: set()) -> None:
    """One stage of the schedule: deeper (grow_in_place), then wider (widen_in_place), each recorded in
    `config.growth_history`."""
    if stage.num_layers:
        grow_in_place(model, stage, optimizer, decay_names)
    if stage.width_factor > 1:
        config = model.config
        source_hidden_size = config.hidden_size
        noise = stage.width_noise_std if stage.width_noise_std is not None else config.initializer_range / 10
        widen_in_place(model, stage.width_factor, optimizer, noise, seed=stage.at_step)
        config.growth_history = [*getattr(config, "growth_history", []), {
            "source": None, "method": "hypercloning", "layer_map": list(range(config.num_hidden_layers)),
            "function_preserving": True, "source_num_layers": config.num_hidden_layers,
            "num_layers": config.num_hidden_layers, "at_step": stage.at_step, "width_factor": stage.width_factor,
            "source_hidden_size": source_hidden_size, "hidden_size": config.hidden_size, "width_noise_std": noise,
        }]


def copy_state(state: dict) -> dict:
    """An optimizer state entry for a copied parameter: the moments cloned, the step count kept."""
    return {key: value.clone() if isinstance(value, torch.Tensor) else copy.copy(value) for key, value in state.items()}


def regroup(model: nn.Module, optimizer: torch.optim.Optimizer, decay_names: set[str]) -> None:
    """Every trainable parameter in the optimizer's groups in the order of `model.named_parameters()`, as the Trainer
    builds them for this model: a checkpoint's optimizer state then loads onto the same parameters on --resume."""
    if len(optimizer.param_groups) != 2:
        raise UsageError("growth inside a run needs the Trainer's own AdamW groups (weight decay / none); this "
                         f"optimizer has {len(optimizer.param_groups)} groups.")
    decay_group, other_group = optimizer.param_groups
    named = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
    decay_group["params"] = [parameter for name, parameter in named if name in decay_names]
    other_group["params"] = [parameter for name, parameter in named if name not in decay_names]


class GrowthSchedule(TrainerCallback):
    """Grows the model at each stage's step, keeps the copies' residual gates on their ramp, and the learning rate
    on its ramp after a growth (by wrapping the scheduler's factor). Resuming past a stage finds the model already
    grown (the checkpoint's config has its depth) and goes on."""

    def __init__(self, stages: list[GrowthStage], decay_names):
        self.stages, self.decay_names = stages, decay_names

    def on_train_begin(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
        if any(stage.lr_ramp_steps for stage in self.stages):
            if not hasattr(lr_scheduler, "lr_lambdas"):
                raise UsageError(f"growth: lr_ramp_steps needs a schedule of factors (cosine, linear, constant, "
                                 f"warmup_stable_decay, ...); training.lr_scheduler_type={args.lr_scheduler_type!r} "
                                 "is not one. Drop lr_ramp_steps or choose such a schedule.")
            lr_scheduler.lr_lambdas = [self.ramped(factor) for factor in lr_scheduler.lr_lambdas]
        self.update_gates(model, state.global_step)

    def ramped(self, factor):
        return lambda step: factor(step) * math.prod(stage.lr_factor(step) for stage in self.stages)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.update_gates(model, state.global_step)  # first: a ramp that ends at this step is over before a growth
        for stage in self.stages:
            if stage.at_step == state.global_step:  # a run resumed from this step's checkpoint has grown already
                grow_stage(model, stage, getattr(optimizer, "optimizer", optimizer), self.decay_names)

    def update_gates(self, model, step: int) -> None:
        """Each gated layer's gate after `step` optimizer steps; gates that reached 1 are dropped."""
        gates = getattr(model.config, "residual_gates", None)
        if not gates:
            return
        # Ramps never overlap (growth_stages): the gates below 1 are the latest gated stage's.
        ramping = [stage for stage in self.stages if stage.gate_steps and stage.at_step <= step]
        value = ramping[-1].gate(step) if ramping else 1.0
        updated = [1.0 if gate == 1.0 else value for gate in gates]
        set_residual_gates(model, None if all(gate == 1.0 for gate in updated) else updated)
