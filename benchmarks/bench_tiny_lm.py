"""The Tiny Language Models study (seed 003): Linear, MLP, self-attention only and Transformer on Tiny Shakespeare
characters, each at every size of the seed's ablations, under the seed's 80/10/10 split and recipe (early stopping,
the best-validation checkpoint as the final model, the test split scored at the end), plus the word-level
Transformer on PTB and WikiText-2.

Every run is `mtlm train` of a bundled run config (tlm-linear, tlm-mlp, tlm-attention, tlm-transformer, tlm-word)
with only the preset (and, for the word runs, the files) changed, so each row is reproducible on its own:

    mtlm train tlm-mlp --set model.preset=tlm-mlp-512

Test loss is reported two ways:
- blocks: the Trainer's loss over the test split packed into training-length blocks, so a position early in a block
  sees less context. The seed scores its Transformer this way.
- sliding: `mtlm ppl`'s strided windows, with every test character given (nearly) the model's whole context. The seed
  scores Linear, MLP and attention this way (each test character after a full window).
The "ours" column uses the seed's own protocol for that architecture.

Results go to benchmarks/results/tiny-lm.json (a finished run is kept, so the study resumes where it stopped);
the table is printed and the figures are redrawn from that file:

    python benchmarks/bench_tiny_lm.py                 # all 14 + 2 runs: about 75 min on 2 CPU cores
    python benchmarks/bench_tiny_lm.py --only tlm-mlp-256 --rerun
    python benchmarks/bench_tiny_lm.py --rescore       # the sliding test loss again, from the saved models
    python benchmarks/bench_tiny_lm.py --plot-only
"""

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import mtlm  # noqa: E402, F401  (registers the families with the Auto classes)
from mtlm.configuration.presets import preset_config  # noqa: E402
from mtlm.evaluation.perplexity import perplexity  # noqa: E402
from mtlm.families import family_of  # noqa: E402
from mtlm.files import atomic_file, staged  # noqa: E402
from mtlm.modeling.mtlm_blocks import MtlmFixedContextForCausalLM  # noqa: E402
from mtlm.training import run_config  # noqa: E402
from mtlm.training.datasets import load_texts  # noqa: E402
from mtlm.training.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


class Architecture:
    """One of the seed's four architectures: its run config, the ablated field, and the seed's recipe (epochs, and
    the positions one of its training windows runs the model over, for the seed's FLOPs budget)."""

    def __init__(self, name, config, ablation, sizes, seed_epochs, seed_window, sliding_stride):
        self.name, self.config, self.ablation, self.sizes = name, config, ablation, sizes
        self.seed_epochs, self.seed_window, self.sliding_stride = seed_epochs, seed_window, sliding_stride


# sizes: preset -> (ablated value, the seed's test nats/char from its figure).
ARCHITECTURES = [
    Architecture("Linear", "tlm-linear", "context", {
        "tlm-linear-ctx16": (16, 2.327), "tlm-linear-ctx32": (32, 2.341), "tlm-linear-ctx64": (64, 2.363),
        "tlm-linear-ctx128": (128, 2.437)}, seed_epochs=15, seed_window=1, sliding_stride=None),
    Architecture("MLP", "tlm-mlp", "hidden width", {
        "tlm-mlp-128": (128, 1.960), "tlm-mlp-256": (256, 1.944), "tlm-mlp-512": (512, 2.034)},
        seed_epochs=25, seed_window=1, sliding_stride=None),
    Architecture("Self-attention", "tlm-attention", "heads", {
        "tlm-attention-h1": (1, 2.032), "tlm-attention-h2": (2, 1.931), "tlm-attention-h4": (4, 1.867),
        "tlm-attention-h8": (8, 1.821)}, seed_epochs=30, seed_window=64, sliding_stride=8),
    Architecture("Transformer", "tlm-transformer", "layers", {
        "tlm-transformer-l2": (2, 1.882), "tlm-transformer": (4, 1.795), "tlm-transformer-l6": (6, 1.767)},
        seed_epochs=40, seed_window=128, sliding_stride=32),
]
# Word level: trained on the validation split (the training splits are not available offline), scored on test.
WORD_CORPORA = {"ptb": 4.814, "wikitext-2": 4.180}  # the seed's test nats/word, trained on the real training split
WORD_STRIDE = 64  # a word-level window of 127 advances by 64: every word scored after at least 63 of context
COLORS = {"Linear": "tab:gray", "MLP": "tab:blue", "Self-attention": "tab:orange", "Transformer": "tab:green"}


def architecture_of(preset: str) -> Architecture:
    return next(a for a in ARCHITECTURES if preset in a.sizes)


def trajectory(log_history: list[dict]) -> list[dict]:
    """Validation loss against cumulative training FLOPs at each evaluation during training (the evaluation after
    training, of the best checkpoint, is left out)."""
    end = next(i for i, entry in enumerate(log_history) if "train_loss" in entry)
    return [{"epoch": e["epoch"], "flops": e["flos"], "eval_loss": e["eval_loss"]}
            for e in log_history[:end] if "eval_loss" in e]


