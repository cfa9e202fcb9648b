"""Growth that pays (issue 19): does growing a model inside one run reach a deep model's loss with fewer FLOPs than
training that model from scratch? Tiny Shakespeare, characters, `mtlm_llama` (8 layers, d64 unless --hidden-size),
every FLOP of a run counted (a grown run's smaller early stages included), every run on warmup-stable-decay.

Phases, each saved to benchmarks/results/growth.json as it finishes (the study resumes; --rerun trains again):

    lr       the 8-layer model from scratch at the small budget, at each --learning-rates value; the best is
             every later run's rate
    scratch  per seed: one constant-rate 8-layer run to the largest budget, with cooldowns branched from its
             checkpoints (--resume with a shorter schedule) at 1/4, 1/2 and 3/4 of it: a loss-against-FLOPs curve
             per seed, the yardstick the growth arms are read against
    depth    4-layer scratch at the large budget per seed (does depth matter here? the 8-layer model must beat it
             by more than three times the spread between seeds), and 1- and 2-layer curves (seed 0) that calibrate
             the growth stages: a stage L -> 2L comes where the 2L-layer curve drops below the L-layer one at equal
             FLOPs, and no later than 20% / 30% / 50% of the run (1 -> 2 / 2 -> 4 / 4 -> 8)
    grow     each growth arm at both budgets and every seed (seed by seed):
               stack-gradual  1 -> 2 -> 4 -> 8, whole-stack copies (G_stack), at the calibrated steps
               stack-jump     2 -> 8 in one step (G_stack's factor 4), at the 2 -> 4 step
               midas          2 -> 4 -> 6 -> 8, the middle block repeated (MIDAS)
               gated          stack-gradual with the copies' residual branches gated in (MSG's mask)
               width          8 layers at half width -> full width (HyperCloning), at the 4 -> 8 step

FLOPs saved = 1 - FLOPs of the grown run / FLOPs scratch needs to reach the grown run's final loss, read off that
seed's scratch curve by interpolation only (a grown run that ends below the curve's lowest point is reported as
beyond it). G_stack's "speedup" (scratch FLOPs / grown FLOPs) is printed beside it.

At d128 (benchmarks/results/growth-d128.json: --hidden-size 128 --learning-rates 1e-3 2e-3 4e-3) depth did not
matter enough at these budgets (8 layers beat 4 by 0.8x the seed spread), so the study runs at d64.

    python benchmarks/bench_growth.py --phases lr scratch depth grow     # about 2 hours on 2 CPU cores
    python benchmarks/bench_growth.py --report                           # table and docs/growth.png again
    python benchmarks/bench_growth.py --report --results benchmarks/results/growth-d128.json \
        --figure docs/growth-d128.png
"""

import argparse
import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from bench_tiny_lm import save, save_figure  # noqa: E402  (the study scripts' JSON and figure writers)

from mtlm.training import run_config  # noqa: E402
from mtlm.training.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DECAY_FRACTION = 0.2  # of every run's steps, the cooldown at the end of warmup-stable-decay
BRANCHES = (0.25, 0.5, 0.75)  # of the largest budget: where scratch cooldowns branch off
SEPARATED = 0.02  # nats/char: the L- and 2L-layer scratch curves have separated


