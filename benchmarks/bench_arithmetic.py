"""The arithmetic study of issue 18: the seed's three Mini-LM configurations (GPT-2, Llama-2, Mixtral) learning 3-digit
addition, with the answer written in the usual order or reversed, and the other operators with Llama-2.

Every arm is a bundled run config (`mtlm configs`) plus overrides, trained by `mtlm train`'s own code. During training,
greedy exact match on 500 validation prompts is logged at every evaluation; at the end the whole validation split
(7,000 prompts) is scored, and, for the bundled recipes as they stand (arms marked final), the held-out test split
once, batched, with the seconds that scoring took. Sweep arms (a recipe being chosen) never read the test split.

Results go to benchmarks/results/arithmetic.json (finished arms are kept: the study resumes); the table and the figure
docs/arithmetic.png (exact match against steps and against training FLOPs) are redrawn from it:

    python benchmarks/bench_arithmetic.py --only gpt2 llama2 mixtral
    python benchmarks/bench_arithmetic.py --only sub mul div sum3     # the other operators, Llama-2
    python benchmarks/bench_arithmetic.py --plot-only

A sweep point whose recipe became the bundled config is adopted: its row becomes the arm's, its test split scored
once, and the arm's previous row kept under a name of its own:

    python benchmarks/bench_arithmetic.py --adopt "sum3 training.max_steps=40000" "sum3 training.max_steps=20000"
"""

import argparse
import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from bench_tiny_lm import save, save_figure  # noqa: E402  (the study scripts' JSON and figure writers)
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402

from mtlm.evaluation.exact_match import (answer_digits, continuation, exact_match, read_answer,
                                           read_prompt_targets)  # noqa: E402
from mtlm.training import run_config  # noqa: E402
from mtlm.training.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.99


@dataclass
class Arm:
    name: str
    config: str  # a bundled run config
    overrides: list[str] = field(default_factory=list)  # --set values
    final: bool = False  # the bundled recipe as it stands: its test split is scored


def reversed_data(folder: str) -> list[str]:
    return ["data.arithmetic.reverse=true", f"data.arithmetic.out_dir=runs/data/{folder}"]


ARMS = {arm.name: arm for arm in [
    Arm("gpt2", "arithmetic-gpt2", final=True),
    Arm("llama2", "arithmetic-llama2", final=True),
    Arm("mixtral", "arithmetic-mixtral", final=True),
    Arm("gpt2-reversed", "arithmetic-gpt2", reversed_data("add3-reversed"), final=True),
    Arm("llama2-reversed", "arithmetic-llama2", reversed_data("add3-reversed"), final=True),
    Arm("mixtral-reversed", "arithmetic-mixtral", reversed_data("add3-reversed"), final=True),
    *[Arm(operator, f"arithmetic-{operator}", final=True) for operator in ("sub", "mul", "div", "sum3")],
]}


