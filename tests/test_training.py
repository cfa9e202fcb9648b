"""Run configs and `mtlm train` / `mtlm generate` end to end on tiny models."""

import copy
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline

from mtlm.cli import CommandError
from mtlm.cli import main as mtlm_main
from mtlm.errors import UsageError
from mtlm.training import run_config
from mtlm.training.trainer import MtlmTrainer, train

FIXTURE = Path(__file__).parent / "fixtures" / "shakespeare-6k.txt"


def tiny_run(tmp_path: Path, **sections) -> dict:
    run = {
        "model": {"model_type": "mtlm_llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "max_position_embeddings": 64},
        "tokenizer": {"kind": "char"},
        "data": {"source": "text", "path": str(FIXTURE), "block_size": 32},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 30, "per_device_train_batch_size": 8,
                     "learning_rate": 3e-3, "warmup_steps": 2, "logging_steps": 5, "eval_strategy": "no",
                     "save_strategy": "no", "seed": 0, "disable_tqdm": True},
    }
    for section, values in sections.items():
        run.setdefault(section, {}).update(values)
    return run


def write_config(tmp_path: Path, run: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


@pytest.mark.parametrize(
    "section, key, suggestion",
    [
        ("training", "learning_rat", "learning_rate"),
        ("model", "hidden_sise", "hidden_size"),
        ("data", "block_sise", "block_size"),
        ("tokenizer", "kinds", "kind"),
    ],
)
def test_unknown_keys_name_the_closest_valid_ones(tmp_path, section, key, suggestion):
    run = tiny_run(tmp_path)
    run[section][key] = 1
    with pytest.raises(ValueError, match=rf"Unknown key '{key}' in {section}.*Did you mean {suggestion}"):
        run_config.validate(run)


def test_overrides_and_defaults(tmp_path):
    path = write_config(tmp_path, tiny_run(tmp_path))
    run = run_config.load(path, ["training.max_steps=7", "model.hidden_dropout=0.2", "training.learning_rate=1e-3",
                                 "data.splits={train: 0.5, validation: 0.5}"])
    assert run["training"]["max_steps"] == 7 and run["model"]["hidden_dropout"] == 0.2
    assert run["training"]["learning_rate"] == 1e-3
    words = run_config.load(path, ["training.eval_strategy=no", "training.disable_tqdm=true"])["training"]
    assert words["eval_strategy"] == "no" and words["disable_tqdm"] is True
    assert "save_strategy: 'no'" in path.read_text()
    path.write_text(path.read_text().replace("save_strategy: 'no'", "save_strategy: no"))  # YAML 1.1: false
    assert run_config.load(path)["training"]["save_strategy"] == "no"
    assert run["data"]["splits"] == {"train": 0.5, "validation": 0.5}
    with pytest.raises(ValueError, match="section.key=value"):
        run_config.load(path, ["max_steps"])
    default = run_config.load()
    assert default["model"]["model_type"] == "mtlm_llama" and default["data"]["source"] == "tinyshakespeare"
    with pytest.raises(ValueError, match="Did you mean mlm-llama2"):
        run_config.validate({**tiny_run(tmp_path), "model": {"preset": "mlm-lama2"}})


def test_train_writes_a_checkpoint_folder_that_generates(tmp_path, capsys):
    path = write_config(tmp_path, tiny_run(tmp_path))
    mtlm_main(["train", str(path), "--sample-prompt", "First"])
    output = tmp_path / "run"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "run_config.yaml",
                 "modeling_mtlm_llama.py"):
        assert (output / name).is_file(), name
    assert "auto_map" in json.loads((output / "config.json").read_text())
    assert yaml.safe_load((output / "run_config.yaml").read_text())["training"]["max_steps"] == 30
    model = AutoModelForCausalLM.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert model.config.vocab_size == len(tokenizer) and model.config.pad_token_id == tokenizer.pad_token_id
    printed = capsys.readouterr().out
    assert "A sample:" in printed
    mtlm_main(["generate", str(output), "--prompt", "First", "--max-new-tokens", "12", "--temperature", "0"])
    generated = capsys.readouterr().out.removesuffix("\n")
    assert generated.startswith("First") and len(generated) == len("First") + 12  # one token per character
    generator = pipeline("text-generation", model=str(output))
    text = generator("First", max_new_tokens=12, do_sample=False)[0]["generated_text"]
    assert text == generated


