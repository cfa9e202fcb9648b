"""The bits-per-byte study of issue 17: STLM's byte model (`mtlm_byte`) against the models a user would pick
instead, at equal training FLOPs, on Tiny Shakespeare (90/10 contiguous split).

Arms (every core is d256, 4 layers, 4 heads, SwiGLU 768, but byte-deep's):
- llama-char, llama-byte, llama-bpe512, llama-bpe2048: `mtlm_llama` over characters, bytes, or a byte-level BPE
  trained on the training split;
- stlm: `mtlm_byte` as STLM built it (BPE-2048 chunks, parallel decoder, mean over pads, reconstruction loss);
- stlm+causal, stlm+space, stlm+padfree: one improvement each (causal decoder, SpaceByte boundaries, a mean over
  real bytes only); byte-best: all three, without STLM's reconstruction loss, and with chunks of at most 8 bytes
  (longer words are split: the encoder and decoder then pad 8 slots per chunk instead of 12, which buys about 80%
  more steps for the same FLOPs); byte-deep: byte-best with a core of 8 layers instead of 4 (the FLOPs the chunking
  saves spent on the core, as MEGABYTE, SpaceByte and BLT do: about the FLOPs per byte of llama-byte);
- blt: transformers' `BltForCausalLM`, small, with fixed patches of 4 bytes (a first patch of 1 for <bos>).

Every arm trains with the HF Trainer for as many steps as its budget buys. FLOPs are counted one way for all arms:
torch's FlopCounterMode over a real training step (forward and backward, every matmul and attention, unembedding
included), averaged over a few batches. Every arm is scored in bits per byte on the held-out text cut into pieces
of 512 bytes, each read from <bos> (all its bytes scored, the same byte context for every arm). The trained models
are kept in runs/bytes; once a budget's arms are trained, their generation is timed on CPU at batch 1 (512 bytes
sampled) and batch 64 (128 bytes a row), the arms taking turns over a few rounds.

Results go to benchmarks/results/bytes.json (finished runs are kept: the study resumes); the table and the figure
docs/bytes.png are redrawn from it:

    python benchmarks/bench_bytes.py                        # every arm at both budgets
    python benchmarks/bench_bytes.py --only stlm llama-byte --budgets small
    python benchmarks/bench_bytes.py --speed-only --speed-rounds 5  # time generation again
    python benchmarks/bench_bytes.py --plot-only

Each arm trains at the peak learning rates asked for (cosine decay, 5% warm-up); the table shows it at its best
one, beside the rates tried. The large budget takes each arm's best rate at the small one:

    python benchmarks/bench_bytes.py --budgets small --learning-rates 5e-4 1e-3 2e-3
    python benchmarks/bench_bytes.py --budgets large --learning-rates best
    python benchmarks/bench_bytes.py --budgets small --learning-rates best --seeds 0 1 2 --only llama-byte byte-best
"""

import argparse
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.utils.flop_counter as flop_counter  # noqa: E402
from bench_tiny_lm import save, save_figure  # noqa: E402  (the study scripts' JSON and figure writers)
from datasets import Dataset  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BltConfig,
    BltForCausalLM,
    Trainer,
    TrainingArguments,
    default_data_collator,
)
from transformers.modeling_outputs import CausalLMOutputWithPast  # noqa: E402

import mtlm  # noqa: E402, F401  (registers the families with the Auto classes)
from mtlm.data.sources import TINY_SHAKESPEARE  # noqa: E402
from mtlm.data.tokenization import bpe_tokenizer, byte_tokenizer, char_tokenizer, read_corpus  # noqa: E402
from mtlm.data.tokenization_mtlm_byte import MtlmByteTokenizer  # noqa: E402
from mtlm.evaluation.perplexity import perplexity  # noqa: E402
from mtlm.families import MtlmLlamaForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Training FLOPs: about 6 and 12 CPU minutes for llama-byte (a budget's eleven arms: about 75 and 150 minutes here).
# Generation is timed side by side over the models one sitting kept in --runs (--speed-only times them again).
BUDGETS = {"small": 4e13, "large": 8e13}
BLOCK_BYTES = 512  # training blocks and scoring pieces span about this many bytes
BATCH = 16
CORE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768)
STLM = dict(chunk_boundary="bpe", decoder_type="parallel", pooling="stlm", reconstruction_loss_weight=1.0)
BYTE_BEST = dict(chunk_boundary="space", decoder_type="causal", pooling="mean", reconstruction_loss_weight=0.0,
                 max_chunk_bytes=8)


