"""The `mtlm` command. Each subcommand has --help."""

import argparse
import sys

from .configuration.presets import PRESETS, count_parameters
from .convert import convert_folder
from .data import arithmetic
from .data.tokenization import (
    arithmetic_tokenizer,
    bpe_tokenizer,
    byte_tokenizer,
    char_tokenizer,
    read_corpus,
)
from .files import atomic_folder


def _presets(args: argparse.Namespace) -> None:
    rows = []
    for preset in PRESETS.values():
        config = preset.config()
        count = count_parameters(config)
        reference = f"{preset.reference_parameters / 1e6:.1f}M" if preset.reference_parameters else "-"
        shape = f"d{config.hidden_size} L{config.num_hidden_layers} h{config.num_attention_heads}"
        rows.append((preset.name, preset.model_type, f"{count:,}", reference, shape, preset.description))
    header = ("preset", "family", "parameters", "published", "shape", "what it is")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])


def _convert(args: argparse.Namespace) -> None:
    direction = convert_folder(args.source, args.destination, to=args.to, overwrite=args.overwrite)
    print(f"Wrote {direction} checkpoint to {args.destination}")


def _tokenizer(args: argparse.Namespace) -> None:
    if args.kind == "arithmetic":
        tokenizer = arithmetic_tokenizer()
    elif args.kind == "byte":
        tokenizer = byte_tokenizer()
    elif args.kind == "char":
        tokenizer = char_tokenizer([read_corpus(args.input)])
    else:
        tokenizer = bpe_tokenizer([read_corpus(args.input)], args.vocab_size)
    with atomic_folder(args.out, overwrite=args.overwrite) as staging:
        tokenizer.save_pretrained(staging)
    print(f"Wrote the {args.kind} tokenizer ({len(tokenizer)} ids) to {args.out}")


def _data_arithmetic(args: argparse.Namespace) -> None:
    counts = arithmetic.write_splits(
        args.out_dir, n_samples=args.n_samples, n_operands=args.N, low=args.A, high=args.B, ops=args.ops,
        seed=args.seed,
    )
    print(f"Wrote {', '.join(f'{name}.jsonl ({count:,})' for name, count in counts.items())} to {args.out_dir}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtlm", description="A transformers-native zoo of tiny language models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    presets = commands.add_parser(
        "presets", help="list the named model configurations with their exact parameter counts",
        description="List the named configurations of the reproduced models, with exact parameter counts "
        "and the figures the originals publish.",
    )
    presets.set_defaults(handler=_presets)

    convert = commands.add_parser(
        "convert", help="convert a checkpoint folder between mtlm and its upstream transformers twin",
        description="Convert a checkpoint folder: mtlm_llama <-> LlamaForCausalLM, mtlm_gpt <-> GPT2LMHeadModel, "
        "mtlm_moe <-> MixtralForCausalLM. A folder written with --to upstream loads in plain transformers "
        "without remote code. The tokenizer is copied along.",
    )
    convert.add_argument("source", help="checkpoint folder to read")
    convert.add_argument("destination", help="folder to write (written whole, or not at all)")
    convert.add_argument(
        "--to", choices=("upstream", "mtlm"), default=None, help="target side (default: the other side of SOURCE)"
    )
    convert.add_argument("--overwrite", action="store_true", help="replace DESTINATION if it exists")
    convert.set_defaults(handler=_convert)

    tokenizer = commands.add_parser(
        "tokenizer", help="write a tokenizer folder (arithmetic, byte, char or bpe)",
        description="Write a tokenizer as a folder that AutoTokenizer loads anywhere (plain tokenizers JSON).",
    )
    kinds = tokenizer.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, help_text in [
        ("arithmetic", "MLM's 18 ids: <pad> 0, <bos> 1, <eos> 2, digits 3-12, + - * / 13-16, = 17"),
        ("byte", "one id per UTF-8 byte, then <pad> <bos> <eos>; lossless for any text"),
        ("char", "one id per character of --input, plus <pad> <bos> <eos> <unk>"),
        ("bpe", "byte-level BPE trained on --input to --vocab-size ids"),
    ]:
        command = kinds.add_parser(kind, help=help_text, description=help_text)
        if kind in ("char", "bpe"):
            command.add_argument("--input", required=True, help="UTF-8 text file to learn the vocabulary from")
        if kind == "bpe":
            command.add_argument("--vocab-size", type=int, required=True, help="ids in all, specials included")
        command.add_argument("--out", required=True, help="folder to write")
        command.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
        command.set_defaults(handler=_tokenizer)

    data = commands.add_parser("data", help="generate datasets", description="Generate datasets.")
    generators = data.add_subparsers(dest="generator", required=True, metavar="GENERATOR")
    arith = generators.add_parser(
        "arithmetic", help="MLM's synthetic arithmetic task as train/val/test JSONL (80/10/10)",
        description="Write train.jsonl, val.jsonl and test.jsonl (80/10/10) of unique expressions, evaluated left "
        "to right, division only where exact, e.g. {\"prompt\": \"554+456=\", \"target\": \"1010\", "
        "\"text\": \"<bos>554+456=1010<eos>\"}.",
    )
    arith.add_argument("--out_dir", "--out-dir", required=True, help="folder for the three files")
    arith.add_argument("--n_samples", "--n-samples", type=int, default=70000, help="unique expressions (70000)")
    arith.add_argument("--N", type=int, default=2, help="operands per expression (2)")
    arith.add_argument("--A", type=int, default=0, help="smallest operand (0)")
    arith.add_argument("--B", type=int, default=999, help="largest operand (999)")
    arith.add_argument("--ops", nargs="+", default=["+"], help="operators: + - '*' / as separate arguments or +-*/")
    arith.add_argument("--seed", type=int, default=0, help="random seed (0)")
    arith.set_defaults(handler=_data_arithmetic)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        sys.exit(f"mtlm {args.command}: error: {error}")


if __name__ == "__main__":
    main()