def run_dict(args, name: str, steps: int, layers: int, learning_rate: float, seed: int, *, hidden_size: int = 0,
             growth: list[dict] = (), save_steps: int = 0, evaluations: int = 6) -> dict:
    """A run of the study's model at `steps` optimizer steps on warmup-stable-decay."""
    hidden_size = hidden_size or args.hidden_size
    return run_config.validate({
        "model": {"model_type": "mtlm_llama", "hidden_size": hidden_size, "intermediate_size": 3 * hidden_size,
                  "num_hidden_layers": layers, "num_attention_heads": hidden_size // 32,
                  "max_position_embeddings": args.block_size},
        "tokenizer": {"kind": "char"},
        "data": {"source": "tinyshakespeare", "block_size": args.block_size},
        "training": {
            "output_dir": str(args.work_dir / name), "max_steps": steps, "per_device_train_batch_size": args.batch_size,
            "per_device_eval_batch_size": 64, "learning_rate": learning_rate, "warmup_steps": args.warmup_steps,
            "lr_scheduler_type": "warmup_stable_decay",
            "lr_scheduler_kwargs": {"num_decay_steps": round(DECAY_FRACTION * steps)},
            "weight_decay": 0.1, "eval_strategy": "steps", "eval_steps": max(1, steps // evaluations),
            "logging_steps": max(1, steps // evaluations), "save_strategy": "steps" if save_steps else "no",
            "save_steps": save_steps or 500, "seed": seed, "disable_tqdm": True,
        },
        "growth": {"stages": list(growth)},
    })


def summary(trainer) -> dict:
    """What a finished run contributes: its FLOPs, its final validation loss, and its curve."""
    history = trainer.state.log_history
    curve = [(entry["flos"], entry["eval_loss"]) for entry in history if "eval_loss" in entry]
    steps = [entry["step"] for entry in history if "eval_loss" in entry]
    return {"flops": trainer.state.total_flos, "final_loss": curve[-1][1], "curve": curve, "steps": steps}


def scratch_curve(results: dict, seed: int) -> list[tuple[float, float]]:
    """(FLOPs, final loss) of seed's scratch cooldowns, by FLOPs."""
    runs = results.get("scratch", {}).get(str(seed), {})
    return sorted((run["flops"], run["final_loss"]) for run in runs.values())


def flops_to_reach(curve: list[tuple[float, float]], loss: float) -> float | None:
    """The FLOPs at which a decreasing loss-against-FLOPs curve reaches `loss`, interpolated linearly in log FLOPs
    between its points; None outside the curve."""
    for (flops_before, loss_before), (flops_after, loss_after) in zip(curve, curve[1:]):
        if loss_after <= loss <= loss_before:
            share = (loss_before - loss) / (loss_before - loss_after) if loss_before > loss_after else 0.0
            return float(np.exp(np.log(flops_before) + share * (np.log(flops_after) - np.log(flops_before))))
    return None


def flops_curve_crossing(results: dict, layers: int) -> float | None:
    """The fraction of the large budget at which growing `layers` -> 2x`layers` starts to pay: the first point where
    the 2x-layer scratch curve (seed 0) lies below the `layers`-layer one at equal FLOPs by more than SEPARATED,
    as a step of the `layers`-layer run. None if it never does within the smaller run's FLOPs."""
    small, large = (results.get("depth", {}).get(f"{depth}L-s0") for depth in (layers, 2 * layers))
    if not small or not large:
        return None
    small_flops = [flops for flops, _ in small["curve"]]
    for flops, loss_large in large["curve"]:
        if not small_flops[0] <= flops <= small_flops[-1]:
            continue
        if loss_at(small["curve"], flops) - loss_large > SEPARATED:
            return float(np.interp(flops, small_flops, small["steps"])) / small["steps"][-1]
    return None


def loss_at(curve: list[tuple[float, float]], flops: float) -> float:
    """A loss-against-FLOPs curve's loss at `flops`, interpolated linearly in log FLOPs."""
    return float(np.interp(np.log(flops), np.log([point for point, _ in curve]), [loss for _, loss in curve]))


def growth_arms(results: dict, steps: int, latest=(0.2, 0.3, 0.5)) -> dict[str, tuple[int, list]]:
    """Each arm's starting depth and stages at a budget of `steps`: a stage L -> 2L where the curves cross at equal
    FLOPs (flops_curve_crossing), and at the latest at the `latest` fractions of the budget, so that the 8-layer
    model trains for at least half the run."""
    fractions = [min(flops_curve_crossing(results, layers) or cap, cap) for layers, cap in zip((1, 2, 4), latest)]
    at = list(np.maximum.accumulate([max(1, round(fraction * steps)) for fraction in fractions]))
    at = [int(step) + index for index, step in enumerate(at)]  # strictly increasing
    gate = max(1, round(0.02 * steps))
    return {
        "stack-gradual": (1, [{"at_step": at[0], "num_layers": 2}, {"at_step": at[1], "num_layers": 4},
                              {"at_step": at[2], "num_layers": 8}]),
        "stack-jump": (2, [{"at_step": at[1], "num_layers": 8}]),
        "midas": (2, [{"at_step": at[1], "num_layers": 4, "method": "midas"},
                      {"at_step": (at[1] + at[2]) // 2 + 1, "num_layers": 6, "method": "midas"},
                      {"at_step": at[2] + 2, "num_layers": 8, "method": "midas"}]),
        "gated": (1, [{"at_step": at[0], "num_layers": 2, "gate_steps": min(gate, at[1] - at[0])},
                      {"at_step": at[1], "num_layers": 4, "gate_steps": min(gate, at[2] - at[1])},
                      {"at_step": at[2], "num_layers": 8, "gate_steps": gate}]),
        "width": (8, [{"at_step": at[2], "width_factor": 2}]),
    }


def run(args, results: dict, phase: str, key: str, run_config_dict: dict) -> dict:
    """Train one run unless the results hold it; keep its summary."""
    if key in results.setdefault(phase, {}) and not args.rerun:
        return results[phase][key]
    print(f"=== {phase}: {key} ===", flush=True)
    results[phase][key] = summary(train(run_config_dict, overwrite=True))
    save(results, args.results)
    return results[phase][key]


def best_rate(results: dict, default: float) -> float:
    rates = results.get("lr", {})
    return float(min(rates, key=lambda rate: rates[rate]["final_loss"])) if rates else default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", nargs="+", default=["lr", "scratch", "depth", "grow"],
                        choices=["lr", "scratch", "depth", "grow"])
    parser.add_argument("--budgets", nargs=2, type=int, default=[600, 1200], metavar=("SMALL", "LARGE"),
                        help="optimizer steps of the 8-layer model at the two budgets")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--learning-rates", nargs="+", type=float, default=[2e-3, 4e-3, 8e-3])
    parser.add_argument("--arms", nargs="+", default=["stack-gradual", "stack-jump", "midas", "gated", "width"])
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--rerun", action="store_true", help="train again runs the results already hold")
    parser.add_argument("--report", action="store_true", help="table and figure from the results, training nothing")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "bench-growth")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "growth.json")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "growth.png")
    args = parser.parse_args()
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    if not args.report:
        results["settings"] = {key: value for key, value in vars(args).items() if key not in ("work_dir", "results",
                                                                                             "figure", "report")}
        train_phases(args, results)
    print(report(results))
    print(f"wrote {plot(results, args.figure)}")


