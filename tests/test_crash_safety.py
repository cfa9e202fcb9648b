"""A run killed with SIGKILL anywhere in a checkpoint save resumes with --resume and ends on the loss of a run that
was never interrupted: every checkpoint-N folder is whole or absent."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_training import tiny_run

from mtlm.training import run_config
from mtlm.training.run_folder import last_complete_checkpoint
from mtlm.training.trainer import train

# Runs `mtlm ARGS...` and kills itself with SIGKILL at POINT of the second checkpoint save (step 4): before, in the
# middle of (the file half written) or after the weights, the optimizer state and the trainer state, before the
# staging folder is renamed into place, and after.
KILLER = r"""
import os, signal, sys
from pathlib import Path
point, argv = sys.argv[1], sys.argv[2:]
import torch
import transformers.modeling_utils as modeling_utils
from transformers import Trainer, TrainerState
import mtlm.files as files
import mtlm.training.trainer as mtlm_trainer
from mtlm.cli import main

saves = {"count": 0, "active": False}

def armed():
    return saves["active"] and saves["count"] == 2

def die(half_written=None):
    if half_written is not None:
        data = Path(half_written).read_bytes()
        Path(half_written).write_bytes(data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)

def wrap(owner, name, before=None, after=None):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        if before and armed() and before(*args, **kwargs):
            die()
        result = original(*args, **kwargs)
        if after and armed():
            target = after(*args, **kwargs)
            if target:
                die(None if target is True else target)
        return result
    setattr(owner, name, wrapper)

original_save = mtlm_trainer.MtlmTrainer._save_checkpoint
def counted_save(self, *args, **kwargs):
    saves["count"] += 1
    saves["active"] = True
    try:
        return original_save(self, *args, **kwargs)
    finally:
        saves["active"] = False
mtlm_trainer.MtlmTrainer._save_checkpoint = counted_save

always = lambda *args, **kwargs: True
if point == "before-weights":
    wrap(Trainer, "save_model", before=always)
elif point == "during-weights":
    wrap(modeling_utils, "safe_save_file", after=lambda tensors, filename, **kwargs: filename)
elif point == "after-weights":
    wrap(Trainer, "save_model", after=always)
elif point == "during-optimizer":
    wrap(torch, "save", after=lambda obj, f, *args, **kwargs: str(f) if str(f).endswith("optimizer.pt") else None)
elif point == "after-optimizer":
    wrap(Trainer, "_save_optimizer_and_scheduler", after=always)
elif point == "during-trainer-state":
    wrap(TrainerState, "save_to_json", after=lambda self, path: path)
elif point == "before-rename":
    wrap(files, "_replace", before=always)
elif point == "after-rename":
    wrap(mtlm_trainer, "rotate_checkpoints", before=always)
else:
    raise SystemExit(f"unknown point {point}")
main(argv)
"""
POINTS = ["before-weights", "during-weights", "after-weights", "during-optimizer", "after-optimizer",
          "during-trainer-state", "before-rename", "after-rename"]
SETTINGS = {"max_steps": 6, "save_strategy": "steps", "save_steps": 2, "logging_steps": 1}


def final_loss(output_dir: Path) -> float:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return next(entry["loss"] for entry in reversed(history) if "loss" in entry and entry["step"] == 6)


def mtlm(*arguments: str, tmp_path: Path, killed_at: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", KILLER, killed_at] if killed_at else [sys.executable, "-m", "mtlm.cli"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([*command, *arguments], cwd=tmp_path, env=environment, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> float:
    root = tmp_path_factory.mktemp("uninterrupted")
    (root / "run.yaml").write_text(yaml.safe_dump(tiny_run(root, training=SETTINGS)))
    result = mtlm("train", str(root / "run.yaml"), tmp_path=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return final_loss(root / "run")


@pytest.mark.parametrize("point", POINTS)
def test_a_run_killed_while_saving_a_checkpoint_resumes_to_the_same_loss(point, uninterrupted, tmp_path):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(tiny_run(tmp_path, training=SETTINGS)))
    killed = mtlm("train", str(tmp_path / "run.yaml"), tmp_path=tmp_path, killed_at=point)
    assert killed.returncode == -9, killed.stderr[-3000:]
    folders = sorted(path.name for path in (tmp_path / "run").glob("checkpoint-*"))
    assert folders == (["checkpoint-2", "checkpoint-4"] if point == "after-rename" else ["checkpoint-2"])
    newest = last_complete_checkpoint(tmp_path / "run")
    assert newest.name == folders[-1]

    resumed = mtlm("train", str(tmp_path / "run.yaml"), "--resume", tmp_path=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert final_loss(tmp_path / "run") == pytest.approx(uninterrupted, abs=1e-6)


def test_resume_skips_an_incomplete_checkpoint_left_by_an_older_version_with_a_warning(tmp_path, caplog):
    run = tiny_run(tmp_path, training=SETTINGS)
    train(run_config.validate(run))
    expected = final_loss(tmp_path / "run")
    partial = tmp_path / "run" / "checkpoint-8"  # written in place and cut short, as versions before 0.3 could
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    for name in ("model.safetensors", "trainer_state.json"):
        (tmp_path / "run" / name).unlink()  # the final model goes, so that training runs again from a checkpoint
    shutil.rmtree(tmp_path / "run" / "checkpoint-6")
    assert last_complete_checkpoint(tmp_path / "run").name == "checkpoint-4"
    assert "--resume skips" in caplog.text and "checkpoint-8" in caplog.text
    train(run_config.validate(run), resume=True)
    assert final_loss(tmp_path / "run") == pytest.approx(expected, abs=1e-6)
