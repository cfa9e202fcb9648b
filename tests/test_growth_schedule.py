"""Growth inside one run: the model deepens at scheduled steps under one optimizer and one learning-rate schedule."""

import shutil

import pytest
import torch
from conftest import FAMILIES as TINY_FAMILIES
from conftest import random_ids, tiny_model
from test_training import tiny_run
from transformers import AutoConfig, AutoModelForCausalLM

from mtlm.errors import UsageError
from mtlm.families import FAMILIES
from mtlm.growth import grow_model, layer_map
from mtlm.hub_cards import render_card
from mtlm.growth.schedule import GrowthStage, grow_in_place
from mtlm.growth.width import widen_in_place
from mtlm.training import run_config
from mtlm.training.trainer import MtlmTrainer, train

def adam_steps(model, steps: int = 3) -> torch.optim.AdamW:
    """An AdamW in the Trainer's two groups, after a few steps on random ids."""
    decay = {name for name, parameter in model.named_parameters() if parameter.ndim >= 2}
    optimizer = torch.optim.AdamW([
        {"params": [p for n, p in model.named_parameters() if n in decay], "weight_decay": 0.1},
        {"params": [p for n, p in model.named_parameters() if n not in decay], "weight_decay": 0.0}], lr=1e-2)
    ids = random_ids(batch=2, length=8)
    for _ in range(steps):
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("method", ["stack", "interleave", "midas"])
def test_growing_in_place_copies_layers_and_their_adam_moments_along_the_map(family, method):
    model = tiny_model(family, num_hidden_layers=2).train()
    optimizer = adam_steps(model)
    reference = grow_model(model, 4, method).eval()  # the checkpoint growth, from the same weights
    source_state = {name: optimizer.state[parameter] for name, parameter in model.named_parameters()}
    mapping = grow_in_place(model, GrowthStage(at_step=3, num_layers=4, method=method), optimizer,
                            lambda grown: {name for name, parameter in grown.named_parameters() if parameter.ndim >= 2})
    assert mapping == layer_map(method, 2, 4) and model.config.num_hidden_layers == 4
    ids = random_ids(batch=2, length=8)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).logits, reference(ids).logits)
    layers = FAMILIES[family].layers
    for name, parameter in model.named_parameters():
        state = optimizer.state[parameter]
        if name.startswith(layers + "."):
            position, rest = name[len(layers) + 1:].split(".", 1)
            name = f"{layers}.{mapping[int(position)]}.{rest}"
        assert torch.equal(state["exp_avg"], source_state[name]["exp_avg"]), name
        assert torch.equal(state["exp_avg_sq"], source_state[name]["exp_avg_sq"]), name
        assert float(state["step"]) == 3.0  # the step count goes on: bias correction does not restart
    grouped = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    assert len(grouped) == len(set(map(id, grouped))) == len(list(model.parameters()))
    rebuilt = adam_steps(tiny_model(family, num_hidden_layers=4), steps=0)  # the groups a Trainer would make
    assert [[tuple(p.shape) for p in group["params"]] for group in optimizer.param_groups] == \
        [[tuple(p.shape) for p in group["params"]] for group in rebuilt.param_groups]
    model.train()(ids, labels=ids).loss.backward()
    optimizer.step()  # the grown model trains on with the same optimizer


def test_gated_growth_keeps_the_function_yet_lets_the_copies_learn():
    model = tiny_model("mtlm_llama", num_hidden_layers=2).eval()
    ids = random_ids(batch=2, length=8)
    with torch.no_grad():
        before = model(ids).logits
    grow_in_place(model, GrowthStage(at_step=1, num_layers=4, gate_steps=4))
    assert model.config.residual_gates == [1.0, 1.0, 0.0, 0.0]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before)
    copy_weight = model.model.layers[2].mlp.down_proj.weight
    assert torch.count_nonzero(copy_weight) > 0  # copied, not zeroed
    for layer in model.model.layers[2:]:
        layer.residual_gate = 0.25  # one step into a 4-step ramp
    model(ids, labels=ids).loss.backward()
    assert copy_weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert (model(ids).logits - before).abs().max() > 1e-4
    reloaded = AutoModelForCausalLM.from_config(model.config)  # a checkpoint saved mid-ramp keeps its gates
    assert [layer.residual_gate for layer in reloaded.model.layers] == [None, None, 0.0, 0.0]


