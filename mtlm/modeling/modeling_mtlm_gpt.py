"""`mtlm_gpt`: a GPT-2-style decoder (learned positions, GELU-family MLP, LayerNorm or RMSNorm, biases on or off,
tied or untied head) — GPT-2, MLM GPT-2, MTLM2's TinyGPT and the tiny-LM Transformer."""

import torch
from torch import nn

from .configuration_mtlm_gpt import MtlmGPTConfig
from .mtlm_blocks import MtlmDecoderLayer, MtlmForCausalLM, MtlmMLP, MtlmModel, host_check_is_free, make_norm


class MtlmGPTModel(MtlmModel):
    """Subclasses may change the MLP of every layer (`mlp_class`; None for attention-only layers)."""

    config: MtlmGPTConfig
    mlp_class = MtlmMLP

    def __init__(self, config: MtlmGPTConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList([
            MtlmDecoderLayer(config, i, self.mlp_class(config) if self.mlp_class else None)
            for i in range(config.num_hidden_layers)
        ])
        self.norm = make_norm(config)
        self.gradient_checkpointing = False
        self.post_init()

    def apply_positions(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor):
        """Adds the learned embedding of each position; there is none past `max_position_embeddings`."""
        limit = self.config.max_position_embeddings
        if host_check_is_free(position_ids, self.training) and position_ids.max() >= limit:
            raise ValueError(
                f"The input reaches position {int(position_ids.max())}, but this model's learned position "
                f"embeddings cover only max_position_embeddings={limit} positions: truncate the input (and cache) "
                f"to at most {limit} tokens, e.g. tokenizer(..., truncation=True, max_length={limit})."
            )
        return inputs_embeds + self.embed_positions(position_ids), None


class MtlmGPTForCausalLM(MtlmForCausalLM):
    config: MtlmGPTConfig

    def __init__(self, config: MtlmGPTConfig):
        super().__init__(config)
        self.model = MtlmGPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


__all__ = ["MtlmGPTModel", "MtlmGPTForCausalLM"]
