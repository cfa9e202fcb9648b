"""The Tiny-LM baselines (mtlm_linear, mtlm_mlp, mtlm_attention): causal over every position of a block, equal to a
slow direct computation with the same weights, and transformers-native (Auto classes, generate, pipeline, remote
code, mtlm train)."""

import pytest
import torch
import yaml
from conftest import run_without_mtlm
from test_training import tiny_run
from transformers import AutoConfig, AutoModelForCausalLM, pipeline

from mtlm.cli import main as mtlm_main
from mtlm.families import FAMILIES
from mtlm.growth import grow_model

VOCAB = 23
TINY = {
    "mtlm_linear": dict(context_size=5),
    "mtlm_mlp": dict(context_size=5, embedding_size=6, hidden_sizes=[16, 12], hidden_dropout=0.0),
    "mtlm_attention": dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=12,
                           hidden_dropout=0.0),
}
BASELINES = list(TINY)


def tiny(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = AutoConfig.for_model(family, vocab_size=VOCAB, **{**TINY[family], **overrides})
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # larger weights than the initialisation's, so that every input visibly matters
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    return model


def ids(length: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def reference_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """The logits computed position by position, the slow and obvious way, from the model's weights."""
    config = model.config
    batch, length = tokens.shape
    if config.model_type == "mtlm_attention":
        backbone = model.model
        hidden = backbone.embed_tokens(tokens) + backbone.embed_positions(torch.arange(length))
        heads, head_dim = config.num_attention_heads, config.head_dim
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        for layer in backbone.layers:
            attention = layer.self_attn
            normed = layer.input_layernorm(hidden)
            q, k, v = (projection(normed).view(batch, length, heads, head_dim).transpose(1, 2)
                       for projection in (attention.q_proj, attention.k_proj, attention.v_proj))
            scores = (q @ k.transpose(-1, -2) / head_dim**0.5).masked_fill(~causal, float("-inf"))
            mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, -1)
            hidden = hidden + attention.o_proj(mixed)
        return model.lm_head(backbone.norm(hidden))
    context = config.context_size
    rows = []
    for t in range(length):
        window = [tokens[:, s] if s >= 0 else None for s in range(t - context + 1, t + 1)]
        if config.model_type == "mtlm_linear":
            pieces = [torch.zeros(batch, VOCAB) if token is None else torch.nn.functional.one_hot(token, VOCAB).float()
                      for token in window]
            rows.append(model.linear(torch.cat(pieces, -1)))
        else:
            pieces = [torch.zeros(batch, config.embedding_size) if token is None else model.embed_tokens(token)
                      for token in window]
            hidden = torch.cat(pieces, -1)
            for layer in model.hidden:
                hidden = torch.nn.functional.gelu(layer(hidden))
            rows.append(model.lm_head(hidden))
    return torch.stack(rows, 1)


@pytest.mark.parametrize("family", BASELINES)
def test_every_position_equals_the_slow_direct_computation(family):
    model = tiny(family)
    tokens = ids(12)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, reference_logits(model, tokens), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", BASELINES)
def test_a_logit_never_sees_the_future_and_a_window_slides(family):
    model = tiny(family)
    tokens = ids(12)
    with torch.no_grad():
        logits = model(tokens).logits
        for t in (0, 4, 8):
            changed = tokens.clone()
            changed[:, t + 1:] = (changed[:, t + 1:] + 1) % VOCAB
            torch.testing.assert_close(model(changed).logits[:, : t + 1], logits[:, : t + 1], rtol=0, atol=1e-6)
            assert not torch.allclose(model(changed).logits[:, t + 1:], logits[:, t + 1:])
        if family != "mtlm_attention":  # a fixed window: tokens before it do not matter
            context = model.config.context_size
            changed = tokens.clone()
            changed[:, 0] = (changed[:, 0] + 1) % VOCAB
            torch.testing.assert_close(model(changed).logits[:, context:], logits[:, context:], rtol=0, atol=1e-6)
            assert not torch.allclose(model(changed).logits[:, :context], logits[:, :context])


@pytest.mark.parametrize("family", BASELINES)
def test_generate_reads_the_last_context_tokens_and_padding_reads_as_nothing(family):
    model = tiny(family)
    context = model.config.context_size
    prompt = ids(3, batch=1)
    generated = model.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 23)
    sequence = prompt
    with torch.no_grad():
        for _ in range(20):  # the same greedy loop, written out: each step sees the last `context` tokens
            next_token = model(sequence[:, -context:]).logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, next_token], 1)
    assert torch.equal(generated, sequence)
    if family != "mtlm_attention":  # left padding with mask 0 is the zeros before a sequence starts
        padded = torch.cat([torch.tensor([[7, 7]]), prompt], 1)
        mask = torch.tensor([[0, 0, 1, 1, 1]])
        with torch.no_grad():
            torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, 2:], model(prompt).logits)


