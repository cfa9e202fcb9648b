"""The `mtlm` command. Each subcommand has --help."""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

from .configuration.presets import PRESETS, count_parameters
from .convert import convert_folder
from .data import arithmetic
from .data.tokenization import make_tokenizer, read_corpus
from .errors import UsageError
from .evaluation import harness
from .evaluation.compare import comparison_rows, load_run, markdown_comparison, plot_comparison
from .evaluation.exact_match import exact_match, read_prompt_targets
from .evaluation.perplexity import perplexity, read_documents
from .evaluation.results import save_into_checkpoint
from .families import FAMILIES
from .files import (
    atomic_file,
    check_checkpoint_files,
    load_causal_lm,
    read_checkpoint_config,
    require_folder,
    require_tokenizer,
    staged,
    upgrade_code,
)
from .growth import METHODS, grow_folder
from .hub_cards import write_card
from .hub_cards.publish import export_folder, push_folder
from .runtimes import GGUF_TYPES, TOLERANCE, export_gguf, export_onnx
from .training import run_config
from .training.reports import check_sampling, sample, unknown_characters
from .training.trainer import NonFiniteLossError, end_of_run_sample, train


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell; the last column runs free."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])


# How `mtlm presets` abbreviates a config's shape: d128 L4 h4 (decoders), ctx64 e32 (fixed-context models).
SHAPE = (("d", "hidden_size"), ("L", "num_hidden_layers"), ("h", "num_attention_heads"), ("ctx", "context_size"),
         ("e", "embedding_size"))


def _presets(args: argparse.Namespace) -> None:
    families = [(family.model_type, family.upstream.causal_lm_class.__name__ if family.upstream else "-",
                 "yes" if family.flax_class else "no", family.describe(family.config_class()))
                for family in FAMILIES.values()]
    _print_table(("family", "upstream twin", "flax", "what it is (default config)"), families)
    print()
    rows = []
    for preset in PRESETS.values():
        config = preset.config()
        count = count_parameters(config)
        reference = f"{preset.reference_parameters / 1e6:.1f}M" if preset.reference_parameters else "-"
        shape = " ".join(f"{prefix}{getattr(config, name)}" for prefix, name in SHAPE if hasattr(config, name))
        rows.append((preset.name, preset.model_type, f"{count:,}", reference, shape, preset.description))
    _print_table(("preset", "family", "parameters", "published", "shape", "what it is"), rows)


def _configs(args: argparse.Namespace) -> None:
    configs = run_config.bundled_configs()
    width = max(len(name) for name in configs)
    for name, (_, description) in configs.items():
        print(f"{name.ljust(width)}  {description}")
    print(f"\nmtlm train NAME trains one; the files are in {run_config.CONFIGS}")


def _convert(args: argparse.Namespace) -> None:
    direction = convert_folder(args.source, args.destination, to=args.to, overwrite=args.overwrite)
    print(f"Wrote {direction} checkpoint to {args.destination}")


def _tokenizer(args: argparse.Namespace) -> None:
    texts = [read_corpus(args.input)] if getattr(args, "input", None) else []
    if args.kind == "byte_chunks":
        if args.chunk_boundary == "bpe" and not (args.input or args.boundaries):
            raise UsageError("byte_chunks with --chunk-boundary bpe cuts text where a BPE does: give --input (a text "
                             "to train one on) or --boundaries (a tokenizer folder), or use --chunk-boundary space.")
        tokenizer = make_tokenizer(args.kind, texts, args.vocab_size, chunk_boundary=args.chunk_boundary,
                                   max_chunk_bytes=args.max_chunk_bytes, boundary_path=args.boundaries)
    else:
        tokenizer = make_tokenizer(args.kind, texts, getattr(args, "vocab_size", None),
                                   getattr(args, "max_vocab", None))
    with staged(args.out, folder=True, overwrite=args.overwrite) as staging:
        tokenizer.save_pretrained(staging)
    print(f"Wrote the {args.kind} tokenizer ({len(tokenizer)} ids) to {args.out}")


def _data_arithmetic(args: argparse.Namespace) -> None:
    counts = arithmetic.write_splits(
        args.out_dir, n_samples=args.n_samples, n_operands=args.N, low=args.A, high=args.B, ops=args.ops,
        seed=args.seed, reverse=args.reverse, division=args.division, scratchpad=args.scratchpad,
    )
    print(f"Wrote {', '.join(f'{name}.jsonl ({count:,})' for name, count in counts.items())} to {args.out_dir}")


