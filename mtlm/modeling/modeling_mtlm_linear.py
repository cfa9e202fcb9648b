"""`mtlm_linear`: softmax regression on the one-hot tokens of a fixed context (Tiny-LM's Linear baseline)."""

import torch
from torch import nn

from .configuration_mtlm_linear import MtlmLinearConfig
from .mtlm_blocks import MtlmFixedContextForCausalLM, sliding_window_linear


class MtlmLinearForCausalLM(MtlmFixedContextForCausalLM):
    """logits_t = W · [onehot(x_{t-c+1}); ...; onehot(x_t)] + b, with W (vocab, context * vocab) laid out as the
    seed's `Linear(V * ctx -> V)` over concatenated one-hots, oldest first."""

    config: MtlmLinearConfig

    def __init__(self, config: MtlmLinearConfig):
        super().__init__(config)
        self.linear = nn.Linear(config.context_size * config.vocab_size, config.vocab_size)
        self.post_init()

    def window_logits(self, input_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """input_ids: (batch, seq); keep: (batch, seq, 1) -> logits (batch, seq, vocab)."""
        one_hot = nn.functional.one_hot(input_ids, self.config.vocab_size).to(self.linear.weight.dtype) * keep
        return sliding_window_linear(one_hot, self.linear, self.config.context_size)

    @staticmethod
    def flops_per_token(config: MtlmLinearConfig, sequence_length: int = 0) -> int:
        """One multiply-add per weight (2 FLOPs), as a dense layer over the concatenated one-hots."""
        return 2 * config.context_size * config.vocab_size * config.vocab_size

    def forward_flops_per_token(self, sequence_length: int) -> int:
        return self.flops_per_token(self.config, sequence_length)


__all__ = ["MtlmLinearForCausalLM"]
