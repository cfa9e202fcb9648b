"""Presets reproduce the originals' sizes (SEEDS.md) and `mtlm presets` lists them."""

import pytest

from mtlm.cli import main as mtlm_main
from mtlm.configuration.presets import PRESETS, count_parameters, preset_config

WITH_REFERENCE = [name for name, preset in PRESETS.items() if preset.reference_parameters]


@pytest.mark.parametrize("name", WITH_REFERENCE)
def test_parameter_counts_match_the_published_figures(name):
    preset = PRESETS[name]
    count = count_parameters(preset.config())
    assert count == pytest.approx(preset.reference_parameters, rel=0.02)


def test_every_seed_model_has_a_preset():
    expected = {"mtlm1-88m", "tinygpt-41m", "stlm-50m", "mlm-gpt2", "mlm-llama2", "mlm-mixtral", "tlm-transformer"}
    assert expected <= set(PRESETS)
    assert {PRESETS[name].model_type for name in expected} == {"mtlm_llama", "mtlm_gpt", "mtlm_moe"}


def test_presets_carry_the_defining_choices():
    tinygpt = preset_config("tinygpt-41m")
    assert (tinygpt.norm_type, tinygpt.tie_word_embeddings, tinygpt.attention_bias) == ("rmsnorm", False, True)
    assert tinygpt.scale_residual_init and tinygpt.intermediate_size == int(8 / 3 * 384)
    stlm = preset_config("stlm-50m")
    assert stlm.num_key_value_heads == stlm.num_attention_heads // 4
    mixtral = preset_config("mlm-mixtral")
    assert (mixtral.num_local_experts, mixtral.num_experts_per_tok, mixtral.router_aux_loss_coef) == (4, 2, 0.01)
    assert preset_config("mlm-llama2", num_hidden_layers=2).num_hidden_layers == 2


def test_unknown_preset_suggests_close_names():
    with pytest.raises(ValueError, match="Did you mean mtlm1-88m"):
        preset_config("mtlm1-88")


def test_presets_command_lists_exact_counts(capsys):
    mtlm_main(["presets"])
    out = capsys.readouterr().out
    for name in PRESETS:
        assert name in out
    assert f"{count_parameters(preset_config('mtlm1-88m')):,}" in out
