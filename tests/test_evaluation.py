"""lm-evaluation-harness on checkpoints (mtlm eval and the standard lm_eval client agree), sliding-window perplexity,
comparisons, and the errors a user meets offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from mtlm.cli import main as mtlm_main
from mtlm.data.tokenization import make_tokenizer
from mtlm.evaluation import harness
from mtlm.evaluation.perplexity import perplexity, read_documents, windows

pytest.importorskip("lm_eval")

TASKS = Path(__file__).parent / "fixtures" / "lm_eval"
ROLLING = TASKS / "data" / "rolling.jsonl"
CONTEXT = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained 2-layer mtlm_llama over bytes, context 64, saved with its tokenizer."""
    folder = tmp_path_factory.mktemp("eval") / "tiny-llama"
    tokenizer = make_tokenizer("byte")
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "mtlm_llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=CONTEXT, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def metric(results: dict, task: str, name: str) -> float:
    return results["results"][task][f"{name},none"]


def test_mtlm_eval_and_the_standard_lm_eval_client_agree(checkpoint, tmp_path):
    output = tmp_path / "ours.json"
    mtlm_main(["eval", str(checkpoint), "--tasks", "tiny_arc,tiny_hellaswag,tiny_rolling", "--include-path",
               str(TASKS), "--batch-size", "8", "--output", str(output)])
    ours = json.loads(output.read_text())
    assert ours["results"]["tiny_arc"]["sample_len"] == 12 and ours["n-shot"]["tiny_arc"] == 0
    assert "|tiny_arc" in output.with_suffix(".md").read_text()
    stored = json.loads((checkpoint / "eval_results.json").read_text())["lm_eval"]
    assert stored["results"]["tiny_hellaswag"] == ours["results"]["tiny_hellaswag"]
    assert stored["limit"] == {"tiny_arc": None, "tiny_hellaswag": None, "tiny_rolling": None}

    # The standard client, in a process without mtlm (remote code), from the task folder (relative data_files).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "mod"),
           "PYTHONPATH": ""}
    script = ("import sys; sys.modules['mtlm'] = None; sys.argv[0] = 'lm_eval'; "
              "from lm_eval.__main__ import cli_evaluate; cli_evaluate()")
    command = [sys.executable, "-c", script, "--model", "hf", "--model_args",
               f"pretrained={checkpoint},trust_remote_code=True", "--tasks", "tiny_arc,tiny_hellaswag,tiny_rolling",
               "--include_path", ".", "--device", "cpu", "--batch_size", "1", "--output_path", str(tmp_path / "theirs")]
    result = subprocess.run(command, cwd=TASKS, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    theirs = json.loads(next((tmp_path / "theirs").rglob("results_*.json")).read_text())
    for task, name in [("tiny_arc", "acc"), ("tiny_arc", "acc_norm"), ("tiny_hellaswag", "acc"),
                       ("tiny_hellaswag", "acc_norm"), ("tiny_rolling", "bits_per_byte"),
                       ("tiny_rolling", "word_perplexity")]:
        assert metric(theirs, task, name) == pytest.approx(metric(ours, task, name), rel=1e-5), (task, name)


def test_lm_eval_own_tasks_read_local_files(checkpoint):
    results = harness.evaluate(
        checkpoint, "arc_easy,hellaswag,tiny_arc", include_path=TASKS, num_fewshot=1, save=False,
        local_data={"arc_easy": str(TASKS / "data" / "arc_easy"),
                    "hellaswag": str(TASKS / "data" / "hellaswag" / "validation.jsonl")},
    )
    assert results["results"]["arc_easy"]["sample_len"] == 12 and results["results"]["hellaswag"]["sample_len"] == 8
    assert results["n-shot"]["arc_easy"] == 1
    # Our ARC-shaped fixture task is arc_easy's prompt on the same rows: the same numbers.
    for name in ("acc", "acc_norm"):
        assert metric(results, "arc_easy", name) == metric(results, "tiny_arc", name)
    assert not (checkpoint / "eval_results.json").exists() or "arc_easy" not in json.loads(
        (checkpoint / "eval_results.json").read_text())["lm_eval"]["results"]


def test_perplexity_matches_lm_eval_rolling_loglikelihood(checkpoint, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ours = perplexity(model, tokenizer, read_documents(ROLLING), max_length=CONTEXT, stride=CONTEXT,
                      show_progress=False)
    theirs = harness.evaluate(checkpoint, "tiny_rolling", include_path=TASKS, save=False)
    for name in ("bits_per_byte", "byte_perplexity", "word_perplexity"):
        assert ours[name] == pytest.approx(metric(theirs, "tiny_rolling", name), rel=1e-4), name
    assert ours["tokens"] == ours["bytes"] == sum(len(text.encode()) for text in read_documents(ROLLING))

    output = tmp_path / "ppl.json"
    mtlm_main(["ppl", str(checkpoint), "--data", str(ROLLING), "--stride", "16", "--output", str(output)])
    strided = json.loads(output.read_text())["results"]["data/rolling.jsonl"]
    assert strided["stride"] == 16 and strided["max_length"] == CONTEXT and strided["tokens"] == ours["tokens"]
    assert json.loads((checkpoint / "eval_results.json").read_text())["perplexity"]["results"]["data/rolling.jsonl"] == \
        strided


def test_a_document_within_one_window_scores_with_full_context(checkpoint):
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    text = "Now is the winter of our discontent made glorious summer"  # 56 bytes: under one window
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        expected = model(ids, labels=ids).loss.item()
    for stride in (1, 7, 32):
        result = perplexity(model, tokenizer, [text], max_length=56, stride=stride, show_progress=False)
        assert result["loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("length, max_length, stride", [(1, 4, 4), (10, 4, 4), (10, 4, 1), (100, 16, 5), (17, 16, 16)])
def test_windows_score_every_token_once_within_the_window_size(length, max_length, stride):
    scored = []
    for start, end, count in windows(length + 1, max_length, stride):
        assert 0 <= start < end and end - start <= max_length and count <= end - start
        scored.extend(range(end + 1 - count, end + 1))  # logits at input i predict token i + 1
    assert scored == list(range(1, length + 1))


def test_compare_tabulates_and_plots_across_models(checkpoint, tmp_path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"model_name": "/runs/model-a", "results": {
        "arc_easy": {"alias": "arc_easy", "sample_len": 2376, "acc,none": 0.40, "acc_stderr,none": 0.02,
                     "acc_norm,none": 0.38},
        "hellaswag": {"acc,none": 0.28, "acc_stderr,none": 0.01},
        "translation": {"sample_len": 100, "bleu,none": 12.5}}}))
    second.write_text(json.dumps({"results": {"arc_easy": {"acc,none": 0.45, "acc_stderr,none": 0.02},
                                              "wikitext": {"word_perplexity,none": 80.5}}}))
    plot = tmp_path / "chart.png"
    mtlm_main(["compare", str(first), str(second), "--plot", str(plot), "--output", str(tmp_path / "table.md")])
    printed = capsys.readouterr().out
    assert "| task | metric | model-a | b |" in printed
    assert "| arc_easy | acc | 0.4000 ± 0.0200 | 0.4500 ± 0.0200 |" in printed
    assert "| hellaswag | acc | 0.2800 ± 0.0100 | - |" in printed
    assert "| wikitext | word_perplexity | - | 80.5000 |" in printed
    assert "| translation | bleu | 12.5000 | - |" in printed and "sample_len" not in printed
    assert plot.stat().st_size > 5000 and (tmp_path / "table.md").read_text().startswith("| task |")
    mtlm_main(["compare", str(first), "--metric", "acc_norm", "--plot", str(plot)])
    assert "| arc_easy | acc_norm | 0.3800 |" in capsys.readouterr().out


def test_expanding_task_lists():
    assert harness.expand_task_names("mtlm1")[:3] == ["winogrande", "copa", "boolq"]
    assert len(harness.expand_task_names("mtlm1,arc_easy")) == 12
    assert harness.expand_task_names(" boolq, ,copa") == ["boolq", "copa"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--tasks", "arc_esay"], r"Unknown lm-eval task 'arc_esay' \(close: arc_easy"),
        (["--tasks", "arc_easy"], r"Task 'arc_easy' could not read its dataset.*--local-data arc_easy=.*allenai/ai2_arc"),
        (["--tasks", "mtlm1", "--limit", "2"], r"Task 'winogrande' could not read its dataset"),
        (["--tasks", "tiny_arc", "--local-data", "arc_easy=x.jsonl"], "not among the tasks"),
        (["--tasks", "arc_easy", "--local-data", "arc_easy"], "expects TASK=PATH"),
        (["--tasks", "arc_easy", "--local-data", f"arc_easy={TASKS / 'data'}"], "name it test.jsonl"),
        (["--tasks", "tiny_arc", "--output", "results.md"], "name the results JSON"),
        (["--arithmetic", str(ROLLING), "--batch-size", "auto"], "exact match takes a number"),
    ],
)
def test_bad_evaluation_requests_say_what_to_do(checkpoint, arguments, message):
    with pytest.raises(SystemExit, match=message):
        mtlm_main(["eval", str(checkpoint), "--include-path", str(TASKS), *arguments])


def test_checkpoints_without_a_tokenizer_and_texts_shorter_than_a_window_are_refused(checkpoint, tmp_path):
    bare = tmp_path / "bare"
    AutoModelForCausalLM.from_pretrained(checkpoint).save_pretrained(bare)
    for command in (["eval", str(bare), "--tasks", "tiny_arc", "--include-path", str(TASKS)],
                    ["ppl", str(bare), "--data", str(ROLLING)]):
        with pytest.raises(SystemExit, match="has no tokenizer"):
            mtlm_main(command)
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be")
    with pytest.raises(SystemExit, match="19 tokens, fewer than one window of 64"):
        mtlm_main(["ppl", str(checkpoint), "--data", str(short)])
    with pytest.raises(SystemExit, match="--stride 80 must be between 1 and --max-length 64"):
        mtlm_main(["ppl", str(checkpoint), "--data", str(ROLLING), "--stride", "80"])


def test_task_yaml_data_files_are_found_beside_the_yaml(tmp_path):
    yaml_path = tmp_path / "tasks" / "task.yaml"
    for data_files, expected in [
        ("data/test.jsonl", str(tmp_path / "tasks" / "data/test.jsonl")),
        ({"test": ["a.jsonl", "/abs/b.jsonl"]}, {"test": [str(tmp_path / "tasks" / "a.jsonl"), "/abs/b.jsonl"]}),
        ({"test": "a.jsonl"}, {"test": str(tmp_path / "tasks" / "a.jsonl")}),
    ]:
        config = {"task": "t", "dataset_kwargs": {"data_files": data_files, "field": "rows"}}
        resolved = harness.with_files_beside_yaml(config, yaml_path)["dataset_kwargs"]
        assert resolved == {"data_files": expected, "field": "rows"}


def test_results_are_kept_only_in_local_checkpoint_folders(checkpoint, tmp_path, monkeypatch):
    from mtlm.evaluation.results import save_into_checkpoint

    monkeypatch.chdir(tmp_path)
    assert save_into_checkpoint("gpt2", "perplexity", {"results": {"x": {"loss": 1.0}}}) is None
    assert not (tmp_path / "gpt2").exists()
    assert save_into_checkpoint(checkpoint, "perplexity", {"results": {"x": {"loss": 1.0}}}).is_file()


def test_exact_match_scores_each_answer_length_and_operand_layout(monkeypatch):
    from mtlm.evaluation import exact_match as module

    rows = [{"prompt": "12+345=", "target": "357"}, {"prompt": "99+1=", "target": "100"},
            {"prompt": "123+456=", "target": "579"}, {"prompt": "1+2=", "target": "3"},
            {"prompt": "7+8=", "target": "15", "reversed": True},
            {"prompt": "9+9+9=", "target": "27", "reversed": True, "scratchpad": "81+9="}]
    # the reversed row's "51" reads back as 15; the scratchpad row's answer is what follows its last "="
    generated = ["357", "10", "579", "3", "51", "81+9=72"]
    budgets = []

    def greedy_answers(model, tokenizer, prompts, batch_size, max_new_tokens, progress):
        budgets.append(max_new_tokens)
        return generated[: len(prompts)]

    monkeypatch.setattr(module, "greedy_answers", greedy_answers)
    result = module.exact_match(None, make_tokenizer("arithmetic"), rows, progress=False)
    assert budgets == [len("81+9=27") + 1]  # room for the longest steps and answer, and eos
    assert result["exact_match"] == 5 / 6
    assert result["by_digits"] == {"1": 1.0, "2": 1.0, "3": 2 / 3}
    assert result["by_layout"] == {"d+d=": {"exact_match": 1.0, "n": 2}, "d+d+d=": {"exact_match": 1.0, "n": 1},
                                   "dd+d=": {"exact_match": 0.0, "n": 1}, "dd+ddd=": {"exact_match": 1.0, "n": 1},
                                   "ddd+ddd=": {"exact_match": 1.0, "n": 1}}
