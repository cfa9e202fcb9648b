"""Training and generation speed of every family, side by side with what people would use instead (issue 20).

Per family and size, in one process, timed in alternating rounds so that the machine's drift falls on all of them:

- training tokens/s of a plain loop (forward, backward, AdamW step) on the mtlm model, eager and `torch.compile`d;
- the same loop on the upstream transformers twin holding the same weights, eager and compiled;
- the same loop on a nanoGPT-style plain PyTorch model of the same shape (the reference most tiny-model code is),
  eager and compiled (dense families: MoE has none);
- the full `mtlm train` path (the HF Trainer on the run config's data), timed between its own steps while the plain
  loop on the same model runs its rounds in between, eager and with the Trainer's `torch_compile`;
- achieved FLOP/s (the model's analytic training FLOPs) as a fraction of this machine's fp32 (or bf16) matmul peak,
  measured here at 1024^3 (CUDA: 8192^3);
- greedy generation tokens/s at batch 1 (KV cache) against upstream, eager and through `compiled_decoding()` (a
  static cache and a compiled step; the first call, which compiles, is timed apart);
- peak memory of a training step (CPU: bytes of saved activations; CUDA: max allocated) against upstream, and with
  gradient checkpointing.

Sizes: `main` is the main job's shape (d128, 4 layers, 4 heads, context 128, batch 32, characters); `10m` is
nanoGPT's Shakespeare-character model (d384, 6 layers, 6 heads, context 256; batch 8 here), 10.7M parameters.
Ratios are medians of the per-round ratios. Results go to benchmarks/results/speed.json; --report redraws the tables.

    python benchmarks/bench_speed.py                               # CPU, both sizes, every family
    python benchmarks/bench_speed.py --device cuda --dtype bfloat16 --attention flash_attention_2
    python benchmarks/bench_speed.py --report
"""

import argparse
import copy
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_tiny_lm import save  # the study scripts' JSON writer
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, TrainerCallback

from mtlm.convert import to_upstream
from mtlm.training import run_config
from mtlm.training.reports import compiled_decoding
from mtlm.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 65  # Tiny Shakespeare's characters
SIZES = {
    "main": dict(hidden=128, heads=4, layers=4, ffn=384, experts_ffn=128, context=128, batch=32),
    "10m": dict(hidden=384, heads=6, layers=6, ffn=1024, experts_ffn=384, context=256, batch=8),
}
FAMILIES = ("mtlm_llama", "mtlm_gpt", "mtlm_moe")


def mtlm_config(family: str, size: dict):
    extra = {"mtlm_gpt": dict(intermediate_size=4 * size["hidden"], hidden_dropout=0.0, attention_dropout=0.0),
             "mtlm_moe": dict(intermediate_size=size["experts_ffn"], num_local_experts=4, num_experts_per_tok=2),
             "mtlm_llama": dict(intermediate_size=size["ffn"])}[family]
    return AutoConfig.for_model(family, vocab_size=VOCAB, hidden_size=size["hidden"], num_hidden_layers=size["layers"],
                                num_attention_heads=size["heads"], max_position_embeddings=size["context"], **extra)


