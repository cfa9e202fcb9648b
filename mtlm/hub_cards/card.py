"""Model cards from what a checkpoint folder records: config.json (architecture, growth history), trainer_state.json
(steps, tokens, FLOPs, time, hardware), run_config.yaml (data, recipe) and eval_results.json (evaluations).
What the folder does not record is left out, never guessed."""

import math
import os
import re
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import AutoConfig

from ..configuration.presets import count_parameters
from ..evaluation.results import is_metric, metric_name, read_checkpoint_results
from ..families import family_of
from ..files import atomic_file, read_json, read_text
from ..training.defaults import training_settings

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_record(path: Path) -> dict:
    return read_json(path, "training record") if path.is_file() else {}


def read_run_config(folder: Path) -> dict:
    path = folder / "run_config.yaml"
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(read_text(path, "run config")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML ({getattr(error, 'problem', None) or error}): fix it or delete it "
                         "(the card then leaves out the data and recipe).") from None


def data_description(data: dict) -> str | None:
    source = data.get("source", "tinyshakespeare") if data else None
    if source is None:
        return None
    if source == "tinyshakespeare":
        return "Tiny Shakespeare (1.1 MB; the first 90% of its characters for training, the last 10% for validation)"
    if source == "text":
        return f"the text file {Path(data['path']).name}"
    if source == "files":
        return "local files: " + ", ".join(f"{split}: {Path(path).name}" for split, path in data["files"].items())
    if source == "hub":
        return f"the Hub dataset {data['name']}" + (f" ({data['config']})" if data.get("config") else "")
    settings = data.get("arithmetic") or {}
    return (f"synthetic arithmetic: expressions of {settings.get('N', 2)} operands in "
            f"[{settings.get('A', 0)}, {settings.get('B', 999)}] with {settings.get('ops', '+')}, answers after '='")


def context_length(config) -> int:
    """The tokens a prediction reads: a fixed-context family's window, else the longest input."""
    return getattr(config, "context_size", None) or config.max_position_embeddings


def architecture_rows(config) -> list[tuple[str, str]]:
    parameters = count_parameters(config)
    family = family_of(config)
    twin = f"; upstream twin `{family.upstream.causal_lm_class.__name__}`" if family.upstream else ""
    rows = [
        ("family", f"`{config.model_type}` ({family.describe(config)}){twin}"),
        ("parameters", f"{parameters:,} ({parameters / 1e6:.1f}M)"),
        *family.card_rows(config),
        ("context", f"{context_length(config)} tokens"),
        ("vocabulary", f"{config.vocab_size} tokens"),
        ("tied input / output embeddings", "yes" if config.tie_word_embeddings else "no"),
    ]
    return rows


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, seconds = divmod(rest, 60)
    return " ".join(f"{value} {unit}" for value, unit in ((hours, "h"), (minutes, "min"), (seconds, "s")) if value) \
        or "0 s"