REMOTE = r"""
import sys
import torch
from transformers import AutoModelForCausalLM
folder, ids_file, logits_file = sys.argv[1:4]
ids, expected = torch.load(ids_file), torch.load(logits_file)
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
with torch.no_grad():
    torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=0)
print("remote-ok", model.generate(ids[:, :3], max_new_tokens=30, do_sample=False, pad_token_id=0).shape[1])
"""


@pytest.mark.parametrize("family", BASELINES)
def test_save_load_and_remote_code_round_trip(family, tmp_path):
    model = tiny(family)
    tokens = ids(10)
    model.save_pretrained(tmp_path / "model")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    assert type(loaded) is FAMILIES[family].causal_lm_class
    with torch.no_grad():
        expected = model(tokens).logits
        torch.testing.assert_close(loaded(tokens).logits, expected, rtol=0, atol=0)
    torch.save(tokens, tmp_path / "ids.pt")
    torch.save(expected, tmp_path / "logits.pt")
    result = run_without_mtlm(REMOTE, str(tmp_path / "model"), str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt"),
                              tmp_path=tmp_path)
    assert result.returncode == 0 and "remote-ok 33" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("preset", ["tlm-linear-ctx16", "tlm-mlp-128", "tlm-attention-h2"])
def test_each_baseline_trains_with_mtlm_train_and_generates_through_a_pipeline(preset, tmp_path, capsys):
    run = tiny_run(tmp_path, model={"preset": preset}, training={"max_steps": 3}, data={"block_size": 64})
    for key in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings"):
        run["model"].pop(key)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    mtlm_main(["train", str(tmp_path / "run.yaml")])
    folder = tmp_path / "run"
    generator = pipeline("text-generation", model=str(folder), tokenizer=str(folder))
    text = generator("ROMEO:", max_new_tokens=80, do_sample=False)[0]["generated_text"]
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")


def test_flops_are_counted_like_the_decoders(tmp_path):
    linear, mlp, attention = (tiny(family) for family in BASELINES)
    assert linear.forward_flops_per_token(64) == 2 * 5 * VOCAB * VOCAB
    assert mlp.forward_flops_per_token(64) == 2 * (5 * 6 * 16 + 16 * 12 + 12 * VOCAB)
    projections, scores = 2 * 16 * 4 * (2 * 4 + 2 * 4), 2 * 2 * 12 * 4 * 4
    assert attention.forward_flops_per_token(12) == 2 * (projections + scores) + 2 * 16 * VOCAB
    for model in (linear, mlp, attention):
        family = FAMILIES[model.config.model_type]
        assert family.flops_per_token(model.config, 12) == model.forward_flops_per_token(12)


