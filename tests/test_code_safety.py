"""The code files that travel into checkpoint folders (and run under trust_remote_code) import only torch,
transformers (and tokenizers, which it requires), the standard library and their flat siblings, and run nothing else: no exec or eval, no subprocess,
no network. Nowhere in mtlm is a pickle loaded, or torch.load called without weights_only=True."""

import ast
import sys
from pathlib import Path

import pytest

from mtlm.data import tokenization_mtlm_byte
from mtlm.families import FAMILIES
from mtlm.modeling.mtlm_blocks import code_files

PACKAGE = Path(__file__).parents[1] / "mtlm"
TRAVELLING = sorted({path for family in FAMILIES.values()
                     for path in code_files(family.config_class, family.causal_lm_class)} |
                    {tokenization_mtlm_byte.__file__})
RUNS_OTHER_CODE = {"exec", "eval", "compile", "__import__", "breakpoint"}
FORBIDDEN_MODULES = {"subprocess", "socket", "urllib", "http", "requests", "httpx", "ftplib", "smtplib", "pickle",
                     "marshal", "shelve", "multiprocessing", "ctypes", "importlib.util"}
FORBIDDEN_CALLS = {("os", "system"), ("os", "popen"), ("os", "execv"), ("os", "execvp"), ("os", "spawnv"),
                   ("os", "fork")}


def imported_modules(tree: ast.AST) -> list[tuple[str, int]]:
    """(module, relative level) of every import in `tree`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


def calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def test_the_travelling_files_are_the_families_and_their_blocks():
    names = {Path(path).name for path in TRAVELLING}
    assert "mtlm_blocks.py" in names and {f"modeling_{name}.py" for name in FAMILIES} <= names
    assert {f"configuration_{name}.py" for name in FAMILIES} <= names


@pytest.mark.parametrize("path", TRAVELLING, ids=[Path(path).name for path in TRAVELLING])
def test_a_travelling_code_file_imports_only_torch_transformers_the_standard_library_and_siblings(path):
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    for module, level in imported_modules(tree):
        if level:
            assert level == 1 and "." not in module, f"{path}: from {'.' * level}{module} is not a flat sibling"
            assert (Path(path).parent / f"{module}.py").is_file() or \
                (PACKAGE / "configuration" / f"{module}.py").is_file(), f"{path}: no sibling {module}"
            continue
        top = module.split(".")[0]
        assert top in ("torch", "transformers", "tokenizers") or top in sys.stdlib_module_names, f"{path} imports {module}"
        assert module not in FORBIDDEN_MODULES and top not in FORBIDDEN_MODULES, f"{path} imports {module}"


@pytest.mark.parametrize("path", TRAVELLING, ids=[Path(path).name for path in TRAVELLING])
def test_a_travelling_code_file_runs_no_other_code_and_opens_no_connection(path):
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    for call in calls(tree):
        function = call.func
        if isinstance(function, ast.Name):
            assert function.id not in RUNS_OTHER_CODE, f"{path}:{call.lineno} calls {function.id}"
        if isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name):
            assert (function.value.id, function.attr) not in FORBIDDEN_CALLS, f"{path}:{call.lineno}"


def test_nothing_in_mtlm_loads_a_pickle_or_torch_load_without_weights_only():
    checked = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for module, _ in imported_modules(tree):
            assert module.split(".")[0] not in ("pickle", "marshal", "shelve", "dill", "cloudpickle"), \
                f"{path} imports {module}"
        for call in calls(tree):
            function = call.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            if isinstance(function, ast.Name):
                assert name not in ("exec", "eval"), f"{path}:{call.lineno} calls {name}"
            if name == "load" and isinstance(function, ast.Attribute) and getattr(function.value, "id", "") == "torch":
                weights_only = [keyword for keyword in call.keywords if keyword.arg == "weights_only"]
                assert weights_only and getattr(weights_only[0].value, "value", None) is True, \
                    f"{path}:{call.lineno} calls torch.load without weights_only=True"
        checked += 1
    assert checked > 30