def training_rows(state: dict, run: dict) -> list[tuple[str, str]]:
    """The Trainer's own record of the run, with the data and recipe from the run config."""
    if not state:
        return []
    history = state.get("log_history", [])
    training = training_settings(run.get("training") or {})
    environment = (state.get("stateful_callbacks") or {}).get("TrainingEnvironment", {}).get("args", {})
    rows = []
    if (data := data_description(run.get("data") or {})) and run:
        rows.append(("data", data))
    rows.append(("steps", f"{state['global_step']:,}"))
    tokens = state.get("num_input_tokens_seen") or next(
        (entry["num_input_tokens_seen"] for entry in reversed(history) if "num_input_tokens_seen" in entry), None)
    if tokens:
        rows.append(("tokens", f"{tokens:,}"))
    if run.get("training"):
        block = (run.get("data") or {}).get("block_size")
        sequences = training.get("per_device_train_batch_size", 8) * training.get("gradient_accumulation_steps", 1)
        processes = environment.get("processes", 1)
        batch = f"{sequences} sequences" + (f" × {processes} data-parallel replicas" if processes > 1 else "")
        rows.append(("batch", batch + (f" of {block} tokens" if block else "")))
        schedule = training["lr_scheduler_type"]
        if schedule == "cosine_with_min_lr":
            schedule = f"cosine to {training['lr_scheduler_kwargs'].get('min_lr_rate', 0)}·lr"
        rows.append(("optimizer", f"AdamW (β = {training['adam_beta1']}, {training['adam_beta2']}), learning rate "
                                  f"{training.get('learning_rate', 5e-5):g}, {training.get('warmup_steps', 0)} warm-up "
                                  f"steps, {schedule}, weight decay {training['weight_decay']} on matrices, gradient "
                                  f"clipping {training['max_grad_norm']}"))
    if state.get("total_flos"):
        rows.append(("training FLOPs", f"{state['total_flos']:.3g}"))
    if environment.get("hardware"):
        processes = environment.get("processes", 1)
        rows.append(("hardware", environment["hardware"]))
    if environment.get("software"):
        rows.append(("software", environment["software"]))
    runtime = next((entry["train_runtime"] for entry in reversed(history) if "train_runtime" in entry), None)
    if runtime:
        rows.append(("training time", _duration(runtime)))
    losses = [entry["loss"] for entry in history if "loss" in entry]
    if losses:
        rows.append(("final training loss", f"{losses[-1]:.4f}"))
    evaluations = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    if evaluations:
        rows.append(("final validation loss", f"{evaluations[-1]:.4f} (perplexity {math.exp(evaluations[-1]):.2f})"))
    return rows


def growth_records(config) -> list[dict]:
    records = []
    for record in getattr(config, "growth_history", None) or []:
        source_training = record.get("source_training") or {}
        parts = []
        if "global_step" in source_training:
            parts.append(f"{source_training['global_step']:,} steps")
        if source_training.get("total_flos"):
            parts.append(f"{source_training['total_flos']:.3g} FLOPs")
        records.append({
            **record,
            "layer_map_text": " ".join("-" if index is None else str(index) for index in record["layer_map"]),
            "source_training_text": ", ".join(parts) or "-",
            "source_text": record["source"] or (f"this run, step {record['at_step']}" if "at_step" in record else "-"),
        })
    return records


def _metric_rows(metrics: dict) -> list[tuple[str, float, float | None]]:
    rows = []
    for key, value in metrics.items():
        name, _, filter_name = key.partition(",")
        if name.endswith("_stderr") or not is_metric(key, value):
            continue
        error = metrics.get(f"{name}_stderr,{filter_name}")
        rows.append((metric_name(key), value, error if isinstance(error, (int, float)) else None))
    return rows


def evaluation_sections(results: dict) -> list[dict]:
    sections = []
    harness = results.get("lm_eval") or {}
    if harness.get("results"):
        rows = []
        for task, metrics in harness["results"].items():
            shots = (harness.get("n-shot") or {}).get(task, "-")
            limit = (harness.get("limit") or {}).get(task)
            for name, value, error in _metric_rows(metrics):
                rows.append([task, name, f"{value:.4f}", "-" if error is None else f"{error:.4f}", str(shots),
                             "all" if limit is None else f"{limit:g}"])
        sections.append({"title": "lm-evaluation-harness (log-likelihood; `mtlm eval --tasks`):",
                         "header": ["task", "metric", "value", "± stderr", "n-shot", "documents"], "rows": rows})
    perplexity = (results.get("perplexity") or {}).get("results") or {}
    if perplexity:
        rows = [[data, f"{item['max_length']} / {item['stride']}", f"{item['loss']:.4f}",
                 f"{item['token_perplexity']:.2f}", f"{item['bits_per_byte']:.4f}", f"{item['word_perplexity']:.4g}",
                 f"{item['tokens']:,}"] for data, item in perplexity.items()]
        sections.append({"title": "Sliding-window perplexity (`mtlm ppl`):",
                         "header": ["data", "window / stride", "loss (nats/token)", "token perplexity", "bits per byte",
                                    "word perplexity", "tokens"], "rows": rows})
    exact = (results.get("exact_match") or {}).get("results") or {}
    if exact:
        rows = [[data, f"{item['exact_match']:.4f}", f"{item['n']:,}"] for data, item in exact.items()]
        sections.append({"title": "Greedy exact match (`mtlm eval --arithmetic`):",
                         "header": ["data", "exact match", "examples"], "rows": rows})
    return sections


