"""Does progressive growth beat training from scratch? Tiny Shakespeare, characters, CPU scale.

1. Train a base mtlm_llama of L layers.
2. Grow it to 2L layers by each method (stack, interleave, random), with and without --function-preserving, and train
   each grown model on.
3. Train a 2L-layer model from scratch.

Validation loss is compared against total training FLOPs (a grown run's count includes its base's), and each grown
run reports the FLOPs it needs to reach the scratch model's final validation loss, as a fraction saved. G_stack
(Du et al., 2024) reports reaching a 7B model's loss with 54.6% fewer tokens.

    python benchmarks/bench_growth.py                      # L=2 -> 4 at d=128: about 35 min on 2 CPU cores
    python benchmarks/bench_growth.py --base-layers 3 --base-steps 300 --grown-steps 450 --scratch-steps 600
"""

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mtlm.growth import METHODS, grow_folder  # noqa: E402
from mtlm.training import run_config  # noqa: E402
from mtlm.training.trainer import train  # noqa: E402


def run_dict(args, output_dir: Path, max_steps: int, model: dict) -> dict:
    return run_config.validate({
        "model": model,
        "tokenizer": {"kind": "char"} if "init_from" not in model else {},
        "data": {"source": "tinyshakespeare", "block_size": args.block_size},
        "training": {
            "output_dir": str(output_dir), "max_steps": max_steps, "per_device_train_batch_size": args.batch_size,
            "per_device_eval_batch_size": 64, "learning_rate": args.learning_rate, "warmup_steps": args.warmup_steps,
            "weight_decay": 0.1, "eval_strategy": "steps", "eval_steps": args.eval_steps, "eval_on_start": True,
            "logging_steps": args.eval_steps, "save_strategy": "no", "seed": args.seed, "disable_tqdm": True,
        },
    })


def curve(trainer, flops_offset: float = 0.0) -> list[tuple[float, float]]:
    """(total training FLOPs, validation loss) at every evaluation."""
    return [(flops_offset + entry["flos"], entry["eval_loss"]) for entry in trainer.state.log_history
            if "eval_loss" in entry]


def flops_to_reach(points: list[tuple[float, float]], target: float) -> float | None:
    """The FLOPs at which the validation loss first reaches `target`, linearly interpolated between evaluations."""
    for (flops_before, loss_before), (flops, loss) in zip(points, points[1:]):
        if loss <= target:
            if loss_before <= target:
                return flops_before
            return flops_before + (flops - flops_before) * (loss_before - target) / (loss_before - loss)
    return None


def timed_train(name: str, run: dict):
    start = time.perf_counter()
    trainer = train(run, overwrite=True)
    print(f"[{name}] {run['training']['max_steps']} steps in {time.perf_counter() - start:.0f} s, "
          f"final validation loss {trainer.state.log_history[-1].get('eval_loss', float('nan')):.4f}", flush=True)
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-layers", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--base-steps", type=int, default=600)
    parser.add_argument("--grown-steps", type=int, default=900)
    parser.add_argument("--scratch-steps", type=int, default=1200)
    parser.add_argument("--eval-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--work-dir", default="runs/bench-growth")
    parser.add_argument("--plot", default="docs/growth.png")
    parser.add_argument("--results", default="benchmarks/results/growth.json")
    parser.add_argument("--report", action="store_true", help="table and plot from --results, without training")
    args = parser.parse_args()
    if args.report:
        results = json.loads(Path(args.results).read_text())
        report(results["curves"], results["settings"], args.plot)
        return

    work = Path(args.work_dir)
    grown_layers = 2 * args.base_layers
    shape = {"model_type": "mtlm_llama", "hidden_size": args.hidden_size, "intermediate_size": 3 * args.hidden_size,
             "num_attention_heads": args.hidden_size // 32, "max_position_embeddings": args.block_size}

    base = timed_train(f"base L={args.base_layers}", run_dict(args, work / "base", args.base_steps,
                                                             {**shape, "num_hidden_layers": args.base_layers}))
    base_flops = base.state.total_flos
    curves = {"base": curve(base)}
    scratch = timed_train(f"scratch L={grown_layers}", run_dict(args, work / "scratch", args.scratch_steps,
                                                                {**shape, "num_hidden_layers": grown_layers}))
    curves["scratch"] = curve(scratch)
    for method in args.methods:
        for function_preserving in (False, True):
            name = f"{method}{' +fp' if function_preserving else ''}"
            folder = work / f"grown-{method}{'-fp' if function_preserving else ''}"
            grow_folder(work / "base", folder / "init", num_layers=grown_layers, method=method,
                        function_preserving=function_preserving, overwrite=True)
            trainer = timed_train(name, run_dict(args, folder / "run", args.grown_steps,
                                                 {"init_from": str(folder / "init")}))
            curves[name] = curve(trainer, flops_offset=base_flops)

    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"settings": vars(args), "curves": curves}, indent=2))
    report(curves, vars(args), args.plot)
    print(f"\nplot: {args.plot}; curves: {args.results}")


