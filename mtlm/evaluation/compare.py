"""One table and one chart across models: lm-eval results files, `mtlm ppl` outputs, or checkpoint folders (their
eval_results.json)."""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..files import read_json, staged  # noqa: E402
from .results import RESULTS_FILE, is_metric, metric_name  # noqa: E402

# The metric shown for a task when none is asked for: the first the task reports.
PREFERRED_METRICS = ("acc", "exact_match", "bits_per_byte", "word_perplexity", "acc_norm", "mcc", "f1")


def load_run(path: str | Path) -> tuple[str, dict[str, dict[str, float]]]:
    """(model name, {task: {metric: value}}) from a results JSON or a checkpoint folder."""
    path = Path(path)
    if path.is_dir():
        if not (path / RESULTS_FILE).is_file():
            raise FileNotFoundError(f"{path} holds no {RESULTS_FILE}: evaluate it first with mtlm eval / mtlm ppl.")
        stored = read_json(path / RESULTS_FILE, "results file")
        sections = [stored[key].get("results", {}) for key in ("lm_eval", "perplexity", "exact_match") if key in stored]
        name = path.resolve().name
    elif path.is_file():
        stored = read_json(path, "results file")
        if not isinstance(stored, dict) or not isinstance(stored.get("results"), dict):
            raise ValueError(f"{path} is not a results file (no 'results'): pass lm-eval or mtlm eval/ppl output.")
        sections = [stored["results"]]
        name = Path(str(stored.get("model_name") or path.stem)).name  # a model path names the model by its folder
    else:
        raise FileNotFoundError(f"No results file or checkpoint folder at {path}.")
    tasks = {}
    for section in sections:
        for task, metrics in section.items():
            tasks[task] = {metric_name(key): value for key, value in metrics.items() if is_metric(key, value)}
    return name, tasks


def chosen_metric(metrics: dict[str, float], metric: str | None) -> str | None:
    if metric:
        return metric if metric in metrics else None
    return next((name for name in PREFERRED_METRICS if name in metrics),
                next((name for name in metrics if not name.endswith("_stderr")), None))


def comparison_rows(runs: list[tuple[str, dict]], metric: str | None = None) -> list[dict]:
    """One row per task: the metric shown and each model's value and standard error (None where missing)."""
    tasks = list(dict.fromkeys(task for _, results in runs for task in results))
    rows = []
    for task in tasks:
        shown = next((chosen for _, results in runs if task in results
                      for chosen in [chosen_metric(results[task], metric)] if chosen), None)
        if shown is None:
            continue
        values = [results.get(task, {}).get(shown) for _, results in runs]
        errors = [results.get(task, {}).get(f"{shown}_stderr") for _, results in runs]
        rows.append({"task": task, "metric": shown, "values": values, "stderr": errors})
    return rows


def _cell(value: float | None, error: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f} ± {error:.4f}" if isinstance(error, (int, float)) and math.isfinite(error) else f"{value:.4f}"


def markdown_comparison(runs: list[tuple[str, dict]], rows: list[dict]) -> str:
    lines = ["| task | metric | " + " | ".join(name for name, _ in runs) + " |",
             "|---|---|" + "---:|" * len(runs)]
    for row in rows:
        cells = " | ".join(_cell(value, error) for value, error in zip(row["values"], row["stderr"]))
        lines.append(f"| {row['task']} | {row['metric']} | {cells} |")
    return "\n".join(lines)


def plot_comparison(runs: list[tuple[str, dict]], rows: list[dict], path: str | Path) -> None:
    """One panel per task (each on its own scale), one bar per model, standard errors as whiskers."""
    if not rows:
        raise ValueError("No task has a metric in common to plot.")
    columns = min(4, len(rows))
    lines = math.ceil(len(rows) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(3.2 * columns, 2.8 * lines), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, row in zip(axes.flat, rows):
        heights = [value if value is not None else 0.0 for value in row["values"]]
        errors = [error if isinstance(error, (int, float)) and math.isfinite(error) else 0.0 for error in row["stderr"]]
        axis.bar(range(len(runs)), heights, yerr=errors, color=[colors[i % len(colors)] for i in range(len(runs))],
                 capsize=3)
        axis.set_title(f"{row['task']} ({row['metric']})", fontsize=9)
        axis.set_xticks(range(len(runs)), [name for name, _ in runs], rotation=30, ha="right", fontsize=8)
        axis.grid(axis="y", alpha=0.3)
    for axis in list(axes.flat)[len(rows):]:
        axis.axis("off")
    figure.tight_layout()
    with staged(path) as partial:
        figure.savefig(partial, dpi=120)
    plt.close(figure)