def sliding_test_loss(model, tokenizer, test_text: str, stride: int | None) -> dict:
    """Test loss with every character given the model's context: a fixed-context model slides its own window, so
    long windows advancing by all but one context's worth; a position-limited model advances by `stride` through
    windows one shorter than its positions (in training blocks of max_position_embeddings the last position has no
    next token, so it never learns to predict)."""
    config = model.config
    if isinstance(model, MtlmFixedContextForCausalLM):  # mtlm_attention's config has a context_size too
        max_length = min(config.max_position_embeddings, 1024)
        stride = max_length - config.context_size + 1
    else:
        max_length = config.max_position_embeddings - 1
    result = perplexity(model, tokenizer, [test_text], max_length=max_length, stride=stride, batch_size=16,
                        show_progress=False)
    return {"loss": result["loss"], "min_context": max_length - stride + 1, "word_perplexity": result["word_perplexity"]}


def split_texts(run: dict) -> dict[str, str]:
    """The whole text of each split of the run's data."""
    return {split: "".join(rows["text"]) for split, rows in load_texts(run["data"]).items()}


def run_one(run: dict, stride: int | None) -> dict:
    started = time.perf_counter()
    trainer = train(run, overwrite=True)
    wall = time.perf_counter() - started
    history = trainer.state.log_history
    points = trajectory(history)
    best = min(points, key=lambda p: p["eval_loss"]) if points else None
    texts = split_texts(run)
    return {
        "parameters": trainer.model.num_parameters(),
        "train_characters": len(texts["train"]),
        "test_blocks": next(e["test_loss"] for e in history if "test_loss" in e),
        "test_sliding": sliding_test_loss(trainer.model, trainer.processing_class, texts["test"], stride),
        "training_flops": trainer.state.total_flos,
        "best_epoch": best and best["epoch"],
        "best_flops": best and best["flops"],
        "epochs": trainer.state.epoch,
        "steps": trainer.state.global_step,
        "wall_s": round(wall, 1),
        "trajectory": points,
        "recipe": {key: run["training"].get(key) for key in (
            "num_train_epochs", "per_device_train_batch_size", "learning_rate", "weight_decay")}
        | {"block_size": run["data"].get("block_size", 128)},
    }


def seed_budget(architecture: Architecture, preset: str, train_characters: int) -> float:
    """The seed's training FLOPs if it ran all its epochs: one window per training character, each window's forward
    over `seed_window` positions, times 3 (early stopping may have stopped it sooner)."""
    config = preset_config(preset)
    sequence = architecture.seed_window
    per_token = family_of(config).flops_per_token(config, sequence)
    return 3.0 * architecture.seed_epochs * train_characters * sequence * per_token


def character_runs(args, results: dict) -> None:
    for architecture in ARCHITECTURES:
        for preset in architecture.sizes:
            if args.only and preset not in args.only or preset in results["char"] and not args.rerun:
                continue
            run = run_config.load(architecture.config, [f"model.preset={preset}",
                                                        f"training.output_dir={args.runs / preset}"])
            print(f"=== {preset} ===", flush=True)
            row = run_one(run, architecture.sliding_stride)
            row["seed_budget_flops"] = seed_budget(architecture, preset, row["train_characters"])
            results["char"][preset] = row
            save(results, args.results)


def word_runs(args, results: dict) -> None:
    for corpus in WORD_CORPORA:
        if args.only and corpus not in args.only or corpus in results["word"] and not args.rerun:
            continue
        folder = SHARED_DATA / corpus
        if not folder.is_dir():
            print(f"skipping {corpus}: {folder} is not here")
            continue
        run = run_config.load("tlm-word", [f"data.files.train={folder / 'valid.txt'}",
                                           f"data.files.test={folder / 'test.txt'}",
                                           f"training.output_dir={args.runs / corpus}"])
        print(f"=== word level: {corpus} ===", flush=True)
        row = run_one(run, stride=WORD_STRIDE)
        results["word"][corpus] = row
        save(results, args.results)


def rescore(args, results: dict) -> None:
    """Score the test split again, sliding, with the final models the run folders hold."""
    for kind, rows in results.items():
        for name, row in rows.items():
            if args.only and name not in args.only:
                continue
            folder = args.runs / name
            run = run_config.load(folder / "run_config.yaml")
            model = AutoModelForCausalLM.from_pretrained(folder).eval()
            stride = architecture_of(name).sliding_stride if kind == "char" else WORD_STRIDE
            row["test_sliding"] = sliding_test_loss(model, AutoTokenizer.from_pretrained(folder),
                                                    split_texts(run)["test"], stride)
            print(f"{name}: sliding test loss {row['test_sliding']['loss']:.4f}")
            save(results, args.results)


def save(results: dict, path: Path) -> None:
    with atomic_file(path) as handle:
        handle.write(json.dumps(results, indent=1) + "\n")


def ours(preset: str, row: dict) -> float:
    """Test nats/char under the seed's protocol for this architecture."""
    return row["test_blocks"] if architecture_of(preset).name == "Transformer" else row["test_sliding"]["loss"]


