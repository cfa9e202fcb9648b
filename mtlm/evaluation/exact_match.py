"""Greedy exact match on prompt/target data (MLM's metric), overall, by the answer's digit length and by the
prompt's layout (operand lengths and operators)."""

import os
from collections import defaultdict

import torch
from tqdm.auto import tqdm

from ..data.arithmetic import layout, reverse_digits
from ..files import read_jsonl


def answer_digits(target: str) -> int:
    return len(target.lstrip("-"))


def read_answer(row: dict, generated: str) -> str:
    """The answer a row's generated text gives, in the usual digit order (rows with "reversed" were learned with
    their digits reversed; rows with a "scratchpad" write steps first, each ending in "=")."""
    answer = generated.strip()
    if row.get("scratchpad"):
        answer = answer.rsplit("=", 1)[-1]
    return reverse_digits(answer) if row.get("reversed") else answer


def continuation(row: dict) -> str:
    """What a model writes after a row's prompt (as long as what it learned): its scratchpad's steps, then the
    answer."""
    return (row.get("scratchpad") or "") + row["target"]


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], batch_size: int = 64, max_new_tokens: int | None = None,
                   progress: bool = True) -> list[str]:
    """Greedy continuations of `prompts` (each preceded by bos), cut at eos, decoded without special tokens."""
    was_training, padding_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    answers = []
    limit = max_new_tokens or model.config.max_position_embeddings
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="Exact match", disable=not progress):
            batch = [f"{tokenizer.bos_token or ''}{prompt}" for prompt in prompts[start : start + batch_size]]
            inputs = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            room = model.config.max_position_embeddings - inputs["input_ids"].shape[1]
            output = model.generate(**inputs, max_new_tokens=max(1, min(limit, room)), do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            answers += tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return answers


def exact_match(model, tokenizer, examples: list[dict], batch_size: int = 64, progress: bool = True) -> dict:
    """{"exact_match", "by_digits": {digits: accuracy}, "by_layout": {layout: {"exact_match", "n"}}, "n", "samples"}
    for rows with "prompt" and "target"."""
    longest = max(len(tokenizer(continuation(row), add_special_tokens=False)["input_ids"]) for row in examples)
    answers = greedy_answers(model, tokenizer, [row["prompt"] for row in examples], batch_size, longest + 1, progress)
    hits, by_digits, by_layout = 0, defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
    predictions = [read_answer(row, answer) for row, answer in zip(examples, answers)]
    for row, prediction in zip(examples, predictions):
        correct = prediction == row["target"]
        hits += correct
        for bucket in (by_digits[answer_digits(row["target"])], by_layout[layout(row["prompt"])]):
            bucket[0] += correct
            bucket[1] += 1
    samples = [{"prompt": row["prompt"], "target": row["target"], "prediction": prediction}
               for row, prediction in list(zip(examples, predictions))[:8]]
    return {
        "exact_match": hits / len(examples),
        "by_digits": {str(digits): right / total for digits, (right, total) in sorted(by_digits.items())},
        "by_layout": {shape: {"exact_match": right / total, "n": total}
                      for shape, (right, total) in sorted(by_layout.items())},
        "n": len(examples),
        "samples": samples,
    }


def read_prompt_targets(path: str | os.PathLike) -> list[dict]:
    """The rows of a prompt/target JSONL file (mtlm data arithmetic writes them)."""
    rows = read_jsonl(path, "prompt/target file", required=("prompt", "target"))
    if not rows:
        raise ValueError(f"{path} holds no rows: pass a JSONL file of {{\"prompt\": ..., \"target\": ...}} lines.")
    return rows
