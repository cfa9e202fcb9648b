"""The `mtlm` command. Each subcommand has --help."""

import argparse
import sys

from .configuration.presets import PRESETS, count_parameters
from .convert import convert_folder


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
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        sys.exit(f"mtlm {args.command}: error: {error}")


if __name__ == "__main__":
    main()