@dataclass
class Arm:
    name: str
    tokenizer: str  # char, byte, bpe512, bpe2048, chunks-bpe, chunks-space
    model: dict = field(default_factory=dict)  # mtlm_byte fields; {} for mtlm_llama


ARMS = {arm.name: arm for arm in [
    Arm("llama-char", "char"),
    Arm("llama-byte", "byte"),
    Arm("llama-bpe512", "bpe512"),
    Arm("llama-bpe2048", "bpe2048"),
    Arm("stlm", "chunks-bpe", STLM),
    Arm("stlm+causal", "chunks-bpe", {**STLM, "decoder_type": "causal"}),
    Arm("stlm+space", "chunks-space", {**STLM, "chunk_boundary": "space"}),
    Arm("stlm+padfree", "chunks-bpe", {**STLM, "pooling": "mean"}),
    Arm("byte-best", "chunks-space", BYTE_BEST),
    Arm("byte-deep", "chunks-space", {**BYTE_BEST, "num_hidden_layers": 8}),
    Arm("blt", "byte"),
]}


def split_text() -> tuple[str, str]:
    text = read_corpus(TINY_SHAKESPEARE)
    cut = int(0.9 * len(text))
    return text[:cut], text[cut:]


def pieces(text: str, size: int = BLOCK_BYTES) -> list[str]:
    """`text` cut into consecutive pieces of about `size` UTF-8 bytes, at character boundaries."""
    result, start, count = [], 0, 0
    for index, character in enumerate(text):
        count += len(character.encode("utf-8"))
        if count >= size:
            result.append(text[start: index + 1])
            start, count = index + 1, 0
    return result + ([text[start:]] if start < len(text) else [])


def make_tokenizer(arm: Arm, train_text: str):
    kind = arm.tokenizer
    if kind == "char":
        return char_tokenizer([train_text])
    if kind == "byte":
        return byte_tokenizer()
    if kind.startswith("bpe"):
        return bpe_tokenizer([train_text], int(kind.removeprefix("bpe")))
    if kind == "chunks-bpe":
        return MtlmByteTokenizer(boundary_tokenizer=bpe_tokenizer([train_text], 2048).backend_tokenizer)
    return MtlmByteTokenizer(chunk_boundary="space", max_chunk_bytes=arm.model.get("max_chunk_bytes", 12))


class BltFixedPatches(BltForCausalLM):
    """BLT with fixed patches: <bos> alone, then `patch_size` bytes per patch (the first patch must hold one id
    only: BLT decodes the bytes of patch i from the global state after patch i - 1). It keeps no cache: in
    transformers 5.24 BLT's own cache cannot be built from its config, and fixed patches need the whole sequence."""

    def forward(self, input_ids=None, patch_lengths=None, **kwargs):
        kwargs["use_cache"] = False
        if patch_lengths is None:
            length, size = input_ids.shape[1], self.config.patch_size
            lengths = [1] + [size] * ((length - 1) // size) + ([(length - 1) % size] if (length - 1) % size else [])
            patch_lengths = torch.tensor([lengths] * input_ids.shape[0], device=input_ids.device)
        return super().forward(input_ids=input_ids, patch_lengths=patch_lengths, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}


class GenerateAlone(MtlmLlamaForCausalLM):
    """No network: uniform logits over the 256 bytes. Sampled from like the arms, it times what generate() itself
    costs per step (logits processors, sampling, stopping checks, bookkeeping): the most bytes per second any model
    can reach through generate() on this machine."""

    def forward(self, input_ids=None, **kwargs):
        logits = torch.zeros(input_ids.shape[0], 1, self.config.vocab_size)
        logits[..., 256:] = torch.finfo(logits.dtype).min
        return CausalLMOutputWithPast(logits=logits)


# The speed table's reference row: generate() with no network behind it, loaded from llama-byte's folder.
GENERATE_ALONE = "generate() alone"


def make_model(arm: Arm, tokenizer, block: int, seed: int):
    torch.manual_seed(seed)
    special = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if arm.name == "blt":
        local = dict(hidden_size=128, num_attention_heads=4, intermediate_size=384, hidden_size_global=256)
        config = BltConfig(
            **special, patch_size=4, patching_mode="static", patch_in_forward=False, max_position_embeddings=2 * block,
            encoder_hash_byte_group_vocab=4096, cross_attn_k=2, local_attention_window_len=2 * block,
            encoder_config=dict(local, num_hidden_layers=1, vocab_size=len(tokenizer)),
            decoder_config=dict(local, num_hidden_layers=2, vocab_size=len(tokenizer)),
            global_config=dict(CORE, max_position_embeddings=2 * block),
            patcher_config=dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128),
        )
        model = BltFixedPatches(config)
        model.generation_config.use_cache = False
        return model
    if arm.model:
        config = AutoConfig.for_model(
            "mtlm_byte", **special, **{**CORE, **arm.model, "max_chunk_bytes": tokenizer.max_chunk_bytes},
            max_position_embeddings=2 * block, end_of_chunk_token_id=tokenizer.end_of_chunk_token_id,
            encoder_hidden_sizes=[64, 128, 256], decoder_hidden_size=128, decoder_num_hidden_layers=2)
    else:
        config = AutoConfig.for_model("mtlm_llama", **special, **CORE, max_position_embeddings=2 * block)
    return AutoModelForCausalLM.from_config(config)


