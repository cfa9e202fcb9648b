"""`mtlm_llama`: a Llama-style decoder (RMSNorm, SwiGLU, RoPE, grouped-query attention, optional biases and
dropout, tied or untied head) — MTLM1, MLM Llama-2 and the STLM baseline."""

import torch
from torch import nn

from .configuration_mtlm_llama import MtlmLlamaConfig
from .mtlm_blocks import (
    MtlmDecoderLayer,
    MtlmForCausalLM,
    MtlmGatedMLP,
    MtlmModel,
    MtlmRMSNorm,
    MtlmRotaryEmbedding,
)


class MtlmLlamaModel(MtlmModel):
    config: MtlmLlamaConfig
    mlp_class = MtlmGatedMLP

    def __init__(self, config: MtlmLlamaConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [MtlmDecoderLayer(config, i, self.mlp_class(config)) for i in range(config.num_hidden_layers)]
        )
        self.norm = MtlmRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = MtlmRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def apply_positions(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor):
        """Positions enter as rotations of queries and keys: the embeddings pass through unchanged."""
        return inputs_embeds, self.rotary_emb(inputs_embeds, position_ids)


class MtlmLlamaForCausalLM(MtlmForCausalLM):
    config: MtlmLlamaConfig
    backbone_class = MtlmLlamaModel

    def __init__(self, config: MtlmLlamaConfig):
        super().__init__(config)
        self.model = self.backbone_class(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


__all__ = ["MtlmLlamaModel", "MtlmLlamaForCausalLM"]