def train_phases(args, results: dict) -> None:
    small, large = args.budgets
    if "lr" in args.phases:
        for rate in args.learning_rates:
            run(args, results, "lr", f"{rate:g}", run_dict(args, f"lr-{rate:g}", small, 8, rate, 0))
    rate = best_rate(results, args.learning_rates[0])
    if "scratch" in args.phases:
        branch_steps = [round(fraction * large) for fraction in BRANCHES]
        for seed in args.seeds:
            main_run = run_dict(args, f"scratch-s{seed}", large, 8, rate, seed, evaluations=24,
                                save_steps=round((1 - DECAY_FRACTION) * branch_steps[0]))
            scratch = results.setdefault("scratch", {}).setdefault(str(seed), {})
            if str(large) not in scratch or args.rerun:
                print(f"=== scratch: seed {seed}, {large} steps ===", flush=True)
                trainer = train(main_run, overwrite=True)
                scratch[str(large)] = summary(trainer)
                results.setdefault("depth", {})[f"8L-s{seed}"] = scratch[str(large)]
                save(results, args.results)
            for steps in branch_steps:
                if str(steps) in scratch and not args.rerun:
                    continue
                branch = run_dict(args, f"scratch-s{seed}-{steps}", steps, 8, rate, seed)
                folder = Path(branch["training"]["output_dir"])
                shutil.rmtree(folder, ignore_errors=True)
                start = f"checkpoint-{round((1 - DECAY_FRACTION) * steps)}"
                shutil.copytree(Path(main_run["training"]["output_dir"]) / start, folder / start)
                print(f"=== scratch: seed {seed}, cooldown to {steps} steps from {start} ===", flush=True)
                scratch[str(steps)] = summary(train(branch, resume=True))
                save(results, args.results)
    if "depth" in args.phases:
        for seed in args.seeds:
            run(args, results, "depth", f"4L-s{seed}", run_dict(args, f"depth-4L-s{seed}", large, 4, rate, seed,
                                                               evaluations=24))
        for layers in (1, 2):
            run(args, results, "depth", f"{layers}L-s0", run_dict(args, f"depth-{layers}L-s0", large, layers, rate,
                                                                 0, evaluations=24))
    if "grow" in args.phases:  # seed by seed, so that every arm has a result early
        for seed in args.seeds:
            for steps in args.budgets:
                for name, (layers, stages) in growth_arms(results, steps).items():
                    if name not in args.arms:
                        continue
                    hidden = args.hidden_size // 2 if name == "width" else args.hidden_size
                    run(args, results, "grow", f"{name}-{steps}-s{seed}",
                        run_dict(args, f"grow-{name}-{steps}-s{seed}", steps, layers, rate, seed, hidden_size=hidden,
                                 growth=stages))


