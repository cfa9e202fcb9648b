"""Checks that decoding with the KV cache computes what decoding without it computes.

Imports only torch and transformers: the remote-code tests run these checks in a process where mtlm cannot be
imported. A freshly initialised or briefly trained model predicts almost the same next token whatever the context,
so a cache that is silently dropped (every step then sees only the newest token) still gives the right greedy
tokens; `sharpen` makes the prediction depend on the context, and `assert_context_matters` proves that it does.
"""

import torch


@torch.no_grad()
def sharpen(model, seed: int = 0, std: float = 0.3):
    """Add N(0, std) noise to every weight matrix (in place) so that attention is peaked and the next token depends on
    the whole context. Returns the model."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        if parameter.dim() >= 2:
            parameter.add_(torch.randn(parameter.shape, generator=generator) * std)
    return model


@torch.no_grad()
def reference_greedy(model, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation of one unpadded prompt (1, seq) by full forward passes over the whole sequence, without
    `generate()` and without a cache: (1, seq + max_new_tokens)."""
    sequence = input_ids
    for _ in range(max_new_tokens):
        next_token = model(sequence, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        sequence = torch.cat([sequence, next_token], dim=-1)
    return sequence


@torch.no_grad()
def assert_context_matters(model, input_ids: torch.Tensor, max_new_tokens: int) -> None:
    """Fail unless a decoder that sees only the newest token (what a dropped cache gives) would choose other tokens
    than the real one on this prompt."""
    sequence = reference_greedy(model, input_ids, max_new_tokens)
    last_token_only = model(sequence[:, input_ids.shape[1] - 1 : -1, None].flatten(0, 1), use_cache=False)
    blind = last_token_only.logits[:, -1].argmax(-1)
    assert not torch.equal(blind, sequence[0, input_ids.shape[1] :]), (
        "the greedy tokens do not depend on the context: this model cannot tell a working cache from a dropped one"
    )


def generate_both_ways(model, input_ids, attention_mask=None, seed: int = 0, **generate_kwargs):
    """`generate()` with and without the cache, from the same random state; returns (cached, uncached) outputs
    with their per-step logits."""
    outputs = []
    for use_cache in (True, False):
        torch.manual_seed(seed)
        outputs.append(model.generate(
            input_ids, attention_mask=attention_mask, use_cache=use_cache, return_dict_in_generate=True,
            output_logits=True, output_scores=True, **generate_kwargs,
        ))
    return outputs


def assert_cache_changes_nothing(model, input_ids, attention_mask=None, seed: int = 0, atol: float = 1e-4,
                                 **generate_kwargs) -> torch.Tensor:
    """The same tokens, step logits (within `atol`) and, for beam search, beam scores with and without the cache.
    Returns the generated sequences."""
    cached, uncached = generate_both_ways(model, input_ids, attention_mask, seed, **generate_kwargs)
    assert torch.equal(cached.sequences, uncached.sequences), (cached.sequences, uncached.sequences)
    assert len(cached.logits) == len(uncached.logits)
    for step, (with_cache, without_cache) in enumerate(zip(cached.logits, uncached.logits)):
        torch.testing.assert_close(with_cache, without_cache, rtol=1e-4, atol=atol, msg=lambda m: f"step {step}: {m}")
    if getattr(cached, "sequences_scores", None) is not None:
        torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, rtol=1e-4, atol=atol)
    return cached.sequences


def left_padded(prompts: list[torch.Tensor], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D prompts of different lengths -> input_ids, attention_mask (batch, longest), padded on the left."""
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.stack([torch.cat([torch.full((width - len(p),), pad_token_id), p]) for p in prompts])
    starts = torch.tensor([width - len(prompt) for prompt in prompts])
    attention_mask = (torch.arange(width)[None] >= starts[:, None]).long()
    return input_ids, attention_mask


def check_every_decoding_mode(model, prompts: list[torch.Tensor], max_new_tokens: int = 8) -> None:
    """Greedy, seeded sampling, beam search and a left-padded batch each give the same tokens and step logits with
    and without the cache; greedy also equals `reference_greedy`, and the context demonstrably matters."""
    pad = model.config.pad_token_id
    # No eos: every row runs the full length, as reference_greedy does.
    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=pad)
    first = prompts[0][None]
    assert_context_matters(model, first, max_new_tokens)
    greedy = assert_cache_changes_nothing(model, first, do_sample=False, **kwargs)
    assert torch.equal(greedy, reference_greedy(model, first, max_new_tokens))
    assert_cache_changes_nothing(model, first, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, seed=7, **kwargs)
    assert_cache_changes_nothing(model, first, do_sample=False, num_beams=3, num_return_sequences=2, **kwargs)
    input_ids, attention_mask = left_padded(prompts, pad)
    batch = assert_cache_changes_nothing(model, input_ids, attention_mask, do_sample=False, **kwargs)
    for row, prompt in enumerate(prompts):
        alone = reference_greedy(model, prompt[None], max_new_tokens)
        assert torch.equal(batch[row, input_ids.shape[1] :], alone[0, len(prompt) :]), f"padded row {row} differs"
