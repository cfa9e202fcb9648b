"""`mtlm_byte`: STLM's byte-level model. The ids (bytes, specials and end-of-chunk marks) form chunks; a small
bidirectional encoder pools each chunk's bytes into one vector, the `mtlm_llama` decoder runs causally over the chunk
vectors, and a byte decoder spells out the next chunk from the core's output — each byte of it on its own
(`parallel`, STLM) or given the chunk's earlier bytes (`causal`).

To the outside it is a causal LM over ids: logits at position t are the distribution of id t + 1 given ids <= t, so
generate(), the Trainer, lm-eval and bits per byte see an ordinary model. Chunk boundaries depend only on the ids up
to and including a chunk's last one, which is what keeps the whole model causal.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_mtlm_byte import MtlmByteConfig
from .configuration_mtlm_llama import MtlmLlamaConfig
from .modeling_mtlm_llama import MtlmLlamaModel
from .mtlm_blocks import (
    CACHE_NAME,
    MtlmDecoderLayer,
    MtlmGatedMLP,
    MtlmPreTrainedModel,
    MtlmRMSNorm,
    check_token_ids,
    decoder_flops_per_token,
    pick_cache,
    residual_dropout,
)

# SpaceByte's rule: a chunk ends after a space-like byte (tab, line feed, vertical tab, form feed, carriage return,
# space).
SPACE_BYTES = (9, 10, 11, 12, 13, 32)


@dataclass
class ChunkLayout:
    """Where every position of a batch of ids sits in the chunk grid.

    chunk, slot: (batch, seq) — the position's chunk and its slot inside the chunk;
    ends: (batch, seq) bool — the position is the last of its chunk;
    grid: (batch, chunks, slots) — the ids laid out by chunk, pad id where no position lands;
    occupied: (batch, chunks, slots) bool — a position lands there;
    real_chunks: (batch, chunks) bool — the chunk holds a position that is not padding;
    """

    chunk: torch.Tensor
    slot: torch.Tensor
    ends: torch.Tensor
    grid: torch.Tensor
    occupied: torch.Tensor
    real_chunks: torch.Tensor

    @property
    def next_chunk(self) -> torch.Tensor:
        """(batch, seq): the chunk of the id after each position."""
        return self.chunk + self.ends.long()

    @property
    def next_slot(self) -> torch.Tensor:
        """(batch, seq): the slot of the id after each position."""
        return torch.where(self.ends, 0, self.slot + 1)


def ends_a_chunk(ids: torch.Tensor, config: MtlmByteConfig) -> torch.Tensor:
    """Whether each id ends its chunk by what it is: a special id, or a space-like byte under SpaceByte's rule."""
    ends = torch.isin(ids, torch.tensor([getattr(config, name) for name in config.special_id_fields],
                                        device=ids.device))
    if config.chunk_boundary == "space":
        ends |= torch.isin(ids, torch.tensor(SPACE_BYTES, device=ids.device))
    return ends