def flops_to_reach_on_power_law(curve: list[tuple[float, float]], loss: float) -> float | None:
    """The FLOPs at which L(F) = a + b (F / F0)^-c, fitted to the curve's points (least squares, c on a grid), reaches
    `loss`; None outside the curve. A loss curve is convex in log FLOPs, so the straight line between two of its points
    lies above it and flops_to_reach overstates what scratch needs; this smooth curve through the points does not."""
    flops, losses = np.array([point for point, _ in curve]), np.array([value for _, value in curve])
    fits = []
    for exponent in np.linspace(0.05, 3.0, 296):
        design = np.stack([np.ones_like(flops), (flops / flops[0]) ** -exponent], axis=1)
        (offset, scale), *_ = np.linalg.lstsq(design, losses, rcond=None)
        fits.append((float(((design @ [offset, scale] - losses) ** 2).sum()), exponent, offset, scale))
    _, exponent, offset, scale = min(fits)
    if loss <= offset or scale <= 0:
        return None
    reach = flops[0] * ((loss - offset) / scale) ** (-1 / exponent)
    return float(reach) if flops[0] <= reach <= flops[-1] else None


def savings(results: dict) -> dict[str, dict]:
    """Per growth arm and budget: each seed's FLOPs saved and speedup against that seed's scratch curve (read off
    straight lines between its points, and off a power law through them)."""
    table = {}
    for key, row in results.get("grow", {}).items():
        name, seed = key.rsplit("-s", 1)
        curve = scratch_curve(results, int(seed))
        reach = flops_to_reach(curve, row["final_loss"])
        entry = table.setdefault(name, {"losses": [], "saved": [], "saved_power_law": [], "speedup": [], "beyond": 0,
                                        "flops": row["flops"]})
        entry["losses"].append(row["final_loss"])
        if reach is None:
            entry["beyond"] += 1
        else:
            entry["saved"].append(1 - row["flops"] / reach)
            entry["speedup"].append(reach / row["flops"])
        fitted = flops_to_reach_on_power_law(curve, row["final_loss"])
        if fitted is not None:
            entry["saved_power_law"].append(1 - row["flops"] / fitted)
    return table


