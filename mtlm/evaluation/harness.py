"""lm-evaluation-harness on checkpoint folders, through its Python API.

`evaluate` runs `lm_eval.simple_evaluate` with the `hf` model and `pretrained=CKPT,trust_remote_code=True`, the very
arguments of `lm_eval --model hf --model_args pretrained=CKPT,trust_remote_code=True`, so both give the same numbers.
What mtlm adds is around it: task-name checks with close matches, the `mtlm1` task list, tasks pointed at local
files (offline), and the results kept in the checkpoint folder for its model card.
"""

import difflib
import functools
import json
import os
import warnings
from pathlib import Path

import torch

from ..files import code_updates, require_tokenizer
from .results import save_into_checkpoint

# The twelve benchmarks MTLM1's card reports, by their lm-eval names (SEEDS.md).
MTLM1_TASKS = (
    "winogrande", "copa", "boolq", "wsc273", "truthfulqa_mc2", "arc_easy", "openbookqa", "hellaswag",
    "agieval_aqua_rat", "truthfulqa_mc1", "arc_challenge", "commonsense_qa",
)
TASK_LISTS = {"mtlm1": MTLM1_TASKS}
# `datasets` builders that read local files, by file suffix.
LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
SPLIT_KEYS = ("test_split", "validation_split", "training_split", "fewshot_split")


class TaskError(ValueError):
    pass


