"""`mtlm_attention`: token plus learned position embeddings through pre-LN causal self-attention layers with no MLP,
a final norm and a biased head (Tiny-LM's self-attention-only model): the `mtlm_gpt` backbone without its MLPs."""

from torch import nn

from .configuration_mtlm_attention import MtlmAttentionConfig
from .modeling_mtlm_gpt import MtlmGPTModel
from .mtlm_blocks import MtlmForCausalLM, window_inputs


class MtlmAttentionModel(MtlmGPTModel):
    config: MtlmAttentionConfig
    mlp_class = None


class MtlmAttentionForCausalLM(MtlmForCausalLM):
    config: MtlmAttentionConfig

    def __init__(self, config: MtlmAttentionConfig):
        super().__init__(config)
        self.model = MtlmAttentionModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=config.head_bias)
        self.post_init()

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        """No cache: every step reads the last `max_position_embeddings` tokens, at positions counted from 0."""
        return window_inputs(input_ids, attention_mask, self.config.max_position_embeddings)


__all__ = ["MtlmAttentionModel", "MtlmAttentionForCausalLM"]