class ExpertLoad(TrainerCallback):
    """At every evaluation of a mixture-of-experts model: each layer's share of the top-k picks that go to each expert,
    over the first `rows` validation texts (padding excluded). A router that collapses sends most picks to few
    experts."""

    def __init__(self, validation_file: Path, rows: int = 500):
        self.validation_file, self.rows = validation_file, rows
        self.batch = None
        self.history = []  # [{"step", "load": [[share per expert] per layer]}]

    @torch.no_grad()
    def on_evaluate(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not hasattr(model.config, "num_local_experts") or (self.history and
                                                               self.history[-1]["step"] == state.global_step):
            return  # not a mixture, or the evaluations after training (validation, then test) at the same step
        if self.batch is None:  # the run writes its data when it starts
            texts = [row["text"] for row in read_prompt_targets(self.validation_file)[: self.rows]]
            self.batch = processing_class(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        was_training = model.training
        model.eval()
        outputs = model(**self.batch.to(model.device), output_router_logits=True)
        model.train(was_training)
        real = self.batch["attention_mask"].flatten().bool()
        loads = []
        for logits in outputs.router_logits:
            picks = logits[real].topk(model.config.num_experts_per_tok, dim=-1).indices.flatten()
            counts = torch.bincount(picks, minlength=model.config.num_local_experts).float()
            loads.append((counts / counts.sum()).tolist())
        self.history.append({"step": state.global_step, "load": loads})


@torch.no_grad()
def shifted_exact_match(model, tokenizer, rows: list[dict], end_position: int) -> dict:
    """Greedy exact match on `rows` (one at a time, no cache) with each prompt read at its own positions and again
    shifted so that its "=" sits at `end_position`, where the longest prompts put it. A model with learned absolute
    positions that fails only unshifted has not learned the positions short prompts occupy; for rotary positions
    the two agree (a control)."""
    if not rows:
        return {"n": 0}
    model.eval()
    scores = {}
    for shifted in (False, True):
        hits = 0
        for row in rows:
            prompt = tokenizer(f"{tokenizer.bos_token}{row['prompt']}", add_special_tokens=False,
                               return_tensors="pt")["input_ids"].to(model.device)
            offset = end_position - (prompt.shape[1] - 1) if shifted else 0
            ids = prompt
            for _ in range(len(continuation(row)) + 1):
                positions = torch.arange(ids.shape[1], device=ids.device)[None] + offset
                next_id = model(input_ids=ids, position_ids=positions).logits[:, -1].argmax(-1, keepdim=True)
                if next_id.item() == tokenizer.eos_token_id:
                    break
                ids = torch.cat([ids, next_id], dim=1)
            answer = tokenizer.decode(ids[0, prompt.shape[1] :], skip_special_tokens=True)
            hits += read_answer(row, answer) == row["target"]
        scores["shifted" if shifted else "own positions"] = hits / len(rows)
    return {"n": len(rows), "end_position": end_position, **scores}


def first_step_at(curve: list[dict], target: float = TARGET) -> int | None:
    """The first evaluated step whose validation exact match reaches `target`."""
    return next((point["step"] for point in curve if point["exact_match"] >= target), None)


def run_folder(runs: Path, name: str) -> Path:
    return runs / re.sub(r"[^\w.+-]+", "_", name)  # a sweep point's overrides, made a folder name


def validation_scores(model, tokenizer, validation: list[dict]) -> dict:
    """Exact match on the whole validation split, and on its short answers at their own and at shifted positions."""
    return {
        "validation": exact_match(model, tokenizer, validation, batch_size=256),
        "short_answers": shifted_exact_match(model, tokenizer,
                                             [row for row in validation if answer_digits(row["target"]) <= 2],
                                             end_position=max(len(ids) for ids in tokenizer(
                                                 [row["prompt"] for row in validation],
                                                 add_special_tokens=False)["input_ids"])),
    }


def rescore(results: dict, runs: Path) -> None:
    """Score every arm's saved model on validation again (after a change to the scoring; test stays as scored)."""
    for name, row in results.items():
        folder = run_folder(runs, name)
        if not (folder / "config.json").exists():
            print(f"{name}: no model in {folder}, kept as scored")
            continue
        model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
        data = row.get("data") or run_config.load(row["config"], row["overrides"])["data"]["arithmetic"]["out_dir"]
        row.update(validation_scores(model, tokenizer, read_prompt_targets(Path(data) / "val.jsonl")))


def run_one(arm: Arm, runs: Path, eval_steps: int, extra_overrides: list[str]) -> dict:
    output_dir = run_folder(runs, arm.name)
    run = run_config.load(arm.config, [*arm.overrides, *extra_overrides, f"training.output_dir={output_dir}",
                                       f"training.eval_steps={eval_steps}", "training.save_strategy=no",
                                       "training.disable_tqdm=true"])
    folder = Path(run["data"]["arithmetic"]["out_dir"])
    load = ExpertLoad(folder / "val.jsonl")
    started = time.perf_counter()
    trainer = train(run, overwrite=True, callbacks=(load,))
    wall = time.perf_counter() - started
    history = trainer.state.log_history
    flops_at = {entry["step"]: entry["flos"] for entry in history if "eval_loss" in entry and "flos" in entry}
    # Training ends with two evaluations at the last step (validation, then test), each scoring validation prompts.
    curve = list({entry["step"]: {"step": entry["step"], "flos": flops_at.get(entry["step"]),
                                  "exact_match": entry["eval_exact_match"]}
                  for entry in history if "eval_exact_match" in entry}.values())
    tokenizer, model = trainer.processing_class, trainer.model
    validation = read_prompt_targets(folder / "val.jsonl")
    row = {
        "config": arm.config, "overrides": arm.overrides, "data": str(folder), "parameters": model.num_parameters(),
        "steps": trainer.state.global_step, "training_flops": trainer.state.total_flos, "wall_s": round(wall, 1),
        "threads": torch.get_num_threads(),
        "curve": curve, "steps_to_target": first_step_at(curve), "expert_load": load.history,
        **validation_scores(model, tokenizer, validation),
    }
    if arm.final:
        row.update(test_scores(model, tokenizer, folder))
    return row


def test_scores(model, tokenizer, folder: Path) -> dict:
    """Exact match on the held-out test split, batched, and the seconds it took: once per bundled recipe."""
    rows = read_prompt_targets(folder / "test.jsonl")
    started = time.perf_counter()
    scored = exact_match(model, tokenizer, rows, batch_size=256)
    return {"test": scored, "test_scoring_s": round(time.perf_counter() - started, 1)}


def adopt(results: dict, runs: Path, point: str, keep_previous_as: str | None) -> None:
    """A sweep point chosen on validation became its arm's bundled config: record it under the arm's name and score
    its test split once. The arm's previous row (and model) is kept under `keep_previous_as`."""
    name, *changes = point.split()
    if point not in results or name not in ARMS:
        raise SystemExit(f"{point!r} is not a sweep point in the results: name one as the table prints it.")
    arm = ARMS[name]
    if run_config.load(arm.config, [*arm.overrides, *changes]) != run_config.load(arm.config, arm.overrides):
        raise SystemExit(f"configs/{arm.config}.yaml does not hold every change of {point!r} yet: edit the config "
                         "first, so that the adopted row is the bundled recipe as it stands.")
    if name in results:
        if not keep_previous_as or keep_previous_as in results:
            raise SystemExit(f"{name!r} holds a row already: give a new name to keep it under (--adopt POINT NAME).")
        results[keep_previous_as] = results.pop(name)
        if run_folder(runs, name).exists():
            run_folder(runs, name).rename(run_folder(runs, keep_previous_as))
    folder = run_folder(runs, name)
    run_folder(runs, point).rename(folder)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    row = results.pop(point)
    results[name] = {**row, "adopted_from": point, **test_scores(model, tokenizer, Path(row["data"]))}


def last_operand_split(scored: dict) -> str:
    """Exact match on the prompts whose last operand is as long as any (e.g. d+ddd=, ddd+ddd=) and on those whose last
    operand is shorter (ddd+dd=): where the two operands' digits sit relative to each other, and to the "="."""
    layouts = scored.get("by_layout")
    if not layouts:
        return "–"
    last_length = {shape: len(shape.rstrip("=")) - len(shape.rstrip("=").rstrip("d")) for shape in layouts}
    longest = max(last_length.values())
    groups = [[row for shape, row in layouts.items() if (last_length[shape] == longest) == full] for full in (1, 0)]
    scores = []
    for rows in groups:
        n = sum(row["n"] for row in rows)
        scores.append(f"{sum(row['exact_match'] * row['n'] for row in rows) / n:.1%} (n={n})" if n else "–")
    return " / ".join(scores)


def table(results: dict) -> str:
    """A row per arm; the breakdowns score the test split where it was scored, else validation (sweep points). Wall
    times marked * come from runs made two at a time on the two cores, one thread each."""
    lines = ["| arm | params | steps | steps to 99% (validation) | validation | test | by answer digits, 1 / 2 / 3 / 4 "
             "| last operand full length / shorter | short answers: own positions / shifted (validation) "
             "| wall | test scoring |",
             "|---|---:|---:|---:|---:|---:|---|---|---|---:|---:|"]
    for name, row in results.items():
        test, scoring, short = row.get("test"), row.get("test_scoring_s"), row.get("short_answers")
        scored = test or row["validation"]
        by_digits = " / ".join(f"{scored['by_digits'][str(digits)]:.1%}" if str(digits) in scored["by_digits"]
                               else "–" for digits in range(1, 5))
        test_score = f"{test['exact_match']:.2%}" if test else "–"
        short_scores = (f"{short['own positions']:.1%} / {short['shifted']:.1%} (n={short['n']})"
                        if short and short["n"] else "–")
        lines.append(
            f"| {name} | {row['parameters']:,} | {row['steps']:,} | {row['steps_to_target'] or 'not reached'} "
            f"| {row['validation']['exact_match']:.2%} | {test_score} | {by_digits} | {last_operand_split(scored)} "
            f"| {short_scores} | {row['wall_s'] / 60:.1f} min{' *' if row.get('threads') == 1 else ''} "
            f"| {'–' if scoring is None else f'{scoring:.1f} s'} |")
    return "\n".join(lines)


def answer_order_table(results: dict) -> str:
    """Per architecture, its bundled recipe with the answer in the usual order and reversed: steps to 99% on validation
    and test exact match."""
    lines = ["| architecture | steps to 99%: usual order | reversed | test: usual order | reversed |",
             "|---|---:|---:|---:|---:|"]
    for architecture in ("gpt2", "llama2", "mixtral"):
        rows = [results.get(name) for name in (architecture, f"{architecture}-reversed")]
        steps = [f"{row['steps_to_target']:,}" if row and row["steps_to_target"] else
                 f"not in {row['steps']:,}" if row else "–" for row in rows]
        tests = [f"{row['test']['exact_match']:.2%}" if row and "test" in row else "–" for row in rows]
        lines.append(f"| {architecture} | {' | '.join(steps)} | {' | '.join(tests)} |")
    return "\n".join(lines)


def short_label(name: str) -> str:
    """An arm's name for a legend: overrides without their section, the data folder left out."""
    return re.sub(r"\b(training|data\.arithmetic|data)\.", "", re.sub(r" data\.arithmetic\.out_dir=\S+", "", name))


def plot(results: dict, path: Path) -> Path:
    """The bundled recipes' validation exact match while training: addition against steps and against training FLOPs,
    a colour per architecture (reversed answers dashed), and the other operators against steps. Sweep points are in
    the table only."""
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    architectures = ("gpt2", "llama2", "mixtral")
    for name, row in results.items():
        if name not in ARMS:
            continue
        architecture = name.removesuffix("-reversed")
        steps = [point["step"] for point in row["curve"]]
        flops = [point["flos"] for point in row["curve"]]
        scores = [point["exact_match"] for point in row["curve"]]
        label = f"{name} ({row['parameters'] / 1e3:.0f}K)"
        if architecture in architectures:
            style = {"ls": "--" if name.endswith("-reversed") else "-",
                     "color": f"C{architectures.index(architecture)}"}
            axes[0].plot(steps, scores, label=label, **style)
            axes[1].plot(flops, scores, **style)
        else:
            axes[2].plot(steps, scores, label=label)
    titles = ("3-digit addition", "3-digit addition", "other operators, Llama-2 recipe")
    for axis, label, title in zip(axes, ("training steps", "training FLOPs", "training steps"), titles):
        axis.axhline(TARGET, color="grey", lw=0.8, ls=":")
        axis.set(xlabel=label, ylabel="greedy exact match (500 validation prompts)", ylim=(0, 1.02), title=title)
        axis.grid(alpha=0.3)
    axes[1].set_xscale("log")
    for axis in (axes[0], axes[2]):
        if axis.lines[1:]:  # more than the target line
            axis.legend(fontsize=8, loc="lower right")
    figure.suptitle("Arithmetic: exact match while training (dotted: 99%; dashed: answers written reversed)")
    return save_figure(figure, path)


def plot_expert_load(results: dict, path: Path) -> Path | None:
    """The MoE arms' router balance while training: per layer, the least and the most used expert's share of the
    top-k picks against steps, a line pair per arm (a collapsed router drives the least used one to 0)."""
    arms = {name: row["expert_load"] for name, row in results.items() if row.get("expert_load")}
    if not arms:
        return None
    layers = max(len(history[0]["load"]) for history in arms.values())  # the deepest arm's: 2-layer arms fill two
    figure, axes = plt.subplots(2, layers, figsize=(4.5 * layers, 4.5 + 0.1 * len(arms)), squeeze=False,
                                height_ratios=(4.5, 0.1 * len(arms)))
    legend = figure.add_subplot(axes[1][0].get_gridspec()[1, :])
    for axis in [*axes[1], legend]:
        axis.axis("off")
    for index, (name, history) in enumerate(arms.items()):
        steps = [point["step"] for point in history]
        for layer in range(len(history[0]["load"])):
            shares = [point["load"][layer] for point in history]
            style = {"color": f"C{index % 10}", "ls": "-" if index < 10 else "-."}
            axes[0][layer].plot(steps, [min(share) for share in shares], label=short_label(name), **style)
            axes[0][layer].plot(steps, [max(share) for share in shares], ":", color=style["color"])
    experts = len(next(iter(arms.values()))[0]["load"][0])
    for layer, axis in enumerate(axes[0]):
        axis.axhline(1 / experts, color="grey", lw=0.8, ls="--")
        axis.set(title=f"layer {layer}", xlabel="training steps",
                 ylabel="share of top-k picks", ylim=(0, 1))
        axis.grid(alpha=0.3)
    legend.legend(*axes[0][0].get_legend_handles_labels(), fontsize=7, loc="upper center", ncol=2, frameon=False)
    figure.suptitle("Mixtral arms: share of the top-k picks of the least (solid) and the most (dotted) used expert; "
                    "an even router gives every expert 1/experts (dashed)")
    return save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(ARMS), help="arms to run, in this order")
    parser.add_argument("--rerun", action="store_true", help="train again arms the results file already holds")
    parser.add_argument("--eval-steps", type=int, default=500, help="steps between validation exact matches")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a value of the arms' run configs: a sweep point, kept under the arm's name and "
                             "its overrides, never scored on the test split")
    parser.add_argument("--plot-only", action="store_true", help="redraw the table and figure from the results")
    parser.add_argument("--rescore", action="store_true",
                        help="score the saved models on validation again, then redraw (no training)")
    parser.add_argument("--adopt", nargs="+", metavar="NAME",
                        help="SWEEP_POINT [KEEP_PREVIOUS_AS]: the sweep point (as the table names it) became its "
                             "arm's bundled config: record it as the arm and score its test split once")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "arithmetic.json")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "arithmetic")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "arithmetic.png")
    args = parser.parse_args()
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    if args.rescore:
        rescore(results, args.runs)
        save(results, args.results)
    elif args.adopt:
        adopt(results, args.runs, args.adopt[0], args.adopt[1] if len(args.adopt) > 1 else None)
        save(results, args.results)
    elif not args.plot_only:
        for name in args.only or ARMS:
            # An arm with overrides is a sweep point, kept under its own name: it never reads the test split.
            arm = ARMS[name] if not args.set else replace(ARMS[name], name=f"{name} {' '.join(args.set)}", final=False)
            if arm.name in results and not args.rerun:
                continue
            print(f"=== {arm.name} ===", flush=True)
            row = run_one(arm, args.runs, args.eval_steps, args.set)
            # Read the file again: another study process may have recorded its arms while this one trained.
            results = {**(json.loads(args.results.read_text()) if args.results.exists() else {}), arm.name: row}
            save(results, args.results)
            print(table({arm.name: results[arm.name]}), flush=True)
    print(table(results))
    print(answer_order_table(results))
    print(f"wrote {plot(results, args.figure)}")
    loads = plot_expert_load(results, args.figure.with_name(f"{args.figure.stem}-expert-load.png"))
    if loads:
        print(f"wrote {loads}")


if __name__ == "__main__":
    main()
