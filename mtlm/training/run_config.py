"""Run configs: YAML with the sections `model`, `tokenizer`, `data` and `training` (the last holds
`TrainingArguments` fields verbatim), and optionally `flax`, `early_stopping`, `growth` and `optimizer`. Unknown keys are errors that name the key and the closest valid ones."""

import copy
import dataclasses
import difflib
import enum
import inspect
import os
import re
import types
import typing
from pathlib import Path

import yaml
from transformers import AutoConfig, TrainingArguments

from ..configuration.presets import PRESETS, preset_config
from ..data.shards import shard_files
from ..errors import UsageError
from ..families import FAMILIES
from ..files import atomic_file, read_checkpoint_config
from ..growth.schedule import growth_stages
from .optimizers import OPTIMIZERS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # shipped inside the package
DEFAULT_CONFIG = "shakespeare-char"

# The keys of the smaller sections, each with the type its value must have.
TOKENIZER_KEYS = {"kind": str, "vocab_size": int, "max_vocab": int, "path": str, "chunk_boundary": str,
                  "max_chunk_bytes": int}
TOKENIZER_KINDS = {"arithmetic", "byte", "byte_chunks", "char", "bpe", "word", "pretrained"}
DATA_KEYS = {"source": str, "path": str, "files": dict[str, str | list[str]], "splits": dict[str, float] | list[str],
             "name": str, "config": str | None, "block_size": int, "num_proc": int | None, "arithmetic": dict,
             "random_position_offsets": bool, "balance_layouts": int | float, "cache_dir": str}
DATA_SOURCES = {"tinyshakespeare", "text", "files", "hub", "arithmetic", "shards"}
ARITHMETIC_KEYS = {"out_dir": str, "n_samples": int, "N": int, "A": int, "B": int, "ops": str | list[str],
                   "seed": int, "reverse": bool, "division": str, "scratchpad": bool}
FLAX_KEYS = {"data_parallel": int | None, "fsdp": int}  # the device mesh of --backend flax
# transformers' EarlyStoppingCallback: stop after `patience` evaluations without an improvement above `threshold`.
EARLY_STOPPING_KEYS = {"patience": int, "threshold": float}
# Values that must be at least this (TrainingArguments accepts some of them and fails later, or loops forever).
MINIMUM = {"training.per_device_train_batch_size": 1, "training.per_device_eval_batch_size": 1,
           "training.gradient_accumulation_steps": 1, "training.logging_steps": 0, "training.save_steps": 0,
           "training.learning_rate": 0, "training.num_train_epochs": 0, "data.block_size": 2, "data.num_proc": 1,
           "data.arithmetic.n_samples": 1, "data.arithmetic.N": 1,
           "tokenizer.vocab_size": 1, "tokenizer.max_vocab": 5, "tokenizer.max_chunk_bytes": 2,
           "flax.data_parallel": 1, "flax.fsdp": 1, "early_stopping.patience": 1, "early_stopping.threshold": 0,
           "optimizer.muon_learning_rate": 0, "optimizer.momentum": 0}
# The optimizer where it is not AdamW: `muon` trains the hidden matrices with Muon and the rest with AdamW, at the
# training section's learning rate and schedule unless `muon_learning_rate` gives Muon its own peak.
OPTIMIZER_KEYS = {"name": str, "muon_learning_rate": float, "momentum": float}
SECTIONS = ("model", "tokenizer", "data", "training", "flax", "early_stopping", "growth", "optimizer")
GROWTH_KEYS = {"stages": list}  # growth.schedule.growth_stages checks each stage


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


def _unknown(key: str, valid, where: str) -> UsageError:
    close = difflib.get_close_matches(key, sorted(valid), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else f" Valid keys: {', '.join(sorted(valid))}."
    return UsageError(f"Unknown key {key!r} in {where}.{hint}")


def matches(value, annotation) -> bool:
    """Whether `value`, as YAML gives it, has the type `annotation` (a dataclass field's); an annotation this does
    not know passes, for the class itself to judge."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, argument) for argument in arguments)
    if origin is typing.Literal:
        return value in arguments
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, annotation) or value in {member.value for member in annotation}
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(matches(item, arguments[0]) for item in value) \
            if arguments else isinstance(value, (list, tuple))
    if origin is dict or annotation is dict:
        return isinstance(value, dict) and (not arguments or all(
            matches(key, arguments[0]) and matches(item, arguments[1]) for key, item in value.items()))
    if isinstance(annotation, type) and issubclass(annotation, dict):  # a TypedDict, e.g. RopeParameters
        return isinstance(value, dict)
    return True


def type_name(annotation) -> str:
    """`int`, `str or None`, `list of str` ...: a type as a message names it."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(type_name(argument) for argument in arguments))
    if origin is typing.Literal:
        return " or ".join(repr(argument) for argument in arguments)
    if annotation is type(None):
        return "None"
    if origin in (list, tuple):
        return f"a list of {type_name(arguments[0])}" if arguments else "a list"
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, dict)):
        return "a mapping"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in annotation)
    return getattr(annotation, "__name__", str(annotation))