def test_the_mlp_starts_with_pytorchs_scales_so_its_signal_reaches_the_head():
    """No norm sits between the MLP's layers: at transformers' N(0, 0.02) the last hidden layer's activations are
    about 1e-4 and training stalls; PyTorch's defaults (the seed's) keep them about 0.07."""
    from mtlm.configuration.presets import preset_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(preset_config("tlm-mlp-256")).eval()
    assert abs(model.embed_tokens.weight.std().item() - 1.0) < 0.1
    first = model.hidden[0]
    assert first.weight.abs().max().item() <= 1 / first.in_features**0.5
    last_hidden = []
    model.hidden[-1].register_forward_hook(lambda module, inputs, output: last_hidden.append(output))
    with torch.no_grad():
        model(torch.randint(0, model.config.vocab_size, (2, 128)))
    assert last_hidden[0][:, 64:].std().item() > 0.03


def test_the_seeds_parameter_counts_hold_with_its_65_characters():
    """Tiny-LM counts with the 65 characters of Tiny Shakespeare (its Linear also counts a fixed identity embedding
    of 65 x 65, which mtlm's one-hot does not need)."""
    from mtlm.configuration.presets import count_parameters, preset_config

    expected = {"tlm-linear-ctx128": 545_090 - 65 * 65, "tlm-mlp-256": 674_913, "tlm-attention-h4": 157_761,
                "tlm-transformer": 818_048}
    for name, count in expected.items():
        assert count_parameters(preset_config(name, vocab_size=65)) == count, name


@pytest.mark.parametrize("family, fields, message", [
    ("mtlm_linear", dict(context_size=0), "context_size must be a positive integer"),
    ("mtlm_linear", dict(context_size=4096), "context_size \\(4096\\) cannot exceed max_position_embeddings"),
    ("mtlm_mlp", dict(hidden_sizes=[]), "hidden_sizes must list at least one"),
    ("mtlm_attention", dict(hidden_size=30, num_attention_heads=4), "divisible by num_attention_heads"),
])
def test_impossible_configs_name_the_field(family, fields, message):
    with pytest.raises(ValueError, match=message):
        AutoConfig.for_model(family, **fields)


def test_growth_and_the_flax_backend_refuse_a_baseline_by_name():
    with pytest.raises(ValueError, match="mtlm_linear family has no layers to grow"):
        grow_model(tiny("mtlm_linear"), num_layers=4)
    grown = grow_model(tiny("mtlm_attention"), num_layers=4, function_preserving=True)
    assert grown.config.num_hidden_layers == 4
    pytest.importorskip("jax")
    from mtlm.modeling.flax_mtlm import FlaxMtlmForCausalLM

    with pytest.raises(ValueError, match="mtlm_mlp family has no Flax twin"):
        FlaxMtlmForCausalLM.from_config(tiny("mtlm_mlp").config)


def test_the_seeds_recipe_stops_early_keeps_the_best_checkpoint_and_scores_the_test_split(tmp_path):
    from safetensors.torch import load_file

    from mtlm.training import run_config
    from mtlm.training.trainer import train

    settings = {"max_steps": 40, "eval_strategy": "steps", "eval_steps": 2, "save_strategy": "steps", "save_steps": 2,
                "save_total_limit": 2, "load_best_model_at_end": True, "metric_for_best_model": "eval_loss",
                "greater_is_better": True}  # the loss falls, so the first evaluation stays the best
    run = tiny_run(tmp_path, data={"splits": {"train": 0.8, "validation": 0.1, "test": 0.1}}, training=settings)
    run["early_stopping"] = {"patience": 2}
    trainer = train(run_config.validate(run))
    assert trainer.state.global_step == 6 and trainer.state.best_global_step == 2  # two evaluations without a best
    final = load_file(tmp_path / "run" / "model.safetensors")
    best = load_file(tmp_path / "run" / "checkpoint-2" / "model.safetensors")
    assert final.keys() == best.keys() and all(torch.equal(final[name], best[name]) for name in final)
    tests = [entry for entry in trainer.state.log_history if "test_loss" in entry]
    assert len(tests) == 1 and tests[0]["test_loss"] > 0

    run["early_stopping"] = {"patience": 2}
    run["training"]["load_best_model_at_end"] = False
    with pytest.raises(ValueError, match="load_best_model_at_end: true"):
        run_config.validate(run)
