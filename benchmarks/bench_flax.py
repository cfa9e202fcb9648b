"""Training throughput of the Flax trainer against the PyTorch Trainer on the same run config (CPU by default).

Both train the same model config on the same data with the same recipe for `--steps` optimizer steps, without
evaluation or checkpoints. Throughput is counted in steady state, from step `--skip` on, so that jit compilation
(Flax) and the first steps' warm-up (both) are left out.

    python benchmarks/bench_flax.py                                   # shakespeare-char, 200 steps
    python benchmarks/bench_flax.py tlm-transformer --steps 100
    python benchmarks/bench_flax.py --set optimizer.name=adamw --set training.torch_compile=false
"""

import argparse
import tempfile
import time

from transformers import TrainerCallback

from mtlm.training import run_config
from mtlm.training.flax_trainer import train_flax
from mtlm.training.trainer import train


class StepClock(TrainerCallback):
    def __init__(self):
        self.times = {}

    def on_step_end(self, args, state, control, **kwargs):
        self.times[state.global_step] = time.perf_counter()


def settings(path: str | None, overrides: list[str], steps: int, skip: int, output_dir: str) -> dict:
    return run_config.load(path, [*overrides, f"training.max_steps={steps}", "training.eval_strategy=no",
                                  "training.save_strategy=no", f"training.output_dir={output_dir}",
                                  f"training.logging_steps={skip}", "training.disable_tqdm=true"])


def torch_tokens_per_second(run: dict, skip: int) -> tuple[float, float]:
    clock = StepClock()
    trainer = train(run, overwrite=True, callbacks=(clock,))
    steps = run["training"]["max_steps"]
    tokens = trainer.args.per_device_train_batch_size * run["data"]["block_size"] * (steps - skip)
    loss = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry][-1]
    return tokens / (clock.times[steps] - clock.times[skip]), loss


def flax_tokens_per_second(run: dict, skip: int) -> tuple[float, float]:
    state = train_flax(run, overwrite=True)
    windows = [entry for entry in state["log_history"] if "tokens_per_second" in entry and entry["step"] > skip]
    steps = [entry["step"] for entry in windows]
    spans = [later - earlier for earlier, later in zip([skip, *steps], steps)]
    seconds = sum(span * run["training"]["per_device_train_batch_size"] * run["data"]["block_size"]
                  / entry["tokens_per_second"] for span, entry in zip(spans, windows))
    tokens = sum(spans) * run["training"]["per_device_train_batch_size"] * run["data"]["block_size"]
    return tokens / seconds, windows[-1]["loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="run config: a YAML file or a bundled name (default: shakespeare-char)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--skip", type=int, default=20, help="steps left out of the count (warm-up, compilation)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a run-config value for both backends, as mtlm train --set does")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        torch_rate, torch_loss = torch_tokens_per_second(
            settings(args.config, args.set, args.steps, args.skip, f"{scratch}/torch"), args.skip)
        flax_rate, flax_loss = flax_tokens_per_second(
            settings(args.config, args.set, args.steps, args.skip, f"{scratch}/flax"), args.skip)
    print(f"\n| backend | tokens/s (steps {args.skip + 1}-{args.steps}) | mean loss of the last {args.skip} steps |")
    print("|---|---:|---:|")
    print(f"| PyTorch Trainer | {torch_rate:,.0f} | {torch_loss:.4f} |")
    print(f"| Flax trainer | {flax_rate:,.0f} | {flax_loss:.4f} |")
    print(f"\nFlax / PyTorch: {flax_rate / torch_rate:.2f}x")


if __name__ == "__main__":
    main()
