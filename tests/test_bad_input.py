"""The catalogue of bad inputs and faults, tried as a new user would, over every subcommand. Each must end with a
one-line error on stderr that names the culprit, the right exit code (2 for a flag or config value, 1 for a file,
folder or fault), no traceback, every file that was there before left byte for byte as it was, and nothing new
written."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_training import FIXTURE, tiny_run

from mtlm.cli import main as mtlm_main
from mtlm.training import run_config
from mtlm.training.trainer import train

USAGE, FILE = 2, 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny mtlm_llama trained for two steps on the char tokenizer: the checkpoint the cases damage copies of."""
    root = tmp_path_factory.mktemp("trained")
    train(run_config.validate(tiny_run(root, training={"max_steps": 2})))
    return root / "run"


@pytest.fixture
def workspace(trained, tmp_path) -> Path:
    """Good and bad inputs side by side."""
    w = tmp_path
    shutil.copytree(trained, w / "ckpt")
    (w / "corpus.txt").write_text(FIXTURE.read_text())
    (w / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (w / "bad.yaml").write_text("model: [model_type: mtlm_llama\ntraining: {}\n")
    (w / "list.yaml").write_text("- model\n- training\n")
    run = tiny_run(w, training={"max_steps": 2, "output_dir": str(w / "out")}, data={"path": str(w / "corpus.txt")})
    (w / "good.yaml").write_text(yaml.safe_dump(run))
    (w / "preset.yaml").write_text(yaml.safe_dump({**run, "model": {"preset": "tinygpt-41x"}}))
    (w / "init.yaml").write_text(yaml.safe_dump({**run, "model": {"init_from": str(w / "nowhere")}}))
    (w / "mlp-arithmetic.yaml").write_text(yaml.safe_dump({
        **run, "model": {"model_type": "mtlm_mlp"}, "tokenizer": {"kind": "arithmetic"},
        "data": {"source": "arithmetic", "arithmetic": {"out_dir": str(w / "arithmetic")},
                 "random_position_offsets": True}}))
    (w / "noconfig").mkdir()
    for name, damage in [
        ("notok", lambda folder: [(folder / file).unlink() for file in ("tokenizer.json", "tokenizer_config.json")]),
        ("trunc", lambda folder: (folder / "model.safetensors").write_bytes(
            (folder / "model.safetensors").read_bytes()[:5000])),
        ("badjson", lambda folder: (folder / "config.json").write_text('{"model_type": "mtlm_llama",\n')),
        ("noweights", lambda folder: (folder / "model.safetensors").unlink()),
        ("badrun", lambda folder: (folder / "run_config.yaml").write_text("data: [source\n")),
    ]:
        shutil.copytree(w / "ckpt", w / name)
        damage(w / name)
    (w / "llama").mkdir()
    (w / "llama" / "config.json").write_text('{"model_type": "llama"}')
    (w / "arith.jsonl").write_text('{"prompt": "1+1=", "target": "2"}\n')
    (w / "arith_bad.jsonl").write_text('{"prompt": "1+1=", "target": "2"}\n{"prompt": "2+2=", \n')
    (w / "arith_missing.jsonl").write_text('{"prompt": "1+1="}\n')
    (w / "docs.jsonl").write_text('{"text": "To be or not to be"}\n{"body": "that is the question"}\n')
    (w / "docs_bad.jsonl").write_text('{"text": "To be"\n')
    (w / "results_bad.json").write_text('{"results": \n')
    (w / "results_shape.json").write_text('{"scores": [1, 2]}')
    return w


CASES = [
    # train: run configs
    ("train-missing-config", "train {w}/nope.yaml", FILE, "nope.yaml"),
    ("train-yaml-syntax", "train {w}/bad.yaml", USAGE, "bad.yaml is not valid YAML"),
    ("train-yaml-not-mapping", "train {w}/list.yaml", USAGE, "list.yaml must hold a mapping"),
    ("train-unknown-section", "train {w}/good.yaml --set modle.x=1", USAGE, "'modle'"),
    ("train-unknown-training-key", "train {w}/good.yaml --set training.learning_rat=1", USAGE, "'learning_rat'"),
    ("train-wrong-type", "train {w}/good.yaml --set training.max_steps=four", USAGE, "training.max_steps = 'four'"),
    ("train-set-without-value", "train {w}/good.yaml --set max_steps", USAGE, "'max_steps'"),
    ("train-zero-batch", "train {w}/good.yaml --set training.per_device_train_batch_size=0", USAGE,
     "per_device_train_batch_size = 0"),
    ("train-bad-strategy", "train {w}/good.yaml --set training.eval_strategy=sometimes", USAGE, "sometimes"),
    ("train-negative-steps", "train {w}/good.yaml --set training.max_steps=-5", USAGE, "max_steps = -5"),
    ("train-two-model-sources", "train {w}/good.yaml --set model.preset=mtlm1-88m", USAGE, "exactly one"),
    ("train-unknown-preset", "train {w}/preset.yaml", USAGE, "'tinygpt-41x'"),
    ("train-model-field-type", "train {w}/good.yaml --set model.hidden_size=big", USAGE, "model.hidden_size = 'big'"),
    ("train-unknown-model-type", "train {w}/good.yaml --set model.model_type=mtlm_nope", USAGE, "'mtlm_nope'"),
    ("train-tiny-block", "train {w}/good.yaml --set data.block_size=1", USAGE, "data.block_size = 1"),
    ("train-block-past-context", "train {w}/good.yaml --set data.block_size=4096", USAGE, "block_size=4096"),
    ("train-missing-data", "train {w}/good.yaml --set data.path={w}/missing.txt", FILE, "missing.txt"),
    ("train-data-not-utf8", "train {w}/good.yaml --set data.path={w}/latin1.txt", FILE, "latin1.txt is not UTF-8"),
    ("train-unknown-tokenizer", "train {w}/good.yaml --set tokenizer.kind=wordpiece", USAGE, "'wordpiece'"),
    ("train-vocab-mismatch", "train {w}/good.yaml --set model.vocab_size=5", USAGE, "model.vocab_size=5"),
    ("train-folder-holds-a-run", "train {w}/good.yaml --set training.output_dir={w}/ckpt", FILE,
     "already holds a run"),
    ("train-resume-nothing", "train {w}/good.yaml --resume", FILE, "holds no checkpoint"),
    ("train-overwrite-and-resume", "train {w}/good.yaml --overwrite --resume", USAGE, "--overwrite"),
    ("train-overwrite-missing-data", "train {w}/good.yaml --set training.output_dir={w}/ckpt "
     "--set data.path={w}/missing.txt --overwrite", FILE, "missing.txt"),
    ("train-output-is-a-file", "train {w}/good.yaml --set training.output_dir={w}/corpus.txt", FILE, "corpus.txt"),
    ("train-init-from-missing", "train {w}/init.yaml", FILE, "nowhere"),
    ("train-flax-arithmetic", "train {w}/good.yaml --backend flax --set data.source=arithmetic", USAGE,
     "--backend flax"),
    ("train-position-offsets-on-a-corpus", "train {w}/good.yaml --set data.random_position_offsets=true", USAGE,
     "packed corpus blocks"),
    ("train-position-offsets-without-positions", "train {w}/mlp-arithmetic.yaml", USAGE,
     "mtlm_mlp models take no position ids"),
    ("train-balance-layouts-on-a-corpus", "train {w}/good.yaml --set data.balance_layouts=1", USAGE,
     "a corpus has none"),
    ("train-balance-layouts-above-one", "train {w}/mlp-arithmetic.yaml --set data.random_position_offsets=false "
     "--set data.balance_layouts=2", USAGE, "balance_layouts = 2"),
    ("train-unknown-flag", "train {w}/good.yaml --max-steps 3", USAGE, "--max-steps"),
    ("train-zero-patience", "train {w}/good.yaml --set early_stopping.patience=0", USAGE, "patience = 0"),
    ("train-early-stopping-without-best", "train {w}/good.yaml --set early_stopping.patience=3", USAGE,
     "load_best_model_at_end"),
    ("train-flax-early-stopping", "train {w}/good.yaml --backend flax --set early_stopping.patience=3 "
     "--set training.eval_strategy=steps --set training.load_best_model_at_end=true", USAGE, "no early stopping"),
    # generate and chat: folders, checkpoints, flags
    ("generate-missing-folder", "generate {w}/nowhere --prompt a", FILE, "nowhere is not a checkpoint folder"),
    ("generate-a-file", "generate {w}/corpus.txt --prompt a", FILE, "corpus.txt is a file"),
    ("generate-no-config", "generate {w}/noconfig --prompt a", FILE, "no config.json"),
    ("generate-no-tokenizer", "generate {w}/notok --prompt a", FILE, "has no tokenizer"),
    ("generate-truncated-weights", "generate {w}/trunc --prompt a", FILE, "trunc/model.safetensors cannot be read"),
    ("generate-invalid-config-json", "generate {w}/badjson --prompt a", FILE, "badjson/config.json is not valid JSON"),
    ("generate-no-weights", "generate {w}/noweights --prompt a", FILE, "has no model.safetensors"),
    ("generate-negative-temperature", "generate {w}/ckpt --prompt a --temperature -0.5", USAGE, "'-0.5'"),
    ("generate-top-p-above-one", "generate {w}/ckpt --prompt a --top-p 1.5", USAGE, "'1.5'"),
    ("generate-top-p-zero", "generate {w}/ckpt --prompt a --top-p 0", USAGE, "--top-p"),
    ("generate-negative-new-tokens", "generate {w}/ckpt --prompt a --max-new-tokens -3", USAGE, "'-3'"),
    ("generate-new-tokens-not-a-number", "generate {w}/ckpt --prompt a --max-new-tokens x", USAGE, "'x'"),
    ("generate-negative-top-k", "generate {w}/ckpt --prompt a --top-k -1", USAGE, "--top-k"),
    ("generate-no-prompt", "generate {w}/ckpt", USAGE, "--prompt"),
    ("chat-missing-folder", "chat {w}/nowhere", FILE, "nowhere"),
    ("chat-negative-temperature", "chat {w}/ckpt --temperature -1", USAGE, "'-1'"),
    # grow
    ("grow-missing-folder", "grow {w}/nowhere --method stack --num-layers 4 --out {w}/g", FILE, "nowhere"),
    ("grow-fewer-layers", "grow {w}/ckpt --method stack --num-layers 1 --out {w}/g", USAGE, "num_layers=1"),
    ("grow-zero-layers", "grow {w}/ckpt --method stack --num-layers 0 --out {w}/g", USAGE, "'0'"),
    ("grow-bad-layer-map", "grow {w}/ckpt --layer-map 0,x --out {w}/g", USAGE, "'0,x'"),
    ("grow-layer-map-out-of-range", "grow {w}/ckpt --layer-map 0,1,5 --out {w}/g", USAGE, "[5]"),
    ("grow-method-and-map", "grow {w}/ckpt --method stack --layer-map 0,1,0 --out {w}/g", USAGE, "either"),
    ("grow-method-without-depth", "grow {w}/ckpt --method stack --out {w}/g", USAGE, "--num-layers"),
    ("grow-into-its-source", "grow {w}/ckpt --method stack --num-layers 4 --out {w}/ckpt", USAGE,
     "replace its source"),
    ("grow-into-a-full-folder", "grow {w}/ckpt --method stack --num-layers 4 --out {w}/notok", FILE, "not empty"),
    ("grow-corrupt-source", "grow {w}/trunc --method stack --num-layers 4 --out {w}/g", FILE, "model.safetensors"),
    # eval
    ("eval-missing-arithmetic-file", "eval {w}/ckpt --arithmetic {w}/nope.jsonl", FILE, "nope.jsonl"),
    ("eval-arithmetic-bad-json", "eval {w}/ckpt --arithmetic {w}/arith_bad.jsonl", FILE, "arith_bad.jsonl line 2"),
    ("eval-arithmetic-missing-key", "eval {w}/ckpt --arithmetic {w}/arith_missing.jsonl", FILE, "'target'"),
    ("eval-arithmetic-batch-size", "eval {w}/ckpt --arithmetic {w}/arith.jsonl --batch-size abc", USAGE, "abc"),
    ("eval-arithmetic-zero-batch", "eval {w}/ckpt --arithmetic {w}/arith.jsonl --batch-size 0", USAGE,
     "--batch-size 0"),
    ("eval-output-md", "eval {w}/ckpt --tasks lambada --output {w}/out.md", USAGE, "out.md"),
    ("eval-local-data-shape", "eval {w}/ckpt --tasks lambada --local-data lambada", USAGE, "TASK=PATH"),
    ("eval-zero-limit", "eval {w}/ckpt --tasks lambada --limit 0", USAGE, "--limit"),
    ("eval-missing-folder", "eval {w}/nowhere --tasks lambada", FILE, "nowhere"),
    ("eval-missing-include-path", "eval {w}/ckpt --tasks lambada --include-path {w}/tasks", FILE, "tasks is not a"),
    ("eval-tasks-and-arithmetic", "eval {w}/ckpt --tasks a --arithmetic {w}/arith.jsonl", USAGE, "--arithmetic"),
    # ppl
    ("ppl-zero-stride", "ppl {w}/ckpt --data {w}/corpus.txt --stride 0", USAGE, "'0'"),
    ("ppl-zero-length", "ppl {w}/ckpt --data {w}/corpus.txt --max-length 0", USAGE, "--max-length"),
    ("ppl-negative-length", "ppl {w}/ckpt --data {w}/corpus.txt --max-length -4", USAGE, "'-4'"),
    ("ppl-stride-past-window", "ppl {w}/ckpt --data {w}/corpus.txt --max-length 8 --stride 16", USAGE,
     "--stride 16"),
    ("ppl-length-past-context", "ppl {w}/ckpt --data {w}/corpus.txt --max-length 4096", USAGE, "--max-length 4096"),
    ("ppl-zero-batch", "ppl {w}/ckpt --data {w}/corpus.txt --batch-size 0", USAGE, "--batch-size"),
    ("ppl-missing-data", "ppl {w}/ckpt --data {w}/nope.txt", FILE, "nope.txt"),
    ("ppl-data-not-utf8", "ppl {w}/ckpt --data {w}/latin1.txt", FILE, "latin1.txt is not UTF-8"),
    ("ppl-jsonl-missing-field", "ppl {w}/ckpt --data {w}/docs.jsonl", FILE, "row 2 has no text field 'text'"),
    ("ppl-jsonl-bad-json", "ppl {w}/ckpt --data {w}/docs_bad.jsonl", FILE, "docs_bad.jsonl line 1"),
    # compare, card, export, upgrade-code, push
    ("compare-missing", "compare {w}/nope.json --plot {w}/c.png", FILE, "nope.json"),
    ("compare-bad-json", "compare {w}/results_bad.json --plot {w}/c.png", FILE, "results_bad.json is not valid JSON"),
    ("compare-wrong-shape", "compare {w}/results_shape.json --plot {w}/c.png", FILE, "not a results file"),
    ("compare-folder-without-results", "compare {w}/noconfig --plot {w}/c.png", FILE, "eval_results.json"),
    ("card-missing-folder", "card {w}/nowhere", FILE, "nowhere"),
    ("card-upstream-folder", "card {w}/llama", FILE, "'llama'"),
    ("card-invalid-config-json", "card {w}/badjson", FILE, "config.json is not valid JSON"),
    ("card-invalid-run-config", "card {w}/badrun", FILE, "run_config.yaml is not valid YAML"),
    ("export-into-itself", "export {w}/ckpt {w}/ckpt", FILE, "new folder"),
    ("export-into-a-full-folder", "export {w}/ckpt {w}/notok", FILE, "not empty"),
    ("export-without-tokenizer", "export {w}/notok {w}/exported", FILE, "no tokenizer"),
    ("upgrade-code-not-a-checkpoint", "upgrade-code {w}/noconfig", FILE, "no config.json"),
    ("upgrade-code-missing", "upgrade-code {w}/ckpt {w}/nowhere", FILE, "nowhere"),
    ("upgrade-code-invalid-config", "upgrade-code {w}/badjson", FILE, "not valid JSON"),
    ("push-invalid-repo-id", "push {w}/ckpt no/such/repo --dry-run", USAGE, "'no/such/repo'"),
    ("push-without-card", "push {w}/ckpt me/tiny --dry-run", FILE, "README.md"),
    # tokenizer, data, convert, the command line itself
    ("tokenizer-missing-corpus", "tokenizer char --input {w}/nope.txt --out {w}/tok", FILE, "nope.txt"),
    ("tokenizer-corpus-not-utf8", "tokenizer char --input {w}/latin1.txt --out {w}/tok", FILE, "latin1.txt"),
    ("tokenizer-zero-vocab", "tokenizer bpe --input {w}/corpus.txt --vocab-size 0 --out {w}/tok", USAGE, "'0'"),
    ("tokenizer-small-vocab", "tokenizer bpe --input {w}/corpus.txt --vocab-size 10 --out {w}/tok", USAGE,
     "vocab_size=10"),
    ("tokenizer-into-a-full-folder", "tokenizer byte --out {w}/ckpt", FILE, "not empty"),
    ("tokenizer-word-vocab-below-specials", "tokenizer word --input {w}/corpus.txt --max-vocab 3 --out {w}/tok",
     USAGE, "max_vocab=3"),
    ("arithmetic-zero-operands", "data arithmetic --out-dir {w}/a --N 0", USAGE, "'0'"),
    ("arithmetic-one-operand", "data arithmetic --out-dir {w}/a --N 1", USAGE, "at least 2"),
    ("arithmetic-reversed-range", "data arithmetic --out-dir {w}/a --A 10 --B 5", USAGE, "A=10, B=5"),
    ("arithmetic-scratchpad-of-two", "data arithmetic --out-dir {w}/a --scratchpad", USAGE, "N >= 3"),
    ("arithmetic-unknown-operator", "data arithmetic --out-dir {w}/a --ops %", USAGE, "'%'"),
    ("convert-missing", "convert {w}/nowhere {w}/c", FILE, "nowhere"),
    ("convert-no-config", "convert {w}/noconfig {w}/c", FILE, "no config.json"),
    ("convert-same-side", "convert {w}/ckpt {w}/c --to mtlm", FILE, "already holds an mtlm model"),
    ("unknown-command", "trian", USAGE, "'trian'"),
    ("presets-extra-argument", "presets now", USAGE, "now"),
]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file (by its hash) and folder under `folder`."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "/"
            for path in sorted(folder.rglob("*"))}