def model_index(results: dict) -> list[EvalResult]:
    """lm-eval results as Hub eval results (the card's `model-index`)."""
    harness = results.get("lm_eval") or {}
    entries = []
    for task, metrics in (harness.get("results") or {}).items():
        dataset = (harness.get("datasets") or {}).get(task) or {}
        hub_dataset = dataset.get("path") if dataset.get("path") not in (None, "json", "csv", "parquet", "text") \
            else None
        shots = (harness.get("n-shot") or {}).get(task)
        for name, value, error in _metric_rows(metrics):
            entries.append(EvalResult(
                task_type="text-generation", dataset_type=hub_dataset or task, dataset_name=task,
                dataset_config=dataset.get("name") if hub_dataset else None,
                dataset_split=dataset.get("split"), metric_type=name, metric_value=value,
                metric_name=f"{name} ({shots}-shot)" if shots is not None else name,
            ))
    return entries


def limitations(config, run: dict, results: dict) -> list[str]:
    lines = []
    data = data_description(run.get("data") or {}) if run else None
    lines.append(f"A small research model{f' trained only on {data}' if data else ''}: it continues text in the style "
                 "of its training data and knows little else. It is not instruction-tuned and has not been evaluated "
                 "for safety or bias; do not use it for decisions about people.")
    lines.append(f"It reads at most {context_length(config)} tokens of context.")
    if (run.get("tokenizer") or {}).get("kind") == "char":
        lines.append("Its vocabulary holds the characters of its training text only; any other character becomes "
                     "`<unk>`.")
    limits = ((results.get("lm_eval") or {}).get("limit") or {}).values()
    if any(limit is not None for limit in limits):
        lines.append("Evaluations with a document limit scored a subset of their task; compare them with care.")
    return lines


def render_card(folder: str | os.PathLike, repo_id: str | None = None, license: str | None = None,
                base_model: str | None = None, upstream_class: str | None = None) -> ModelCard:
    """The model card of the checkpoint folder. `upstream_class` describes a folder converted to a plain transformers
    architecture (no remote code)."""
    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    state = read_record(folder / "trainer_state.json")
    run = read_run_config(folder)
    results = read_checkpoint_results(folder)
    growth = growth_records(config)
    if base_model is None and growth:
        source = growth[0]["source"] or ""
        base_model = source if HUB_ID.match(source) and not Path(source).exists() else None
    model_name = (repo_id or folder.resolve().name).split("/")[-1]
    data = (run.get("data") or {}) if run else {}
    remote_code = upstream_class is None
    card_data = ModelCardData(
        model_name=model_name,
        license=license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["mtlm", config.model_type, "causal-lm"] + (["custom_code"] if remote_code else []),
        datasets=[data["name"]] if data.get("source") == "hub" else None,
        base_model=base_model,
        eval_results=model_index(results) or None,
    )
    grown = f" It was grown from a {growth[0]['source_num_layers']}-layer model (see the growth history below)." \
        if growth else ""
    description = (f"A {count_parameters(config) / 1e6:.1f}M-parameter causal language model of the `{config.model_type}` "
                   f"family ({family_of(config).describe(config)}), {'trained' if state else 'written'} with mtlm.{grown}")
    code_files = sorted(path.name for path in folder.glob("*.py"))
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_name=model_name, description=description,
        architecture=architecture_rows(config), training=training_rows(state, run), growth=growth,
        evaluation=evaluation_sections(results), repo_id=repo_id or str(folder), remote_code=remote_code,
        code_files=code_files, upstream_class=upstream_class, prompt="\n",
        limitations=limitations(config, run, results),
    )


def write_card(folder: str | os.PathLike, **options) -> Path:
    """Render the card and write it to `folder/README.md` (through a temporary file)."""
    card = render_card(folder, **options)
    path = Path(folder) / "README.md"
    with atomic_file(path) as handle:
        handle.write(str(card))
    return path