def report(curves: dict, settings: dict, plot_path: str) -> None:
    """Print the comparison table and draw the plot."""
    base_flops, base_loss = curves["base"][-1]
    scratch_flops, scratch_loss = curves["scratch"][-1]
    print(f"\nbase: {settings['base_layers']} layers, {settings['base_steps']} steps, {base_flops:.3g} FLOPs, final "
          f"validation loss {base_loss:.4f}")
    print(f"scratch: {2 * settings['base_layers']} layers, {settings['scratch_steps']} steps, {scratch_flops:.3g} "
          f"FLOPs, final validation loss {scratch_loss:.4f}\n")
    print("| grown run | loss right after growth | final loss | total FLOPs / scratch's | final loss - scratch's | "
          "FLOPs to reach scratch's final loss | FLOPs saved |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, points in curves.items():
        if name in ("base", "scratch"):
            continue
        total_flops, final_loss = points[-1]
        reach = flops_to_reach(points, scratch_loss)
        print(f"| {name} | {points[0][1]:.4f} | {final_loss:.4f} | {total_flops / scratch_flops:.3f} | "
              f"{final_loss - scratch_loss:+.4f} | {'not reached' if reach is None else f'{reach:.3g}'} | "
              f"{'-' if reach is None else f'{1 - reach / scratch_flops:.1%}'} |")
    plot(curves, settings["base_layers"], plot_path)


def plot(curves: dict, base_layers: int, path: str) -> None:
    """Validation loss against total training FLOPs, one line per run."""
    base_flops = curves["base"][-1][0]
    scratch_loss = curves["scratch"][-1][1]
    losses = [loss for points in curves.values() for _, loss in points]
    figure, axis = plt.subplots(figsize=(8, 5))
    for name, points in curves.items():
        style = {"color": "black", "linewidth": 2} if name == "scratch" else \
            {"color": "grey", "linestyle": ":"} if name == "base" else {"linestyle": "--" if "+fp" in name else "-"}
        axis.plot([flops for flops, _ in points], [loss for _, loss in points], label=name, **style)
    axis.axhline(scratch_loss, color="black", linewidth=0.5)
    axis.axvline(base_flops, color="grey", linewidth=0.5)
    axis.set_xlabel("total training FLOPs (grown runs include their base)")
    axis.set_ylabel("validation loss (nats/char)")
    grown_start = [points[1][1] for name, points in curves.items() if name not in ("base", "scratch")]
    axis.set_ylim(bottom=math.floor(min(losses) * 20) / 20, top=max(grown_start + [scratch_loss]) + 0.1)
    axis.set_title(f"Growth {base_layers} -> {2 * base_layers} layers vs {2 * base_layers} layers from scratch")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
