"""Run configs: YAML with the sections `model`, `tokenizer`, `data` and `training` (the last holds
`TrainingArguments` fields verbatim). Unknown keys are errors that name the key and the closest valid ones."""

import copy
import dataclasses
import difflib
import os
import re
from pathlib import Path

import yaml
from transformers import AutoConfig, TrainingArguments

from ..configuration.presets import PRESETS, preset_config
from ..files import atomic_file, read_checkpoint_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # shipped inside the package
DEFAULT_CONFIG = "shakespeare-char"

TOKENIZER_KEYS = {"kind", "vocab_size", "path"}
TOKENIZER_KINDS = {"arithmetic", "byte", "char", "bpe", "pretrained"}
DATA_KEYS = {"source", "path", "files", "splits", "name", "config", "block_size", "num_proc", "arithmetic"}
DATA_SOURCES = {"tinyshakespeare", "text", "files", "hub", "arithmetic"}
ARITHMETIC_KEYS = {"out_dir", "n_samples", "N", "A", "B", "ops", "seed"}
FLAX_KEYS = {"data_parallel", "fsdp"}  # the device mesh of --backend flax
SECTIONS = ("model", "tokenizer", "data", "training", "flax")


class RunConfigLoader(yaml.SafeLoader):
    """YAML as people write run configs: booleans are only true and false (`save_strategy: no` stays the word), and
    1e-3 is a number (YAML 1.1 wants 1.0e-3)."""


RunConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RunConfigLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                      list("tTfF"))
RunConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+$"),
                                      list("-+0123456789"))


def parse_yaml(text) -> object:
    return yaml.load(text, Loader=RunConfigLoader)  # noqa: S506 (a SafeLoader subclass)


def _unknown(key: str, valid, where: str) -> ValueError:
    close = difflib.get_close_matches(key, sorted(valid), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else f" Valid keys: {', '.join(sorted(valid))}."
    return ValueError(f"Unknown key {key!r} in {where}.{hint}")


def training_argument_names() -> set[str]:
    return {field.name for field in dataclasses.fields(TrainingArguments) if field.init}


MODEL_SOURCE_KEYS = {"preset", "model_type", "init_from"}


def model_field_names(run: dict) -> set[str]:
    """Fields the model section may set: the family config's fields (plus `preset` / `model_type` / `init_from`)."""
    model = run["model"]
    if model.get("init_from"):
        model_type = read_checkpoint_config(model["init_from"])["model_type"]
    elif model.get("preset") in PRESETS:
        model_type = PRESETS[model["preset"]].model_type
    else:
        model_type = model.get("model_type")
    if model_type is None:
        return MODEL_SOURCE_KEYS
    config_class = type(AutoConfig.for_model(model_type))
    return {field.name for field in dataclasses.fields(config_class)} | MODEL_SOURCE_KEYS


def validate(run: dict) -> dict:
    """Check every section and key; returns `run`."""
    for section in run:
        if section not in SECTIONS:
            raise _unknown(section, SECTIONS, "the run config")
    for section in SECTIONS:
        run.setdefault(section, {})
        if not isinstance(run[section], dict):
            raise ValueError(f"Section {section!r} must be a mapping of keys to values, got {run[section]!r}.")
    model = run["model"]
    sources = [key for key in ("preset", "model_type", "init_from") if key in model]
    if len(sources) != 1:
        raise ValueError("The model section needs exactly one of `preset` (see `mtlm presets`), `model_type` with "
                         f"config fields, or `init_from` (a checkpoint folder to train on); it has {sources or 'none'}.")
    if "preset" in model:
        preset_config(model["preset"])  # unknown preset -> error with close names
    valid_model_keys = model_field_names(run)
    for key in model:
        if key not in valid_model_keys:
            raise _unknown(key, valid_model_keys, "model")
    for section, valid in (("tokenizer", TOKENIZER_KEYS), ("data", DATA_KEYS), ("flax", FLAX_KEYS)):
        for key in run[section]:
            if key not in valid:
                raise _unknown(key, valid, section)
    for key in run["data"].get("arithmetic", {}) or {}:
        if key not in ARITHMETIC_KEYS:
            raise _unknown(key, ARITHMETIC_KEYS, "data.arithmetic")
    valid_training_keys = training_argument_names()
    for key in run["training"]:
        if key not in valid_training_keys:
            raise _unknown(key, valid_training_keys, "training (TrainingArguments fields)")
    if run["tokenizer"].get("kind", "char") not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer.kind={run['tokenizer']['kind']!r}; choose one of {sorted(TOKENIZER_KINDS)}.")
    if run["data"].get("source", "tinyshakespeare") not in DATA_SOURCES:
        raise ValueError(f"data.source={run['data']['source']!r}; choose one of {sorted(DATA_SOURCES)}.")
    if "output_dir" not in run["training"]:
        raise ValueError("training.output_dir is required: the folder for checkpoints and the final model.")
    return run


def apply_overrides(run: dict, overrides: list[str]) -> dict:
    """`section.key=value` (values parsed as YAML: numbers, booleans, lists) applied to a copy of `run`."""
    run = copy.deepcopy(run)
    for override in overrides:
        path, separator, value = override.partition("=")
        keys = path.split(".")
        if not separator or len(keys) < 2:
            raise ValueError(f"--set expects section.key=value, got {override!r}.")
        target = run.setdefault(keys[0], {})
        for key in keys[1:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = parse_yaml(value)
    return run


def bundled_configs() -> dict[str, tuple[Path, str]]:
    """The run configs shipped in mtlm/configs: name -> (path, the first line of its leading comment)."""
    configs = {}
    for path in sorted(CONFIGS.glob("*.yaml")):
        first_line = path.read_text(encoding="utf-8").splitlines()[0]
        configs[path.stem] = (path, first_line.lstrip("# ").strip() if first_line.startswith("#") else "")
    return configs


def find_config(name_or_path: str | os.PathLike | None) -> Path:
    """A run config by path, or by the name of a bundled one (`mtlm configs` lists them); None is the main job."""
    name_or_path = DEFAULT_CONFIG if name_or_path is None else name_or_path
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = bundled_configs()
    if str(name_or_path) in bundled:
        return bundled[str(name_or_path)][0]
    raise FileNotFoundError(f"No run config {name_or_path}: pass a YAML file or the name of a bundled config "
                            f"({', '.join(bundled)}; `mtlm configs` describes them).")


def load(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> dict:
    """Read a run config (a path or a bundled config's name; default: shakespeare-char), apply overrides, validate."""
    path = find_config(path)
    with open(path, encoding="utf-8") as handle:
        run = parse_yaml(handle) or {}
    if not isinstance(run, dict):
        raise ValueError(f"{path} must hold a mapping with sections {', '.join(SECTIONS)}.")
    return validate(apply_overrides(run, list(overrides)))


def save(run: dict, folder: str | os.PathLike) -> Path:
    """Write the resolved config beside the checkpoints (through a temporary file)."""
    path = Path(folder) / "run_config.yaml"
    with atomic_file(path) as handle:
        yaml.safe_dump(run, handle, sort_keys=False)
    return path