class NanoBlock(nn.Module):
    """nanoGPT's block, or its Llama-style variant (RMSNorm, rotary, SwiGLU with one fused gate/up matrix)."""

    def __init__(self, config, llama: bool):
        super().__init__()
        hidden, inner = config.hidden_size, config.intermediate_size
        self.heads, self.llama = config.num_attention_heads, llama
        norm = (lambda: nn.RMSNorm(hidden, eps=1e-6)) if llama else (lambda: nn.LayerNorm(hidden))
        self.ln_1, self.ln_2 = norm(), norm()
        self.c_attn = nn.Linear(hidden, 3 * hidden, bias=not llama)
        self.c_proj = nn.Linear(hidden, hidden, bias=not llama)
        self.c_fc = nn.Linear(hidden, 2 * inner if llama else inner, bias=not llama)
        self.mlp_proj = nn.Linear(inner, hidden, bias=not llama)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        batch, seq, hidden = x.shape
        q, k, v = (t.view(batch, seq, self.heads, -1).transpose(1, 2)
                   for t in self.c_attn(self.ln_1(x)).split(hidden, dim=2))
        if rotary is not None:
            cos, sin = rotary
            q, k = ((t * cos) + (torch.cat((-t[..., t.shape[-1] // 2:], t[..., :t.shape[-1] // 2]), -1) * sin)
                    for t in (q, k))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, seq, hidden)
        x = x + self.c_proj(y)
        h = self.c_fc(self.ln_2(x))
        if self.llama:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")
        return x + self.mlp_proj(h)


class NanoGPT(nn.Module):
    """A nanoGPT-style model of a config's shape: learned positions and LayerNorm (GPT-2), or rotary and RMSNorm."""

    def __init__(self, config, llama: bool):
        super().__init__()
        self.llama = llama
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = None if llama else nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.blocks = nn.ModuleList(NanoBlock(config, llama) for _ in range(config.num_hidden_layers))
        self.ln_f = nn.RMSNorm(config.hidden_size, eps=1e-6) if llama else nn.LayerNorm(config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        head_dim = config.hidden_size // config.num_attention_heads
        inverse = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        angles = torch.outer(torch.arange(config.max_position_embeddings).float(), inverse)
        self.register_buffer("cos", torch.cat((angles, angles), -1).cos(), persistent=False)
        self.register_buffer("sin", torch.cat((angles, angles), -1).sin(), persistent=False)

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        seq = ids.shape[1]
        x = self.wte(ids)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(seq, device=ids.device))
        rotary = (self.cos[:seq].to(x.dtype), self.sin[:seq].to(x.dtype)) if self.llama else None
        for block in self.blocks:
            x = block(x, rotary)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: torch.dtype) -> float:
    """FLOP/s of the best of several square matmuls: this machine's practical peak."""
    n = 8192 if device == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = math.inf
    for _ in range(10):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


class PlainLoop:
    """Training steps of one model on one batch: forward, backward, AdamW."""

    def __init__(self, model: nn.Module, batch: torch.Tensor, device: str, compiled: bool):
        self.model = model.train()
        self.runner = torch.compile(model) if compiled else model
        self.batch, self.device = batch, device
        fused = device == "cuda"
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)

    def loss(self) -> torch.Tensor:
        output = self.runner(self.batch, labels=self.batch)
        return output if isinstance(output, torch.Tensor) else output.loss

    def seconds(self, steps: int) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.loss().backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)
        return time.perf_counter() - start


def generation_seconds(model, prompt: torch.Tensor, new_tokens: int, device: str, **decoding) -> float:
    synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       eos_token_id=None, pad_token_id=0, **decoding)
    synchronize(device)
    return time.perf_counter() - start


def saved_activation_bytes(model, batch: torch.Tensor, device: str) -> int:
    """Peak bytes of one forward + backward: CUDA's max allocated, or on CPU the activations saved for backward."""
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        model(batch, labels=batch).loss.backward()
        model.zero_grad(set_to_none=True)
        return torch.cuda.max_memory_allocated()
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(batch, labels=batch).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(nbytes for pointer, nbytes in storages.items() if pointer not in parameters)


class InterleavedRounds(TrainerCallback):
    """Times the Trainer's steps in rounds of `steps` (data loading, clipping, scheduling and logging included) and
    runs the plain loop's round between them, so both are timed side by side."""

    def __init__(self, plain: PlainLoop, steps: int, warmup_steps: int):
        self.plain, self.steps, self.warmup_steps = plain, steps, warmup_steps
        self.trainer_seconds, self.plain_seconds, self.mark = [], [], None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step < self.warmup_steps or (state.global_step - self.warmup_steps) % self.steps:
            return
        synchronize(self.plain.device)
        if self.mark is not None:
            self.trainer_seconds.append(time.perf_counter() - self.mark)
        self.plain_seconds.append(self.plain.seconds(self.steps))
        self.mark = time.perf_counter()


def trainer_run(family: str, size: dict, args, compiled: bool, work_dir: Path) -> dict:
    """Tokens/s of `mtlm train` on the family's model (the main job's data and recipe), and of the plain loop on
    another instance of the same model in the rounds between."""
    config = mtlm_config(family, size)
    torch.manual_seed(0)
    plain = PlainLoop(AutoModelForCausalLM.from_config(config).to(args.device), plain_batch(size, args.device),
                      args.device, compiled)
    warmup = 3
    timing = InterleavedRounds(plain, args.steps, warmup)
    model_section = {key: value for key, value in config.to_diff_dict().items()
                     if key not in ("vocab_size", "transformers_version", "architectures")}
    run = run_config.validate({
        "model": {**model_section, "model_type": family},
        "tokenizer": {"kind": "char"},
        "data": {"source": "tinyshakespeare", "block_size": size["context"]},
        "training": {"output_dir": str(work_dir / f"{family}-{compiled}"), "max_steps": warmup + args.rounds *
                     args.steps + 1, "per_device_train_batch_size": size["batch"], "learning_rate": 1e-4,
                     "logging_steps": 50, "save_strategy": "no", "disable_tqdm": True, "torch_compile": compiled,
                     "use_cpu": args.device == "cpu", "bf16": args.dtype == "bfloat16"},
    })
    train(run, overwrite=True, callbacks=(timing,))
    tokens = size["batch"] * size["context"] * args.steps
    return {"trainer_tokens_per_s": tokens / statistics.median(timing.trainer_seconds),
            "plain_tokens_per_s": tokens / statistics.median(timing.plain_seconds[1:]),
            "trainer_vs_plain": statistics.median(p / t for p, t in zip(timing.plain_seconds[1:],
                                                                          timing.trainer_seconds))}