def spread(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{np.mean(values):.1%} ({min(values):.1%} – {max(values):.1%})" if len(values) > 1 else f"{values[0]:.1%}"


def report(results: dict) -> str:
    lines = []
    rates = results.get("lr", {})
    if rates:
        lines.append("learning rate (8 layers from scratch, small budget): " + ", ".join(
            f"{rate}: {row['final_loss']:.4f}" for rate, row in rates.items()))
    depth = results.get("depth", {})
    finals = {layers: [row["final_loss"] for key, row in depth.items() if key.startswith(f"{layers}L-")]
              for layers in (4, 8)}
    if len(finals[4]) > 1 and len(finals[8]) > 1:
        gap = np.mean(finals[4]) - np.mean(finals[8])
        noise = max(max(values) - min(values) for values in finals.values())
        deviation = max(np.std(values, ddof=1) for values in finals.values())
        verdict = "depth matters" if gap > 3 * noise else "NOT more than 3x the range: depth matters less than asked"
        lines.append(f"depth: 4 layers {np.mean(finals[4]):.4f}, 8 layers {np.mean(finals[8]):.4f} (mean of "
                     f"{len(finals[8])} seeds): the gap {gap:.4f} is {gap / noise:.1f}x the larger range between seeds "
                     f"({noise:.4f}) and {gap / deviation:.1f}x the larger standard deviation ({deviation:.4f}); "
                     f"worst 8-layer {max(finals[8]):.4f} against best 4-layer {min(finals[4]):.4f}; {verdict}")
    shallow = [row for key, row in depth.items() if key.startswith("4L-")]
    if shallow:
        shallow_saved = [1 - row["flops"] / reach for key, row in depth.items() if key.startswith("4L-")
                         for reach in [flops_to_reach(scratch_curve(results, int(key.rsplit("-s", 1)[1])),
                                                      row["final_loss"])] if reach]
        lines.append(f"4 layers from scratch at the large budget: {np.mean([r['final_loss'] for r in shallow]):.4f} "
                     f"with {shallow[0]['flops']:.3g} FLOPs; on the 8-layer scratch curve: {spread(shallow_saved)} "
                     "fewer FLOPs")
    lines += ["", "| arm (budget in 8-layer steps) | final loss | training FLOPs | FLOPs saved, mean (range over seeds) "
              "| on a power law through scratch | speedup (G_stack's measure) | seeds beyond the scratch curve |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, entry in sorted(savings(results).items()):
        speedup = f"{np.mean(entry['speedup']):.2f}x" if entry["speedup"] else "–"
        lines.append(f"| {name} | {np.mean(entry['losses']):.4f} | {entry['flops']:.3g} | {spread(entry['saved'])} "
                     f"| {spread(entry['saved_power_law'])} | {speedup} | {entry['beyond']} of {len(entry['losses'])} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> Path:
    """Final validation loss against training FLOPs: each seed's scratch curve, and every grown run as a point."""
    figure, axis = plt.subplots(figsize=(8, 5))
    for seed in results.get("scratch", {}):
        curve = scratch_curve(results, int(seed))
        axis.plot(*zip(*curve), color="black", alpha=0.6, marker="o", label="scratch (WSD cooldowns)" if seed == "0"
                  else None)
    shallow = [(row["flops"], row["final_loss"]) for key, row in results.get("depth", {}).items()
               if key.startswith("4L-")]
    if shallow:
        axis.scatter(*zip(*shallow), marker="x", color="grey", label="4 layers from scratch (large budget)", zorder=3)
    markers = dict(zip(["stack-gradual", "stack-jump", "midas", "gated", "width"], "sD^vP"))
    for name in markers:
        points = [(row["flops"], row["final_loss"]) for key, row in results.get("grow", {}).items()
                  if key.rsplit("-", 2)[0] == name]
        if points:
            axis.scatter(*zip(*points), marker=markers[name], label=name, zorder=3)
    axis.set(xscale="log", xlabel="training FLOPs (every stage counted)", ylabel="final validation loss (nats/char)",
             title="Growth inside one run against 8 layers from scratch")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, path)


if __name__ == "__main__":
    main()
