"""`mtlm_attention`: token plus learned position embeddings through pre-LN causal self-attention layers with no MLP,
a final norm and a biased head (Tiny-LM's self-attention-only model)."""

import torch
from torch import nn

from .configuration_mtlm_attention import MtlmAttentionConfig
from .mtlm_blocks import MtlmDecoderLayer, MtlmForCausalLM, MtlmModel, make_norm


class MtlmAttentionModel(MtlmModel):
    config: MtlmAttentionConfig

    def __init__(self, config: MtlmAttentionConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList([MtlmDecoderLayer(config, i, mlp=None) for i in range(config.num_hidden_layers)])
        self.norm = make_norm(config)
        self.gradient_checkpointing = False
        self.post_init()

    def apply_positions(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor):
        """Adds the learned embedding of each position; the context holds `max_position_embeddings` of them."""
        limit = self.config.max_position_embeddings
        if not torch.compiler.is_compiling() and position_ids.max() >= limit:
            raise ValueError(
                f"The input reaches position {int(position_ids.max())}, but this model's context is "
                f"max_position_embeddings={limit} tokens: give at most {limit} (generate() keeps the last {limit})."
            )
        return inputs_embeds + self.embed_positions(position_ids), None


class MtlmAttentionForCausalLM(MtlmForCausalLM):
    config: MtlmAttentionConfig

    def __init__(self, config: MtlmAttentionConfig):
        super().__init__(config)
        self.model = MtlmAttentionModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=config.head_bias)
        self.post_init()

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        """No cache: every step reads the last `max_position_embeddings` tokens, at positions counted from 0."""
        window = slice(-self.config.max_position_embeddings, None)
        return {"input_ids": input_ids[:, window], "use_cache": False,
                "attention_mask": attention_mask[:, window] if attention_mask is not None else None}


__all__ = ["MtlmAttentionModel", "MtlmAttentionForCausalLM"]