def plain_batch(size: dict, device: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, VOCAB, (size["batch"], size["context"]), generator=generator).to(device)


def contenders(family: str, size: dict, args) -> dict[str, PlainLoop]:
    """The plain loops compared in one family and size, each on its own model."""
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    config = mtlm_config(family, size)
    ours = AutoModelForCausalLM.from_config(config, attn_implementation=args.attention).to(args.device, dtype)
    upstream = to_upstream(ours)
    upstream.set_attn_implementation(args.attention)
    models = {"mtlm": ours, "upstream": upstream.to(args.device, dtype)}
    if family != "mtlm_moe":
        models["nanogpt"] = NanoGPT(config, llama=family == "mtlm_llama").to(args.device, dtype)
    batch = plain_batch(size, args.device)
    loops = {}
    for name, model in models.items():
        loops[name] = PlainLoop(model, batch, args.device, compiled=False)
        if args.compile:
            loops[f"{name}-compiled"] = PlainLoop(copy.deepcopy(model), batch, args.device, compiled=True)
    return loops


def generation_benchmark(ours, upstream, prompt: torch.Tensor, new_tokens: int, args) -> dict:
    """Greedy generation at batch 1, eager and (with --compile) through `compiled_decoding()`, in alternating rounds;
    the compiled contenders' first call, which compiles, is timed on its own."""
    ours.eval(), upstream.eval()
    contenders = {"mtlm": (ours, {}), "upstream": (upstream, {})}
    if args.compile:
        contenders.update({"mtlm-compiled": (ours, compiled_decoding()),
                           "upstream-compiled": (upstream, compiled_decoding())})
    first_call_s = {name: generation_seconds(model, prompt, new_tokens, args.device, **decoding)
                    for name, (model, decoding) in contenders.items()}
    seconds = {name: [] for name in contenders}
    for round_index in range(args.rounds):
        order = list(contenders) if round_index % 2 == 0 else list(reversed(contenders))
        for name in order:
            model, decoding = contenders[name]
            seconds[name].append(generation_seconds(model, prompt, new_tokens, args.device, **decoding))
    comparisons = {"mtlm vs upstream": ("mtlm", "upstream"), "compiled vs upstream": ("mtlm-compiled", "upstream"),
                   "compiled vs upstream compiled": ("mtlm-compiled", "upstream-compiled")}
    return {"generate_tokens_per_s": {name: new_tokens / statistics.median(values) for name, values in seconds.items()},
            "generate_first_call_s": first_call_s,
            "generate_speedup": {label: statistics.median(r / t for t, r in zip(seconds[name], seconds[reference]))
                                 for label, (name, reference) in comparisons.items() if name in seconds}}


def benchmark(family: str, size_name: str, args, peak: float) -> dict:
    size = SIZES[size_name]
    loops = contenders(family, size, args)
    for loop in loops.values():  # compilation and warm-up
        loop.seconds(3)
    seconds = {name: [] for name in loops}
    for round_index in range(args.rounds):
        order = list(loops) if round_index % 2 == 0 else list(reversed(loops))
        for name in order:
            seconds[name].append(loops[name].seconds(args.steps))
    ours, upstream = loops["mtlm"].model, loops["upstream"].model
    batch = loops["mtlm"].batch
    tokens = batch.numel() * args.steps
    flops_per_step = ours.floating_point_ops({"input_ids": batch})
    comparisons = {"mtlm vs upstream": ("mtlm", "upstream"), "mtlm vs nanogpt": ("mtlm", "nanogpt"),
                   "compiled vs upstream": ("mtlm-compiled", "upstream"),
                   "compiled vs upstream compiled": ("mtlm-compiled", "upstream-compiled"),
                   "compiled vs nanogpt compiled": ("mtlm-compiled", "nanogpt-compiled")}
    result = {"family": family, "size": size_name, "parameters": sum(p.numel() for p in ours.parameters()),
              "tokens_per_s": {name: tokens / statistics.median(values) for name, values in seconds.items()},
              "fraction_of_peak": {name: flops_per_step * args.steps / statistics.median(values) / peak
                                   for name, values in seconds.items()},
              # medians of the per-round ratios: the machine's drift over the run cancels
              "speedup": {label: statistics.median(r / t for t, r in zip(seconds[name], seconds[reference]))
                          for label, (name, reference) in comparisons.items()
                          if name in seconds and reference in seconds}}

    result.update(generation_benchmark(ours, upstream, batch[:1, :8], min(args.new_tokens, size["context"] - 8), args))
    memory = {"mtlm": saved_activation_bytes(ours.train(), batch, args.device),
              "upstream": saved_activation_bytes(upstream.train(), batch, args.device)}
    ours.gradient_checkpointing_enable()
    memory["mtlm-checkpointed"] = saved_activation_bytes(ours, batch, args.device)
    ours.gradient_checkpointing_disable()
    result["step_memory_mb"] = {name: value / 2**20 for name, value in memory.items()}
    if args.trainer:
        with tempfile.TemporaryDirectory() as work_dir:
            result["trainer"] = {("compiled" if compiled else "eager"): trainer_run(family, size, args, compiled,
                                                                                   Path(work_dir))
                                 for compiled in ((False, True) if args.compile else (False,))}
    return result