def chunk_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, config: MtlmByteConfig) -> ChunkLayout:
    """Cut a batch of ids into chunks. A chunk ends at a special id, at padding, after a space-like byte when
    `chunk_boundary == "space"`, and when it is `max_chunk_bytes` long (a longer run is split, never truncated).
    input_ids, attention_mask: (batch, seq)."""
    batch, length = input_ids.shape
    natural_end = ends_a_chunk(input_ids, config) | (attention_mask == 0)
    positions = torch.arange(length, device=input_ids.device).expand(batch, length)
    starts = torch.ones_like(natural_end)
    starts[:, 1:] = natural_end[:, :-1]
    run_start = torch.cummax(torch.where(starts, positions, 0), dim=1).values
    slot = (positions - run_start) % config.max_chunk_bytes
    ends = natural_end | (slot == config.max_chunk_bytes - 1)
    chunk = torch.cumsum(ends.long(), dim=1) - ends.long()
    num_chunks = int(chunk[:, -1].max()) + 1 if length else 0
    slots = int(slot.max()) + 1 if length else 1
    flat = (torch.arange(batch, device=input_ids.device)[:, None] * num_chunks + chunk) * slots + slot
    grid = torch.full((batch * num_chunks * slots,), config.pad_token_id, dtype=input_ids.dtype,
                      device=input_ids.device)
    grid[flat.flatten()] = input_ids.flatten()
    occupied = torch.zeros(batch * num_chunks * slots, dtype=torch.bool, device=input_ids.device)
    occupied[flat.flatten()] = True
    real = torch.zeros(batch * num_chunks, dtype=torch.bool, device=input_ids.device)
    real[(flat // slots).flatten()[attention_mask.flatten() != 0]] = True
    shape = (batch, num_chunks, slots)
    return ChunkLayout(chunk, slot, ends, grid.view(shape), occupied.view(shape), real.view(batch, num_chunks))


def local_config(config: MtlmByteConfig, width: int, heads: int, layers: int, slots: int) -> MtlmLlamaConfig:
    """The config of the encoder's or decoder's blocks: `mtlm_llama` blocks at their own width, over one chunk's
    slots. They run eager attention when the model does, SDPA otherwise (their masks are additive)."""
    blocks = MtlmLlamaConfig(
        vocab_size=1, hidden_size=width, intermediate_size=config.local_intermediate_ratio * width,
        num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=slots,
        initializer_range=config.initializer_range, scale_residual_init=config.scale_residual_init,
        rms_norm_eps=config.rms_norm_eps, attention_dropout=config.attention_dropout,
        hidden_dropout=config.hidden_dropout, pad_token_id=None, bos_token_id=None, eos_token_id=None,
    )
    blocks._attn_implementation = "eager" if config._attn_implementation == "eager" else "sdpa"
    return blocks


def local_block(config: MtlmLlamaConfig, index: int, causal: bool) -> MtlmDecoderLayer:
    """An `mtlm_llama` block over a chunk's slots, attending causally or both ways."""
    block = MtlmDecoderLayer(config, index, MtlmGatedMLP(config))
    block.self_attn.is_causal = causal
    return block


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """allowed: (n, q, k) bool -> (n, 1, q, k): 0 where attention is allowed, the dtype's minimum elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None]


class MtlmByteEncoder(nn.Module):
    """Bytes of each chunk -> one vector per chunk: byte embeddings plus slot positions, bidirectional blocks that
    may widen, a norm, the mean over the slots, and the map to the core width."""

    def __init__(self, config: MtlmByteConfig):
        super().__init__()
        self.pooling = config.pooling
        self.pad_token_id = config.pad_token_id
        widths = config.encoder_hidden_sizes
        self.byte_embeddings = nn.Embedding(config.vocab_size, widths[0])
        self.slot_embeddings = nn.Embedding(config.max_chunk_bytes, widths[0])
        blocks = config.encoder_block_widths
        self.layers = nn.ModuleList([
            local_block(local_config(config, width, config.encoder_num_attention_heads, len(blocks),
                                     config.max_chunk_bytes), index, causal=False)
            for index, width in enumerate(blocks)
        ])
        self.widen = nn.ModuleList(
            [nn.Linear(width, wider, bias=False) if wider != width else nn.Identity()
             for width, wider in zip(widths[:-1], widths[1:])]
        )
        self.norm = MtlmRMSNorm(blocks[-1], eps=config.rms_norm_eps)
        self.hidden_dropout = config.hidden_dropout

    def forward(self, grid: torch.Tensor, occupied: torch.Tensor) -> torch.Tensor:
        """grid, occupied: (batch, chunks, slots) -> chunk vectors (batch, chunks, hidden)."""
        batch, chunks, _ = grid.shape
        if self.pooling == "stlm":
            # STLM's encoder sees all slots, pads included, and averages over all of them.
            grid = nn.functional.pad(grid, (0, self.slot_embeddings.num_embeddings - grid.shape[-1]),
                                     value=self.pad_token_id)
            occupied = torch.ones_like(grid, dtype=torch.bool)
        slots = grid.shape[-1]
        grid, occupied = grid.view(batch * chunks, slots), occupied.view(batch * chunks, slots)
        hidden_states = self.byte_embeddings(grid) + self.slot_embeddings.weight[:slots]
        hidden_states = residual_dropout(hidden_states, self.hidden_dropout, self.training)
        mask = None if self.pooling == "stlm" else additive_mask(
            occupied[:, None, :].expand(-1, slots, -1), hidden_states.dtype)
        for index, block in enumerate(self.layers):
            hidden_states = block(hidden_states, attention_mask=mask)
            if index < len(self.layers) - 1:
                hidden_states = self.widen[index](hidden_states)
        hidden_states = self.norm(hidden_states)
        weights = occupied.to(hidden_states.dtype)[..., None]
        # A chunk past the end of a shorter row is empty: it pools to zeros, which the core never attends to.
        pooled = (hidden_states * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.widen[-1](pooled).view(batch, chunks, -1)


class MtlmByteDecoder(nn.Module):
    """A context vector per chunk -> a hidden state per slot of that chunk: a linear map to `max_chunk_bytes` slot
    vectors plus slot positions, then blocks — bidirectional over the slots (`parallel`, STLM), or causal with each
    slot also reading the id before it (`causal`)."""

    def __init__(self, config: MtlmByteConfig):
        super().__init__()
        width, slots = config.decoder_hidden_size, config.max_chunk_bytes
        self.causal = config.decoder_type == "causal"
        self.slots = slots
        self.context_to_slots = nn.Linear(config.hidden_size, slots * width, bias=False)
        self.slot_embeddings = nn.Embedding(slots, width)
        if self.causal:
            # One more id than the vocabulary: the "nothing before" of a chunk's first slot.
            self.previous_byte_embeddings = nn.Embedding(config.vocab_size + 1, width)
        block_config = local_config(config, width, config.decoder_num_attention_heads,
                                    config.decoder_num_hidden_layers, slots)
        self.layers = nn.ModuleList([local_block(block_config, index, causal=self.causal)
                                     for index in range(config.decoder_num_hidden_layers)])
        self.norm = MtlmRMSNorm(width, eps=config.rms_norm_eps)
        self.hidden_dropout = config.hidden_dropout

    def slot_inputs(self, contexts: torch.Tensor) -> torch.Tensor:
        """contexts: (..., hidden) -> what enters the blocks at each slot before the previous ids: (..., slots,
        width)."""
        return self.context_to_slots(contexts).unflatten(-1, (self.slots, -1)) + self.slot_embeddings.weight

    def forward(self, contexts: torch.Tensor, chunk_ids: torch.Tensor | None, slots: int) -> torch.Tensor:
        """contexts: (batch, chunks, hidden); chunk_ids: (batch, chunks, >= slots - 1), the ids of each chunk, read by
        the causal decoder (slot s reads id s - 1). Returns (batch, chunks, slots, decoder width) for the first
        `slots` slots; the causal decoder computes just those, the parallel one all of them."""
        batch, chunks, _ = contexts.shape
        computed = slots if self.causal else self.slots
        hidden_states = self.slot_inputs(contexts).flatten(0, 1)[:, :computed]
        if self.causal:
            start = torch.full((batch, chunks, 1), self.previous_byte_embeddings.num_embeddings - 1,
                               dtype=chunk_ids.dtype, device=chunk_ids.device)
            previous = torch.cat([start, chunk_ids[..., : computed - 1]], dim=-1).view(batch * chunks, computed)
            hidden_states = hidden_states + self.previous_byte_embeddings(previous)
        hidden_states = residual_dropout(hidden_states, self.hidden_dropout, self.training)
        mask = None
        if self.causal:
            allowed = torch.ones(computed, computed, dtype=torch.bool, device=contexts.device).tril()
            mask = additive_mask(allowed[None], hidden_states.dtype)
        for block in self.layers:
            hidden_states = block(hidden_states, attention_mask=mask)
        hidden_states = self.norm(hidden_states)
        return hidden_states.view(batch, chunks, computed, -1)[:, :, :slots]

    def step(self, slot_input: torch.Tensor, previous_ids: torch.Tensor, slot: torch.Tensor,
             cache: "SlotCache") -> torch.Tensor:
        """The causal decoder at one slot per row, its earlier slots' keys and values read from `cache`.
        slot_input: (batch, width); previous_ids, slot: (batch,). Returns (batch, width)."""
        start = self.previous_byte_embeddings.num_embeddings - 1
        hidden_states = slot_input + self.previous_byte_embeddings(torch.where(slot == 0, start, previous_ids))
        allowed = torch.arange(self.slots, device=slot.device) <= slot[:, None]
        mask = additive_mask(allowed[:, None, :], hidden_states.dtype)
        cache.slot = slot
        hidden_states = hidden_states[:, None]
        for block in self.layers:
            hidden_states = block(hidden_states, attention_mask=mask, cache=cache)
        return self.norm(hidden_states)[:, 0]


class SlotCache:
    """The causal decoder's keys and values over the slots of each row's open chunk: a step writes the slot each
    row is at (`slot`, (batch,)); a row's next chunk overwrites its slots from 0 again, and the mask never lets a
    slot read one after it."""

    def __init__(self, slots: int):
        self.slots, self.slot, self.keys, self.values = slots, None, {}, {}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """key_states, value_states: (batch, heads, 1, head_dim) -> all slots: (batch, heads, slots, head_dim)."""
        if layer_idx not in self.keys:
            shape = (key_states.shape[0], key_states.shape[1], self.slots, key_states.shape[-1])
            self.keys[layer_idx] = key_states.new_zeros(shape)
            self.values[layer_idx] = value_states.new_zeros(shape)
        rows = torch.arange(key_states.shape[0], device=key_states.device)
        self.keys[layer_idx][rows, :, self.slot] = key_states[:, :, 0]
        self.values[layer_idx][rows, :, self.slot] = value_states[:, :, 0]
        return self.keys[layer_idx], self.values[layer_idx]


@dataclass
class MtlmByteModelOutput(BaseModelOutputWithPast):
    """last_hidden_state: (batch, seq, decoder width), the decoder's state for the id after each position;
    chunk_embeddings: (batch, chunks, hidden), the encoder's vector of each chunk; layout: the chunk grid."""

    chunk_embeddings: torch.Tensor | None = None
    layout: ChunkLayout | None = None


class MtlmBytePreTrainedModel(MtlmPreTrainedModel):
    config: MtlmByteConfig
    _no_split_modules = ["MtlmDecoderLayer", "MtlmByteEncoder", "MtlmByteDecoder"]
    _can_compile_fullgraph = False  # the chunk grid's shape depends on the ids


class MtlmByteModel(MtlmBytePreTrainedModel):
    """Ids -> chunks -> encoder -> core (`mtlm_llama` over chunk vectors) -> decoder state for every next id."""

    def __init__(self, config: MtlmByteConfig):
        super().__init__(config)
        self.encoder = MtlmByteEncoder(config)
        self.core = MtlmLlamaModel(config)
        self.core.embed_tokens = None  # the core reads chunk vectors, never ids
        # The context of the first chunk, and of a chunk with only padding before it.
        self.first_context = nn.Embedding(1, config.hidden_size)
        self.decoder = MtlmByteDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.byte_embeddings

    def set_input_embeddings(self, value: nn.Embedding):
        self.encoder.byte_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: "MtlmByteCache | None" = None,
        use_cache: bool | None = None,
        past_key_values: "MtlmByteCache | None" = None,
        **kwargs,
    ) -> MtlmByteModelOutput:
        """input_ids, attention_mask: (batch, seq), the mask 0 on padding (left or right). With `use_cache` the
        output carries an `MtlmByteCache` (under `CACHE_NAME`); given one, input_ids are the ids that follow."""
        if input_ids is None:
            raise ValueError("mtlm_byte reads byte ids: pass input_ids (inputs_embeds has no meaning here, as the "
                             "model embeds each chunk itself).")
        check_token_ids(input_ids, self.config.vocab_size, self.training)
        cache = pick_cache(cache, past_key_values)
        if cache is not None:
            hidden_states = torch.stack([self.step(input_ids[:, index], cache)
                                         for index in range(input_ids.shape[1])], dim=1)
            return MtlmByteModelOutput(last_hidden_state=hidden_states, **{CACHE_NAME: cache})
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        layout = chunk_layout(input_ids, attention_mask, self.config)
        chunk_embeddings = self.encoder(layout.grid, layout.occupied)
        # The core reads the finished chunks: all real ones but a last one still open (no position reads its state).
        last_chunk, last_open = layout.chunk[:, -1:], ~layout.ends[:, -1:]
        chunk_index = torch.arange(layout.grid.shape[1], device=input_ids.device)
        finished = (layout.real_chunks & ~((chunk_index == last_chunk) & last_open)).long()
        core_cache = DynamicCache(config=self.config) if use_cache else None
        core_states = self.core(inputs_embeds=chunk_embeddings, attention_mask=finished,
                                position_ids=(torch.cumsum(finished, dim=1) - 1).clamp(min=0), cache=core_cache,
                                use_cache=bool(use_cache)).last_hidden_state
        # Chunk k is spelled out from the core's state after chunk k - 1; the first real chunk from first_context.
        batch, chunks, hidden = core_states.shape
        first = self.first_context.weight.view(1, 1, hidden).expand(batch, 1, hidden)
        contexts = torch.cat([first, core_states], dim=1)
        finished_before = torch.cat([torch.zeros_like(finished[:, :1]), torch.cumsum(finished, dim=1)], dim=1) > 0
        contexts = torch.where(finished_before[..., None], contexts, first)
        next_chunk, next_slot = layout.next_chunk, layout.next_slot
        slots = int(next_slot.max()) + 1
        chunk_ids = nn.functional.pad(layout.grid, (0, max(0, slots - 1 - layout.grid.shape[-1]), 0, 1),
                                      value=self.config.pad_token_id)
        slot_states = self.decoder(contexts, chunk_ids, slots)  # (batch, chunks + 1, slots, width)
        flat = (next_chunk * slot_states.shape[2] + next_slot)[..., None].expand(-1, -1, slot_states.shape[-1])
        hidden_states = slot_states.flatten(1, 2).gather(1, flat)
        outputs = MtlmByteModelOutput(last_hidden_state=hidden_states, chunk_embeddings=chunk_embeddings,
                                      layout=layout)
        if use_cache:
            rows = torch.arange(batch, device=input_ids.device)
            last_ends = layout.ends[:, -1]
            open_ids = torch.full((batch, self.config.max_chunk_bytes), self.config.pad_token_id,
                                  dtype=input_ids.dtype, device=input_ids.device)
            open_ids[:, : layout.grid.shape[-1]] = torch.where(last_ends[:, None], self.config.pad_token_id,
                                                               layout.grid[rows, last_chunk[:, 0]])
            cache = MtlmByteCache(core_cache=ChunkCache.from_prefill(core_cache, finished), chunk_ids=open_ids,
                                  chunk_length=torch.where(last_ends, 0, layout.slot[:, -1] + 1),
                                  seen=input_ids.shape[1], slots=self.config.max_chunk_bytes)
            self.start_chunks(cache, contexts[rows, next_chunk[:, -1]], rows)
            outputs[CACHE_NAME] = cache
        return outputs

    def start_chunks(self, cache: "MtlmByteCache", contexts: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Give the `rows` (n,) their new contexts (n, hidden): the parallel decoder spells out every slot of their
        chunk now; the causal one runs through the slots the chunk already holds. Returns every row's decoder state
        at the slot it is at: (batch, decoder width)."""
        slot_inputs = self.decoder.slot_inputs(contexts)
        if cache.slot_inputs is None:
            cache.slot_inputs = slot_inputs.new_zeros((cache.chunk_ids.shape[0], *slot_inputs.shape[1:]))
        cache.slot_inputs[rows] = slot_inputs
        if not self.decoder.causal:
            slot_states = self.decoder(contexts[:, None], None, self.config.max_chunk_bytes)[:, 0]
            if cache.slot_states is None:
                cache.slot_states = slot_states.new_zeros((cache.chunk_ids.shape[0], *slot_states.shape[1:]))
            cache.slot_states[rows] = slot_states
            return self.spell(cache, cache.chunk_length)
        starting = torch.zeros_like(cache.chunk_length, dtype=torch.bool).index_fill(0, rows, True)
        for slot in range(int(cache.chunk_length[rows].max()) + 1):
            # A row past its own slot, or not starting a chunk, computes the slot it is at again: same keys, values.
            state = self.spell(cache, torch.where(starting, cache.chunk_length.clamp(max=slot), cache.chunk_length))
        return state

    def spell(self, cache: "MtlmByteCache", slot: torch.Tensor) -> torch.Tensor:
        """The decoder's state at `slot` (batch,) of each row's open chunk: (batch, decoder width)."""
        rows = torch.arange(slot.shape[0], device=slot.device)
        if not self.decoder.causal:
            return cache.slot_states[rows, slot]
        previous = cache.chunk_ids[rows, (slot - 1).clamp(min=0)]
        return self.decoder.step(cache.slot_inputs[rows, slot], previous, slot, cache.decoder_cache)

    def core_step(self, vectors: torch.Tensor, rows: torch.Tensor, cache: "ChunkCache") -> torch.Tensor:
        """The core one chunk further for the `rows` (n,) only, their chunk vectors (n, hidden) -> their core states
        (n, hidden). The other rows' keys and values wait untouched in `cache`."""
        positions = cache.start_step(rows)
        hidden_states, position_embeddings = self.core.apply_positions(vectors[:, None], positions[:, None])
        allowed = torch.arange(cache.capacity, device=rows.device) <= positions[:, None]
        mask = additive_mask(allowed[:, None, :], hidden_states.dtype)
        for layer in self.core.layers:
            hidden_states = layer(hidden_states, attention_mask=mask, position_embeddings=position_embeddings,
                                  cache=cache)
        cache.lengths[rows] += 1
        return self.core.norm(hidden_states)[:, 0]

    def step(self, ids: torch.Tensor, cache: "MtlmByteCache") -> torch.Tensor:
        """One id per row after the ids `cache` holds -> (batch, decoder width), the decoder's state for the id
        after it. Only the rows whose chunk this id ends run the encoder on that chunk and the core one step; every
        row runs the decoder at one slot (the causal decoder) or nothing at all (the parallel one)."""
        rows = torch.arange(ids.shape[0], device=ids.device)
        cache.chunk_ids[rows, cache.chunk_length] = ids
        length = cache.chunk_length + 1
        ends = ends_a_chunk(ids, self.config) | (length == self.config.max_chunk_bytes)
        cache.seen += 1
        if ends.any():
            ending = ends.nonzero()[:, 0]
            slots = int(length[ending].max())
            occupied = torch.arange(slots, device=ids.device) < length[ending, None]
            vectors = self.encoder(cache.chunk_ids[ending, None, :slots], occupied[:, None])[:, 0]
            core_states = self.core_step(vectors, ending, cache.core_cache)
            cache.chunk_ids[ending] = self.config.pad_token_id
            cache.chunk_length = torch.where(ends, 0, length)
            return self.start_chunks(cache, core_states, ending)
        cache.chunk_length = length
        return self.spell(cache, length)


class ChunkCache:
    """The core's keys and values over each row's finished chunks, kept per row (keys, values: one (batch,
    kv heads, capacity, head dim) per layer; lengths (batch,): the chunks a row holds, from slot 0), so that a
    generation step runs the core on just the rows that finished a chunk (`start_step`), the rest waiting."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], lengths: torch.Tensor):
        self.keys, self.values, self.lengths, self.rows, self.positions = keys, values, lengths, None, None

    @classmethod
    def from_prefill(cls, cache: DynamicCache, finished: torch.Tensor) -> "ChunkCache":
        """The prompt's core cache, whose columns hold a row's finished chunks where `finished` (batch, columns) is
        1, packed to the front of each row in order."""
        order = torch.sort((finished == 0).int(), dim=1, stable=True).indices[:, None, :, None]

        def packed(states: torch.Tensor) -> torch.Tensor:
            return states.gather(2, order.expand_as(states))

        return cls([packed(layer.keys) for layer in cache.layers], [packed(layer.values) for layer in cache.layers],
                   finished.sum(1))

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def start_step(self, rows: torch.Tensor) -> torch.Tensor:
        """The next core step writes one chunk for the `rows` (n,), each at its own length: make room for it.
        Returns where each row writes (its length): (n,)."""
        self.rows, self.positions = rows, self.lengths[rows]
        needed = int(self.positions.max()) + 1
        if needed > self.capacity:
            room = max(needed, 2 * self.capacity) - self.capacity
            self.keys = [nn.functional.pad(states, (0, 0, 0, room)) for states in self.keys]
            self.values = [nn.functional.pad(states, (0, 0, 0, room)) for states in self.values]
        return self.positions

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """key_states, value_states: (n, kv heads, 1, head dim) of the stepping rows -> all their chunks' keys and
        values: (n, kv heads, capacity, head dim)."""
        self.keys[layer_idx][self.rows, :, self.positions] = key_states[:, :, 0]
        self.values[layer_idx][self.rows, :, self.positions] = value_states[:, :, 0]
        return self.keys[layer_idx][self.rows], self.values[layer_idx][self.rows]


class MtlmByteCache:
    """What generation carries from one step to the next: the core's keys and values over each row's finished
    chunks (core_cache), and each row's open chunk — its ids so far (chunk_ids (batch, max_chunk_bytes), pad after
    chunk_length), the decoder's inputs from its context (slot_inputs (batch, slots, width)), and the decoder's
    work on it: every slot's state (slot_states, parallel decoder) or its slots' keys and values (decoder_cache,
    causal decoder)."""

    is_compileable = False

    def __init__(self, core_cache: ChunkCache, chunk_ids: torch.Tensor, chunk_length: torch.Tensor, seen: int,
                 slots: int):
        self.core_cache, self.chunk_ids, self.chunk_length = core_cache, chunk_ids, chunk_length
        self.seen, self.slot_inputs, self.slot_states, self.decoder_cache = seen, None, None, SlotCache(slots)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """The ids read so far."""
        return self.seen


@dataclass
class MtlmByteCausalLMOutput(CausalLMOutputWithPast):
    """aux_loss: STLM's reconstruction loss (the decoder rebuilding each chunk from its own encoder vector), already
    weighted into `loss`."""

    aux_loss: torch.Tensor | None = None


class MtlmByteForCausalLM(MtlmBytePreTrainedModel, GenerationMixin):
    def __init__(self, config: MtlmByteConfig):
        super().__init__(config)
        self.model = MtlmByteModel(config)
        self.lm_head = nn.Linear(config.decoder_hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        cache: MtlmByteCache | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: MtlmByteCache | None = None,
        **kwargs,
    ) -> MtlmByteCausalLMOutput:
        """input_ids, attention_mask: (batch, seq); labels: (batch, seq), -100 where no loss is taken, shifted
        inside. Returns logits (batch, kept, vocab) — the pad id is never predicted — the mean next-id loss plus the
        weighted reconstruction loss, and that reconstruction loss as `aux_loss`."""
        if kwargs.pop("inputs_embeds", None) is not None:
            raise ValueError("mtlm_byte takes no inputs_embeds: pass input_ids, as the model embeds each chunk itself.")
        kwargs.pop("position_ids", None)  # positions are counted in chunks, inside
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache,
                             cache=pick_cache(cache, past_key_values))
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.byte_logits(outputs.last_hidden_state[:, slice_indices])
        loss = aux_loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
            if self.config.reconstruction_loss_weight:
                aux_loss = self.reconstruction_loss(outputs)
                loss = loss + self.config.reconstruction_loss_weight * aux_loss
        return MtlmByteCausalLMOutput(loss=loss, logits=logits, aux_loss=aux_loss,
                                      **{CACHE_NAME: outputs.get(CACHE_NAME)})

    def byte_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden_states)
        return logits.index_fill(-1, torch.tensor([self.config.pad_token_id], device=logits.device),
                                 torch.finfo(logits.dtype).min)

    def reconstruction_loss(self, outputs: MtlmByteModelOutput) -> torch.Tensor:
        """Cross-entropy of the decoder spelling out each real chunk from the encoder's own vector of it, over the
        chunk's real ids."""
        layout = outputs.layout
        slots = layout.grid.shape[-1]
        states = self.model.decoder(outputs.chunk_embeddings, layout.grid, slots)
        targets = layout.grid.masked_fill(~(layout.occupied & layout.real_chunks[..., None]), -100)
        targets = targets.masked_fill(targets == self.config.pad_token_id, -100)
        return nn.functional.cross_entropy(self.byte_logits(states).flatten(0, 2).float(), targets.flatten(),
                                           ignore_index=-100)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # it builds its own MtlmByteCache on the first step (see prepare_inputs_for_generation)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, cache=None, past_key_values=None,
                                      use_cache=None, **kwargs):
        """The first step reads the prompt and starts an MtlmByteCache; each later step reads only the new id. With
        use_cache=False every step reads the whole sequence again."""
        cache = pick_cache(cache, past_key_values)
        if cache is None:
            return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": use_cache is not False,
                    "logits_to_keep": 1}
        return {"input_ids": input_ids[:, cache.seen:], CACHE_NAME: cache, "use_cache": True}

    def floating_point_ops(self, input_dict: dict, exclude_embeddings: bool = True) -> int:
        """Training FLOPs of a batch (3 x forward) as this model computes it: the encoder over every chunk's slots,
        the core over the chunks, the decoder over the slots it spells out, the head at every position."""
        input_ids = input_dict.get("input_ids")
        if input_ids is None:
            return super().floating_point_ops(input_dict, exclude_embeddings)
        mask = input_dict.get("attention_mask")
        with torch.no_grad():
            layout = chunk_layout(input_ids, mask if mask is not None else torch.ones_like(input_ids), self.config)
        batch, chunks, slots = layout.grid.shape
        decoded_slots = int(layout.next_slot.max()) + 1 if self.config.decoder_type == "causal" else \
            self.config.max_chunk_bytes
        if self.config.pooling == "stlm":
            slots = self.config.max_chunk_bytes
        return 3 * batch * byte_model_flops(self.config, input_ids.shape[1], chunks, slots, decoded_slots)