def training_blocks(tokenizer, text: str) -> tuple[Dataset, int]:
    """The training text as blocks of about BLOCK_BYTES bytes, each starting with <bos> (as every scored piece
    does), and the block length in ids."""
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    block = round(BLOCK_BYTES * len(ids) / len(text.encode("utf-8"))) + 1
    body = ids[: len(ids) - len(ids) % (block - 1)].reshape(-1, block - 1)
    blocks = np.concatenate([np.full((len(body), 1), tokenizer.bos_token_id), body], axis=1)
    return Dataset.from_dict({"input_ids": blocks, "labels": blocks}), block


CPU_SDPA = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default:
        lambda query, key, value, *args, out_shape=None, **kwargs: flop_counter.sdpa_flop_count(query, key, value),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default:
        lambda grad_out, query, key, value, *args, out_shape=None, **kwargs:
        flop_counter.sdpa_backward_flop_count(grad_out, query, key, value),
}


def step_flops(model, dataset: Dataset, batches: int = 4) -> float:
    """Mean FLOPs of a training step (forward and backward) over the first `batches` batches, by FlopCounterMode
    (CPU attention included)."""
    model.train()
    counts = []
    for index in range(batches):
        batch = default_data_collator([dataset[row] for row in range(index * BATCH, (index + 1) * BATCH)])
        with flop_counter.FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter:
            model(**batch).loss.backward()
        counts.append(counter.get_total_flops())
    model.zero_grad(set_to_none=True)
    return float(np.mean(counts))


def parameter_counts(model) -> dict:
    embeddings = {id(module.weight): module.weight.numel() for module in model.modules()
                  if isinstance(module, torch.nn.Embedding) and module.num_embeddings >= 256}
    output = model.get_output_embeddings()
    if output is not None:
        embeddings[id(output.weight)] = output.weight.numel()
    return {"parameters": model.num_parameters(), "embedding_parameters": sum(embeddings.values())}


# Generation is timed at these batch sizes (-> bytes each row samples): one user at a time, and a batch that fills
# the CPU's matrix units.
SPEED_BATCHES = {1: 512, 64: 128}


@torch.no_grad()
def sample_seconds(model, tokenizer, prompt_ids: torch.Tensor, new_ids: int) -> tuple[float, int]:
    """Seconds to sample (temperature 0.8, top-k 50) exactly `new_ids` ids after each row of `prompt_ids`
    (batch, length), and the UTF-8 bytes of the texts they spell."""
    torch.manual_seed(0)
    started = time.perf_counter()
    output = model.generate(prompt_ids, max_new_tokens=new_ids, min_new_tokens=new_ids, do_sample=True,
                            temperature=0.8, top_k=50, pad_token_id=tokenizer.pad_token_id)
    seconds = time.perf_counter() - started
    texts = tokenizer.batch_decode(output[:, prompt_ids.shape[1]:], skip_special_tokens=True)
    return seconds, sum(len(text.encode("utf-8", "surrogateescape")) for text in texts)


