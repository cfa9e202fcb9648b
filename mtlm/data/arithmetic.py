"""MLM's synthetic arithmetic task: `{"prompt": "554+456=", "target": "1010", "text": "<bos>554+456=1010<eos>"}`.

Expressions of `n_operands` integers drawn uniformly from [low, high] and operators from `ops`, evaluated left to
right as a running total (no precedence); division only where it is exact; negative results allowed. Prompts are
unique, so no prompt appears in two splits.

Exact division by rejection (`division="reject"`, the seed's rule) keeps few expressions: [0, 999] holds only about
8,500 exact pairs a/b. With `division="construct"` an expression that starts with a division draws its divisor from
[max(low, 1), high] and its quotient from [low, high] and writes their product as the dividend ("123456/789="), so
the divisor and the answer span the range and the dividend has up to twice the digits.

With `reverse`, the text the model learns writes the answer's digits least significant first (the sign stays in
front): `"<bos>554+456=0101<eos>"`, which makes carrying learnable by small models (Lee et al., 2023, "Teaching
Arithmetic to Small Transformers"). Such rows carry `"reversed": true`; their target stays the answer as written
normally, and exact match reverses a prediction back before comparing.

With `scratchpad` (for N >= 3) the model writes each running total, with the rest of the expression, before the
answer: `"<bos>123+456+789=579+789=1368<eos>"` (reversed: `"...=975+789=8631"`), Lee et al.'s simplified scratchpad.
Each step is then a 2-operand operation; the row's `"scratchpad"` holds the steps (`"579+789="`), and exact match
reads the answer after the last "=".
"""

import inspect
import json
import os
import random
import re
from collections import Counter
from pathlib import Path

import torch
from datasets import DatasetDict

from ..errors import UsageError
from ..files import atomic_file
from .sources import load_local_files

OPERATORS = "+-*/"
SETTINGS_FILE = "generation.json"
SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}
DIVISION_RULES = ("reject", "construct")


def parse_ops(ops: list[str] | str) -> str:
    """Operators given as separate arguments (`+ - '*' /`) or run together (`+-*/`), in the seed's order."""
    chosen = set("".join(ops).replace(" ", "").replace(",", ""))
    unknown = chosen - set(OPERATORS)
    if unknown or not chosen:
        raise UsageError(f"--ops takes operators from {' '.join(OPERATORS)}; got {''.join(ops)!r}.")
    return "".join(op for op in OPERATORS if op in chosen)


def running_totals(operands: list[int], operators: str) -> list[int] | None:
    """The total after each operator, left to right; None where a division is not exact (or by zero)."""
    total, totals = operands[0], []
    for operator, operand in zip(operators, operands[1:]):
        if operator == "+":
            total += operand
        elif operator == "-":
            total -= operand
        elif operator == "*":
            total *= operand
        elif operand == 0 or total % operand:
            return None
        else:
            total //= operand
        totals.append(total)
    return totals


def reverse_digits(answer: str) -> str:
    """"-123" <-> "-321": the digits in the other order, a sign kept in front (its own inverse)."""
    sign = "-" if answer.startswith("-") else ""
    return sign + answer[len(sign):][::-1]


def layout(prompt: str) -> str:
    """The prompt's shape with every digit written d ("ddd+dd="): the operands' lengths and the operators."""
    return re.sub(r"\d", "d", prompt)


def layout_weights(prompts: list[str], balance: float) -> torch.Tensor:
    """A sampling weight per row, (rows of its layout)^-balance: 0 keeps the data's own mix, 1 draws every layout
    equally often. Uniform operands make the longest layout most of the data (81% ddd+ddd= for 3-digit addition,
    0.8% dd+dd=), and a small model then fails the rare layouts; balanced sampling is Lee et al.'s (2023) remedy."""
    counts = Counter(map(layout, prompts))
    return torch.tensor([counts[layout(prompt)] ** -balance for prompt in prompts], dtype=torch.double)