def test_the_catalogue_covers_every_subcommand():
    from mtlm.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    covered = {case[1].split()[0] for case in CASES}
    assert len(CASES) >= 60 and commands - {"presets", "configs"} <= covered, commands - covered


@pytest.mark.parametrize("name, command, code, culprit", CASES, ids=[case[0] for case in CASES])
def test_a_bad_input_is_one_line_naming_the_culprit_and_changes_nothing(workspace, capsys, name, command, code,
                                                                         culprit):
    before = snapshot(workspace)
    with pytest.raises(SystemExit) as stopped:
        mtlm_main(command.format(w=workspace).split())
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert stopped.value.code == code, errors
    assert len(errors) == 1 and culprit in errors[0], errors
    assert snapshot(workspace) == before  # nothing changed, and nothing half-written was left


def test_the_command_exits_with_one_line_and_mtlm_debug_shows_the_traceback(workspace):
    command = [sys.executable, "-m", "mtlm.cli", "generate", str(workspace / "ckpt"), "--prompt", "a",
               "--top-p", "1.5"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    plain = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1 and "Traceback" not in plain.stderr
    assert "'1.5'" in plain.stderr

    missing = [sys.executable, "-m", "mtlm.cli", "card", str(workspace / "badjson")]
    plain = subprocess.run(missing, capture_output=True, text=True, env=environment, timeout=300)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr and "config.json" in plain.stderr
    debug = subprocess.run(missing, capture_output=True, text=True, env={**environment, "MTLM_DEBUG": "1"},
                           timeout=300)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


def test_a_prompt_outside_the_vocabulary_warns_naming_the_characters(workspace, capsys):
    mtlm_main(["generate", str(workspace / "ckpt"), "--prompt", "ROMEO: ¿ñ", "--max-new-tokens", "3",
               "--temperature", "0"])
    err = capsys.readouterr().err
    assert "warning" in err and "'¿', 'ñ'" in err


def test_overwrite_keeps_the_earlier_run_until_the_new_one_saves(workspace, monkeypatch):
    """A new run that fails after training started, before it saved anything, gives the folder back as it was; one
    that saves replaces it."""
    from transformers import Trainer

    before = snapshot(workspace / "ckpt")
    run = yaml.safe_load((workspace / "good.yaml").read_text())
    run["training"]["output_dir"] = str(workspace / "ckpt")

    def interrupted(self, *args, **kwargs):
        assert not (workspace / "ckpt" / "model.safetensors").exists()  # the earlier run is aside
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(run_config.validate(run), overwrite=True)
    assert snapshot(workspace / "ckpt") == before
    assert sorted(path.name for path in workspace.iterdir() if path.name.startswith(".")) == []

    monkeypatch.undo()
    train(run_config.validate(run), overwrite=True)
    assert snapshot(workspace / "ckpt") != before
    assert sorted(path.name for path in workspace.iterdir() if path.name.startswith(".")) == []


def test_a_run_that_fails_before_its_first_save_leaves_no_folder_and_the_corrected_run_starts(workspace, monkeypatch,
                                                                                             capsys):
    from transformers import Trainer

    def out_of_memory(self, *args, **kwargs):
        raise MemoryError("simulated")

    monkeypatch.setattr(Trainer, "train", out_of_memory)
    with pytest.raises(MemoryError):  # a genuine fault, not a user's mistake: its traceback shows
        mtlm_main(["train", str(workspace / "good.yaml")])
    assert not (workspace / "out").exists()
    monkeypatch.setattr(Trainer, "train", lambda self, *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(SystemExit) as stopped:
        mtlm_main(["train", str(workspace / "good.yaml")])
    assert stopped.value.code == 130 and "--resume" in capsys.readouterr().err
    assert not (workspace / "out").exists()
    monkeypatch.undo()
    mtlm_main(["train", str(workspace / "good.yaml")])
    assert (workspace / "out" / "model.safetensors").is_file()