@pytest.mark.parametrize("stages, message", [
    ([{"at_step": 5, "num_layers": 4}, {"at_step": 5, "num_layers": 8}], r"stage 2 .*after the previous stage's 5"),
    ([{"at_step": 5, "num_layers": 4}, {"at_step": 8, "num_layers": 4}], r"stage 2 .*num_layers must grow"),
    ([{"at_step": 30, "num_layers": 4}], r"stage 1 .*not before training.max_steps=30"),
    ([{"at_step": 5, "num_layers": 4, "method": "double"}], r"stage 1 .*unknown method 'double'"),
    ([{"at_step": 5, "num_layers": 4, "gate_steps": 10}, {"at_step": 10, "num_layers": 8}],
     r"stage 2 .*gates ramp until step 15"),
    ([{"at_step": 5}], r"stage 1 .*set at_step, and num_layers \(depth\) or width_factor"),
    ([{"at_step": 5, "width_factor": 1}], r"stage 1 .*width_factor must be an integer of at least 2"),
    ([{"at_step": 5, "num_layers": True}], r"stage 1 .*num_layers must be int, got True"),
    ([{"at_step": 5, "num_layers": 4, "when": 3}], r"stage 1 .*unknown keys \['when'\]"),
])
def test_bad_growth_schedules_are_refused_when_the_config_is_read(tmp_path, stages, message):
    with pytest.raises(UsageError, match=message):
        run_config.validate(tiny_run(tmp_path, growth={"stages": stages}))


def test_a_first_stage_that_does_not_deepen_the_model_is_refused_before_training(tmp_path):
    run = run_config.validate({**tiny_run(tmp_path), "growth": [{"at_step": 5, "num_layers": 2}]})
    with pytest.raises(UsageError, match=r"stage 1 .*grow past the model's 2 layers"):
        train(run)
    assert not (tmp_path / "run").exists()


GROWTH = [{"at_step": 4, "num_layers": 3, "method": "midas", "gate_steps": 4},  # the ramp ends as the next growth comes
          {"at_step": 8, "num_layers": 6, "lr_ramp_steps": 2}]


@pytest.fixture(scope="module")
def grown_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("grown")
    settings = {"max_steps": 12, "logging_steps": 1, "save_strategy": "steps", "save_steps": 3,
                "lr_scheduler_type": "warmup_stable_decay", "warmup_steps": 2,
                "lr_scheduler_kwargs": {"num_decay_steps": 3}}
    run = run_config.validate(tiny_run(root, training=settings, model={"num_hidden_layers": 1},
                                       growth={"stages": GROWTH}))
    return root, run, train(run)


def test_a_run_grows_on_schedule(grown_run):
    root, run, trainer = grown_run
    config = AutoConfig.from_pretrained(root / "run")
    assert config.num_hidden_layers == 6 and config.residual_gates is None
    assert [(entry["at_step"], entry["method"], entry["num_layers"]) for entry in config.growth_history] == \
        [(4, "midas", 3), (8, "stack", 6)]
    history = trainer.state.log_history
    flops = {entry["step"]: entry["flos"] for entry in history if "loss" in entry}
    per_step = {step: flops[step] - flops[step - 1] for step in flops if step - 1 in flops}
    assert per_step[3] < per_step[5] < per_step[9]  # each step costs what the model had then
    rates = {entry["step"]: entry["learning_rate"] for entry in history if "learning_rate" in entry}
    peak = run["training"]["learning_rate"]
    assert rates[4] == rates[5] == rates[6] == pytest.approx(peak)  # growth at step 4: no warm-up again, no jump
    assert rates[8] == pytest.approx(peak) and rates[9] == pytest.approx(peak / 3) and rates[9] < rates[10]  # ramp
    assert AutoConfig.from_pretrained(root / "run" / "checkpoint-6").residual_gates == pytest.approx([1, 1 / 2, 1 / 2])


def test_resume_across_a_growth_point_continues_on_the_same_loss_curve(grown_run, tmp_path):
    root, run, trainer = grown_run
    expected = {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}
    shutil.copytree(root / "run" / "checkpoint-6", tmp_path / "run" / "checkpoint-6")  # as if it died after step 6
    run = {**run, "training": {**run["training"], "output_dir": str(tmp_path / "run")}}
    resumed = train(run, resume=True)
    after = {entry["step"]: entry["loss"] for entry in resumed.state.log_history if "loss" in entry
             and entry["step"] > 6}
    assert sorted(after) == list(range(7, 13))
    for step, loss in after.items():
        assert loss == pytest.approx(expected[step], abs=1e-4), step
    assert resumed.model.config.num_hidden_layers == 6


