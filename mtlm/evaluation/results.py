"""Evaluation results kept in the checkpoint folder (`eval_results.json`), where the model card finds them."""

import json
import os
from pathlib import Path

from ..files import atomic_file, read_json

RESULTS_FILE = "eval_results.json"
# Numbers results files hold beside the metrics: counts and settings, never shown or compared as scores.
NOT_METRICS = {"sample_len", "tokens", "bytes", "words", "documents", "max_length", "stride", "n"}


def metric_name(key: str) -> str:
    """lm-eval writes metrics as "name,filter"; the filter "none" is the plain metric."""
    name, _, filter_name = key.partition(",")
    return name if filter_name in ("", "none") else key


def is_metric(key: str, value) -> bool:
    """Whether `key` (lm-eval's "name,filter" or a plain name) holds a score rather than a count or a label."""
    name = key.partition(",")[0]
    return isinstance(value, (int, float)) and not isinstance(value, bool) and name not in NOT_METRICS


def read_checkpoint_results(checkpoint: str | os.PathLike) -> dict:
    path = Path(checkpoint) / RESULTS_FILE
    return read_json(path, "results file") if path.is_file() else {}


def save_into_checkpoint(checkpoint: str | os.PathLike, section: str, summary: dict) -> Path | None:
    """Merge `summary` ({key: {name: value}}) into `section` of the folder's eval_results.json: a task or data file
    evaluated again replaces its earlier entry; the others stay. A checkpoint that is not a local folder (a Hub id)
    keeps nothing: None."""
    if not (Path(checkpoint) / "config.json").is_file():
        return None
    results = read_checkpoint_results(checkpoint)
    stored = results.setdefault(section, {})
    for key, entries in summary.items():
        stored.setdefault(key, {}).update(entries)
    path = Path(checkpoint) / RESULTS_FILE
    with atomic_file(path) as handle:
        json.dump(results, handle, indent=2, default=str)
    return path
