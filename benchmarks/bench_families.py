"""Throughput and memory of each mtlm family against its upstream transformers twin at identical configs.

Both models hold the same weights (the mtlm one is converted from the upstream one), run in one process, and are
timed alternately round after round so that machine noise falls on both. Reported per family and size:

- training-step throughput (tokens/s of forward + backward + AdamW step),
- greedy-generation throughput (new tokens/s with the KV cache),
- peak memory of a training step (CUDA: max allocated; CPU: bytes of activations saved for the backward pass),

and the ratio mtlm / upstream (target: >= 1.0 for throughput, <= 1.0 for memory). Throughput ratios are medians of
the per-round ratios.

    python benchmarks/bench_families.py                  # CPU, both sizes
    python benchmarks/bench_families.py --device cuda --dtype bfloat16
"""

import argparse
import json
import statistics
import time

import torch
from bench_speed import generation_seconds, saved_activation_bytes, synchronize
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

from mtlm.convert import from_upstream

SIZES = {
    # The MLM Llama-2 configuration (SEEDS.md), 18-token arithmetic vocabulary.
    "mlm": dict(vocab=18, hidden=128, heads=4, layers=4, ffn=384, experts_ffn=128, context=64),
    # About 10M parameters.
    "10m": dict(vocab=16000, hidden=256, heads=8, layers=6, ffn=704, experts_ffn=352, context=256),
}


def upstream_models(size: dict) -> dict:
    common = dict(vocab_size=size["vocab"], hidden_size=size["hidden"], num_hidden_layers=size["layers"],
                  num_attention_heads=size["heads"], max_position_embeddings=size["context"], tie_word_embeddings=True)
    return {
        "llama": lambda: LlamaForCausalLM(LlamaConfig(**common, intermediate_size=size["ffn"],
                                                      num_key_value_heads=size["heads"] // 2)),
        "gpt": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=size["vocab"], n_embd=size["hidden"], n_layer=size["layers"],
                                                  n_head=size["heads"], n_positions=size["context"], resid_pdrop=0.0,
                                                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2)),
        "moe": lambda: MixtralForCausalLM(MixtralConfig(**common, intermediate_size=size["experts_ffn"],
                                                        num_key_value_heads=size["heads"] // 2, num_local_experts=4,
                                                        num_experts_per_tok=2, output_router_logits=True)),
    }


def time_train_steps(model, optimizer, batch: torch.Tensor, steps: int, device: str) -> float:
    """Seconds for `steps` full training steps on `batch` (batch, seq)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = model(batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return time.perf_counter() - start


def benchmark_pair(name: str, build, size: dict, args) -> dict:
    torch.manual_seed(0)
    upstream = build().to(args.device, getattr(torch, args.dtype))
    models = {"upstream": upstream, "mtlm": from_upstream(upstream)}
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(3, size["vocab"], (args.batch_size, size["context"]), generator=generator).to(args.device)
    prompt = batch[:1, :8]
    new_tokens = min(args.new_tokens, size["context"] - 8)
    optimizers = {key: torch.optim.AdamW(model.parameters(), lr=1e-4) for key, model in models.items()}

    for key, model in models.items():  # warm-up, and the memory figure
        model.train()
        time_train_steps(model, optimizers[key], batch, 2, args.device)
        model.eval()
        generation_seconds(model, prompt, 4, args.device)
    memory = {key: saved_activation_bytes(model.train(), batch, args.device) for key, model in models.items()}

    train_seconds = {key: [] for key in models}
    generate_seconds = {key: [] for key in models}
    for round_index in range(args.rounds):
        order = list(models) if round_index % 2 == 0 else list(reversed(models))
        for key in order:
            models[key].train()
            train_seconds[key].append(time_train_steps(models[key], optimizers[key], batch, args.steps, args.device))
            models[key].eval()
            generate_seconds[key].append(generation_seconds(models[key], prompt, new_tokens, args.device))

    tokens_per_step = batch.numel()
    result = {"family": name, "parameters": sum(p.numel() for p in upstream.parameters())}
    for key in models:
        result[f"{key}_train_tokens_per_s"] = tokens_per_step * args.steps / statistics.median(train_seconds[key])
        result[f"{key}_generate_tokens_per_s"] = new_tokens / statistics.median(generate_seconds[key])
        result[f"{key}_step_memory_mb"] = memory[key] / 2**20
    # Ratios of the two timings taken side by side in each round, then their median: drift of the machine's speed
    # over the run cancels.
    result["train_ratio"] = statistics.median(u / m for u, m in zip(train_seconds["upstream"], train_seconds["mtlm"]))
    result["generate_ratio"] = statistics.median(
        u / m for u, m in zip(generate_seconds["upstream"], generate_seconds["mtlm"])
    )
    result["memory_ratio"] = memory["mtlm"] / memory["upstream"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--families", nargs="+", default=["llama", "gpt", "moe"], choices=["llama", "gpt", "moe"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed round")
    parser.add_argument("--new-tokens", type=int, default=48, help="greedy tokens per timed generation")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds; medians are reported")
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args()

    results = []
    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} batch={args.batch_size}")
    header = f"{'size':5} {'family':6} {'params':>9} {'train tok/s mtlm/up':>22} {'ratio':>6} " \
             f"{'gen tok/s mtlm/up':>20} {'ratio':>6} {'step MB mtlm/up':>18} {'ratio':>6}"
    print(header)
    for size_name in args.sizes:
        for family in args.families:
            result = {"size": size_name, **benchmark_pair(family, upstream_models(SIZES[size_name])[family],
                                                          SIZES[size_name], args)}
            results.append(result)
            print(f"{size_name:5} {family:6} {result['parameters'] / 1e6:8.2f}M "
                  f"{result['mtlm_train_tokens_per_s']:10.0f}/{result['upstream_train_tokens_per_s']:<10.0f} "
                  f"{result['train_ratio']:6.3f} "
                  f"{result['mtlm_generate_tokens_per_s']:9.1f}/{result['upstream_generate_tokens_per_s']:<9.1f} "
                  f"{result['generate_ratio']:6.3f} "
                  f"{result['mtlm_step_memory_mb']:8.1f}/{result['upstream_step_memory_mb']:<8.1f} "
                  f"{result['memory_ratio']:6.3f}", flush=True)
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
