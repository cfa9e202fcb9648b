"""Configuration of `mtlm_byte`: STLM's byte-level model — bytes pooled into chunks by a small bidirectional encoder,
the `mtlm_llama` decoder over the chunk vectors, and a byte decoder for the next chunk."""

from .configuration_mtlm_llama import MtlmLlamaConfig
from .configuration_mtlm_utils import require_choice, require_positive

CHUNK_BOUNDARIES = ("bpe", "space")
DECODER_TYPES = ("parallel", "causal")
POOLINGS = ("mean", "stlm")


class MtlmByteConfig(MtlmLlamaConfig):
    r"""
    A causal language model over byte ids: logits at position t are the distribution of id t + 1 given ids <= t.
    Inside, the ids form chunks; a chunk ends after a special id (bos, eos, `end_of_chunk_token_id`), after a
    whitespace byte when `chunk_boundary="space"` (SpaceByte's rule, causal by construction), and when it holds
    `max_chunk_bytes` ids. With `chunk_boundary="bpe"` the tokenizer marks the end of every subword token with
    `end_of_chunk_token_id`, and the model predicts those marks like bytes.

    The core fields (`hidden_size`, `num_hidden_layers`, `num_attention_heads`, ...) are those of `mtlm_llama`, whose
    decoder runs over one vector per chunk. `max_position_embeddings` is the longest input in ids.

    encoder_hidden_sizes: [w_0, ..., w_n]: the byte embeddings have width w_0, encoder block i (of n) runs at width
        w_i over a chunk's slots, a linear map widens w_i to w_(i+1) where they differ, and the pooled chunk vector
        has width w_n, which must be `hidden_size` (STLM: 128, 256, 256, 256, 768). The widths never shrink.
    encoder_num_attention_heads / decoder_num_attention_heads: heads of every encoder / decoder block.
    local_intermediate_ratio: the SwiGLU width of an encoder or decoder block, as a multiple of its width.
    pooling: "mean" averages a chunk's real slots; "stlm" averages all `max_chunk_bytes` slots, pads included (and
        lets the encoder attend to pads), as STLM's code does.
    decoder_type: "parallel" predicts every slot of the next chunk from the core's output alone (STLM); "causal"
        also conditions each slot on the chunk's earlier ids (MEGABYTE, "Learn Your Tokens").
    reconstruction_loss_weight: weight of STLM's auxiliary loss, the decoder rebuilding each chunk from the encoder's
        own vector; the training logs report it as `aux_loss`.
    """

    model_type = "mtlm_byte"

    vocab_size: int = 260
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 1024
    tie_word_embeddings: bool = False
    pad_token_id: int | None = 256
    bos_token_id: int | None = 257
    eos_token_id: int | list[int] | None = 258
    end_of_chunk_token_id: int = 259
    chunk_boundary: str = "bpe"
    max_chunk_bytes: int = 12
    encoder_hidden_sizes: list[int] | None = None
    encoder_num_attention_heads: int = 4
    decoder_hidden_size: int = 128
    decoder_num_hidden_layers: int = 2
    decoder_num_attention_heads: int = 4
    local_intermediate_ratio: int = 3
    pooling: str = "mean"
    decoder_type: str = "causal"
    reconstruction_loss_weight: float = 0.0

    special_id_fields = ("pad_token_id", "bos_token_id", "eos_token_id", "end_of_chunk_token_id")

    def __post_init__(self, **kwargs):
        if self.encoder_hidden_sizes is None:
            self.encoder_hidden_sizes = [self.hidden_size // 4, self.hidden_size // 2, self.hidden_size]
        super().__post_init__(**kwargs)
        if self.tie_word_embeddings:
            raise ValueError("tie_word_embeddings=True is not possible for mtlm_byte: the byte embeddings and the "
                             "decoder's output layer have different widths.")
        if self.loss_chunk_size:
            raise ValueError("loss_chunk_size is not supported by mtlm_byte: its decoder computes its own loss over "
                             "byte slots; leave it None.")
        require_choice(self, "chunk_boundary", CHUNK_BOUNDARIES)
        require_choice(self, "pooling", POOLINGS)
        require_choice(self, "decoder_type", DECODER_TYPES)
        require_positive(self, "max_chunk_bytes", "encoder_num_attention_heads", "decoder_hidden_size",
                         "decoder_num_hidden_layers", "decoder_num_attention_heads", "local_intermediate_ratio")
        if self.max_chunk_bytes < 2:
            raise ValueError(f"max_chunk_bytes={self.max_chunk_bytes} must be at least 2: a chunk holds a byte and "
                             "the mark that ends it.")
        self._check_encoder_widths()
        for field, width, heads in (("encoder", self.encoder_block_widths, self.encoder_num_attention_heads),
                                    ("decoder", [self.decoder_hidden_size], self.decoder_num_attention_heads)):
            if any(size % heads or (size // heads) % 2 for size in width):
                raise ValueError(f"{field}_num_attention_heads={heads} must split every {field} width ({width}) "
                                 "into heads of an even size.")
        specials = {name: getattr(self, name) for name in self.special_id_fields}
        for name, value in specials.items():
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}={value!r} must be an id of the byte vocabulary [0, {self.vocab_size}): "
                                 "vocab_size must hold the bytes and the 4 special ids.")
        if len(set(specials.values())) < len(specials):
            raise ValueError(f"The special ids {specials} must be 4 different ids.")
        if self.reconstruction_loss_weight < 0:
            raise ValueError(f"reconstruction_loss_weight must be >= 0, got {self.reconstruction_loss_weight!r}.")

    def _check_encoder_widths(self) -> None:
        widths = self.encoder_hidden_sizes
        if not isinstance(widths, list | tuple) or len(widths) < 2 or not all(
                isinstance(width, int) and width > 0 for width in widths):
            raise ValueError(f"encoder_hidden_sizes must list the byte embedding width, then the width after each "
                             f"encoder block (at least one), all positive integers; got {widths!r}.")
        if any(later < earlier for earlier, later in zip(widths, widths[1:])) or widths[-1] != self.hidden_size:
            raise ValueError(f"encoder_hidden_sizes={list(widths)} must widen towards the core: never shrink, and end "
                             f"at the core width hidden_size={self.hidden_size}.")

    @property
    def encoder_block_widths(self) -> list[int]:
        """The width each encoder block runs at."""
        return list(self.encoder_hidden_sizes[:-1])


__all__ = ["MtlmByteConfig"]
