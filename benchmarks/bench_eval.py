"""lm-eval throughput on the shipped task fixtures: requests per second at batch sizes 1 and 8.

The fixtures (tests/fixtures/lm_eval) are an ARC-shaped and a HellaSwag-shaped multiple-choice task and a rolling
loglikelihood task. Each model is loaded once per batch size (loading is not timed); every measurement is the median
of `--rounds` timed `simple_evaluate` calls.

    python benchmarks/bench_eval.py runs/tlm-transformer            # a trained checkpoint folder
    python benchmarks/bench_eval.py --preset mtlm1-88m               # an untrained model of that shape, byte vocab
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from mtlm.configuration.presets import preset_config
from mtlm.data.tokenization import make_tokenizer
from mtlm.evaluation import harness

TASKS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "lm_eval"
TASK_NAMES = ["tiny_arc", "tiny_hellaswag", "tiny_rolling"]


def preset_checkpoint(name: str, folder: Path) -> Path:
    tokenizer = make_tokenizer("byte")
    config = preset_config(name, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def requests_per_second(checkpoint: Path, batch_size: int, rounds: int) -> tuple[float, int]:
    lm_eval = harness.import_lm_eval()
    from lm_eval.models.huggingface import HFLM

    model = HFLM(pretrained=str(checkpoint), trust_remote_code=True, batch_size=batch_size, device="cpu")
    manager = harness.task_manager(TASKS)
    seconds, requests = [], 0
    for _ in range(rounds):
        tasks = harness.load_tasks(harness.task_specs(TASK_NAMES, manager, include_path=TASKS), manager)
        start = time.perf_counter()
        lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=manager, log_samples=False)
        seconds.append(time.perf_counter() - start)
        requests = sum(len(task.instances) for task in tasks)
    return requests / statistics.median(seconds), requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="checkpoint folder (or use --preset)")
    parser.add_argument("--preset", help="evaluate an untrained model of this preset's shape over bytes instead")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = Path(args.checkpoint) if args.checkpoint else preset_checkpoint(args.preset, Path(scratch) / "m")
        parameters = AutoModelForCausalLM.from_pretrained(checkpoint).num_parameters()
        print(f"{checkpoint.name if args.checkpoint else args.preset}: {parameters / 1e6:.1f}M parameters, "
              f"{torch.get_num_threads()} threads")
        rates = {}
        for batch_size in args.batch_sizes:
            rates[batch_size], requests = requests_per_second(checkpoint, batch_size, args.rounds)
            print(f"batch {batch_size}: {rates[batch_size]:.1f} requests/s ({requests} requests)")
        first = args.batch_sizes[0]
        for batch_size in args.batch_sizes[1:]:
            print(f"batch {batch_size} / batch {first}: {rates[batch_size] / rates[first]:.2f}x")


if __name__ == "__main__":
    main()
