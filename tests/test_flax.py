"""The Flax twins: logits parity with PyTorch both ways, generation, the sharded trainer (1 vs 8 simulated devices),
resume, and PyTorch (and remote-code) loading of Flax-written folders."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from conftest import random_ids, tiny_config, tiny_model  # noqa: E402
from test_remote_code import assert_loads_as_remote_code  # noqa: E402
from test_training import tiny_run  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

import mtlm  # noqa: E402
from mtlm.training import run_config  # noqa: E402
from mtlm.training.flax_trainer import train_flax  # noqa: E402

pytestmark = pytest.mark.compat

VARIANTS = [  # (family, config overrides): norms, tying, biases, grouped-query attention
    ("mtlm_llama", {}),  # GQA 4/2, attention biases, untied
    ("mtlm_llama", {"num_key_value_heads": 4, "attention_bias": False, "tie_word_embeddings": True,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}}),
    ("mtlm_gpt", {}),  # LayerNorm, biases, tied, gelu_new
    ("mtlm_gpt", {"norm_type": "rmsnorm", "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
                  "num_key_value_heads": 2, "hidden_act": "gelu"}),
    ("mtlm_moe", {}),
]


def flax_logits(model, ids: torch.Tensor, mask: torch.Tensor | None = None) -> np.ndarray:
    mask = None if mask is None else jnp.asarray(mask.numpy())
    return np.asarray(model(jnp.asarray(ids.numpy()), attention_mask=mask).logits)


@pytest.mark.parametrize("family, overrides", VARIANTS)
def test_pytorch_checkpoints_load_in_flax_with_the_same_logits(family, overrides, tmp_path):
    model = tiny_model(family, **overrides)
    model.save_pretrained(tmp_path)
    twin = mtlm.FlaxAutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(twin).__name__ == {"mtlm_llama": "FlaxMtlmLlamaForCausalLM", "mtlm_gpt": "FlaxMtlmGPTForCausalLM",
                                   "mtlm_moe": "FlaxMtlmMoeForCausalLM"}[family]
    ids = random_ids(2, 12)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: compare the real positions
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits.numpy()
    logits = flax_logits(twin, ids, mask)
    assert logits.shape == (2, 12, model.config.vocab_size)
    np.testing.assert_allclose(logits[0], expected[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits[1, 3:], expected[1, 3:], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family, overrides", VARIANTS)
def test_flax_written_folders_load_in_pytorch_with_the_same_logits(family, overrides, tmp_path):
    twin = mtlm.FlaxAutoModelForCausalLM.from_config(tiny_config(family, **overrides), seed=3)
    twin.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].endswith("ForCausalLM") and (tmp_path / "mtlm_blocks.py").is_file()
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = random_ids(2, 12)
    with torch.no_grad():
        expected = model(ids).logits.numpy()
    np.testing.assert_allclose(flax_logits(twin, ids), expected, atol=1e-4, rtol=0)


def test_generation_matches_pytorch_and_handles_padding_and_sampling(family, tmp_path):
    model = tiny_model(family)
    model.save_pretrained(tmp_path)
    twin = mtlm.FlaxAutoModelForCausalLM.from_pretrained(tmp_path)
    prompt = random_ids(2, 5)
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None).numpy()
    greedy = np.asarray(twin.generate(prompt.numpy(), max_new_tokens=8))
    np.testing.assert_array_equal(greedy, expected)
    # Left-padded prompts continue exactly as the same prompts without padding.
    padded = np.concatenate([np.zeros((2, 2), np.int64), prompt.numpy()], axis=1)
    mask = np.concatenate([np.zeros((2, 2), np.int64), np.ones((2, 5), np.int64)], axis=1)
    continued = np.asarray(twin.generate(padded, attention_mask=mask, max_new_tokens=8))
    np.testing.assert_array_equal(continued[:, 7:], expected[:, 5:])
    sampled = [np.asarray(twin.generate(prompt.numpy(), max_new_tokens=16, do_sample=True, temperature=2.0,
                                        seed=seed)) for seed in (1, 1, 2)]
    np.testing.assert_array_equal(sampled[0], sampled[1])
    assert not np.array_equal(sampled[0], sampled[2])
    top1 = np.asarray(twin.generate(prompt.numpy(), max_new_tokens=8, do_sample=True, top_k=1, seed=5))
    np.testing.assert_array_equal(top1, expected)


def flax_run(tmp_path: Path, model: dict | None = None, **training) -> dict:
    run = tiny_run(tmp_path, model=model or {}, training={"max_steps": 30, "logging_steps": 5, "eval_strategy": "steps",
                                                          "eval_steps": 15, "output_dir": str(tmp_path / "flax"),
                                                          **training})
    return run_config.validate(run)


def test_flax_training_writes_a_folder_pytorch_loads_with_the_same_logits(tmp_path):
    state = train_flax(flax_run(tmp_path))
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert losses[-1] < losses[0] - 0.3 and state["num_input_tokens_seen"] == 30 * 8 * 32
    assert any("eval_loss" in entry for entry in state["log_history"])
    folder = tmp_path / "flax"
    assert {"model.safetensors", "config.json", "tokenizer.json", "trainer_state.json", "loss.png"} <= \
        {path.name for path in folder.iterdir()}
    twin = mtlm.FlaxAutoModelForCausalLM.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = random_ids(2, 16, seed=4) % model.config.vocab_size
    with torch.no_grad():
        expected = model(ids).logits
    np.testing.assert_allclose(flax_logits(twin, ids), expected.numpy(), atol=1e-4, rtol=0)

    # ...and with remote code, in a process where mtlm cannot be imported.
    assert_loads_as_remote_code(folder, ids, expected, tmp_path)


MESH_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[2])
    import jax
    from pathlib import Path
    from test_training import tiny_run
    from mtlm.training import run_config
    from mtlm.training.flax_trainer import train_flax
    assert len(jax.devices()) == 8, jax.devices()
    losses = {}
    for name, per_device, mesh in (("one", 8, {"data_parallel": 1, "fsdp": 1}), ("eight", 1, {"data_parallel": 4, "fsdp": 2})):
        run = tiny_run(Path(sys.argv[1]) / name, training={"max_steps": 12, "logging_steps": 1, "disable_tqdm": True,
                       "per_device_train_batch_size": per_device})
        run["flax"] = mesh
        state = train_flax(run_config.validate(run))
        losses[name] = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    print("LOSSES" + json.dumps(losses))
""")


