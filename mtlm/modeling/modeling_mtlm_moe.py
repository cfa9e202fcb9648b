"""`mtlm_moe`: the `mtlm_llama` backbone with top-k routed SwiGLU experts in every layer and Mixtral's
load-balancing loss (MLM Mixtral)."""

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.integrations import use_experts_implementation
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
from transformers.utils.output_capturing import OutputRecorder

from .configuration_mtlm_moe import MtlmMoeConfig
from .modeling_mtlm_llama import MtlmLlamaForCausalLM, MtlmLlamaModel
from .mtlm_blocks import MtlmAttention, MtlmDecoderLayer, activation, residual_init_std


@use_experts_implementation
class MtlmExperts(nn.Module):
    """`num_local_experts` SwiGLU experts stored as stacked weights (Mixtral's layout): gate_up_proj
    (experts, 2 * intermediate, hidden), down_proj (experts, hidden, intermediate)."""

    def __init__(self, config: MtlmMoeConfig):
        super().__init__()
        self.num_experts = config.num_local_experts
        self.hidden_dim = config.hidden_size
        self.intermediate_dim = config.intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(self.num_experts, 2 * self.intermediate_dim, self.hidden_dim))
        self.down_proj = nn.Parameter(torch.empty(self.num_experts, self.hidden_dim, self.intermediate_dim))
        self.act_fn = activation(config.hidden_act)

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """hidden_states: (tokens, hidden); top_k_index, top_k_weights: (tokens, k) -> (tokens, hidden), each token's
        experts' outputs summed with their routing weights."""
        final_hidden_states = torch.zeros_like(hidden_states)
        for expert_idx in top_k_index.unique().tolist():
            token_idx, slot = torch.where(top_k_index == expert_idx)
            gate, up = F.linear(hidden_states[token_idx], self.gate_up_proj[expert_idx]).chunk(2, dim=-1)
            expert_output = F.linear(self.act_fn(gate) * up, self.down_proj[expert_idx])
            expert_output = expert_output * top_k_weights[token_idx, slot, None]
            final_hidden_states.index_add_(0, token_idx, expert_output.to(final_hidden_states.dtype))
        return final_hidden_states


class MtlmTopKRouter(nn.Module):
    """Linear router: softmax over experts, keep the top k, renormalise their probabilities to sum to one."""

    def __init__(self, config: MtlmMoeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.weight = nn.Parameter(torch.empty(config.num_local_experts, config.hidden_size))

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden_states: (tokens, hidden) -> router logits (tokens, experts), top-k weights and indices (tokens, k)."""
        router_logits = F.linear(hidden_states, self.weight)
        router_probs = F.softmax(router_logits.float(), dim=-1)
        top_k_weights, top_k_index = torch.topk(router_probs, self.top_k, dim=-1)
        top_k_weights = top_k_weights / top_k_weights.sum(dim=-1, keepdim=True)
        return router_logits, top_k_weights.to(hidden_states.dtype), top_k_index


class MtlmSparseMoeBlock(nn.Module):
    """The MLP of an `mtlm_moe` layer: route each token to its top-k experts."""

    def __init__(self, config: MtlmMoeConfig):
        super().__init__()
        self.jitter_noise = config.router_jitter_noise
        self.gate = MtlmTopKRouter(config)
        self.experts = MtlmExperts(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: (batch, seq, hidden) -> (batch, seq, hidden)."""
        shape = hidden_states.shape
        if self.training and self.jitter_noise > 0:
            noise = torch.empty_like(hidden_states).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
            hidden_states = hidden_states * noise
        hidden_states = hidden_states.reshape(-1, shape[-1])
        _, top_k_weights, top_k_index = self.gate(hidden_states)
        return self.experts(hidden_states, top_k_index, top_k_weights).reshape(shape)

    @staticmethod
    def flops_per_token(config) -> int:
        """The router plus the k experts a token visits."""
        hidden, experts = config.hidden_size, config.num_local_experts
        return 2 * hidden * experts + config.num_experts_per_tok * 2 * 3 * hidden * config.intermediate_size


def can_set_experts_implementation(cls) -> bool:
    # transformers caches this per class by reading the module source; inherited from the dense Llama classes the
    # cached answer would be theirs ("no"), so the MoE classes state it.
    return True


class MtlmMoeModel(MtlmLlamaModel):
    config: MtlmMoeConfig
    _can_set_experts_implementation = classmethod(can_set_experts_implementation)
    mlp_class = MtlmSparseMoeBlock
    output_class = MoeModelOutputWithPast
    _can_record_outputs = {
        "router_logits": OutputRecorder(MtlmTopKRouter, index=0),
        "hidden_states": MtlmDecoderLayer,
        "attentions": MtlmAttention,
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        if isinstance(module, MtlmExperts):
            init.normal_(module.gate_up_proj, mean=0.0, std=self.config.initializer_range)
            init.normal_(module.down_proj, mean=0.0, std=residual_init_std(self.config))
        elif isinstance(module, MtlmTopKRouter):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        super()._init_weights(module)


class MtlmMoeForCausalLM(MtlmLlamaForCausalLM):
    config: MtlmMoeConfig
    backbone_class = MtlmMoeModel
    output_class = MoeCausalLMOutputWithPast
    _can_set_experts_implementation = classmethod(can_set_experts_implementation)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_router_logits: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> MoeCausalLMOutputWithPast:
        """As the dense model, plus `aux_loss` (the load-balancing loss, already added to `loss` with weight
        `router_aux_loss_coef` when labels are given) and, on request, `router_logits`: one (batch * seq, experts)
        tensor per layer."""
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        outputs = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            output_router_logits=output_router_logits or labels is not None,
            **kwargs,
        )
        if outputs.router_logits is None:
            return outputs
        aux_loss = load_balancing_loss_func(
            outputs.router_logits, self.config.num_local_experts, self.config.num_experts_per_tok, attention_mask
        )
        loss = outputs.loss
        if labels is not None:
            loss = loss + self.config.router_aux_loss_coef * aux_loss.to(loss.device)
        router_logits = outputs.router_logits if output_router_logits else None
        return replace(outputs, loss=loss, aux_loss=aux_loss, router_logits=router_logits)


__all__ = ["MtlmMoeModel", "MtlmMoeForCausalLM"]
