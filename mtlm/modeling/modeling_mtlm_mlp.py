"""`mtlm_mlp`: the embeddings of a fixed context, concatenated, through a GELU MLP (Tiny-LM's MLP baseline)."""

import math

import torch
from torch import nn
from transformers import initialization as init

from .configuration_mtlm_mlp import MtlmMLPConfig
from .mtlm_blocks import MtlmFixedContextForCausalLM, activation, sliding_window_linear


class MtlmMLPForCausalLM(MtlmFixedContextForCausalLM):
    """embed -> [last context_size embeddings concatenated] -> (Linear, act, dropout) per hidden size -> Linear."""

    config: MtlmMLPConfig

    def __init__(self, config: MtlmMLPConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size)
        widths = [config.context_size * config.embedding_size, *config.hidden_sizes]
        self.hidden = nn.ModuleList([nn.Linear(inputs, outputs) for inputs, outputs in zip(widths, widths[1:])])
        self.act = activation(config.hidden_act)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.lm_head = nn.Linear(config.hidden_sizes[-1], config.vocab_size)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """PyTorch's defaults, as the seed: N(0, 1) embeddings and fan-in uniform linear layers. With no norm between
        layers, transformers' fixed N(0, 0.02) would shrink the signal at every layer and stall the start."""
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, nn.Linear):
            bound = 1 / math.sqrt(module.in_features)
            init.uniform_(module.weight, -bound, bound)
            init.uniform_(module.bias, -bound, bound)

    def window_logits(self, input_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """input_ids: (batch, seq); keep: (batch, seq, 1) -> logits (batch, seq, vocab)."""
        embeddings = self.embed_tokens(input_ids) * keep.to(self.embed_tokens.weight.dtype)
        hidden = self.dropout(self.act(sliding_window_linear(embeddings, self.hidden[0], self.config.context_size)))
        for layer in self.hidden[1:]:
            hidden = self.dropout(self.act(layer(hidden)))
        return self.lm_head(hidden)

    @staticmethod
    def flops_per_token(config: MtlmMLPConfig, sequence_length: int = 0) -> int:
        """2 per multiply-add of the hidden layers and the output layer; the embedding lookup is free."""
        widths = [config.context_size * config.embedding_size, *config.hidden_sizes, config.vocab_size]
        return sum(2 * inputs * outputs for inputs, outputs in zip(widths, widths[1:]))

    def forward_flops_per_token(self, sequence_length: int) -> int:
        return self.flops_per_token(self.config, sequence_length)


__all__ = ["MtlmMLPForCausalLM"]
