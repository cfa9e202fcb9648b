"""Muon for the hidden matrices and AdamW for the rest (modded-nanogpt's speed-run recipe), as one optimizer that
the Trainer, its learning-rate schedule and its checkpoints handle like any other.

Muon orthogonalises each matrix's momentum (Newton-Schulz), which only means something for a 2-D weight that maps
one hidden space to another: the decoder layers' linear weights. Embeddings, the LM head, norms, biases and stacked
MoE experts keep AdamW. With `adjust_lr_fn="match_rms_adamw"` (Moonshot's scaling) Muon's update has AdamW's RMS, so
one learning rate and one schedule serve both.
"""

import torch
from torch import nn

OPTIMIZERS = ("adamw", "muon")


def muon_parameter_names(model: nn.Module) -> set[str]:
    """The weights Muon trains: those of the linear layers inside the decoder's layers (not the LM head)."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear) and ".layers." in f".{module_name}." and module.weight.requires_grad:
            names.add(f"{module_name}.weight")
    return names


class MuonWithAdamW(torch.optim.Optimizer):
    """torch.optim.Muon on `muon_groups` and torch.optim.AdamW on `adamw_groups`. Its `param_groups` are the two
    optimizers' own groups, so a learning-rate schedule moves both; its state dict holds both."""

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], *, lr: float, muon_lr: float | None = None,
                 momentum: float = 0.95, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8):
        self.muon = torch.optim.Muon(muon_groups, lr=muon_lr or lr, momentum=momentum,
                                     adjust_lr_fn="match_rms_adamw")
        # fused where torch has the kernel, as the Trainer's own default (adamw_torch_fused)
        fused = all(p.device.type in ("cpu", "cuda") for group in adamw_groups for p in group["params"])
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps, fused=fused)
        super().__init__([p for group in muon_groups + adamw_groups for p in group["params"]], {})
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError("This optimizer state was not saved by Muon with AdamW (optimizer.name: muon): resume "
                             "with the optimizer the run was started with.")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = self.muon.param_groups + self.adamw.param_groups


def muon_with_adamw(model: nn.Module, decay_parameter_names: set[str], weight_decay: float, lr: float,
                    muon_lr: float | None, momentum: float, betas: tuple[float, float], eps: float) -> MuonWithAdamW:
    """The optimizer for `model`: Muon on its hidden matrices (decayed), AdamW on the rest (decayed where named)."""
    muon_names = muon_parameter_names(model)
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    muon = [p for name, p in trained if name in muon_names]
    decayed = [p for name, p in trained if name not in muon_names and name in decay_parameter_names]
    other = [p for name, p in trained if name not in muon_names and name not in decay_parameter_names]
    adamw_groups = [group for group in ({"params": decayed, "weight_decay": weight_decay},
                                        {"params": other, "weight_decay": 0.0}) if group["params"]]
    return MuonWithAdamW([{"params": muon, "weight_decay": weight_decay}], adamw_groups, lr=lr, muon_lr=muon_lr,
                         momentum=momentum, betas=betas, eps=eps)
