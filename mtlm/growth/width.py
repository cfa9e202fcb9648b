"""Width growth (HyperCloning, Samragh et al. 2024): a model `factor` times wider computing the same function.

Every hidden, head and MLP unit is repeated `factor` times (heads double at a fixed head size, key-value heads with
them). A matrix's input axis, which then reads `factor` copies of each unit, is split: its blocks are W / factor plus
noise that sums to zero over the blocks, so the copies start different yet the sum is exact. Its output axis is
repeated. The embeddings and every vector (norms, biases) are repeated; the LM head's input axis is split. With tied
embeddings the head is the repeated embedding, so the final norm is divided by `factor` instead.

AdamW's moments follow the gradients: repeated along every widened axis, the first moment divided by `factor` and
the second by `factor`² where the parameter has a repeated output (the next layer reads each copy at 1 / factor, so
its gradient is 1 / factor of the original's).
"""

import torch
from torch import nn

from ..errors import UsageError
from ..families import FAMILIES

WIDTH_FAMILIES = ("mtlm_llama", "mtlm_gpt", "mtlm_attention")


def check_width_family(model_type: str) -> None:
    if model_type not in WIDTH_FAMILIES:
        raise UsageError(f"Width growth works on {', '.join(WIDTH_FAMILIES)}; {model_type} is not one (its fused or "
                         "nested weights have no widening rule yet).")


def check_width(model: nn.Module, factor: int) -> None:
    check_width_family(model.config.model_type)
    if not isinstance(factor, int) or factor < 2:
        raise UsageError(f"Width growth multiplies the width by an integer factor of at least 2; got {factor!r}.")


def widened_axes(name: str, parameter: nn.Parameter, embeddings: set[str], head: str | None) -> tuple[list, list]:
    """(repeated axes, split axes) of a parameter: embeddings repeat their width, the head splits its input, other
    matrices repeat their output and split their input, vectors repeat."""
    if name in embeddings:
        return [1], []
    if name == head:
        return [], [1]
    if parameter.ndim == 2:
        return [0], [1]
    return [0], []


def widen(tensor: torch.Tensor, repeated: list[int], split: list[int], factor: int, scale: float = 1.0,
          noise_std: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """`tensor` with each axis in `repeated` and `split` made `factor` times longer by repeating it, split axes
    divided by `factor`, everything times `scale`; split blocks get noise summing to zero over the blocks."""
    grown = tensor * scale
    for axis in repeated + split:
        grown = torch.cat([grown] * factor, dim=axis)
    for axis in split:
        grown = grown / factor
        if noise_std:
            noise = torch.randn(grown.shape, generator=generator, dtype=grown.dtype).to(grown.device) * noise_std
            blocks = noise.unflatten(axis, (factor, -1))
            grown = grown + (blocks - blocks.mean(dim=axis, keepdim=True)).flatten(axis, axis + 1)
    return grown


@torch.no_grad()
def widen_in_place(model: nn.Module, factor: int = 2, optimizer: torch.optim.Optimizer | None = None,
                   noise_std: float = 0.0, seed: int = 0) -> None:
    """Make `model` `factor` times wider in place (see the module's docstring): every parameter keeps its identity,
    so `optimizer` goes on with its moments widened alongside."""
    check_width(model, factor)
    config = model.config
    tied = config.tie_word_embeddings
    embeddings = {name + ".weight" for name, module in model.named_modules() if isinstance(module, nn.Embedding)}
    head = None if tied else "lm_head.weight"
    final_norm = FAMILIES[config.model_type].layers.rsplit(".", 1)[0] + ".norm."
    generator = torch.Generator().manual_seed(seed)
    state = optimizer.state if optimizer is not None else {}
    for name, parameter in model.named_parameters():
        repeated, split = widened_axes(name, parameter, embeddings, head)
        # Tied, the final norm feeds the repeated embedding: it is divided instead, and its gradient stays whole.
        tied_norm = tied and name.startswith(final_norm)
        gradient_scale = 1.0 if tied_norm or not repeated else 1 / factor
        if parameter in state:
            for key, power in (("exp_avg", 1), ("exp_avg_sq", 2)):
                state[parameter][key] = widen(state[parameter][key], repeated + split, [], factor, gradient_scale**power)
        parameter.data = widen(parameter.data, repeated, split, factor, 1 / factor if tied_norm else 1.0, noise_std,
                               generator)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.normalized_shape = (module.normalized_shape[0] * factor,)
    for field in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
        if hasattr(config, field):
            setattr(config, field, getattr(config, field) * factor)
