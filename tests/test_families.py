"""Each family behaves as a transformers causal LM: Auto classes, save/load, attention backends, gradient
checkpointing, initialisation and input checks (decoding with and without the cache: test_generation.py)."""

import math

import pytest
import torch
from conftest import VOCAB_SIZE, random_ids, tiny_config, tiny_model
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import mtlm
from mtlm.modeling.mtlm_blocks import MtlmDecoderLayer

pytestmark = pytest.mark.compat


def test_auto_classes_build_every_family(family):
    config = AutoConfig.for_model(family, hidden_size=64, num_attention_heads=4, num_hidden_layers=1)
    assert config.model_type == family
    model = AutoModelForCausalLM.from_config(config)
    entry = mtlm.FAMILIES[family]
    config_class, backbone_class, lm_class = entry.config_class, entry.model_class, entry.causal_lm_class
    assert isinstance(config, config_class) and type(model) is lm_class
    assert type(AutoModel.from_config(config)) is backbone_class
    assert model.supports_gradient_checkpointing and set(model._no_split_modules) == {"MtlmDecoderLayer"}


def test_saved_folder_reloads_without_remote_code(family, tmp_path):
    model = tiny_model(family)
    ids = random_ids(2, 9)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    saved_fields = {**model.config.to_dict(), "_name_or_path": str(tmp_path)}
    assert loaded.config.to_dict() == saved_fields
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_loss_is_next_token_cross_entropy(family):
    model = tiny_model(family)
    ids = random_ids(2, 10)
    labels = ids.clone()
    labels[:, :4] = -100
    output = model(ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(
        output.logits[:, :-1].reshape(-1, VOCAB_SIZE), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    if family == "mtlm_moe":
        expected = expected + model.config.router_aux_loss_coef * output.aux_loss
    torch.testing.assert_close(output.loss, expected)


def test_eager_and_sdpa_agree(family):
    eager = tiny_model(family, attn_implementation="eager")
    sdpa = tiny_model(family, attn_implementation="sdpa")
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    ids = random_ids(2, 12)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    with torch.no_grad():
        eager_logits = eager(ids, attention_mask=mask).logits
        sdpa_logits = sdpa(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(sdpa_logits[real], eager_logits[real], rtol=0, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(family):
    ids = random_ids(2, 10)
    gradients = []
    for checkpointing in (False, True):
        model = tiny_model(family).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.is_activation_checkpointing
        model(ids, labels=ids).loss.backward()
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys()
    for name in gradients[0]:
        torch.testing.assert_close(gradients[1][name], gradients[0][name], msg=name)


def test_hidden_states_and_attentions_on_request(family):
    model = tiny_model(family, attn_implementation="eager")
    ids = random_ids(2, 6)
    output = model(ids, output_hidden_states=True, output_attentions=True)
    layers = model.config.num_hidden_layers
    assert len(output.hidden_states) == layers + 1
    assert output.hidden_states[0].shape == (2, 6, model.config.hidden_size)
    assert len(output.attentions) == layers
    assert output.attentions[0].shape == (2, model.config.num_attention_heads, 6, 6)
    # causal: no weight on future positions
    assert torch.all(output.attentions[0].triu(diagonal=1) == 0)


def test_tied_head_shares_the_embedding_and_untied_does_not(family, tmp_path):
    tied = tiny_model(family, tie_word_embeddings=True)
    untied = tiny_model(family, tie_word_embeddings=False)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    assert not torch.equal(untied.lm_head.weight, untied.model.embed_tokens.weight)
    untied.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.lm_head.weight, untied.lm_head.weight, rtol=0, atol=0)


def test_init_is_normal_with_initializer_range_and_optional_residual_scaling(family):
    std = 0.05
    layers = 4
    plain = tiny_model(family, initializer_range=std, num_hidden_layers=layers, hidden_size=128, scale_residual_init=False)
    scaled = tiny_model(family, initializer_range=std, num_hidden_layers=layers, hidden_size=128, scale_residual_init=True)
    embedding = plain.model.embed_tokens.weight
    assert embedding.std().item() == pytest.approx(std, rel=0.1)
    layer: MtlmDecoderLayer = plain.model.layers[0]
    assert layer.self_attn.q_proj.weight.std().item() == pytest.approx(std, rel=0.1)
    assert layer.self_attn.o_proj.weight.std().item() == pytest.approx(std, rel=0.1)
    assert torch.all(layer.input_layernorm.weight == 1)
    residual_std = std / math.sqrt(2 * layers)
    scaled_layer = scaled.model.layers[0]
    assert scaled_layer.self_attn.o_proj.weight.std().item() == pytest.approx(residual_std, rel=0.1)
    down = next(p for n, p in scaled_layer.mlp.named_parameters() if n.endswith("down_proj") or n.endswith("down_proj.weight"))
    assert down.std().item() == pytest.approx(residual_std, rel=0.1)
    assert scaled_layer.self_attn.q_proj.weight.std().item() == pytest.approx(std, rel=0.1)


def test_loading_does_not_reinitialise_weights(family, tmp_path):
    model = tiny_model(family, scale_residual_init=True)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for (name, expected), (_, actual) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(actual, expected), name


def test_dropout_is_active_only_in_training(family):
    model = tiny_model(family, hidden_dropout=0.3, attention_dropout=0.2)
    ids = random_ids(1, 8)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
        model.train()
        assert not torch.equal(model(ids).logits, model(ids).logits)


def test_moe_reports_aux_loss_and_router_logits_on_request():
    model = tiny_model("mtlm_moe")
    ids = random_ids(2, 6)
    plain = model(ids)
    assert plain.aux_loss is None and plain.router_logits is None
    requested = model(ids, output_router_logits=True)
    assert len(requested.router_logits) == model.config.num_hidden_layers
    assert requested.router_logits[0].shape == (2 * 6, model.config.num_local_experts)
    assert requested.aux_loss > 0
    with_labels = model(ids, labels=ids)
    assert with_labels.router_logits is None and with_labels.aux_loss is not None
    heavier = tiny_model("mtlm_moe", router_aux_loss_coef=1.0)(ids, labels=ids)
    torch.testing.assert_close(heavier.loss - with_labels.loss, (1.0 - 0.02) * with_labels.aux_loss)


def test_moe_routes_to_top_k_experts_with_weights_summing_to_one():
    model = tiny_model("mtlm_moe", num_local_experts=5, num_experts_per_tok=3)
    router = model.model.layers[0].mlp.gate
    _, weights, indices = router(torch.randn(7, model.config.hidden_size))
    assert indices.shape == (7, 3) and weights.shape == (7, 3)
    assert all(len(set(row.tolist())) == 3 for row in indices)
    torch.testing.assert_close(weights.sum(-1), torch.ones(7))


@pytest.mark.parametrize("implementation", ["eager", "grouped_mm", "batched_mm"])
def test_moe_experts_implementations_agree(implementation):
    reference = tiny_model("mtlm_moe", experts_implementation="eager")
    other = tiny_model("mtlm_moe", experts_implementation=implementation)
    assert other.config._experts_implementation == implementation
    ids = random_ids(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(other(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "family, overrides, message",
    [
        ("mtlm_llama", dict(hidden_size=30, num_attention_heads=4), "hidden_size (30) must be divisible by num_attention_heads (4)"),
        ("mtlm_gpt", dict(hidden_size=30, num_attention_heads=4), "hidden_size (30) must be divisible by num_attention_heads (4)"),
        ("mtlm_llama", dict(num_attention_heads=4, num_key_value_heads=3), "num_attention_heads (4) must be divisible by num_key_value_heads (3)"),
        ("mtlm_moe", dict(num_local_experts=2, num_experts_per_tok=3), "num_experts_per_tok (3) cannot exceed num_local_experts (2)"),
        ("mtlm_llama", dict(hidden_act="swishy"), "hidden_act='swishy' is not supported"),
        ("mtlm_gpt", dict(norm_type="batchnorm"), "norm_type='batchnorm' is not supported"),
        ("mtlm_llama", dict(num_hidden_layers=0), "num_hidden_layers must be a positive integer"),
        ("mtlm_gpt", dict(vocab_size=-5), "vocab_size must be a positive integer"),
        ("mtlm_moe", dict(intermediate_size=0), "intermediate_size must be a positive integer"),
        ("mtlm_llama", dict(hidden_dropout=1.5), "hidden_dropout is a dropout probability"),
        ("mtlm_llama", dict(hidden_size=36, num_attention_heads=12, num_key_value_heads=12), "must be even"),
    ],
)
def test_impossible_configs_fail_at_construction(family, overrides, message):
    with pytest.raises(ValueError) as error:
        tiny_config(family, **overrides)
    assert message in str(error.value)


def test_ids_outside_the_vocabulary_raise_a_clear_error(family):
    model = tiny_model(family)
    for bad in (VOCAB_SIZE, -1):
        ids = random_ids(1, 4)
        ids[0, 2] = bad
        with pytest.raises(ValueError, match=rf"ids \[{bad}\] outside the vocabulary \[0, {VOCAB_SIZE}\)"):
            model(ids)


def test_learned_positions_refuse_sequences_past_their_table():
    model = tiny_model("mtlm_gpt", max_position_embeddings=16)
    model(random_ids(1, 16))
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        model(random_ids(1, 17))
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        model.generate(random_ids(1, 10), max_new_tokens=10, do_sample=False)


@pytest.mark.parametrize("family_name", ["mtlm_llama", "mtlm_moe"])
def test_rotary_models_run_past_max_position_embeddings(family_name):
    model = tiny_model(family_name, max_position_embeddings=16)
    assert model(random_ids(1, 24)).logits.shape == (1, 24, VOCAB_SIZE)