def test_losses_on_eight_simulated_devices_match_one_device(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", MESH_SCRIPT, str(tmp_path), str(Path(__file__).parent)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = json.loads(result.stdout.split("LOSSES", 1)[1])
    assert len(losses["one"]) == 12
    np.testing.assert_allclose(losses["eight"], losses["one"], rtol=1e-4)


def test_a_resumed_flax_run_continues_on_the_same_loss_curve(tmp_path):
    settings = {"max_steps": 10, "logging_steps": 1, "eval_strategy": "no", "save_strategy": "steps", "save_steps": 5}
    dropout = {"hidden_dropout": 0.1, "attention_dropout": 0.1}  # the masks of a step are a function of the step
    whole = train_flax(flax_run(tmp_path, dropout, **settings))
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    shutil.copytree(tmp_path / "flax" / "checkpoint-5", interrupted / "checkpoint-5")
    resumed = train_flax(flax_run(tmp_path, dropout, **settings, output_dir=str(interrupted)), resume=True)
    tail = [entry["loss"] for entry in whole["log_history"] if entry["step"] > 5]
    np.testing.assert_allclose([entry["loss"] for entry in resumed["log_history"] if entry["step"] > 5], tail,
                               rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        train_flax(flax_run(tmp_path, **settings, output_dir=str(tmp_path / "empty")), resume=True)


def test_bf16_compute_and_rematerialisation_train_float32_weights(tmp_path):
    state = train_flax(flax_run(tmp_path, max_steps=8, logging_steps=4, eval_strategy="no", bf16=True,
                                gradient_checkpointing=True))
    losses = [entry["loss"] for entry in state["log_history"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "flax")
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())


def test_mtlm_works_without_jax_and_says_how_to_get_the_flax_backend(tmp_path):
    script = textwrap.dedent("""
        import sys
        sys.modules["jax"] = None
        import mtlm
        from mtlm.cli import main
        try:
            mtlm.FlaxAutoModelForCausalLM
        except ImportError:
            print("flax-missing")
        main(sys.argv[1:])
    """)
    run = tiny_run(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(run))
    result = subprocess.run([sys.executable, "-c", script, "train", str(config), "--backend", "flax"],
                            capture_output=True, text=True, timeout=300)
    assert "flax-missing" in result.stdout
    assert result.returncode != 0 and "pip install 'mtlm[flax]'" in result.stderr


def test_moe_load_balancing_loss_matches_pytorch(tmp_path):
    from flax import nnx

    from mtlm.training.flax_trainer import load_balancing_loss, next_token_loss

    model = tiny_model("mtlm_moe")
    model.save_pretrained(tmp_path)
    twin = mtlm.FlaxAutoModelForCausalLM.from_pretrained(tmp_path)
    ids = random_ids(2, 12)
    with torch.no_grad():
        expected = model(ids, labels=ids)
    output, intermediates = nnx.capture(twin, nnx.Intermediate)(jnp.asarray(ids.numpy()))
    router_logits = [variable.get_value()[0] for _, variable in sorted(nnx.to_flat_state(intermediates))]
    assert len(router_logits) == model.config.num_hidden_layers
    aux = load_balancing_loss(router_logits, model.config.num_local_experts, model.config.num_experts_per_tok)
    loss = next_token_loss(output.logits, jnp.asarray(ids.numpy())) + model.config.router_aux_loss_coef * aux
    np.testing.assert_allclose(float(aux), expected.aux_loss.item(), rtol=1e-5)
    np.testing.assert_allclose(float(loss), expected.loss.item(), rtol=1e-5)


def test_schedules_read_training_arguments_as_the_trainer_does():
    from mtlm.training.defaults import TRAINING_DEFAULTS
    from mtlm.training.flax_trainer import learning_rate_schedule, steps_of

    training = {**TRAINING_DEFAULTS, "learning_rate": 1e-3, "max_steps": 100, "warmup_steps": 0.1}
    schedule = learning_rate_schedule(training)
    assert float(schedule(0)) == 0.0 and float(schedule(10)) == pytest.approx(1e-3)  # warm-up of 10% of 100 steps
    assert float(schedule(100)) == pytest.approx(1e-4)  # cosine to min_lr_rate 0.1
    floor = learning_rate_schedule({**training, "lr_scheduler_kwargs": {"min_lr": 5e-5}})
    assert float(floor(100)) == pytest.approx(5e-5)
    constant = learning_rate_schedule({**training, "lr_scheduler_type": "constant"})
    assert float(constant(0)) == pytest.approx(1e-3)
    assert steps_of(0.25, 10) == 3 and steps_of(50, 10) == 50


@pytest.mark.parametrize("options", [{"num_decay_steps": 20},
                                     {"num_decay_steps": 30, "decay_type": "linear", "warmup_type": "1-sqrt",
                                      "min_lr_ratio": 0.1}])
def test_warmup_stable_decay_is_the_trainers_schedule(options):
    from transformers import get_scheduler

    from mtlm.training.defaults import TRAINING_DEFAULTS
    from mtlm.training.flax_trainer import learning_rate_schedule

    training = {**TRAINING_DEFAULTS, "learning_rate": 1e-3, "max_steps": 100, "warmup_steps": 10,
                "lr_scheduler_type": "warmup_stable_decay", "lr_scheduler_kwargs": options}
    schedule = learning_rate_schedule(training)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = get_scheduler("warmup_stable_decay", optimizer, num_warmup_steps=10, num_training_steps=100,
                              scheduler_specific_kwargs=options)
    expected = []
    for _ in range(101):
        expected.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose([float(schedule(step)) for step in range(101)], expected, rtol=1e-5, atol=1e-9)


def test_flax_muon_takes_torchs_muon_steps():
    """Three steps of optimizer.name: muon on the same weights and gradients, in PyTorch (torch.optim.Muon on the
    layers' matrices, AdamW on the rest) and in optax, give the same weights: within 1e-4, a tenth of one step's
    change (Newton-Schulz is bit-exact; a bfloat16 rounding of its input may differ)."""
    from flax import nnx

    from mtlm.training.defaults import TRAINING_DEFAULTS
    from mtlm.training.flax_trainer import learning_rate_schedule, make_optimizer
    from mtlm.training.optimizers import muon_with_adamw

    training = {**TRAINING_DEFAULTS, "learning_rate": 1e-2, "max_steps": 10, "warmup_steps": 0,
                "lr_scheduler_type": "constant", "weight_decay": 0.1}
    model = tiny_model("mtlm_llama").train()
    twin = mtlm.FlaxAutoModelForCausalLM.from_config(model.config)
    twin.load_state_dict({name: value.detach().numpy() for name, value in model.state_dict().items()})
    decayed = {name for name, parameter in model.named_parameters() if parameter.ndim >= 2}
    torch_optimizer = muon_with_adamw(model, decayed, 0.1, 1e-2, None, 0.95, (0.9, 0.95), 1e-8)
    _, params, _ = nnx.split(twin, nnx.Param, ...)
    optimizer = make_optimizer(training, params, learning_rate_schedule(training), {"name": "muon"})
    state = optimizer.init(params)
    for step in range(3):
        ids = random_ids(2, 16, seed=step)
        model(ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), training["max_grad_norm"])
        gradients = {name: parameter.grad.numpy() for name, parameter in model.named_parameters()}
        grads = jax.tree_util.tree_map_with_path(
            lambda path, value: jnp.asarray(gradients[".".join(str(getattr(key, "key", "")) for key in path
                                                                if hasattr(key, "key"))]), params)
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        torch_optimizer.step()
        model.zero_grad(set_to_none=True)
    nnx.update(twin, params)
    flax_weights = twin.state_dict()
    for name, parameter in model.named_parameters():
        np.testing.assert_allclose(flax_weights[name], parameter.detach().numpy(), rtol=0, atol=1e-4, err_msg=name)


def test_flax_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="does not accumulate gradients"):
        train_flax(flax_run(tmp_path, gradient_accumulation_steps=2))
    with pytest.raises(ValueError, match="hidden_act='mish' has no Flax twin"):
        mtlm.FlaxAutoModelForCausalLM.from_config(tiny_config("mtlm_llama", hidden_act="mish"))