def check_value(where: str, value, annotation) -> None:
    """Refuse a value of the wrong type, or below its MINIMUM, naming the key, the value given and what it takes."""
    if not matches(value, annotation):
        raise UsageError(f"{where} = {value!r} is {type(value).__name__ if value is not None else 'empty'}; it must "
                         f"be {type_name(annotation)}. Fix it in the run config or with --set {where}=VALUE.")
    minimum = MINIMUM.get(where)
    if minimum is not None and isinstance(value, (int, float)) and value < minimum:
        raise UsageError(f"{where} = {value!r} is too small; it must be at least {minimum}. Fix it in the run config "
                         f"or with --set {where}=VALUE.")


def field_types(cls) -> dict[str, object]:
    """The init fields of the dataclass `cls` with their annotations (an annotation that does not resolve is Any)."""
    annotations = {}
    for klass in reversed(cls.__mro__):
        try:
            annotations.update(inspect.get_annotations(klass, eval_str=True))
        except Exception:  # a forward reference of a base class that does not resolve here
            annotations.update({name: typing.Any for name in getattr(klass, "__annotations__", {})})
    return {field.name: annotations.get(field.name, typing.Any) for field in dataclasses.fields(cls) if field.init}


MODEL_SOURCE_KEYS = {"preset", "model_type", "init_from"}
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flex_attention")


def model_type_of(model: dict) -> str | None:
    """The model type a run's model section builds (from its checkpoint, preset or model_type)."""
    if model.get("init_from"):
        return read_checkpoint_config(model["init_from"])["model_type"]
    if model.get("preset") in PRESETS:
        return PRESETS[model["preset"]].model_type
    return model.get("model_type")


def model_field_types(run: dict) -> dict[str, object]:
    """Fields the model section may set, with their types: the family config's fields (plus `preset` /
    `model_type` / `init_from`)."""
    model_type = model_type_of(run["model"])
    # attn_implementation picks the attention kernel (eager, sdpa, flash_attention_2, flex_attention); it changes no
    # weight, so it applies to init_from too.
    sources = {"preset": str, "model_type": str, "init_from": str, "attn_implementation": str}
    if model_type is None:
        return sources
    try:
        config_class = type(AutoConfig.for_model(model_type))
    except ValueError:
        raise UsageError(f"model.model_type = {model_type!r} is not a model type transformers knows: choose one of "
                         f"{', '.join(FAMILIES)} (or any transformers model type).") from None
    return {**field_types(config_class), **sources}