def expand_task_names(tasks: str | list[str]) -> list[str]:
    """Comma-separated task names with task lists (`mtlm1`) expanded, in order, without repeats."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    expanded = [task for name in names if name.strip() for task in TASK_LISTS.get(name.strip(), [name.strip()])]
    return list(dict.fromkeys(expanded))


def import_lm_eval():
    try:
        import lm_eval
        import lm_eval.tasks
    except ImportError:
        raise ImportError("lm-evaluation-harness is not installed: pip install 'mtlm[eval]' (or lm-eval).") from None
    return lm_eval


def task_manager(include_path: str | os.PathLike | list | None = None):
    """lm-eval's TaskManager over its own tasks and those in `include_path` (indexing ~15k YAML files takes seconds,
    so one is kept per set of folders)."""
    return _task_manager(tuple(str(Path(path).resolve()) for path in _as_list(include_path)))


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: tuple[str, ...]):
    return import_lm_eval().tasks.TaskManager(include_path=list(include_path) or None)


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def check_task_names(names: list[str], manager) -> None:
    unknown = [name for name in names if name not in manager.task_index]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
            hints.append(f"{name!r} (close: {', '.join(close)})" if close else repr(name))
        raise TaskError(f"Unknown lm-eval task {'; '.join(hints)}. List tasks with `lm_eval ls tasks`; tasks of your "
                        f"own are YAML files in a folder given with --include-path. Task lists: {', '.join(TASK_LISTS)}.")


def local_data_config(config: dict, path: Path) -> dict:
    """`config` (a task's full YAML config) with its dataset read from local files: one file serves the split the
    task is evaluated on; a folder holds one file per split, named after it (test.jsonl, train.jsonl, ...)."""
    task = config.get("task")
    splits = {key: config.get(key) for key in SPLIT_KEYS if config.get(key)}
    evaluated = splits.get("test_split") or splits.get("validation_split")
    if path.is_file():
        data_files = {evaluated: path}
    elif path.is_dir():
        data_files = {}
        for split in dict.fromkeys(splits.values()):
            found = [candidate for suffix in LOCAL_BUILDERS if (candidate := path / f"{split}{suffix}").is_file()]
            if found:
                data_files[split] = found[0]
        if evaluated not in data_files:
            raise TaskError(f"{path} has no file for {task}'s evaluation split: name it {evaluated}.jsonl (or .json, "
                            ".csv, .parquet).")
    else:
        raise TaskError(f"Local data for {task}: {path} is neither a file nor a folder.")
    builders = {LOCAL_BUILDERS.get(Path(file).suffix) for file in data_files.values()}
    if None in builders or len(builders) > 1:
        raise TaskError(f"Local data for {task} must be files of one kind among {', '.join(LOCAL_BUILDERS)}; got "
                        f"{', '.join(str(file) for file in data_files.values())}.")
    overridden = {key: (split if split in data_files else None) for key, split in splits.items()}
    return {**config, **overridden, "dataset_path": builders.pop(), "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(file) for split, file in data_files.items()}}}


def with_files_beside_yaml(config: dict, yaml_path: Path) -> dict:
    """A task config whose relative `data_files` (a path, a list, or either per split) are taken relative to its YAML
    file rather than to the working directory, so that task folders work from anywhere."""
    data_files = (config.get("dataset_kwargs") or {}).get("data_files")
    if data_files is None:
        return config

    def beside(files):
        if isinstance(files, (list, tuple)):
            return [beside(file) for file in files]
        return str(yaml_path.parent / files) if not Path(files).is_absolute() else files

    resolved = {split: beside(files) for split, files in data_files.items()} if isinstance(data_files, dict) \
        else beside(data_files)
    return {**config, "dataset_kwargs": {**config["dataset_kwargs"], "data_files": resolved}}


def task_specs(names: list[str], manager, local_data: dict[str, str] | None = None,
               include_path: str | os.PathLike | list | None = None) -> list:
    """What to hand lm-eval for each task: its name, or its config as a dict where mtlm changes where the data is
    read from."""
    from lm_eval.tasks._yaml_loader import load_yaml

    local_data = dict(local_data or {})
    check_task_names(names, manager)
    for name in local_data:
        if name not in names:
            raise TaskError(f"--local-data names {name!r}, which is not among the tasks {', '.join(names)}.")
    own_folders = [Path(folder).resolve() for folder in _as_list(include_path)]
    specs = []
    for name in names:
        entry = manager.task_index[name]
        yaml_path = Path(entry.yaml_path).resolve() if entry.yaml_path else None
        if name in local_data:
            if yaml_path is None or entry.kind.name not in ("TASK", "PY_TASK"):
                raise TaskError(f"--local-data applies to single tasks; {name!r} is a {entry.kind.name.lower()}.")
            specs.append(local_data_config(load_yaml(yaml_path), Path(local_data[name])))
        elif yaml_path is not None and entry.kind.name == "TASK" and any(
            folder in yaml_path.parents for folder in own_folders
        ):
            specs.append(with_files_beside_yaml(load_yaml(yaml_path), yaml_path))
        else:
            specs.append(name)
    return specs


def load_tasks(specs: list, manager) -> list:
    """Build every task (which reads its dataset), naming the task whose data cannot be had."""
    built = []
    for spec in specs:
        name = spec if isinstance(spec, str) else spec["task"]
        try:
            loaded = manager.load([spec])
        except OSError as error:  # datasets' ConnectionError / FileNotFoundError when offline or missing
            raise TaskError(
                f"Task {name!r} could not read its dataset ({error}). Offline, point it at local files: "
                f"--local-data {name}=FILE.jsonl (the evaluation split) or --local-data {name}=FOLDER (one "
                "test.jsonl / validation.jsonl / train.jsonl per split, rows shaped like the Hub dataset), or "
                "download it once while online."
                + (f" Its dataset: {dataset}." if (dataset := dataset_path(spec, manager)) else "")
            ) from None
        top = [group for group in loaded["groups"].values() if group.name == name]
        built.extend(top or loaded["tasks"].values())
    return built


def dataset_path(spec: str | dict, manager) -> str | None:
    if isinstance(spec, dict):
        return spec.get("dataset_path")
    entry = manager.task_index[spec]
    if not entry.yaml_path:
        return None
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(entry.yaml_path, resolve_func=False).get("dataset_path")


def evaluate(
    checkpoint: str | os.PathLike,
    tasks: str | list[str],
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int | str = 1,
    include_path: str | os.PathLike | list | None = None,
    local_data: dict[str, str] | None = None,
    device: str | None = None,
    save: bool = True,
) -> dict:
    """lm-eval results (its own format: `results[task]["acc,none"]`, `n-shot`, `versions`, ...) of the checkpoint
    folder on `tasks`; also merged into `checkpoint/eval_results.json` unless `save` is False."""
    lm_eval = import_lm_eval()
    require_tokenizer(checkpoint)
    stale = [name for name, source in code_updates(checkpoint).items() if name.endswith(".py")]
    if stale:  # lm-eval runs the folder's own code (trust_remote_code), as the lm_eval command does
        warnings.warn(f"{checkpoint} carries code files that are not this mtlm's ({', '.join(stale)}); lm-eval will "
                      f"run them. Bring them up to date with `mtlm upgrade-code {checkpoint}`.", stacklevel=2)
    names = expand_task_names(tasks)
    manager = task_manager(include_path)
    loaded = load_tasks(task_specs(names, manager, local_data, include_path), manager)
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(checkpoint), "trust_remote_code": True},
        tasks=loaded,
        num_fewshot=num_fewshot,
        limit=limit,
        batch_size=batch_size,
        # lm-eval's hf model assumes cuda unless told otherwise
        device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
        task_manager=manager,
        log_samples=False,
    )
    results["model_name"] = Path(checkpoint).resolve().name
    results.pop("samples", None)
    if save:
        save_into_checkpoint(checkpoint, "lm_eval", card_summary(results, limit, loaded))
    return results


def card_summary(results: dict, limit: int | float | None, loaded: list) -> dict:
    """The per-task parts of lm-eval results that a model card reports, each a mapping keyed by task: the results
    and settings, and which dataset and split each task read."""
    summary = {key: results[key] for key in ("results", "n-shot", "n-samples", "versions", "higher_is_better")
               if key in results}
    summary["limit"] = {task: limit for task in results["results"]}
    tasks = [task for item in loaded for task in (item.get_all_tasks() if hasattr(item, "get_all_tasks") else [item])]
    summary["datasets"] = {
        task.config.task: {"path": task.config.dataset_path, "name": task.config.dataset_name,
                           "split": task.config.test_split or task.config.validation_split}
        for task in tasks
    }
    return summary


def to_json(results: dict) -> str:
    from lm_eval.utils import handle_non_serializable

    return json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)


def markdown_table(results: dict) -> str:
    from lm_eval.utils import make_table

    table = make_table(results)
    if results.get("groups"):
        table += "\n" + make_table(results, "groups")
    return table