def _train(args: argparse.Namespace) -> None:
    run = run_config.load(args.config, args.set)
    if args.backend == "flax":
        _train_flax(run, args)
        return
    trainer = train(run, overwrite=args.overwrite, resume=args.resume, sample_prompt=args.sample_prompt)
    if not trainer.is_world_process_zero():
        return
    output_dir = run["training"]["output_dir"]
    print(f"\nSaved the model to {output_dir}. A sample:\n")
    print(end_of_run_sample(trainer))


def _train_flax(run: dict, args: argparse.Namespace) -> None:
    try:
        from .training.flax_trainer import train_flax
    except ImportError as error:
        raise ImportError(f"--backend flax needs jax, flax and optax ({error}): pip install 'mtlm[flax]'.") from None
    state = train_flax(run, overwrite=args.overwrite, resume=args.resume)
    output_dir = run["training"]["output_dir"]
    print(f"\nSaved the model to {output_dir} after {state['global_step']} steps; it loads with "
          "AutoModelForCausalLM and with mtlm.FlaxAutoModelForCausalLM.")


def _generate(args: argparse.Namespace) -> None:
    if args.seed is not None:
        torch.manual_seed(args.seed)
    model, tokenizer = _load_for_generation(args.checkpoint)
    _warn_unknown_characters(tokenizer, args.prompt)
    print(sample(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                 compiled=args.compile))


def _warn_unknown_characters(tokenizer, prompt: str) -> None:
    unknown = unknown_characters(tokenizer, prompt)
    if unknown:
        print(f"mtlm: warning: the prompt's characters {', '.join(repr(character) for character in unknown)} are not "
              f"in the tokenizer's vocabulary; the model reads each as {tokenizer.unk_token} and the echoed prompt "
              "leaves them out.", file=sys.stderr)


