"""Configuration of `mtlm_moe`: the `mtlm_llama` backbone with top-k routed SwiGLU experts (MLM Mixtral)."""

from .configuration_mtlm_llama import MtlmLlamaConfig
from .configuration_mtlm_utils import require_positive


class MtlmMoeConfig(MtlmLlamaConfig):
    r"""
    Every layer's MLP is `num_local_experts` SwiGLU experts of width `intermediate_size`, of which a router picks
    `num_experts_per_tok` per token, weighted by their renormalised router probabilities (Mixtral).

    router_aux_loss_coef: weight of Mixtral's load-balancing loss, added to `loss` whenever labels are given.
    output_router_logits: return every layer's router logits by default.
    router_jitter_noise: multiplicative noise on the router input during training.
    """

    model_type = "mtlm_moe"
    attribute_map = {"num_experts": "num_local_experts"}

    num_local_experts: int = 8
    num_experts_per_tok: int = 2
    router_aux_loss_coef: float = 0.001
    output_router_logits: bool = False
    router_jitter_noise: float = 0.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        require_positive(self, "num_local_experts", "num_experts_per_tok")
        if self.num_experts_per_tok > self.num_local_experts:
            raise ValueError(
                f"num_experts_per_tok ({self.num_experts_per_tok}) cannot exceed num_local_experts "
                f"({self.num_local_experts}): top-k routing picks k of the experts."
            )
        if self.mlp_bias:
            raise ValueError("mlp_bias=True is not supported by mtlm_moe: its experts, like Mixtral's, have no biases.")
        if self.router_aux_loss_coef < 0:
            raise ValueError(f"router_aux_loss_coef must be non-negative, got {self.router_aux_loss_coef!r}.")


__all__ = ["MtlmMoeConfig"]