def test_training_lowers_the_loss(tmp_path):
    trainer = train(run_config.validate(tiny_run(tmp_path, training={"max_steps": 40})))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0] - 0.5


def test_an_output_folder_holding_a_run_is_refused(tmp_path):
    path = write_config(tmp_path, tiny_run(tmp_path, training={"max_steps": 2}))
    mtlm_main(["train", str(path)])
    with pytest.raises(SystemExit, match="already holds a run: pass --resume"):
        mtlm_main(["train", str(path)])
    mtlm_main(["train", str(path), "--overwrite"])


def test_a_tokenizer_that_does_not_fit_the_model_is_refused(tmp_path):
    path = write_config(tmp_path, tiny_run(tmp_path, model={"vocab_size": 5}))
    with pytest.raises(SystemExit, match="model.vocab_size=5 does not fit the tokenizer"):
        mtlm_main(["train", str(path)])


def test_weight_decay_applies_to_matrices_only(tmp_path):
    config = AutoConfig.for_model("mtlm_gpt", vocab_size=20, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, max_position_embeddings=8)
    model = AutoModelForCausalLM.from_config(config)
    names = set(MtlmTrainer.get_decay_parameter_names(None, model))
    assert "model.layers.0.self_attn.q_proj.weight" in names and "model.embed_tokens.weight" in names
    assert not any(name.endswith("bias") or "norm" in name for name in names)
    assert {n for n, p in model.named_parameters() if p.ndim >= 2} == names


def test_flops_per_token_count_every_matrix_multiply():
    config = AutoConfig.for_model("mtlm_llama", vocab_size=50, hidden_size=32, intermediate_size=48,
                                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
    model = AutoModelForCausalLM.from_config(config)
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "embed_tokens" not in n)
    matrices += model.lm_head.weight.numel()  # tied: the head multiplies too
    sequence = 16
    attention = 3 * 2 * 2 * sequence * 32  # per layer: scores and values over the sequence
    assert model.forward_flops_per_token(sequence) == 2 * matrices + attention
    ids = torch.zeros(4, sequence, dtype=torch.long)
    assert model.floating_point_ops({"input_ids": ids}) == 3 * 4 * sequence * (2 * matrices + attention)
    moe = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "mtlm_moe", vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_local_experts=4, num_experts_per_tok=2))
    dense = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "mtlm_llama", vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4))
    router = 3 * 2 * 32 * 4
    one_expert = 3 * 2 * 3 * 32 * 48
    assert moe.forward_flops_per_token(8) == dense.forward_flops_per_token(8) + router + one_expert


def test_logs_carry_cumulative_flops_and_a_loss_plot_is_written(tmp_path):
    trainer = train(run_config.validate(tiny_run(tmp_path, training={
        "max_steps": 10, "eval_strategy": "steps", "eval_steps": 5})))
    flos = [entry["flos"] for entry in trainer.state.log_history if "loss" in entry]
    assert flos == sorted(flos) and flos[0] > 0
    assert any("eval_perplexity" in entry for entry in trainer.state.log_history)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 10_000


@pytest.mark.parametrize("saving, kept", [
    ({"save_strategy": "steps", "save_steps": 1, "save_total_limit": 1}, "The last good checkpoint is"),
    # Nothing is logged or saved before step 40: the loss is read back there, and names the first bad step.
    ({"save_strategy": "no", "logging_steps": 1000}, "No checkpoint was saved before it"),
])
def test_a_non_finite_loss_stops_training_and_names_the_step(tmp_path, saving, kept):
    run = tiny_run(tmp_path, training={"max_steps": 40, "learning_rate": 1e12, "max_grad_norm": 0, "warmup_steps": 0,
                                       **saving})
    with pytest.raises(SystemExit, match=rf"became (nan|inf) at step ([2-9]|[1-3]\d)\. Training stopped\. {kept}"):
        mtlm_main(["train", str(write_config(tmp_path, run))])
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_moe_runs_log_the_auxiliary_loss(tmp_path):
    run = tiny_run(tmp_path, model={"model_type": "mtlm_moe", "num_local_experts": 4, "num_experts_per_tok": 2},
                   training={"max_steps": 10})
    trainer = train(run_config.validate(run))
    aux = [entry["aux_loss"] for entry in trainer.state.log_history if "aux_loss" in entry]
    assert len(aux) == 2 and all(value > 0 for value in aux)