def generation_speeds(folders: dict[str, Path], prompt: str, rounds: int, batch: int,
                      new_bytes: int) -> dict[str, float]:
    """Generated bytes per second of each trained model (arm -> its folder) on CPU, `batch` rows sampling about
    `new_bytes` bytes each after `prompt`: the arms take turns for `rounds` rounds (after one untimed warm-up each),
    so that the machine's drift touches all alike; each arm's bytes over its summed seconds."""
    arms = {}
    for name, folder in folders.items():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model_class = {"blt": BltFixedPatches, GENERATE_ALONE: GenerateAlone}.get(name, AutoModelForCausalLM)
        model = model_class.from_pretrained(folder).eval()
        model.generation_config.use_cache = name != "blt"
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        new_ids = math.ceil(new_bytes * ids.shape[1] / len(prompt.encode("utf-8")))
        prompt_ids = torch.cat([torch.tensor([[tokenizer.bos_token_id]]), ids], 1).expand(batch, -1)
        sample_seconds(model, tokenizer, prompt_ids, 16)
        arms[name] = (model, tokenizer, prompt_ids, new_ids)
    seconds, generated = dict.fromkeys(arms, 0.0), dict.fromkeys(arms, 0)
    for _ in tqdm(range(rounds), desc=f"generation rounds at batch {batch}"):
        for name, (model, tokenizer, prompt_ids, new_ids) in arms.items():
            elapsed, size = sample_seconds(model, tokenizer, prompt_ids, new_ids)
            seconds[name] += elapsed
            generated[name] += size
    return {name: generated[name] / seconds[name] for name in arms}


def run_one(arm: Arm, budget: float, texts: tuple[str, str], folder: Path, learning_rate: float, seed: int) -> dict:
    train_text, held_out = texts
    tokenizer = make_tokenizer(arm, train_text)
    dataset, block = training_blocks(tokenizer, train_text)
    model = make_model(arm, tokenizer, block, seed)
    per_step = step_flops(model, dataset)
    steps = max(1, round(budget / per_step))
    arguments = TrainingArguments(
        output_dir=str(folder), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=learning_rate,
        lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20), weight_decay=0.1, max_grad_norm=1.0,
        logging_steps=max(1, steps // 20), save_strategy="no", report_to=[], seed=seed, dataloader_drop_last=True,
        disable_tqdm=True, remove_unused_columns=False)
    started = time.perf_counter()
    trainer = Trainer(model=model, args=arguments, train_dataset=dataset.shuffle(seed=seed),
                      data_collator=default_data_collator)
    trainer.train()
    wall = time.perf_counter() - started
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    scored = perplexity(model.eval(), tokenizer, pieces(held_out), max_length=2 * block, stride=2 * block,
                        batch_size=1, show_progress=False)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        **parameter_counts(model),
        "learning_rate": learning_rate, "budget_flops": budget, "training_flops": per_step * steps,
        "step_flops": per_step, "steps": steps,
        "block_ids": block, "ids_per_byte": (block - 1) / BLOCK_BYTES,
        "epochs": steps * BATCH / len(dataset),
        "bits_per_byte": scored["bits_per_byte"], "final_train_loss": losses[-1] if losses else None,
        "wall_s": round(wall, 1),
    }


def rate_key(learning_rate: float) -> str:
    """How results name a learning rate: 0.001 -> "1e-3"."""
    mantissa, exponent = f"{learning_rate:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def run_folder(runs: Path, name: str, budget: str, rate: str, seed: int = 0) -> Path:
    """Where the model of `name` trained at `budget` and learning rate `rate` (its key) from `seed` is kept."""
    return runs / (f"{name}-{budget}-lr{rate}" + (f"-seed{seed}" if seed else ""))


def best_run(results: dict, budget: str, name: str) -> tuple[str, dict] | tuple[None, None]:
    """The learning rate (its key) and the row of `name`'s lowest held-out bits per byte at `budget`."""
    runs = results.get(budget, {}).get(name, {})
    if not runs:
        return None, None
    return min(runs.items(), key=lambda item: item[1]["bits_per_byte"])