def generate(n_samples: int, n_operands: int = 2, low: int = 0, high: int = 999, ops: str = "+",
             seed: int = 0, reverse: bool = False, division: str = "reject", scratchpad: bool = False) -> list[dict]:
    """`n_samples` unique examples; a UsageError before any work when the range cannot hold that many."""
    if division not in DIVISION_RULES:
        raise UsageError(f"division={division!r} is not a rule: use one of {', '.join(DIVISION_RULES)}.")
    if n_operands < 2:
        raise UsageError(f"--N (operands per expression) must be at least 2, got {n_operands}.")
    if low < 0 or high < low:
        raise UsageError(f"Operands are written without a sign: need 0 <= --A <= --B, got A={low}, B={high}.")
    if scratchpad and n_operands < 3:
        raise UsageError(f"scratchpad writes the running totals of 3 or more operands: it needs N >= 3, got "
                         f"{n_operands}.")
    ops = parse_ops(ops)
    if division == "construct" and ("/" not in ops or high < 1):
        raise UsageError(f"division='construct' draws a divisor from [max(A, 1), B]: it needs '/' among the "
                         f"operators and B >= 1 (got ops={ops!r}, B={high}).")
    possible = (high - low + 1) ** n_operands * len(ops) ** (n_operands - 1)
    if n_samples > possible:
        raise UsageError(
            f"Cannot draw {n_samples:,} unique expressions: {n_operands} operands in [{low}, {high}] with "
            f"operators {ops!r} allow at most {possible:,}. Widen the range, add operands or ask for fewer samples."
        )

    def write(number: int) -> str:
        return reverse_digits(str(number)) if reverse else str(number)

    rng = random.Random(seed)
    seen, examples = set(), []
    attempts, max_attempts = 0, 50 * n_samples + 1000
    while len(examples) < n_samples:
        attempts += 1
        if attempts > max_attempts:
            raise UsageError(
                f"Found only {len(examples):,} unique valid expressions of the {n_samples:,} asked for (exact "
                f"division rules out most of this range): widen the range, ask for fewer samples, or draw "
                f"divisor and quotient (division='construct')."
            )
        operands = [rng.randint(low, high) for _ in range(n_operands)]
        operators = "".join(rng.choice(ops) for _ in range(n_operands - 1))
        if division == "construct" and operators[0] == "/":
            operands[1] = rng.randint(max(low, 1), high)  # the divisor; operands[0] was drawn as the quotient
            operands[0] *= operands[1]
        prompt = "".join(f"{a}{op}" for a, op in zip(operands, operators)) + f"{operands[-1]}="
        if prompt in seen:
            continue
        totals = running_totals(operands, operators)
        if totals is None:
            continue
        seen.add(prompt)
        steps = worked_steps(operands, operators, totals, write) if scratchpad else ""
        examples.append({"prompt": prompt, "target": str(totals[-1]),
                         "text": f"<bos>{prompt}{steps}{write(totals[-1])}<eos>"}
                        | ({"reversed": True} if reverse else {}) | ({"scratchpad": steps} if scratchpad else {}))
    return examples


def worked_steps(operands: list[int], operators: str, totals: list[int], write) -> str:
    """The scratchpad: after each operator but the last, the running total (as `write` writes it) and the rest of the
    expression, each step ending in "=": "579+789=" for 123+456+789."""
    return "".join(write(total) + "".join(f"{op}{a}" for op, a in zip(operators[i + 1 :], operands[i + 2 :])) + "="
                   for i, total in enumerate(totals[:-1]))


def split(examples: list[dict]) -> dict[str, list[dict]]:
    """80/10/10 in generation order (already random); the prompts are unique, so the splits are disjoint."""
    n_train = int(SPLITS["train"] * len(examples))
    n_val = int(SPLITS["val"] * len(examples))
    return {
        "train": examples[:n_train],
        "val": examples[n_train : n_train + n_val],
        "test": examples[n_train + n_val :],
    }


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write rows to `path` through a temporary file, so a good file is never replaced by a partial one."""
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def write_splits(out_dir: str | os.PathLike, **generate_kwargs) -> dict[str, int]:
    """Generate and write train.jsonl, val.jsonl and test.jsonl, and the settings that made them
    (generation.json); returns the row count of each split."""
    splits = split(generate(**generate_kwargs))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        write_jsonl(out_dir / f"{name}.jsonl", rows)
    with atomic_file(out_dir / SETTINGS_FILE) as handle:
        json.dump(generation_settings(**generate_kwargs), handle, indent=1)
    return {name: len(rows) for name, rows in splits.items()}


def generation_settings(**generate_kwargs) -> dict:
    """Every argument of `generate`, defaults filled in and operators in the seed's order: what decides the data a
    folder holds."""
    bound = inspect.signature(generate).bind(**generate_kwargs)
    bound.apply_defaults()
    return {**bound.arguments, "ops": parse_ops(bound.arguments["ops"])}


def ensure_splits(out_dir: str | os.PathLike, **generate_kwargs) -> None:
    """Write the splits into `out_dir` unless it holds them already, made with the same settings; a folder made with
    other settings is refused by name, never silently reused."""
    out_dir = Path(out_dir)
    if not (out_dir / "train.jsonl").is_file():
        write_splits(out_dir, **generate_kwargs)
        return
    wanted = generation_settings(**generate_kwargs)
    # A folder written before a setting was recorded was made the seed's way: answers in the usual order, exact
    # division by rejection, no scratchpad.
    seeds_way = {"reverse": False, "division": "reject", "scratchpad": False}
    settings_file = out_dir / SETTINGS_FILE
    recorded = {**seeds_way, **json.loads(settings_file.read_text())} if settings_file.is_file() \
        else {**wanted, **seeds_way}
    if recorded != wanted:
        differences = ", ".join(f"{name}={recorded.get(name)!r} there, {value!r} here"
                                for name, value in wanted.items() if recorded.get(name) != value)
        raise UsageError(f"{out_dir} holds arithmetic data made with other settings ({differences}): point "
                         "data.arithmetic.out_dir at another folder, or delete this one to make it again.")


def load_splits(folder: str | os.PathLike) -> DatasetDict:
    """The train/val/test JSONL files `write_splits` wrote, as splits "train", "validation" and "test"."""
    folder = Path(folder)
    return load_local_files({"train": folder / "train.jsonl", "validation": folder / "val.jsonl",
                             "test": folder / "test.jsonl"})