def _load_for_generation(checkpoint: str):
    """Any causal LM folder with its tokenizer. An mtlm folder loads with this mtlm's classes, not with the code it
    carries, which may be older (see mtlm upgrade-code)."""
    config = check_checkpoint_files(checkpoint)
    require_tokenizer(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    is_mtlm = config.get("model_type") in FAMILIES
    model = load_causal_lm(checkpoint, trust_remote_code=not is_mtlm).eval()
    return model, tokenizer


def _chat(args: argparse.Namespace) -> None:
    model, tokenizer = _load_for_generation(args.checkpoint)
    temperature = args.temperature
    print("Type a prompt. 'temp 0.5' sets the temperature (0 = greedy); 'quit' leaves.")
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if line.strip() == "quit":
            break
        if line.startswith("temp "):
            try:
                value = float(line.split()[1])
                check_sampling(temperature=value)
                temperature = value
                print(f"temperature = {temperature}")
            except (IndexError, ValueError):
                print("usage: temp 0.8 (0 for greedy decoding)")
            continue
        _warn_unknown_characters(tokenizer, line)
        print(sample(model, tokenizer, line, args.max_new_tokens, temperature=temperature, top_k=args.top_k,
                     compiled=args.compile))


def _number(kind: type, minimum: float | None = None, above: float | None = None, at_most: float | None = None):
    """An argparse type: a number of `kind` within the bounds, or a one-line error quoting what was given."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text!r}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be more than {above}, got {text!r}")
        if at_most is not None and value > at_most:
            raise argparse.ArgumentTypeError(f"must be at most {at_most}, got {text!r}")
        return value

    return parse


COUNT = _number(int, minimum=1)
NON_NEGATIVE = _number(int, minimum=0)
TEMPERATURE = _number(float, minimum=0)
PROBABILITY = _number(float, above=0, at_most=1)


def _layer_map(text: str) -> list[int]:
    try:
        return [int(index) for index in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected source layer indices separated by commas, e.g. 0,0,1,1; got {text!r}")


def _grow(args: argparse.Namespace) -> None:
    if (args.method is None) == (args.layer_map is None):
        raise UsageError("Pass either --method (with --num-layers) or --layer-map.")
    if args.method is not None and args.num_layers is None:
        raise UsageError(f"--method {args.method} needs --num-layers, the depth of the grown model.")
    torch.manual_seed(args.seed)
    grown = grow_folder(
        args.checkpoint, args.out, num_layers=args.num_layers, method=args.method or "stack", mapping=args.layer_map,
        function_preserving=args.function_preserving, overwrite=args.overwrite,
    )
    record = grown.config.growth_history[-1]
    shown = " ".join("-" if index is None else str(index) for index in record["layer_map"])
    print(f"Grew {args.checkpoint} ({record['source_num_layers']} layers) into {args.out} ({record['num_layers']} "
          f"layers, {grown.num_parameters():,} parameters) by {record['method']}"
          f"{', function-preserving' if record['function_preserving'] else ''}.\nlayer map (source layer of each "
          f"grown layer, - for a fresh one): {shown}")


def _eval(args: argparse.Namespace) -> None:
    if args.arithmetic:
        _eval_exact_match(args)
        return
    local_data = dict(_key_value(item, "--local-data", "TASK=PATH") for item in args.local_data)
    for folder in args.include_path:
        require_folder(folder, "folder of task YAMLs (--include-path)")
    if args.output and Path(args.output).suffix == ".md":
        raise UsageError(f"--output {args.output}: name the results JSON (the table is written beside it as .md).")
    if args.batch_size is not None and not (args.batch_size.isdigit() and int(args.batch_size) > 0) \
            and not args.batch_size.startswith("auto"):
        raise UsageError(f"--batch-size {args.batch_size}: give a positive number, auto or auto:N.")
    batch_size = int(args.batch_size) if args.batch_size and args.batch_size.isdigit() else args.batch_size
    check_checkpoint_files(args.checkpoint)
    results = harness.evaluate(
        args.checkpoint, args.tasks, num_fewshot=args.num_fewshot, limit=args.limit, batch_size=batch_size or 1,
        include_path=args.include_path or None, local_data=local_data, device=args.device,
    )
    table = harness.markdown_table(results)
    print(table)
    if args.output:
        output = Path(args.output)
        with atomic_file(output) as handle:
            handle.write(harness.to_json(results))
        with atomic_file(output.with_suffix(".md")) as handle:
            handle.write(table)
        print(f"Wrote {output} and {output.with_suffix('.md')}")


def _key_value(text: str, option: str, shape: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key or not value:
        raise UsageError(f"{option} expects {shape}, got {text!r}.")
    return key, value


def _eval_exact_match(args: argparse.Namespace) -> None:
    if args.batch_size is not None and not (args.batch_size.isdigit() and int(args.batch_size) > 0):
        raise UsageError(f"--batch-size {args.batch_size}: exact match takes a number of rows per batch (a positive integer).")
    batch_size = int(args.batch_size) if args.batch_size else 64
    rows = read_prompt_targets(args.arithmetic)
    model, tokenizer = _load_for_generation(args.checkpoint)
    result = exact_match(model, tokenizer, rows, batch_size=batch_size)
    for row in result["samples"]:
        mark = "ok" if row["prediction"] == row["target"] else "xx"
        print(f"{mark}  {row['prompt']}{row['prediction']}   (target {row['target']})")
    print(f"exact match {result['exact_match']:.4f} on {result['n']} examples; by digits: {result['by_digits']}")
    summary = {key: result[key] for key in ("exact_match", "by_digits", "n")}
    _keep_results(args.checkpoint, "exact_match", Path(args.arithmetic).name, summary, args.output)


def _keep_results(checkpoint: str, section: str, name: str, figures: dict, output: str | None) -> None:
    """Keep one evaluation's figures in the checkpoint's eval_results.json and, if asked, in `output` (the shape
    mtlm compare reads)."""
    save_into_checkpoint(checkpoint, section, {"results": {name: figures}})
    if output:
        with atomic_file(output) as handle:
            json.dump({"model_name": Path(checkpoint).resolve().name, "results": {name: figures}}, handle, indent=2)


def _ppl(args: argparse.Namespace) -> None:
    if args.stride is not None and args.max_length is not None and args.stride > args.max_length:
        raise UsageError(f"--stride {args.stride} is longer than --max-length {args.max_length}: windows would skip "
                         "tokens; give a stride of at most the window length.")
    documents = read_documents(args.data, args.field)
    model, tokenizer = _load_for_generation(args.checkpoint)
    result = perplexity(model, tokenizer, documents, max_length=args.max_length, stride=args.stride,
                        batch_size=args.batch_size)
    for key, value in result.items():
        print(f"{key:>16}  {value:.4f}" if isinstance(value, float) else f"{key:>16}  {value:,}")
    data = Path(args.data).resolve()
    name = f"{data.parent.name}/{data.name}"  # wikitext-2/test.txt, not test.txt
    _keep_results(args.checkpoint, "perplexity", name, result, args.output)


def _compare(args: argparse.Namespace) -> None:
    runs = [load_run(path) for path in args.results]
    rows = comparison_rows(runs, args.metric)
    table = markdown_comparison(runs, rows)
    print(table)
    plot_comparison(runs, rows, args.plot)
    print(f"Bar chart: {args.plot}")
    if args.output:
        with atomic_file(args.output) as handle:
            handle.write(table + "\n")


def _card(args: argparse.Namespace) -> None:
    read_checkpoint_config(args.checkpoint)
    path = write_card(args.checkpoint, repo_id=args.repo_id, license=args.license, base_model=args.base_model)
    print(f"Wrote {path}")


def _export(args: argparse.Namespace) -> None:
    if args.gguf or args.onnx:
        for option in ("repo_id", "license"):
            if getattr(args, option):
                raise UsageError(f"--{option.replace('_', '-')} goes into a model card, which --gguf and --onnx "
                                 "do not write: leave it out, or export the Hub folder without --gguf/--onnx.")

        path, error = (export_gguf(args.checkpoint, args.out, args.gguf_type, overwrite=args.overwrite) if args.gguf
                       else export_onnx(args.checkpoint, args.out, overwrite=args.overwrite))
        checked = "transformers' GGUF reader" if args.gguf else "onnxruntime"
        print(f"Wrote {path}: run with {checked}, its logits differ from the checkpoint's by at most {error:.2g} "
              f"of their std (allowed: {TOLERANCE[args.gguf_type if args.gguf else 'onnx']:g}).")
        return
    export_folder(args.checkpoint, args.out, native=args.native, repo_id=args.repo_id, license=args.license,
                  overwrite=args.overwrite)
    kind = "a plain transformers architecture (no remote code)" if args.native else "remote code"
    print(f"Wrote a Hub-ready folder with {kind} to {args.out}")


def _upgrade_code(args: argparse.Namespace) -> None:
    for folder in args.checkpoints:
        read_checkpoint_config(folder)  # every folder is checked before any is changed
    for folder in args.checkpoints:
        changed = upgrade_code(folder)
        print(f"{folder}: {'updated ' + ', '.join(changed) if changed else 'already current'}")


def _push(args: argparse.Namespace) -> None:
    files = push_folder(args.checkpoint, args.repo_id, private=args.private, revision=args.revision,
                        dry_run=args.dry_run)
    for name, size in files:
        print(f"{size:>14,}  {name}")
    total = sum(size for _, size in files)
    where = f"{args.repo_id}" + (f" (branch {args.revision})" if args.revision else "")
    if args.dry_run:
        print(f"Dry run: the card is valid; {len(files)} files, {total:,} bytes would be uploaded to {where}.")
    else:
        print(f"Uploaded {len(files)} files ({total:,} bytes) to https://huggingface.co/{args.repo_id}")


# What a user's mistake raises (a genuine bug raises something else and shows its traceback).
USER_ERRORS = (ValueError, OSError, ImportError, NonFiniteLossError)


class CommandError(SystemExit):
    """Exits with `code` after the one-line message has been printed; str() is the message."""

    def __init__(self, message: str, code: int):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Parser(argparse.ArgumentParser):
    """argparse, with a malformed command line reported on one line (and the --help that explains it)."""

    def error(self, message: str):
        line = f"{self.prog}: error: {message} (see {self.prog} --help)"
        print(line, file=sys.stderr)
        raise CommandError(line, 2)


COMPILED_DECODING_HELP = ("decode with a static KV cache and a torch.compiled step: the first generation compiles "
                          "(seconds to a minute), later ones of the same length run 1.4-1.6x faster per token on CPU")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mtlm", description="A transformers-native zoo of tiny language models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    presets = commands.add_parser(
        "presets", help="list the model families and the named configurations with their exact parameter counts",
        description="List the model families (each with its upstream transformers twin and whether it has a Flax "
        "twin), then the named configurations of the reproduced models, with exact parameter counts and the figures "
        "the originals publish.",
    )
    presets.set_defaults(handler=_presets)

    configs = commands.add_parser(
        "configs", help="list the bundled run configs (mtlm train NAME)",
        description="List the run configs that ship with mtlm, each with the first line of its comment. Train one "
        "with `mtlm train NAME`, or copy its file and edit it.",
    )
    configs.set_defaults(handler=_configs)

    convert = commands.add_parser(
        "convert", help="convert a checkpoint folder between mtlm and its upstream transformers twin",
        description="Convert a checkpoint folder: " + ", ".join(
            f"{family.model_type} <-> {family.upstream.causal_lm_class.__name__}" for family in FAMILIES.values()
            if family.upstream) + ". A folder written with --to upstream loads in plain transformers without remote "
        "code. The tokenizer is copied along.",
    )
    convert.add_argument("source", help="checkpoint folder to read")
    convert.add_argument("destination", help="folder to write (written whole, or not at all)")
    convert.add_argument(
        "--to", choices=("upstream", "mtlm"), default=None, help="target side (default: the other side of SOURCE)"
    )
    convert.add_argument("--overwrite", action="store_true", help="replace DESTINATION if it exists")
    convert.set_defaults(handler=_convert)

    tokenizer = commands.add_parser(
        "tokenizer", help="write a tokenizer folder (arithmetic, byte, char, bpe, word or byte_chunks)",
        description="Write a tokenizer as a folder that AutoTokenizer loads anywhere (plain tokenizers JSON).",
    )
    kinds = tokenizer.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, help_text in [
        ("arithmetic", "MLM's 18 ids: <pad> 0, <bos> 1, <eos> 2, digits 3-12, + - * / 13-16, = 17"),
        ("byte", "one id per UTF-8 byte, then <pad> <bos> <eos>; lossless for any text"),
        ("char", "one id per character of --input, plus <pad> <bos> <eos> <unk>"),
        ("bpe", "byte-level BPE trained on --input to --vocab-size ids"),
        ("word", "words and punctuation of --input, the --max-vocab most frequent (specials included), <unk> else"),
        ("byte_chunks", "mtlm_byte's bytes and <eoc> chunk marks, chunks cut by a BPE (trained on --input, or "
                        "--boundaries) or after spaces (loads with trust_remote_code where mtlm is absent)"),
    ]:
        command = kinds.add_parser(kind, help=help_text, description=help_text)
        if kind in ("char", "bpe", "word"):
            command.add_argument("--input", required=True, help="UTF-8 text file to learn the vocabulary from")
        if kind == "word":
            command.add_argument("--max-vocab", type=COUNT, required=True, help="ids at most, specials included")
        if kind == "bpe":
            command.add_argument("--vocab-size", type=COUNT, required=True, help="ids in all, specials included")
        if kind == "byte_chunks":
            command.add_argument("--chunk-boundary", choices=["bpe", "space"], default="bpe",
                                 help="where chunks end: subword boundaries, or after space-like bytes")
            command.add_argument("--max-chunk-bytes", type=COUNT, default=12,
                                 help="the model's chunk length: at most this minus 1 bytes, then <eoc>")
            command.add_argument("--input", help="UTF-8 text to train the boundary BPE on")
            command.add_argument("--vocab-size", type=COUNT, default=2048, help="ids of the boundary BPE")
            command.add_argument("--boundaries", help="a tokenizer folder whose tokens are the chunks instead")
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
    arith.add_argument("--n_samples", "--n-samples", type=COUNT, default=70000, help="unique expressions (70000)")
    arith.add_argument("--N", type=COUNT, default=2, help="operands per expression (2)")
    arith.add_argument("--A", type=int, default=0, help="smallest operand (0)")
    arith.add_argument("--B", type=int, default=999, help="largest operand (999)")
    arith.add_argument("--ops", nargs="+", default=["+"], help="operators: + - '*' / as separate arguments or +-*/")
    arith.add_argument("--seed", type=int, default=0, help="random seed (0)")
    arith.add_argument("--reverse", action="store_true",
                       help="write each answer's digits least significant first in the text the model learns; "
                       "targets stay as written, and exact match reverses predictions back")
    arith.add_argument("--division", choices=arithmetic.DIVISION_RULES, default="reject",
                       help="exact division by rejection (reject: the seed's rule; [0, 999] holds ~8,500 exact "
                       "pairs), or construct: a leading division's dividend is a divisor in [max(A, 1), B] times a "
                       "quotient in [A, B]")
    arith.add_argument("--scratchpad", action="store_true",
                       help="for N >= 3: write each running total with the rest of the expression before the answer "
                       "(123+456+789=579+789=1368); exact match reads the answer after the last =")
    arith.set_defaults(handler=_data_arithmetic)

    train = commands.add_parser(
        "train", help="train a model from a YAML run config through the HF Trainer",
        description="Train from a run config (sections model, tokenizer, data, training; training keys are "
        "TrainingArguments fields). Without CONFIG: shakespeare-char, a small mtlm_llama on the "
        "bundled Tiny Shakespeare. The final model lands at the root of training.output_dir.",
    )
    train.add_argument("config", nargs="?", help="run config: a YAML file or the name of a bundled one (mtlm "
                       "configs); default shakespeare-char")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value (repeatable), e.g. --set training.max_steps=100")
    train.add_argument("--overwrite", action="store_true", help="replace an earlier run in the output folder")
    train.add_argument("--resume", action="store_true", help="continue the run in the output folder from its last checkpoint")
    train.add_argument("--sample-prompt", help="prompt of the sample printed at evaluations and at the end (default: "
                       "a newline for text; the first validation prompts for prompt/target data)")
    train.add_argument("--backend", choices=("torch", "flax"), default="torch",
                       help="torch: the HF Trainer; flax: the Flax twin with optax on a (data, fsdp) device mesh set "
                       "by the config's flax section (needs the [flax] extra)")
    train.set_defaults(handler=_train)

    generate = commands.add_parser(
        "generate", help="generate text from a checkpoint folder (any causal LM)",
        description="Generate with AutoModelForCausalLM + AutoTokenizer from any causal LM folder, ours or not.",
    )
    generate.add_argument("checkpoint", help="checkpoint folder")
    generate.add_argument("--prompt", required=True, help="text to continue")
    generate.add_argument("--max-new-tokens", type=NON_NEGATIVE, default=200)
    generate.add_argument("--temperature", type=TEMPERATURE, default=0.8, help="0 for greedy decoding")
    generate.add_argument("--top-k", type=NON_NEGATIVE, default=50, help="0 keeps every token")
    generate.add_argument("--top-p", type=PROBABILITY, default=1.0, help="in (0, 1]; 1 keeps every token")
    generate.add_argument("--seed", type=int, default=None)
    generate.add_argument("--compile", action="store_true", help=COMPILED_DECODING_HELP)
    generate.set_defaults(handler=_generate)

    chat = commands.add_parser(
        "chat", help="interactive generation from a checkpoint folder",
        description="Type a prompt and read the continuation; 'temp 0.5' sets the temperature; 'quit' leaves.",
    )
    chat.add_argument("checkpoint", help="checkpoint folder")
    chat.add_argument("--max-new-tokens", type=NON_NEGATIVE, default=200)
    chat.add_argument("--temperature", type=TEMPERATURE, default=0.8, help="0 for greedy decoding")
    chat.add_argument("--top-k", type=NON_NEGATIVE, default=50, help="0 keeps every token")
    chat.add_argument("--compile", action="store_true", help=COMPILED_DECODING_HELP)
    chat.set_defaults(handler=_chat)

    grow = commands.add_parser(
        "grow", help="grow a checkpoint into a deeper model by copying its layers (progressive growth)",
        description="Map a checkpoint's layers onto a deeper model of the same family and write it as a new "
        "checkpoint folder (weights, config with the growth recorded in growth_history, remote code, tokenizer). "
        "stack repeats the whole stack (0 1 0 1), interleave repeats each layer in place (0 0 1 1), random adds "
        "fresh layers on top; --layer-map gives the source layer of every grown layer. The source is not modified.",
    )
    grow.add_argument("checkpoint", help="mtlm checkpoint folder to grow")
    grow.add_argument("--num-layers", type=COUNT, help="layers of the grown model (need not be a multiple)")
    grow.add_argument("--method", choices=METHODS, help="how grown layers map onto source layers")
    grow.add_argument("--layer-map", type=_layer_map, metavar="I,J,...",
                      help="explicit source layer of each grown layer, e.g. 0,0,1,1 (instead of --method)")
    grow.add_argument("--function-preserving", action="store_true",
                      help="zero the residual output projections of copied and fresh layers, so that the grown "
                      "model starts with exactly the source model's outputs")
    grow.add_argument("--seed", type=int, default=0, help="seed of the fresh layers' initialisation (0)")
    grow.add_argument("--out", required=True, help="folder to write (written whole, or not at all)")
    grow.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    grow.set_defaults(handler=_grow)

    evaluate = commands.add_parser(
        "eval", help="evaluate a checkpoint with lm-evaluation-harness tasks, or greedy exact match",
        description="Run lm-evaluation-harness tasks on a checkpoint folder through its Python API (the hf model "
        "with trust_remote_code, as `lm_eval --model hf` does), print its table and keep the results in the "
        "folder's eval_results.json for the model card. --tasks mtlm1 runs the twelve tasks of MTLM1's card. "
        "Offline, point a task at local files with --local-data, or write task YAMLs (dataset_path: json) in a "
        "folder given with --include-path. --arithmetic instead scores greedy exact match on prompt/target JSONL.",
    )
    evaluate.add_argument("checkpoint", help="checkpoint folder")
    what = evaluate.add_mutually_exclusive_group(required=True)
    what.add_argument("--tasks", help="comma-separated lm-eval task names, or mtlm1")
    what.add_argument("--arithmetic", metavar="FILE.jsonl", help="greedy exact match on rows with prompt and target")
    evaluate.add_argument("--num-fewshot", type=NON_NEGATIVE, help="examples in each prompt (default: the task's own)")
    evaluate.add_argument("--limit", type=_number(float, above=0), help="documents per task (a fraction if below 1), for quick checks")
    evaluate.add_argument("--batch-size", help="lm-eval batch size (1, 8, auto); exact match: rows per batch (64)")
    evaluate.add_argument("--include-path", action="append", default=[], metavar="DIR",
                          help="folder of task YAMLs of your own (repeatable); relative data_files are taken relative "
                          "to each YAML")
    evaluate.add_argument("--local-data", action="append", default=[], metavar="TASK=PATH",
                          help="read a task's dataset from a local file (its evaluation split) or a folder of "
                          "SPLIT.jsonl files (repeatable)")
    evaluate.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if there is one, else cpu)")
    evaluate.add_argument("--output", metavar="OUT.json", help="write the results JSON here (and the table as OUT.md)")
    evaluate.set_defaults(handler=_eval)

    ppl = commands.add_parser(
        "ppl", help="strided sliding-window perplexity, per token, byte and word",
        description="Sliding-window perplexity of a checkpoint on a text file (one document) or a .jsonl file (one "
        "document per row): mean loss per token, token perplexity, bits per byte, byte and word perplexity "
        "(WikiText's convention), so models with different tokenizers compare. With --stride equal to --max-length "
        "the windows are lm-eval's loglikelihood_rolling windows.",
    )
    ppl.add_argument("checkpoint", help="checkpoint folder")
    ppl.add_argument("--data", required=True, help="UTF-8 text file, or .jsonl with one document per row")
    ppl.add_argument("--field", default="text", help="the .jsonl field holding the text (text)")
    ppl.add_argument("--max-length", type=COUNT, help="tokens per window (default: the model's context)")
    ppl.add_argument("--stride", type=COUNT, help="tokens a window advances (default: half of --max-length)")
    ppl.add_argument("--batch-size", type=COUNT, default=8, help="windows per forward pass (8)")
    ppl.add_argument("--output", metavar="OUT.json", help="write the figures here")
    ppl.set_defaults(handler=_ppl)

    compare = commands.add_parser(
        "compare", help="one table and bar chart across models' evaluation results",
        description="Compare results across models: lm-eval results files (mtlm eval --output, lm_eval "
        "--output_path), mtlm ppl outputs, or checkpoint folders (their eval_results.json). Prints a markdown "
        "table (tasks by models) and draws one bar chart per task.",
    )
    compare.add_argument("results", nargs="+", help="results JSON files or checkpoint folders")
    compare.add_argument("--metric", help="metric to show for every task (default: acc, else the task's first)")
    compare.add_argument("--plot", default="comparison.png", help="bar chart to write (comparison.png)")
    compare.add_argument("--output", metavar="OUT.md", help="also write the table here")
    compare.set_defaults(handler=_compare)
    card = commands.add_parser(
        "card", help="write the model card (README.md) of a checkpoint folder",
        description="Write CHECKPOINT/README.md from what the folder records: architecture and growth history "
        "(config.json), training (trainer_state.json, run_config.yaml), evaluations (eval_results.json). Hub "
        "metadata: library_name transformers, pipeline_tag text-generation, tags, datasets, base_model, model-index.",
    )
    card.add_argument("checkpoint", help="checkpoint folder")
    card.add_argument("--repo-id", help="Hub repository the usage snippet names (default: the folder)")
    card.add_argument("--license", help="licence identifier for the metadata, e.g. apache-2.0 (left out if not given)")
    card.add_argument("--base-model", help="Hub id of the model this one was grown or fine-tuned from")
    card.set_defaults(handler=_card)

    export = commands.add_parser(
        "export", help="write a Hub-ready folder (weights, config, code, tokenizer, card)",
        description="Write a Hub-ready copy of a checkpoint: safetensors weights, config with auto_map and the code "
        "files, tokenizer, generation config, training records and the model card. --native writes the upstream "
        "class (LlamaForCausalLM, GPT2LMHeadModel, MixtralForCausalLM) so that no remote code is needed, or says "
        "which option of the config prevents it. --gguf and --onnx write a file for llama.cpp or onnxruntime instead, "
        "checked against the checkpoint's logits before it is kept.",
    )
    export.add_argument("checkpoint", help="checkpoint folder")
    export.add_argument("out", help="folder to write (written whole, or not at all)")
    form = export.add_mutually_exclusive_group()
    form.add_argument("--native", action="store_true", help="write the upstream transformers architecture")
    form.add_argument("--gguf", action="store_true",
                      help="write OUT/model-TYPE.gguf for llama.cpp (mtlm_llama, GPT-2-compatible mtlm_gpt), "
                      "checked with transformers' GGUF reader (the export extra)")
    form.add_argument("--onnx", action="store_true",
                      help="write OUT/model.onnx (input_ids, attention_mask -> logits) with config and tokenizer, "
                      "checked with onnxruntime (the export extra)")
    export.add_argument("--gguf-type", choices=GGUF_TYPES, default="f32",
                        help="weight type of the GGUF file (default: f32)")
    export.add_argument("--repo-id", help="Hub repository the card's usage snippet names")
    export.add_argument("--license", help="licence identifier for the card's metadata")
    export.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    export.set_defaults(handler=_export)

    upgrade = commands.add_parser(
        "upgrade-code", help="bring the code files a checkpoint folder carries up to this version of mtlm",
        description="Rewrite the remote-code files (and config.json's auto_map) of mtlm checkpoint folders to this "
        "version's, leaving weights, tokenizer and everything else untouched. Folders written by mtlm 0.1 carry "
        "code that decodes wrongly with the KV cache on transformers 5.24 and later; a run folder and its "
        "checkpoints: mtlm upgrade-code runs/x runs/x/checkpoint-*.",
    )
    upgrade.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="mtlm checkpoint folders")
    upgrade.set_defaults(handler=_upgrade_code)

    push = commands.add_parser(
        "push", help="upload a Hub-ready folder to a Hub model repository",
        description="Check the folder (weights, tokenizer, a valid model card), create the repository if needed and "
        "upload the folder with huggingface_hub. The token comes from HF_TOKEN or `hf auth login`. --dry-run checks "
        "everything and lists the files with their sizes, offline, uploading nothing.",
    )
    push.add_argument("checkpoint", help="Hub-ready folder (see mtlm export)")
    push.add_argument("repo_id", help="owner/name of the model repository")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--revision", help="branch to upload to (created if needed)")
    push.add_argument("--dry-run", action="store_true", help="validate and list the files; upload nothing")
    push.set_defaults(handler=_push)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run one command. A user's mistake is one line on stderr (exit code 2 for a flag or config value, 1 for a file,
    folder or fault), never a traceback, unless MTLM_DEBUG=1."""
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except KeyboardInterrupt:
        if os.environ.get("MTLM_DEBUG", "") not in ("", "0"):
            raise
        message = f"mtlm {args.command}: interrupted (a run continues from its last checkpoint with --resume)"
        print(message, file=sys.stderr)
        raise CommandError(message, 130) from None
    except USER_ERRORS as error:
        if os.environ.get("MTLM_DEBUG", "") not in ("", "0"):
            raise
        message = f"mtlm {args.command}: error: {' '.join(str(error).split())}"
        print(message, file=sys.stderr)
        raise CommandError(message, 2 if isinstance(error, UsageError) else 1) from None


if __name__ == "__main__":
    main()