def test_arithmetic_runs_report_exact_match_end_on_validation_answers_and_eval_scores_a_checkpoint(tmp_path, capsys):
    run = {
        "model": {"preset": "mlm-llama2", "num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64},
        "tokenizer": {"kind": "arithmetic"},
        "data": {"source": "arithmetic", "arithmetic": {"out_dir": str(tmp_path / "data"), "n_samples": 300,
                                                        "B": 99, "seed": 1, "reverse": True},
                 "random_position_offsets": True, "balance_layouts": 1.0},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 6, "per_device_train_batch_size": 16,
                     "eval_strategy": "steps", "eval_steps": 3, "save_strategy": "no", "disable_tqdm": True},
    }
    path = write_config(tmp_path, run)
    with pytest.raises(CommandError, match=r"cannot be encoded.*'a'"):  # refused before any work
        mtlm_main(["train", str(path), "--sample-prompt", "12+a="])
    assert not (tmp_path / "run").exists()
    mtlm_main(["train", str(path)])
    printed = capsys.readouterr().out.split("A sample:")[-1]
    validation = [json.loads(line) for line in (tmp_path / "data" / "val.jsonl").read_text().splitlines()]
    for row in validation[:4]:  # the end-of-run sample answers validation prompts, each beside its target
        assert re.search(rf"^{re.escape(row['prompt'])}\S*   \(target {row['target']}\)$", printed, re.MULTILINE)
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    matches = [entry["eval_exact_match"] for entry in history if "eval_exact_match" in entry]
    assert len(matches) >= 2 and all(0.0 <= value <= 1.0 for value in matches)
    mtlm_main(["eval", str(tmp_path / "run"), "--arithmetic", str(tmp_path / "data" / "test.jsonl"),
               "--output", str(tmp_path / "em.json")])
    result = json.loads((tmp_path / "em.json").read_text())["results"]["test.jsonl"]
    stored = json.loads((tmp_path / "run" / "eval_results.json").read_text())["exact_match"]["results"]
    assert stored == {"test.jsonl": result}
    assert result["n"] == 30 and 0.0 <= result["exact_match"] <= 1.0
    assert sum(result["by_digits"].values()) >= 0 and set(result["by_digits"]) <= {"1", "2", "3"}
    assert "exact match" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(name for name in run_config.bundled_configs()
                                         if name.startswith("arithmetic-")))
def test_every_arithmetic_config_trains_scores_and_ends_with_a_sample_of_validation_answers(name, tmp_path, capsys):
    mtlm_main(["train", name, *(arg for value in (
        f"training.output_dir={tmp_path / 'run'}", f"data.arithmetic.out_dir={tmp_path / 'data'}",
        "data.arithmetic.n_samples=400", "training.max_steps=4", "training.eval_steps=2", "training.save_steps=4",
        "training.disable_tqdm=true") for arg in ("--set", value))])
    printed = capsys.readouterr().out.split("A sample:")[-1]
    validation = [json.loads(line) for line in (tmp_path / "data" / "val.jsonl").read_text().splitlines()]
    assert all(f"(target {row['target']})" in printed for row in validation[:4])
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "eval_exact_match" in entry][:2] == [2, 4]


def test_random_position_offsets_reach_training_batches_and_not_evaluation(tmp_path):
    from datasets import Dataset
    from transformers import TrainingArguments

    from mtlm.data.processing import RandomPositionOffsets, collator, tokenize_prompt_target
    from mtlm.data.tokenization import arithmetic_tokenizer

    tokenizer = arithmetic_tokenizer()
    rows = tokenize_prompt_target(Dataset.from_list([{"text": "<bos>1+2=3<eos>"}, {"text": "<bos>40+2=42<eos>"}]),
                                  tokenizer)
    config = AutoConfig.for_model("mtlm_gpt", vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                  num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=20)
    trainer = MtlmTrainer(model=AutoModelForCausalLM.from_config(config),
                          args=TrainingArguments(str(tmp_path), per_device_train_batch_size=2, report_to=[]),
                          train_dataset=rows, eval_dataset=rows, data_collator=collator(tokenizer),
                          train_collator=RandomPositionOffsets(collator(tokenizer), 20))
    assert "position_ids" in next(iter(trainer.get_train_dataloader()))
    assert "position_ids" not in next(iter(trainer.get_eval_dataloader()))
    assert trainer.data_collator is not trainer.train_collator