def validate(run: dict) -> dict:
    """Check every section, key and value type; returns `run`."""
    for section in run:
        if section not in SECTIONS:
            raise _unknown(section, SECTIONS, "the run config")
    if isinstance(run.get("growth"), list):  # the stages alone: growth: [{at_step: 200, num_layers: 4}, ...]
        run["growth"] = {"stages": run["growth"]}
    for section in SECTIONS:
        if run.get(section) is None:
            run[section] = {}
        if not isinstance(run[section], dict):
            raise UsageError(f"Section {section!r} must be a mapping of keys to values, got {run[section]!r}.")
    model = run["model"]
    sources = [key for key in ("preset", "model_type", "init_from") if key in model]
    if len(sources) != 1:
        raise UsageError("The model section needs exactly one of `preset` (see `mtlm presets`), `model_type` with "
                         f"config fields, or `init_from` (a checkpoint folder to train on); it has {sources or 'none'}.")
    for key in sources:
        check_value(f"model.{key}", model[key], str)
    if "preset" in model:
        preset_config(model["preset"])  # unknown preset -> error with close names
    schemas = [("model", model, model_field_types(run)), ("tokenizer", run["tokenizer"], TOKENIZER_KEYS),
               ("data", run["data"], DATA_KEYS), ("flax", run["flax"], FLAX_KEYS),
               ("early_stopping", run["early_stopping"], EARLY_STOPPING_KEYS), ("growth", run["growth"], GROWTH_KEYS),
               ("data.arithmetic", run["data"].get("arithmetic") or {}, ARITHMETIC_KEYS),
               ("optimizer", run["optimizer"], OPTIMIZER_KEYS),
               ("training", run["training"], field_types(TrainingArguments))]
    for where, section, schema in schemas:
        for key, value in section.items():
            if key not in schema:
                raise _unknown(key, schema, "training (TrainingArguments fields)" if where == "training" else where)
            check_value(f"{where}.{key}", value, schema[key])
    if run["tokenizer"].get("kind", "char") not in TOKENIZER_KINDS:
        raise UsageError(f"tokenizer.kind = {run['tokenizer']['kind']!r}; choose one of {sorted(TOKENIZER_KINDS)}.")
    if run["data"].get("source", "tinyshakespeare") not in DATA_SOURCES:
        raise UsageError(f"data.source = {run['data']['source']!r}; choose one of {sorted(DATA_SOURCES)}.")
    if run["data"].get("source") == "shards":
        if "path" not in run["data"]:
            raise UsageError("data.source: shards needs data.path, the folder of .txt, .jsonl or .parquet shards.")
        shard_files(run["data"]["path"])  # a folder with no readable shard, or mixed formats, is refused now
    elif "cache_dir" in run["data"]:
        raise UsageError("data.cache_dir is where data.source: shards keeps its token file; other sources use "
                         "datasets' cache. Drop the key.")
    balance = run["data"].get("balance_layouts")
    if balance is not None:
        if run["data"].get("source") != "arithmetic":
            raise UsageError("data.balance_layouts reweights prompt/target rows by their operand layout; a corpus has "
                             "none. Drop the key, or train on data.source: arithmetic.")
        if not 0 <= balance <= 1:
            raise UsageError(f"data.balance_layouts = {balance}: give an exponent from 0 (the data's own mix) to 1 "
                             "(every operand layout drawn equally often).")
    if run["data"].get("random_position_offsets"):
        if run["data"].get("source") != "arithmetic":
            raise UsageError("data.random_position_offsets shifts the positions of prompt/target rows shorter than "
                             "the context; packed corpus blocks fill it. Drop the key, or train on data.source: "
                             "arithmetic.")
        family = FAMILIES.get(model_type_of(run["model"]))
        if family and "position_ids" not in inspect.signature(family.causal_lm_class.forward).parameters:
            raise UsageError(f"data.random_position_offsets: {family.model_type} models take no position ids; drop "
                             "the key, or train a decoder family (mtlm_llama, mtlm_gpt, mtlm_moe, mtlm_attention).")
    if "output_dir" not in run["training"]:
        raise UsageError("training.output_dir is required: the folder for checkpoints and the final model.")
    if run["early_stopping"]:
        if "patience" not in run["early_stopping"]:
            raise UsageError("early_stopping needs a patience: the evaluations without improvement before training "
                             "stops, e.g. early_stopping: {patience: 10}.")
        if run["training"].get("eval_strategy", "no") == "no" or not run["training"].get("load_best_model_at_end"):
            raise UsageError("early_stopping needs evaluations and the best checkpoint kept: set training.eval_strategy "
                             "(steps or epoch, as save_strategy) and training.load_best_model_at_end: true.")
    attention = model.get("attn_implementation", "sdpa")
    if attention not in ATTENTION_IMPLEMENTATIONS:
        raise UsageError(f"model.attn_implementation = {attention!r}; choose one of "
                         f"{', '.join(ATTENTION_IMPLEMENTATIONS)}.")
    optimizer = run["optimizer"].get("name", "adamw")
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"optimizer.name = {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")
    if optimizer == "muon" and run["growth"].get("stages"):
        raise UsageError("optimizer.name: muon with a growth section: growth inside a run copies AdamW's moment "
                         "estimates onto the new layers, and Muon keeps other state. Drop one of the two.")
    max_steps = run["training"].get("max_steps", -1)
    if max_steps == 0 or max_steps < -1:
        raise UsageError(f"training.max_steps = {max_steps!r}: give a positive number of optimizer steps, or -1 to "
                         "train for num_train_epochs.")
    growth_stages(run["growth"], max_steps)
    return run


def apply_overrides(run: dict, overrides: list[str]) -> dict:
    """`section.key=value` (values parsed as YAML: numbers, booleans, lists) applied to a copy of `run`."""
    run = copy.deepcopy(run)
    for override in overrides:
        path, separator, value = override.partition("=")
        keys = path.split(".")
        if not separator or len(keys) < 2:
            raise UsageError(f"--set expects section.key=value, e.g. --set training.max_steps=100; got {override!r}.")
        target = run
        for key in keys[:-1]:
            target = target.setdefault(key, {}) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            raise UsageError(f"--set {override}: {'.'.join(keys[:-1])} is not a section of mappings in this config.")
        try:
            target[keys[-1]] = parse_yaml(value)
        except yaml.YAMLError as error:
            raise UsageError(f"--set {override}: the value is not valid YAML ({error.problem}); quote it, e.g. "
                             f"--set {path}='\"{value}\"'.") from None
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
    try:
        run = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise UsageError(f"{path} is not UTF-8 text (byte {error.start}): save the run config as UTF-8.") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise UsageError(f"{path} is not valid YAML: {problem}{where}. Fix the file (`mtlm configs` lists working "
                         "examples).") from None
    if not isinstance(run, dict):
        raise UsageError(f"{path} must hold a mapping with sections {', '.join(SECTIONS)}; it holds {run!r}.")
    return validate(apply_overrides(run, list(overrides)))


def save(run: dict, folder: str | os.PathLike) -> Path:
    """Write the resolved config beside the checkpoints (through a temporary file)."""
    path = Path(folder) / "run_config.yaml"
    with atomic_file(path) as handle:
        yaml.safe_dump(run, handle, sort_keys=False)
    return path
