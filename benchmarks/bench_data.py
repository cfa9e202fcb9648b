"""Tokenization throughput (MB of text per second) of the shard pipeline (`data.source: shards`) against the
tokenizer's own speed, on one corpus in shards, one tokenizer kind at a time.

    python benchmarks/bench_data.py                     # 100 MB: Tiny Shakespeare repeated, in 4 shards
    python benchmarks/bench_data.py --mb 400 --shards 8

For each kind (char, byte, BPE-4k, the STLM 10M size) it times, on the same text:
- the tokenizer alone: `encode_batch_fast` over each shard in 64K-character pieces (the Rust tokenizer's own thread
  pool on every core), ids kept as numpy arrays and nothing written;
- the pipeline: `mtlm.data.shards.token_store` with a fresh cache, worker processes on every core, ids written to
  the token file (uint16), whole lines per piece, eos after every shard;
- the path of the other sources (a single text file through `datasets.map`: tokenize, then pack into blocks of 1024),
  on the first shard, num_proc 2, datasets' cache off.
Results go to benchmarks/results/data.json; `--table` prints the README table from it without running anything.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np

from mtlm.data.processing import pack, tokenize
from mtlm.data.shards import token_store
from mtlm.data.sources import TINY_SHAKESPEARE, contiguous_splits
from mtlm.data.tokenization import bpe_tokenizer, byte_tokenizer, char_tokenizer

RESULTS = Path(__file__).parent / "results" / "data.json"


def tokenizer_alone(tokenizer, files: list[Path], piece: int = 1 << 16) -> float:
    """Seconds for the Rust tokenizer to encode every shard, each as one batch of 64K-character pieces (what keeps
    its thread pool busy on every core)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    start = time.perf_counter()
    for path in files:
        text = path.read_text(encoding="utf-8")
        pieces = [text[offset:offset + piece] for offset in range(0, len(text), piece)]
        for encoding in tokenizer.backend_tokenizer.encode_batch_fast(pieces, add_special_tokens=False):
            np.asarray(encoding.ids, dtype=np.uint16)
    return time.perf_counter() - start


def pipeline(tokenizer, folder: Path, cache: Path) -> tuple[float, int]:
    start = time.perf_counter()
    store = token_store(folder, tokenizer, cache_dir=cache)
    seconds = time.perf_counter() - start
    return seconds, json.loads((store / "index.json").read_text())["tokens"]


def datasets_path(tokenizer, files: list[Path], block_size: int = 1024) -> float:
    """Seconds for the other sources' path (one file through `datasets.map`: tokenize, then pack), on the first
    shard, num_proc 2, datasets' cache off; MB/s is computed on that shard's size."""
    datasets.disable_caching()
    text = contiguous_splits(files[0], {"train": 1.0})["train"]
    start = time.perf_counter()
    pack(tokenize(text, tokenizer, num_proc=2), block_size, num_proc=2)
    return time.perf_counter() - start


def table(results: dict) -> str:
    lines = [f"{results['megabytes']:.0f} MB in {results['shards']} shards, {results['cores']} cores:", "",
             "| tokenizer | tokenizer alone (MB/s) | shard pipeline (MB/s) | pipeline / tokenizer | "
             "datasets.map path (MB/s) | tokens |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in results["kinds"].items():
        lines.append(f"| {name} | {row['tokenizer_mb_s']:.1f} | {row['pipeline_mb_s']:.1f} | "
                     f"{row['pipeline_mb_s'] / row['tokenizer_mb_s']:.2f}x | {row['datasets_mb_s']:.1f} | "
                     f"{row['tokens']:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=100, help="corpus size in MB")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--table", action="store_true", help="print the table of the saved results and stop")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(RESULTS.read_text())))
        return

    shakespeare = TINY_SHAKESPEARE.read_text(encoding="utf-8")
    tokenizers = {"char": char_tokenizer([shakespeare]), "byte": byte_tokenizer(),
                  "bpe-4k": bpe_tokenizer([shakespeare], 4000)}
    results = {"megabytes": args.mb, "shards": args.shards, "cores": os.cpu_count(), "kinds": {}}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "corpus"
        folder.mkdir()
        repeats = args.mb * 2**20 // args.shards // len(shakespeare.encode("utf-8")) + 1
        files = []
        for index in range(args.shards):
            files.append(folder / f"shard-{index:03d}.txt")
            files[-1].write_text(shakespeare * repeats, encoding="utf-8")
        megabytes = sum(path.stat().st_size for path in files) / 2**20
        results["megabytes"] = megabytes
        print(f"{megabytes:.0f} MB in {args.shards} shards")
        for name, tokenizer in tokenizers.items():
            alone = tokenizer_alone(tokenizer, files)
            seconds, tokens = pipeline(tokenizer, folder, Path(scratch) / f"cache-{name}")
            shard_megabytes = files[0].stat().st_size / 2**20
            mapped = datasets_path(tokenizer, files)
            results["kinds"][name] = {"tokenizer_mb_s": megabytes / alone, "pipeline_mb_s": megabytes / seconds,
                                      "datasets_mb_s": shard_megabytes / mapped, "tokens": tokens}
            print(f"{name}: tokenizer alone {megabytes / alone:.1f} MB/s, pipeline {megabytes / seconds:.1f} MB/s, "
                  f"datasets.map path {shard_megabytes / mapped:.1f} MB/s", flush=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print("\n" + table(results))


if __name__ == "__main__":
    main()
