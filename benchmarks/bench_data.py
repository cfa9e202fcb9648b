"""Tokenization and packing throughput (MB of text per second) through `datasets.map`, with num_proc 1 and 2.

    python benchmarks/bench_data.py                 # Tiny Shakespeare and a 100 MB corpus made by repeating it

Caching is disabled so every run tokenizes for real. The BPE tokenizer (4,000 ids, the STLM 10M size) is trained
on Tiny Shakespeare once, outside the timings.
"""

import argparse
import tempfile
import time
from pathlib import Path

import datasets

from mtlm.data.processing import pack, tokenize
from mtlm.data.sources import TINY_SHAKESPEARE, contiguous_splits
from mtlm.data.tokenization import bpe_tokenizer, byte_tokenizer, char_tokenizer


def measure(path: Path, tokenizer, num_proc: int, block_size: int) -> tuple[float, float, int]:
    """Seconds to tokenize and to pack the whole file, and the number of tokens."""
    text = contiguous_splits(path, {"train": 1.0})["train"]
    start = time.perf_counter()
    ids = tokenize(text, tokenizer, num_proc=num_proc)
    tokenized = time.perf_counter()
    blocks = pack(ids, block_size, num_proc=num_proc)
    packed = time.perf_counter()
    return tokenized - start, packed - tokenized, len(blocks) * block_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large-mb", type=int, default=100, help="size of the repeated corpus (MB)")
    parser.add_argument("--block-size", type=int, default=256)
    args = parser.parse_args()
    datasets.disable_caching()
    datasets.disable_progress_bars()

    shakespeare = TINY_SHAKESPEARE.read_text(encoding="utf-8")
    tokenizers = {
        "char": char_tokenizer([shakespeare]),
        "byte": byte_tokenizer(),
        "bpe-4k": bpe_tokenizer([shakespeare], 4000),
    }
    with tempfile.TemporaryDirectory() as folder:
        large = Path(folder) / "large.txt"
        repeats = args.large_mb * 2**20 // len(shakespeare.encode("utf-8")) + 1
        large.write_text(shakespeare * repeats, encoding="utf-8")
        corpora = {"tinyshakespeare": TINY_SHAKESPEARE, f"{args.large_mb}MB": large}
        print(f"{'corpus':16} {'tokenizer':9} {'num_proc':>8} {'MB':>7} {'tokens':>12} {'tokenize MB/s':>14} "
              f"{'pack MB/s':>10} {'both MB/s':>10}")
        for corpus_name, path in corpora.items():
            megabytes = path.stat().st_size / 2**20
            for tokenizer_name, tokenizer in tokenizers.items():
                for num_proc in (1, 2):
                    tokenize_s, pack_s, tokens = measure(path, tokenizer, num_proc, args.block_size)
                    print(f"{corpus_name:16} {tokenizer_name:9} {num_proc:>8} {megabytes:7.1f} {tokens:12,} "
                          f"{megabytes / tokenize_s:14.1f} {megabytes / pack_s:10.1f} "
                          f"{megabytes / (tokenize_s + pack_s):10.1f}", flush=True)


if __name__ == "__main__":
    main()