def byte_model_flops(config: MtlmByteConfig, length: int, chunks: int, slots: int, decoded_slots: int) -> int:
    """Forward FLOPs of one sequence of `length` ids cut into `chunks` chunks of `slots` slots, the decoder spelling
    out `decoded_slots` slots of each of chunks + 1 contexts (2 per multiply-add; lookups are free)."""
    widths = config.encoder_hidden_sizes
    encoder = 0
    for index, width in enumerate(config.encoder_block_widths):
        blocks = local_config(config, width, config.encoder_num_attention_heads, 1, config.max_chunk_bytes)
        encoder += chunks * slots * (decoder_flops_per_token(blocks, slots, MtlmGatedMLP) - 2 * width)
        if widths[index + 1] != width:
            encoder += 2 * width * widths[index + 1] * (chunks if index == len(widths) - 2 else chunks * slots)
    core = chunks * (decoder_flops_per_token(config, chunks, MtlmGatedMLP) - 2 * config.hidden_size *
                     config.vocab_size)
    width = config.decoder_hidden_size
    blocks = local_config(config, width, config.decoder_num_attention_heads, config.decoder_num_hidden_layers,
                          config.max_chunk_bytes)
    decoder = (chunks + 1) * (2 * config.hidden_size * config.max_chunk_bytes * width +
                              decoded_slots * (decoder_flops_per_token(blocks, decoded_slots, MtlmGatedMLP) -
                                               2 * width))
    head = length * 2 * width * config.vocab_size
    return encoder + core + decoder + head


def flops_per_token(config: MtlmByteConfig, sequence_length: int, bytes_per_chunk: float = 4.0) -> int:
    """An estimate of the forward FLOPs per id at `sequence_length` ids, for chunks of `bytes_per_chunk` ids on
    average (the exact count of a batch is `floating_point_ops`)."""
    chunks = max(1, round(sequence_length / bytes_per_chunk))
    slots = config.max_chunk_bytes if config.pooling == "stlm" else min(config.max_chunk_bytes,
                                                                          2 * round(bytes_per_chunk))
    decoded = config.max_chunk_bytes if config.decoder_type == "parallel" else slots
    return byte_model_flops(config, sequence_length, chunks, slots, decoded) // sequence_length


__all__ = ["MtlmByteForCausalLM", "MtlmByteModel"]