def test_the_trainer_groups_match_the_grown_model(grown_run):
    _, _, trainer = grown_run
    decay = set(MtlmTrainer.get_decay_parameter_names(trainer, trainer.model))
    named = [(name, parameter) for name, parameter in trainer.model.named_parameters()]
    assert [id(p) for p in trainer.optimizer.param_groups[0]["params"]] == [id(p) for n, p in named if n in decay]


def test_a_checkpoint_saved_mid_ramp_is_refused_where_gates_cannot_be_expressed():
    from mtlm.convert import to_upstream

    model = tiny_model("mtlm_llama", num_hidden_layers=2)
    grow_in_place(model, GrowthStage(at_step=1, num_layers=3, gate_steps=4))
    with pytest.raises(ValueError, match=r"residual_gates=\[1.0, 1.0, 0.0\].*after the ramp"):
        to_upstream(model)


@pytest.mark.parametrize("family", ["mtlm_llama", "mtlm_gpt"])
@pytest.mark.parametrize("tied", [False, True])
def test_width_growth_keeps_the_function_and_carries_the_adam_moments(family, tied):
    model = tiny_model(family, tie_word_embeddings=tied).train()
    optimizer = adam_steps(model)
    ids = random_ids(batch=2, length=8)
    with torch.no_grad():
        before = model.eval()(ids).logits
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    moment = optimizer.state[q_proj]["exp_avg"].clone()
    widen_in_place(model, 2, optimizer, noise_std=0.02)
    config = model.config
    assert (config.hidden_size, config.num_attention_heads, config.head_dim) == (64, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=1e-5)
        reloaded = AutoModelForCausalLM.from_config(config)
        reloaded.load_state_dict(model.state_dict())
        torch.testing.assert_close(reloaded.eval()(ids).logits, before, rtol=0, atol=1e-5)
    assert optimizer.state[q_proj]["exp_avg"].shape == q_proj.shape == (64, 64)
    torch.testing.assert_close(optimizer.state[q_proj]["exp_avg"], moment.repeat(2, 2) / 2)
    model.train()(ids, labels=ids).loss.backward()
    optimizer.step()  # the same optimizer trains the wider parameters on


@pytest.mark.parametrize("noise_std, copies_differ", [(0.0, False), (0.02, True)])
def test_width_noise_is_what_lets_the_copies_learn_apart(noise_std, copies_differ):
    model = tiny_model("mtlm_llama").train()
    optimizer = adam_steps(model, steps=1)
    widen_in_place(model, 2, optimizer, noise_std=noise_std)
    ids = random_ids(batch=2, length=8)
    for _ in range(2):
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    up = model.model.layers[0].mlp.up_proj.weight  # MLP unit i and its copy 64 + i
    assert (not torch.allclose(up[:64], up[64:], atol=1e-7)) == copies_differ


def test_a_run_grows_wider_on_schedule_and_refuses_families_without_a_rule(tmp_path):
    run = run_config.validate(tiny_run(tmp_path, training={"max_steps": 6, "logging_steps": 1},
                                       growth={"stages": [{"at_step": 2, "num_layers": 3},
                                                                {"at_step": 4, "width_factor": 2}]}))
    trainer = train(run)
    config = AutoConfig.from_pretrained(tmp_path / "run")
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (3, 64, 128)
    assert [record["method"] for record in config.growth_history] == ["stack", "hypercloning"]
    flops = [entry["flos"] for entry in trainer.state.log_history if "loss" in entry]
    assert flops[4] - flops[3] > 3 * (flops[2] - flops[1])  # a step of the twice-wider model costs about 4x
    card = str(render_card(tmp_path / "run"))
    assert "| 1 | this run, step 2 | stack | 2 → 3 |" in card
    assert "| 2 | this run, step 4 | hypercloning | 3 → 3 (hidden 32 → 64) |" in card
    moe = run_config.validate(tiny_run(tmp_path / "moe", model={"model_type": "mtlm_moe", "num_local_experts": 2},
                                       growth={"stages": [{"at_step": 2, "width_factor": 2}]}))
    with pytest.raises(UsageError, match="Width growth works on mtlm_llama, mtlm_gpt, mtlm_attention; mtlm_moe"):
        train(moe)