def test_training_rows_are_drawn_by_their_sample_weights(tmp_path):
    from datasets import Dataset
    from transformers import TrainingArguments

    from mtlm.data.processing import collator, tokenize_prompt_target
    from mtlm.data.tokenization import arithmetic_tokenizer

    tokenizer = arithmetic_tokenizer()
    texts = [f"<bos>{a}+1={a + 1}<eos>" for a in range(10, 20)]
    rows = tokenize_prompt_target(Dataset.from_list([{"text": text} for text in texts]), tokenizer)
    config = AutoConfig.for_model("mtlm_gpt", vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                  num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=20)
    weights = torch.zeros(len(texts), dtype=torch.double)
    weights[[2, 7]] = 1.0
    trainer = MtlmTrainer(model=AutoModelForCausalLM.from_config(config),
                          args=TrainingArguments(str(tmp_path), per_device_train_batch_size=5, report_to=[]),
                          train_dataset=rows, data_collator=collator(tokenizer), train_sample_weights=weights)
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == 2  # an epoch is still as many draws as rows
    drawn = {tokenizer.decode(row, skip_special_tokens=True) for batch in batches for row in batch["input_ids"]}
    assert drawn == {"12+1=13", "17+1=18"}


def test_chat_reads_prompts_and_temperature_until_quit(tmp_path):
    import subprocess
    import sys

    path = write_config(tmp_path, tiny_run(tmp_path, training={"max_steps": 2}))
    mtlm_main(["train", str(path)])
    session = "temp 0\nFirst\ntemp x\nquit\n"
    result = subprocess.run([sys.executable, "-m", "mtlm.cli", "chat", str(tmp_path / "run"), "--max-new-tokens", "5"],
                            input=session, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "temperature = 0.0" in result.stdout and "usage: temp 0.8" in result.stdout
    assert "First" in result.stdout


def readme_launch_commands() -> list[str]:
    """The data-parallel commands of the README's code blocks, as written (comments dropped)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    lines = [line.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)```", readme, re.S)
             for line in block.splitlines()]
    return [line for line in lines if line.startswith(("torchrun ", "accelerate launch "))]


def test_each_readme_launch_command_trains_on_two_processes_like_one(tmp_path):
    import subprocess
    import sys

    commands = readme_launch_commands()
    assert {command.split()[0] for command in commands} == {"torchrun", "accelerate"}

    def tiny(folder: Path, per_device: int) -> dict:
        # Sequential order, so that both runs see the same examples in every global batch.
        return tiny_run(folder, training={"max_steps": 6, "per_device_train_batch_size": per_device, "seed": 3,
                                          "save_strategy": "no", "train_sampling_strategy": "sequential"})

    single = train(run_config.validate(tiny(tmp_path / "single", 8)))
    one = AutoModelForCausalLM.from_pretrained(tmp_path / "single" / "run")
    ids = torch.arange(3, 40).reshape(1, -1) % one.config.vocab_size
    with torch.no_grad():
        reference = one(ids).logits
        assert (reference - AutoModelForCausalLM.from_config(one.config)(ids).logits).abs().max() > 1e-2
    # the launchers as installed beside this interpreter, as a user's shell finds them in an activated environment
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for index, command in enumerate(commands):  # one after the other: both launchers take port 29500
        folder = tmp_path / f"launched-{index}"
        folder.mkdir()
        config = write_config(folder, tiny(folder, 4))  # 2 processes x 4: the same global batch of 8
        argv = [str(config) if word == "shakespeare-char" else word for word in command.split()]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=folder)
        assert result.returncode == 0, (command, result.stderr[-3000:])
        assert "mtlm: 2 processes x 4 sequences x 1 accumulation = 8 sequences per step" in result.stdout, command

        state = json.loads((folder / "run" / "trainer_state.json").read_text())
        assert state["stateful_callbacks"]["TrainingEnvironment"]["args"]["processes"] == 2, command
        assert state["num_input_tokens_seen"] == single.state.num_input_tokens_seen == 6 * 8 * 32, command
        with torch.no_grad():
            logits = AutoModelForCausalLM.from_pretrained(folder / "run")(ids).logits
        torch.testing.assert_close(logits, reference, rtol=0, atol=1e-4, msg=command)


def test_resume_continues_on_the_same_loss_curve(tmp_path):
    settings = {"max_steps": 10, "logging_steps": 1, "save_strategy": "steps", "save_steps": 5}
    full = train(run_config.validate(tiny_run(tmp_path / "full", training=settings)))
    expected = {entry["step"]: entry["loss"] for entry in full.state.log_history if "loss" in entry}

    partial_dir = tmp_path / "partial"
    train(run_config.validate(tiny_run(partial_dir, training=settings)))
    run_folder = partial_dir / "run"
    for path in run_folder.iterdir():  # keep only checkpoint-5, as if the run had died after step 5
        if path.name != "checkpoint-5":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    resumed = train(run_config.validate(tiny_run(partial_dir, training=settings)), resume=True)
    after = {entry["step"]: entry["loss"] for entry in resumed.state.log_history if "loss" in entry and entry["step"] > 5}
    assert sorted(after) == [6, 7, 8, 9, 10]
    for step, loss in after.items():
        assert loss == pytest.approx(expected[step], abs=1e-3), step


def test_a_failed_checkpoint_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    from transformers import Trainer

    original = Trainer._save_checkpoint
    calls = []

    def failing_second_save(self, model, trial):
        calls.append(self.state.global_step)
        if len(calls) == 2:
            # where transformers writes the checkpoint: the run folder it is given
            folder = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
            folder.mkdir()
            (folder / "model.safetensors").write_bytes(b"half")
            raise OSError(28, "No space left on device")
        return original(self, model, trial)

    monkeypatch.setattr(Trainer, "_save_checkpoint", failing_second_save)
    run = tiny_run(tmp_path, training={"max_steps": 6, "save_strategy": "steps", "save_steps": 2})
    with pytest.raises(OSError, match="Saving checkpoint-4 failed .*checkpoint-2 is intact"):
        train(run_config.validate(run))
    assert not (tmp_path / "run" / "checkpoint-4").exists()
    assert (tmp_path / "run" / "checkpoint-2" / "model.safetensors").stat().st_size > 1000


def test_samples_stop_at_the_context_of_a_learned_position_model(tmp_path):
    from mtlm.training.reports import sample

    run = tiny_run(tmp_path, model={"model_type": "mtlm_gpt", "max_position_embeddings": 16, "num_key_value_heads": 4},
                   data={"block_size": 16}, training={"max_steps": 2})
    trainer = train(run_config.validate(run))
    text = sample(trainer.model, trainer.processing_class, "First", max_new_tokens=100)
    assert text.startswith("First") and len(trainer.processing_class(text, add_special_tokens=False)["input_ids"]) <= 16


def test_generation_commands_need_a_tokenizer(tmp_path):
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "mtlm_llama", vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2))
    model.save_pretrained(tmp_path / "bare")
    with pytest.raises(SystemExit, match="has no tokenizer"):
        mtlm_main(["generate", str(tmp_path / "bare"), "--prompt", "hi"])


def test_a_checkpoint_appears_only_when_it_is_whole(tmp_path, monkeypatch):
    from transformers import Trainer

    original = Trainer._save_rng_state  # transformers writes it after the weights and the optimizer state
    seen_while_writing = []

    def recording_save_rng_state(self, output_dir):
        seen_while_writing.append((Path(output_dir).name, sorted(path.name for path in (tmp_path / "run").iterdir())))
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", recording_save_rng_state)
    run = tiny_run(tmp_path, training={"max_steps": 4, "save_strategy": "steps", "save_steps": 2})
    train(run_config.validate(run))
    assert [name for name, _ in seen_while_writing] == ["checkpoint-2", "checkpoint-4"]
    assert "checkpoint-2" not in seen_while_writing[0][1] and "checkpoint-4" not in seen_while_writing[1][1]
    assert "checkpoint-2" in seen_while_writing[1][1]
    for name in ("checkpoint-2", "checkpoint-4"):
        assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(os.listdir(tmp_path / "run" / name))
    assert not [name for name in os.listdir(tmp_path / "run") if name.startswith(".")]


def test_the_best_checkpoint_is_named_by_its_place_in_the_run_folder_and_survives_rotation(tmp_path):
    settings = {"max_steps": 8, "eval_strategy": "steps", "eval_steps": 2, "save_strategy": "steps", "save_steps": 2,
                "save_total_limit": 2, "metric_for_best_model": "eval_loss", "learning_rate": 3e-2,
                "warmup_steps": 0, "lr_scheduler_type": "constant",
                "greater_is_better": True}  # the loss falls, so the first checkpoint stays the best
    trainer = train(run_config.validate(tiny_run(tmp_path, training=settings)))
    run = tmp_path / "run"
    best = run / "checkpoint-2"
    assert trainer.state.best_global_step == 2
    assert trainer.state.best_model_checkpoint == str(best) and best.is_dir()
    kept = sorted(path.name for path in run.glob("checkpoint-*"))
    assert kept == ["checkpoint-2", "checkpoint-8"]
    saved = json.loads((run / "checkpoint-8" / "trainer_state.json").read_text())
    assert saved["best_model_checkpoint"] == str(best)


def test_a_run_with_torch_compile_trains_the_same_model_and_saves_plain_weights(tmp_path):
    eager = train(run_config.validate(tiny_run(tmp_path / "eager", training={"max_steps": 8})))
    compiled = train(run_config.validate(tiny_run(tmp_path / "compiled", training={"max_steps": 8,
                                                                                   "torch_compile": True})))
    losses = [[entry["loss"] for entry in trainer.state.log_history if "loss" in entry] for trainer in (eager, compiled)]
    assert losses[1] == pytest.approx(losses[0], abs=1e-4)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "compiled" / "run")
    for name, parameter in eager.model.named_parameters():
        torch.testing.assert_close(reloaded.get_parameter(name), parameter, rtol=0, atol=1e-4)


def test_a_warmup_stable_decay_cooldown_given_as_a_fraction_follows_max_steps(tmp_path):
    run = tiny_run(tmp_path, training={"max_steps": 12, "logging_steps": 1, "learning_rate": 1e-3, "warmup_steps": 2,
                                       "lr_scheduler_type": "warmup_stable_decay",
                                       "lr_scheduler_kwargs": {"num_decay_steps": 0.25}})
    rates = [entry["learning_rate"] for entry in train(run_config.validate(run)).state.log_history
             if "learning_rate" in entry]
    assert len(rates) == 12
    # the logged rate is the one a step used: held at the peak, then the last quarter (3 steps) cools down
    assert rates[2:10] == pytest.approx([1e-3] * 8)
    assert 1e-3 > rates[10] > rates[11] > 0
    with pytest.raises(UsageError, match="fraction of the run, which needs training.max_steps"):
        train(run_config.validate(tiny_run(tmp_path / "epochs", training={
            "max_steps": -1, "num_train_epochs": 1, "lr_scheduler_type": "warmup_stable_decay",
            "lr_scheduler_kwargs": {"num_decay_steps": 0.25}})))


def test_torch_compile_without_a_cpp_compiler_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-compiler++",))
    run = run_config.validate(tiny_run(tmp_path, training={"max_steps": 2, "torch_compile": True}))
    with pytest.raises(UsageError, match="needs a C\\+\\+ compiler.*torch_compile=false"):
        train(run)
    assert not (tmp_path / "run").exists()


def test_muon_trains_the_hidden_matrices_and_adamw_the_rest_and_resumes_exactly(tmp_path):
    run = tiny_run(tmp_path, optimizer={"name": "muon"}, training={
        "max_steps": 12, "save_strategy": "steps", "save_steps": 6, "logging_steps": 1})
    trainer = train(run_config.validate(copy.deepcopy(run)))
    optimizer = trainer.optimizer.optimizer  # accelerate's wrapper holds ours
    muon = {id(p) for group in optimizer.muon.param_groups for p in group["params"]}
    for name, parameter in trainer.model.named_parameters():
        expected = ".layers." in name and name.endswith("_proj.weight")
        assert (id(parameter) in muon) == expected, name
    # the schedule reached both optimizers: cosine down to 0.1 x 3e-3 at the last step
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([3e-4] * len(optimizer.param_groups))
    assert all("momentum_buffer" in optimizer.muon.state[p] for group in optimizer.muon.param_groups
               for p in group["params"])
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0] - 0.3

    shutil.rmtree(tmp_path / "run" / "checkpoint-12")
    resumed = train(run_config.validate(copy.deepcopy(run)), resume=True)
    resumed_losses = [entry["loss"] for entry in resumed.state.log_history if "loss" in entry]
    assert resumed_losses == pytest.approx(losses, abs=1e-5)


@pytest.mark.parametrize("optimizer, growth, message", [
    ({"name": "lion"}, None, "optimizer.name = 'lion'; choose one of adamw, muon"),
    ({"name": "muon"}, [{"at_step": 10, "num_layers": 4}], "growth inside a run copies AdamW's moment"),
])
def test_bad_optimizer_sections_are_refused_when_the_config_is_read(tmp_path, optimizer, growth, message):
    run = tiny_run(tmp_path, optimizer=optimizer)
    if growth:
        run["growth"] = growth
    with pytest.raises(UsageError, match=re.escape(message)):
        run_config.validate(run)


def test_the_attention_kernel_is_a_model_key_and_flash_attention_is_refused_where_it_cannot_run(tmp_path):
    losses = {}
    for kernel in ("eager", "sdpa"):
        trainer = train(run_config.validate(tiny_run(tmp_path / kernel, model={"attn_implementation": kernel},
                                                     training={"max_steps": 4, "logging_steps": 1})))
        assert trainer.model.config._attn_implementation == kernel
        losses[kernel] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses["eager"] == pytest.approx(losses["sdpa"], abs=1e-4)
    with pytest.raises(UsageError, match="choose one of sdpa, eager, flash_attention_2, flex_attention"):
        run_config.validate(tiny_run(tmp_path, model={"attn_implementation": "flash"}))
    if not torch.cuda.is_available():
        flash = tiny_run(tmp_path / "flash", model={"attn_implementation": "flash_attention_2"})
        with pytest.raises(UsageError, match=r"needs a CUDA GPU and flash-attn .* Choose sdpa"):
            train(run_config.validate(flash))
        assert not (tmp_path / "flash").exists()


def test_a_run_with_a_chunked_loss_follows_the_plain_runs_losses(tmp_path):
    losses = []
    for name, model in (("plain", {}), ("chunked", {"loss_chunk_size": 50})):
        trainer = train(run_config.validate(tiny_run(tmp_path / name, model=model, training={
            "max_steps": 6, "logging_steps": 1, "eval_strategy": "steps", "eval_steps": 6})))
        losses.append([entry.get("loss", entry.get("eval_loss")) for entry in trainer.state.log_history
                       if "loss" in entry or "eval_loss" in entry])
    assert len(losses[0]) == 8 and losses[1] == pytest.approx(losses[0], abs=1e-4)  # 6 steps, 2 evaluations


def test_tensorboard_and_trackio_log_locally_where_mtlm_train_says(tmp_path):
    import subprocess
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = write_config(tmp_path, tiny_run(tmp_path, training={"max_steps": 4, "logging_steps": 1,
                                                                 "report_to": ["tensorboard", "trackio"]}))
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "mtlm.cli", "train", str(config)], capture_output=True, text=True,
                            timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    tensorboard_dir = re.search(r"mtlm: TensorBoard logs in (\S+)", result.stdout).group(1)
    events = EventAccumulator(str(tmp_path / tensorboard_dir))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3, 4]

    assert f"mtlm: trackio logs in {tmp_path / 'trackio'}, project 'huggingface'" in result.stdout
    read_back = ("from trackio.sqlite_storage import SQLiteStorage; "
                 "print(sum('train/loss' in entry for entry in SQLiteStorage.get_logs('huggingface', 'run')))")
    logged = subprocess.run([sys.executable, "-c", read_back], capture_output=True, text=True, env=env, check=True)
    assert logged.stdout.strip() == "4"  # one run, named after the output folder, with every step's loss


def test_a_tracker_that_is_not_installed_is_refused_by_name(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "trackio" else
                        real_find_spec(name, *args))
    with pytest.raises(UsageError, match=r"report_to names trackio.*pip install 'mtlm\[track\]'"):
        train(run_config.validate(tiny_run(tmp_path, training={"report_to": ["trackio"]})))
    assert not (tmp_path / "run").exists()
