"""Regenerate the two lock files: the exact versions the test suite passed with.

    python3 scripts/lock.py                  # both (about 25 minutes on 2 cores)
    python3 scripts/lock.py --only oldest    # or --only newest

Each environment is a fresh virtual environment in a temporary folder: torch==2.13.0 first (the CPU build that lies
on disk), then mtlm with the dev and flax extras.

- newest -> requirements/lock.txt: pip takes the newest release of every dependency inside setup.py's bounds; the
  whole suite must pass. scripts/setup.sh installs from this file, so every new machine gets these versions.
- oldest -> requirements/oldest.txt: every dependency that setup.py bounds on both sides (transformers, accelerate,
  datasets, lm-eval, jax, flax, optax) is pinned to its lower bound; the compatibility tests (-m compat) must pass.
  `scripts/test.sh --oldest` installs from this file.

A lock file is replaced (through a temporary name) only when its tests passed. torch, pip and mtlm itself are left
out of both: setup.sh installs them.
"""

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = "dev,flax"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
# tests/test_environment.py checks the lock files themselves, which are being rewritten: it runs afterwards.
ENVIRONMENTS = {  # name: (lock file, pytest arguments)
    "newest": ("requirements/lock.txt", ["--ignore", "tests/test_environment.py"]),
    "oldest": ("requirements/oldest.txt", ["-m", "compat"]),
}


def run(command: list[str], **kwargs) -> str:
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, check=True, text=True, stdout=subprocess.PIPE, **kwargs).stdout


def lower_bounds(python: str) -> list[str]:
    """`name==floor` for each requirement of the installed mtlm that has both a lower and an upper bound."""
    script = "import importlib.metadata as m; print('\\n'.join(m.requires('mtlm')))"
    pins = []
    for requirement in run([python, "-c", script]).splitlines():
        name, specifiers = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*([^;]*)", requirement).groups()
        specifiers = [specifier.strip() for specifier in specifiers.split(",") if specifier.strip()]
        floors = [specifier[2:] for specifier in specifiers if specifier.startswith(">=")]
        if floors and any(specifier.startswith("<") for specifier in specifiers):
            pins.append(f"{name}=={floors[0]}")
    return sorted(set(pins))


def build_and_test(name: str, workspace: Path) -> str:
    """Create the `name` environment, run its tests, and return the lock file's text."""
    venv = workspace / name
    run([sys.executable, "-m", "venv", str(venv)])
    python, pip = str(venv / "bin" / "python"), [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "install", "--quiet", "torch==2.13.0"])
    install = [*pip, "install", "--quiet", "-e", f"{ROOT}[{EXTRAS}]"]
    if name == "oldest":
        run([*pip, "install", "--quiet", "--no-deps", "-e", str(ROOT)])
        floors = workspace / "floors.txt"
        floors.write_text("\n".join(lower_bounds(python)) + "\n")
        print(f"lower bounds:\n{floors.read_text()}", flush=True)
        install += ["--constraint", str(floors)]
    run(install)
    lock_path, pytest_arguments = ENVIRONMENTS[name]
    subprocess.run([python, "-m", "pytest", "-n", "2", "-q", *pytest_arguments], cwd=ROOT, check=True,
                   env={**os.environ, **OFFLINE, "VIRTUAL_ENV": str(venv),
                        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"})
    # --all keeps setuptools (torch requires it; the wheel build uses it); pip stays the venv's own.
    frozen = run([*pip, "freeze", "--all", "--exclude-editable"]).splitlines()
    pins = sorted((line for line in frozen if line and not line.lower().startswith(("torch==", "mtlm", "pip=="))),
                  key=str.lower)
    versions = run([python, "-c", "import sys, torch; print(sys.version.split()[0], torch.__version__)"]).split()
    header = [
        f"# The {name} environment the test suite passed with ({'-m compat' if name == 'oldest' else 'all tests'}),",
        f"# written by scripts/lock.py on {datetime.date.today()} with Python {versions[0]} and torch {versions[1]}.",
        f"# pip install torch==2.13.0 && pip install --constraint {lock_path} -e '.[{EXTRAS}]'",
    ]
    return "\n".join(header + pins) + "\n"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=ENVIRONMENTS, help="regenerate one lock file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mtlm-lock-") as workspace:
        for name in [args.only] if args.only else list(ENVIRONMENTS):
            text = build_and_test(name, Path(workspace))
            write_atomically(ROOT / ENVIRONMENTS[name][0], text)
            print(f"wrote {ENVIRONMENTS[name][0]}", flush=True)


if __name__ == "__main__":
    main()
