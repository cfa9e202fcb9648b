"""Weights convert both ways between each family and its upstream twin with the same logits; options upstream
cannot express are refused by name; folders convert through `mtlm convert`."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import random_ids, tiny_model
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
)

from mtlm import MtlmGPTForCausalLM, MtlmLlamaForCausalLM, MtlmMoeForCausalLM
from mtlm.cli import main as mtlm_main
from mtlm.convert import from_upstream, to_upstream

pytestmark = pytest.mark.compat

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
UPSTREAM_CASES = {
    "llama-gqa-biases": lambda: LlamaForCausalLM(
        LlamaConfig(**SMALL, num_key_value_heads=2, attention_bias=True, mlp_bias=True, tie_word_embeddings=True)
    ),
    "llama-mha-untied": lambda: LlamaForCausalLM(LlamaConfig(**SMALL, rope_parameters={"rope_type": "default", "rope_theta": 500.0})),
    "gpt2-tied": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=40)),
    "gpt2-untied-relu": lambda: GPT2LMHeadModel(
        GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_inner=80, activation_function="relu", tie_word_embeddings=False)
    ),
    "mixtral": lambda: MixtralForCausalLM(MixtralConfig(**SMALL, num_key_value_heads=2, num_local_experts=4)),
}
MTLM_CLASS = {"llama": MtlmLlamaForCausalLM, "gpt2": MtlmGPTForCausalLM, "mixtral": MtlmMoeForCausalLM}


def _randomise(model):
    """Non-trivial norms and biases too, so that a mapping mistake on any tensor shows in the logits."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("case", UPSTREAM_CASES)
def test_logits_agree_from_upstream_and_back(case):
    upstream = _randomise(UPSTREAM_CASES[case]())
    ours = from_upstream(upstream)
    assert type(ours) is MTLM_CLASS[case.split("-")[0]]
    back = to_upstream(ours)
    assert type(back) is type(upstream)
    ids = random_ids(2, 11)
    with torch.no_grad():
        reference = upstream(ids).logits
        torch.testing.assert_close(ours(ids).logits, reference, rtol=0, atol=1e-4)
        torch.testing.assert_close(back(ids).logits, reference, rtol=0, atol=1e-4)
    assert ours.config.tie_word_embeddings == upstream.config.tie_word_embeddings


@pytest.mark.parametrize("family", ["mtlm_llama", "mtlm_gpt", "mtlm_moe"])
def test_mtlm_models_convert_to_upstream_with_equal_logits(family):
    overrides = {"mtlm_gpt": dict(num_key_value_heads=4), "mtlm_llama": {}, "mtlm_moe": {}}[family]
    ours = _randomise(tiny_model(family, **overrides))
    upstream = to_upstream(ours)
    ids = random_ids(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(upstream(ids).logits, ours(ids).logits, rtol=0, atol=1e-4)


def test_mixtral_aux_loss_matches_upstream():
    upstream = _randomise(MixtralForCausalLM(MixtralConfig(**SMALL, num_key_value_heads=2, num_local_experts=4, router_aux_loss_coef=0.1)))
    ours = from_upstream(upstream)
    ids = random_ids(2, 8)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    expected = upstream(ids, attention_mask=mask, labels=ids, output_router_logits=True)
    actual = ours(ids, attention_mask=mask, labels=ids)
    torch.testing.assert_close(actual.aux_loss, expected.aux_loss)
    torch.testing.assert_close(actual.loss, expected.loss)


@pytest.mark.parametrize(
    "family, overrides, option",
    [
        ("mtlm_gpt", dict(norm_type="rmsnorm"), "norm_type='rmsnorm'"),
        ("mtlm_gpt", dict(attention_bias=False), "attention_bias=False"),
        ("mtlm_gpt", dict(mlp_bias=False), "mlp_bias=False"),
        ("mtlm_gpt", dict(num_key_value_heads=2), "num_key_value_heads=2"),
        ("mtlm_moe", dict(attention_bias=True), "attention_bias=True"),
    ],
)
def test_options_upstream_cannot_express_are_named(family, overrides, option):
    model = tiny_model(family, **overrides)
    with pytest.raises(ValueError, match=f"Cannot convert to .*: {option}"):
        to_upstream(model)


def test_upstream_options_mtlm_cannot_express_are_named():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=1, n_head=4, scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(ValueError, match="attention scaling"):
        from_upstream(gpt2)
    llama = LlamaForCausalLM(LlamaConfig(**SMALL, head_dim=16))
    with pytest.raises(ValueError, match="head_dim=16"):
        from_upstream(llama)


BLOCK_MTLM = "import sys, types\nsys.modules['mtlm'] = None  # as if mtlm were not installed\n"


def test_convert_command_round_trips_folders(tmp_path):
    ours = _randomise(tiny_model("mtlm_llama"))
    ours.save_pretrained(tmp_path / "ours")
    ids = random_ids(1, 8)
    with torch.no_grad():
        torch.save(ours(ids).logits, tmp_path / "logits.pt")
    torch.save(ids, tmp_path / "ids.pt")

    mtlm_main(["convert", str(tmp_path / "ours"), str(tmp_path / "upstream"), "--to", "upstream"])
    config = json.loads((tmp_path / "upstream" / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config
    assert not list((tmp_path / "upstream").glob("*.py"))
    # Plain transformers, no mtlm and no remote code:
    script = BLOCK_MTLM + (
        "import torch\nfrom transformers import AutoModelForCausalLM\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'upstream')!r})\n"
        "assert type(model).__name__ == 'LlamaForCausalLM'\n"
        f"ids = torch.load({str(tmp_path / 'ids.pt')!r})\n"
        f"expected = torch.load({str(tmp_path / 'logits.pt')!r})\n"
        "with torch.no_grad():\n    torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=1e-4)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "PATH": ""})

    mtlm_main(["convert", str(tmp_path / "upstream"), str(tmp_path / "back")])
    back = MtlmLlamaForCausalLM.from_pretrained(tmp_path / "back")
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, torch.load(tmp_path / "logits.pt"), rtol=0, atol=1e-4)


def test_convert_command_refuses_to_replace_a_folder_and_leaves_it_intact(tmp_path, capsys):
    tiny_model("mtlm_gpt", norm_type="rmsnorm").save_pretrained(tmp_path / "rms")
    with pytest.raises(SystemExit) as exit_info:
        mtlm_main(["convert", str(tmp_path / "rms"), str(tmp_path / "out"), "--to", "upstream"])
    assert "norm_type='rmsnorm'" in str(exit_info.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folder left behind"

    tiny_model("mtlm_gpt", num_key_value_heads=4).save_pretrained(tmp_path / "gpt")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("precious")
    with pytest.raises(SystemExit) as exit_info:
        mtlm_main(["convert", str(tmp_path / "gpt"), str(tmp_path / "taken")])
    assert "--overwrite" in str(exit_info.value)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "precious"
    mtlm_main(["convert", str(tmp_path / "gpt"), str(tmp_path / "taken"), "--overwrite"])
    assert (tmp_path / "taken" / "model.safetensors").exists() and not (tmp_path / "taken" / "keep.txt").exists()

    with pytest.raises(SystemExit, match="already holds an mtlm model"):
        mtlm_main(["convert", str(tmp_path / "gpt"), str(tmp_path / "again"), "--to", "mtlm"])
    with pytest.raises(SystemExit, match="not a checkpoint folder"):
        mtlm_main(["convert", str(tmp_path / "missing"), str(tmp_path / "again")])