def bits_per_byte(row: dict) -> str:
    """A row's held-out bits per byte, and its mean ± standard deviation over seeds where other seeds ran."""
    scores = [row["bits_per_byte"], *row.get("seed_bits_per_byte", {}).values()]
    if len(scores) == 1:
        return f"{scores[0]:.3f}"
    return f"{scores[0]:.3f} ({len(scores)} seeds: {np.mean(scores):.3f} ± {np.std(scores, ddof=1):.3f})"


def table(results: dict) -> str:
    """Each arm at each budget at its best learning rate."""
    lines = ["| arm | budget | params (embeddings) | ids per byte | training FLOPs | steps (epochs) | learning rate "
             "(of rates tried) | held-out bits/byte | "
             + " | ".join(f"generated bytes/s at batch {batch} (× llama-byte)" for batch in SPEED_BATCHES)
             + " | wall |",
             "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(SPEED_BATCHES) + "---:|"]
    for budget in BUDGETS:
        reference = (best_run(results, budget, "llama-byte")[1] or {}).get("generated_bytes_per_s", {})
        for name in ARMS:
            rate, row = best_run(results, budget, name)
            if row is None:
                continue
            speeds = []
            for batch in map(str, SPEED_BATCHES):
                speed = row.get("generated_bytes_per_s", {}).get(batch)
                speeds.append("–" if speed is None else f"{speed:,.0f}" + (
                    f" ({speed / reference[batch]:.2f}×)" if reference.get(batch) else ""))
            lines.append(
                f"| {name} | {budget} | {row['parameters']:,} ({row['embedding_parameters']:,}) "
                f"| {row['ids_per_byte']:.3f} | {row['training_flops']:.2e} | {row['steps']} ({row['epochs']:.1f}) "
                f"| {rate} ({len(results[budget][name])}) | {bits_per_byte(row)} | {' | '.join(speeds)} "
                f"| {row['wall_s'] / 60:.1f} min |")
        alone = results.get(budget, {}).get(GENERATE_ALONE, {}).get("generated_bytes_per_s")
        if alone:
            speeds = [f"{alone[batch]:,.0f} ({alone[batch] / reference[batch]:.2f}×)" if batch in alone else "–"
                      for batch in map(str, SPEED_BATCHES)]
            lines.append(f"| {GENERATE_ALONE} (no network) | {budget} | | | | | | | {' | '.join(speeds)} | |")
    return "\n".join(lines)


def learning_rate_table(results: dict, budget: str = "small") -> str:
    """Held-out bits per byte at `budget` by learning rate, for the arms tried at more than one (best in bold)."""
    probed = [name for name in ARMS if len(results.get(budget, {}).get(name, {})) > 1]
    rates = sorted({float(rate) for name in probed for rate in results[budget][name]})
    lines = ["| arm | " + " | ".join(f"lr {rate_key(rate)}" for rate in rates) + " |", "|---|" + "---:|" * len(rates)]
    for name in probed:
        best, _ = best_run(results, budget, name)
        cells = []
        for rate in map(rate_key, rates):
            row = results[budget][name].get(rate)
            cells.append("–" if row is None else f"**{row['bits_per_byte']:.3f}**" if rate == best
                         else f"{row['bits_per_byte']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if probed else ""


def plot(results: dict, path: Path) -> Path:
    """Held-out bits per byte of every arm at its best learning rate, a bar per budget (the arms' FLOPs agree within
    1%)."""
    budgets = [budget for budget in BUDGETS if results.get(budget)]
    names = [name for name in ARMS if any(name in results[budget] for budget in budgets)]
    figure, axes = plt.subplots(figsize=(8, 4.5))
    height = 0.8 / max(1, len(budgets))
    for index, budget in enumerate(budgets):
        rows = [best_run(results, budget, name)[1] for name in names]
        axes.barh([position + index * height for position in range(len(names))],
                  [row["bits_per_byte"] if row else np.nan for row in rows], height,
                  label=f"{budget}: {BUDGETS[budget]:.0e} training FLOPs")
    axes.set_yticks([position + height * (len(budgets) - 1) / 2 for position in range(len(names))], names)
    axes.invert_yaxis()
    axes.set(xlabel="held-out bits per byte (lower is better)",
             title="Tiny Shakespeare: bits per byte at equal training FLOPs")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def learning_rates(chosen: list[str], results: dict, name: str) -> list[float]:
    """The learning rates --learning-rates names for arm `name` ('best': its best at the small budget)."""
    if chosen != ["best"]:
        return [float(rate) for rate in chosen]
    rate, _ = best_run(results, "small", name)
    if rate is None:
        raise SystemExit(f"--learning-rates best: {name} has no small-budget run to take its best rate from; train it "
                         "at the small budget first (--budgets small --learning-rates 5e-4 1e-3 2e-3).")
    return [float(rate)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(ARMS), help="arms to run")
    parser.add_argument("--budgets", nargs="+", choices=list(BUDGETS), default=list(BUDGETS))
    parser.add_argument("--rerun", action="store_true", help="train again runs the results file already holds")
    parser.add_argument("--learning-rates", nargs="+", default=["2e-3"],
                        help="peak learning rates to train every arm at (cosine decay, 5%% warm-up), or 'best': "
                        "each arm's best at the small budget")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="training seeds (initialisation and data order); seed 0's run is the arm's row, other "
                        "seeds add their held-out score to it")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the budgets (a quick check: 1e-3)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the table and figure from the results")
    parser.add_argument("--speed-rounds", type=int, default=3,
                        help="alternating rounds of generation timing over a budget's trained arms (0: none)")
    parser.add_argument("--speed-only", action="store_true",
                        help="time generation again over the trained models in --runs, training nothing")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "bytes.json")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bytes")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "bytes.png")
    args = parser.parse_args()
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    if not args.plot_only:
        texts = split_text()
        for budget in args.budgets:
            trained = results.setdefault(budget, {})
            for name in [] if args.speed_only else args.only or ARMS:
                for rate, seed in itertools.product(learning_rates(args.learning_rates, results, name), args.seeds):
                    key = rate_key(rate)
                    row = trained.get(name, {}).get(key)
                    if not args.rerun and row and (seed == 0 or str(seed) in row.get("seed_bits_per_byte", {})):
                        continue
                    if seed and not row:
                        raise SystemExit(f"--seeds {seed}: train {name} at {budget}, learning rate {key} from seed 0 "
                                         "first (list 0 among --seeds).")
                    print(f"=== {name} at {budget} ({BUDGETS[budget]:.0e} FLOPs), learning rate {key}, seed {seed} ===",
                          flush=True)
                    run = run_one(ARMS[name], args.scale * BUDGETS[budget], texts,
                                  run_folder(args.runs, name, budget, key, seed), rate, seed)
                    if seed:  # the table and the figure read seed 0's row; other seeds add their score to it
                        row.setdefault("seed_bits_per_byte", {})[str(seed)] = run["bits_per_byte"]
                    else:
                        trained.setdefault(name, {})[key] = run
                    save(results, args.results)
                    print(json.dumps(run, indent=1), flush=True)
            best = {name: best_run(results, budget, name) for name in ARMS}
            folders = {name: run_folder(args.runs, name, budget, rate) for name, (rate, _) in best.items()
                       if rate is not None and (run_folder(args.runs, name, budget, rate) / "config.json").exists()}
            for batch, new_bytes in SPEED_BATCHES.items() if args.speed_rounds and folders else ():
                # BLT through our wrapper has no KV cache: each step reads every row again, too slow to time batched.
                timed = {name: folder for name, folder in folders.items() if batch == 1 or name != "blt"}
                if "llama-byte" in folders:
                    timed[GENERATE_ALONE] = folders["llama-byte"]
                print(f"=== generation at {budget}, batch {batch}: {', '.join(timed)} ===", flush=True)
                speeds = generation_speeds(timed, texts[1][:200], args.speed_rounds, batch, new_bytes)
                for name, speed in speeds.items():
                    row = trained.setdefault(GENERATE_ALONE, {}) if name == GENERATE_ALONE else best[name][1]
                    row.setdefault("generated_bytes_per_s", {})[str(batch)] = speed
                save(results, args.results)
    print(table(results))
    print(learning_rate_table(results))
    print(f"wrote {plot(results, args.figure)}")


if __name__ == "__main__":
    main()