def report(results: dict) -> str:
    def ratio(row: dict, label: str) -> str:
        return f"{row['speedup'][label]:.2f}x" if label in row["speedup"] else "–"

    lines = [f"{results['device']}, {results['dtype']}; matmul peak {results['peak_flops'] / 1e9:.1f} GFLOP/s", "",
             "| size | family | params | tokens/s: mtlm | vs upstream | vs nanoGPT-style | of matmul peak "
             "| compiled: tokens/s | vs upstream | vs upstream compiled | vs nanoGPT-style compiled | of matmul peak |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        speed, peak = row["tokens_per_s"], row["fraction_of_peak"]
        compiled_speed = f"{speed['mtlm-compiled']:,.0f}" if "mtlm-compiled" in speed else "–"
        compiled_peak = f"{peak['mtlm-compiled']:.0%}" if "mtlm-compiled" in peak else "–"
        lines.append(
            f"| {row['size']} | {row['family']} | {row['parameters'] / 1e6:.2f}M | {speed['mtlm']:,.0f} "
            f"| {ratio(row, 'mtlm vs upstream')} | {ratio(row, 'mtlm vs nanogpt')} | {peak['mtlm']:.0%} "
            f"| {compiled_speed} | {ratio(row, 'compiled vs upstream')} "
            f"| {ratio(row, 'compiled vs upstream compiled')} | {ratio(row, 'compiled vs nanogpt compiled')} "
            f"| {compiled_peak} |")
    lines += ["", "| size | family | greedy generation tok/s: mtlm / upstream | vs upstream | compiled: tok/s "
              "| vs upstream | vs upstream compiled | first call (compiles) s | step memory MB mtlm / upstream "
              "| ratio | with gradient checkpointing | Trainer vs plain loop (eager / compiled) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        generation, memory, trainer = row["generate_tokens_per_s"], row["step_memory_mb"], row.get("trainer", {})
        speedup = row["generate_speedup"]
        compiled = {"tok/s": f"{generation['mtlm-compiled']:,.0f}",
                    "first": f"{row['generate_first_call_s']['mtlm-compiled']:.1f}",
                    **{label: f"{speedup[label]:.2f}x" for label in ("compiled vs upstream",
                                                                     "compiled vs upstream compiled")}} \
            if "mtlm-compiled" in generation else {}
        trainer_ratios = " / ".join(f"{trainer[key]['trainer_vs_plain']:.2f}x" for key in ("eager", "compiled")
                                    if key in trainer) or "–"
        lines.append(f"| {row['size']} | {row['family']} | {generation['mtlm']:,.0f} / {generation['upstream']:,.0f} "
                     f"| {speedup['mtlm vs upstream']:.2f}x | {compiled.get('tok/s', '–')} "
                     f"| {compiled.get('compiled vs upstream', '–')} "
                     f"| {compiled.get('compiled vs upstream compiled', '–')} | {compiled.get('first', '–')} "
                     f"| {memory['mtlm']:.1f} / {memory['upstream']:.1f} "
                     f"| {memory['mtlm'] / memory['upstream']:.2f} | {memory['mtlm-checkpointed']:.1f} "
                     f"| {trainer_ratios} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--attention", default="sdpa", choices=["eager", "sdpa", "flash_attention_2"])
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile arms")
    parser.add_argument("--no-trainer", dest="trainer", action="store_false", help="skip the Trainer arms")
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds; medians are reported")
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens per timed generation")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "speed.json")
    parser.add_argument("--report", action="store_true", help="the tables from the results, timing nothing")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(args.results.read_text())))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this machine has no CUDA device (torch.cuda.is_available() is False).")
    dtype = getattr(torch, args.dtype)
    peak = matmul_peak(args.device, dtype)
    results = {"device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()}"
               " threads)", "dtype": args.dtype, "threads": torch.get_num_threads(), "peak_flops": peak, "rows": []}
    for size_name in args.sizes:
        for family in args.families:
            results["rows"].append(benchmark(family, size_name, args, peak))
            save(results, args.results)
            print(report(results), flush=True)


if __name__ == "__main__":
    main()