def table(results: dict) -> str:
    lines = ["| architecture | preset | params | ours: test nats/char | seed | sliding / blocks | epochs (best) "
             "| training FLOPs | seed budget | ratio | wall |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for architecture in ARCHITECTURES:
        for preset, (_, seed_loss) in architecture.sizes.items():
            row = results["char"].get(preset)
            if row is None:
                continue
            mark = "**" if ours(preset, row) <= seed_loss else ""
            lines.append(
                f"| {architecture.name} | `{preset}` | {row['parameters']:,} | {mark}{ours(preset, row):.3f}{mark} "
                f"| {seed_loss:.3f} | {row['test_sliding']['loss']:.3f} / {row['test_blocks']:.3f} "
                f"| {row['epochs']:.0f} ({row['best_epoch']:.0f}) | {row['training_flops']:.2e} "
                f"| {row['seed_budget_flops']:.2e} | {row['training_flops'] / row['seed_budget_flops']:.2g} "
                f"| {row['wall_s'] / 60:.1f} min |")
    if results["word"]:
        lines += ["", "| word level (Transformer L4, vocabulary 10,000) | params | test nats/word, trained on the "
                  "validation split | the seed's, trained on the training split | epochs | wall |",
                  "|---|---:|---:|---:|---:|---:|"]
        for corpus, row in results["word"].items():
            lines.append(f"| {corpus} | {row['parameters']:,} | {math.log(row['test_sliding']['word_perplexity']):.3f} "
                         f"| {WORD_CORPORA[corpus]:.3f} | {row['epochs']:.0f} | {row['wall_s'] / 60:.1f} min |")
    return "\n".join(lines)


def plot(results: dict, docs: Path) -> list[Path]:
    rows = results["char"]
    written = []

    figure, axes = plt.subplots(figsize=(8, 5))
    for preset, row in rows.items():
        points = row["trajectory"]
        axes.plot([p["flops"] for p in points], [p["eval_loss"] for p in points], marker=".",
                  color=COLORS[architecture_of(preset).name], alpha=0.8, label=preset)
    axes.set(xscale="log", xlabel="cumulative training FLOPs", ylabel="validation nats/char",
             title="Tiny Shakespeare: validation loss against training compute")
    axes.legend(fontsize=7, ncol=2)
    axes.grid(alpha=0.3)
    written.append(save_figure(figure, docs / "tiny-lm-flops.png"))

    figure, axes = plt.subplots(figsize=(7, 4))
    names, best_ours, best_seed = [], [], []
    for architecture in ARCHITECTURES:
        done = [(ours(p, rows[p]), p) for p in architecture.sizes if p in rows]
        if done:
            names.append(architecture.name)
            best_ours.append(min(done)[0])
            best_seed.append(min(seed for _, seed in architecture.sizes.values()))
    positions = range(len(names))
    axes.bar([x - 0.2 for x in positions], best_seed, width=0.4, label="seed 003 (figure)", color="lightgray")
    bars = axes.bar([x + 0.2 for x in positions], best_ours, width=0.4, label="mtlm",
                    color=[COLORS[n] for n in names])
    axes.bar_label(bars, fmt="%.3f", fontsize=8)
    axes.set(xticks=list(positions), xticklabels=names, ylabel="test nats/char (lower is better)",
             title="Best of each architecture", ylim=(1.0, 2.6))
    axes.legend()
    written.append(save_figure(figure, docs / "tiny-lm-best.png"))

    for architecture in ARCHITECTURES:
        done = [(value, seed, ours(p, rows[p])) for p, (value, seed) in architecture.sizes.items() if p in rows]
        if not done:
            continue
        figure, axes = plt.subplots(figsize=(5, 3.5))
        values = [v for v, _, _ in done]
        axes.plot(values, [s for _, s, _ in done], marker="o", color="gray", label="seed 003 (figure)")
        axes.plot(values, [o for _, _, o in done], marker="o", color=COLORS[architecture.name], label="mtlm")
        axes.set(xscale="log", xticks=values, xticklabels=[str(v) for v in values], xlabel=architecture.ablation,
                 ylabel="test nats/char", title=f"{architecture.name}: {architecture.ablation}")
        axes.minorticks_off()
        axes.legend()
        axes.grid(alpha=0.3)
        written.append(save_figure(figure, docs / f"tiny-lm-{architecture.config.removeprefix('tlm-')}.png"))
    return written


def save_figure(figure, path: Path) -> Path:
    figure.tight_layout()
    with staged(path) as partial:
        figure.savefig(partial, dpi=120, format="png")
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", help="presets (or ptb, wikitext-2) to run")
    parser.add_argument("--rerun", action="store_true", help="train again runs the results file already holds")
    parser.add_argument("--plot-only", action="store_true", help="redraw the table and figures from the results")
    parser.add_argument("--rescore", action="store_true",
                        help="score the test split again (sliding) with the models in the run folders, then redraw")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "tiny-lm.json")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "tiny-lm")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    results = json.loads(args.results.read_text()) if args.results.exists() else {"char": {}, "word": {}}
    if args.rescore:
        rescore(args, results)
    elif not args.plot_only:
        character_runs(args, results)
        word_runs(args, results)
    print(table(results))
    for path in plot(results, args.docs):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
