"""The installed package works on its own: the wheel carries the run configs, the corpus and the card templates, and
an environment with only the wheel (and the already installed dependencies) trains and generates from an empty
folder. Bundled run configs are found by name."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from mtlm.cli import main as mtlm_main
from mtlm.training import run_config

ROOT = Path(__file__).resolve().parent.parent


def test_bundled_configs_are_listed_and_found_by_name(tmp_path, capsys, monkeypatch):
    mtlm_main(["configs"])
    listed = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines()[:-2] if line.strip())
    assert {"shakespeare-char", "tlm-transformer", "arithmetic-llama2"} <= set(listed)
    assert listed["shakespeare-char"].startswith("The main job")
    monkeypatch.chdir(tmp_path)  # names do not depend on the working folder
    assert run_config.find_config(None) == run_config.find_config("shakespeare-char") == \
        run_config.CONFIGS / "shakespeare-char.yaml"
    (tmp_path / "mine.yaml").write_text("model: {preset: mlm-llama2}\n")
    assert run_config.find_config("mine.yaml") == Path("mine.yaml")
    with pytest.raises(FileNotFoundError, match="No run config shakespeare: .*shakespeare-char"):
        run_config.find_config("shakespeare")


@pytest.mark.parametrize("name", sorted(run_config.bundled_configs()))
def test_every_bundled_config_passes_validation(name):
    run = run_config.load(name)
    assert run["training"]["output_dir"] and run["model"]


def test_the_wheel_installs_and_trains_and_generates_from_an_empty_folder(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "runs", "build", "dist", "*.egg-info", "__pycache__", "tests", "benchmarks", "docs"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            str(source), "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("mtlm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"mtlm/configs/shakespeare-char.yaml", "mtlm/data/corpora/tinyshakespeare.txt",
            "mtlm/hub_cards/templates/model_card.md"} <= names

    # A fresh environment with the wheel alone; torch and the other dependencies are read from this one's
    # site-packages (a path in a .pth file: its own .pth files, such as the editable mtlm's, are not run).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
                               capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-3000:]

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": "",
           "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    where = subprocess.run([str(python), "-c", "import mtlm; print(mtlm.__file__)"], cwd=empty, env=env,
                           capture_output=True, text=True)
    assert where.stdout.startswith(site), where.stdout + where.stderr
    trained = subprocess.run(["mtlm", "train", "--set", "training.max_steps=3", "--set", "data.num_proc=1"],
                             cwd=empty, env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    generated = subprocess.run(["mtlm", "generate", "runs/shakespeare-char", "--prompt", "ROMEO:",
                                "--max-new-tokens", "20", "--seed", "0"], cwd=empty, env=env, capture_output=True,
                               text=True, timeout=600)
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert generated.stdout.startswith("ROMEO:")
