"""Decoding with the KV cache computes what decoding without it computes, on every path a user decodes through:
`generate()` (greedy, seeded sampling, beam search, left-padded batches), `pipeline()`, lm-eval's generate_until,
mtlm's exact match and `mtlm generate` on a trained checkpoint, in-process and as remote code without mtlm.

The models are sharpened (tests/cache_checks.py) so that their next token depends on the context: on a near-uniform
model a dropped cache gives the same greedy tokens, which is how the transformers 5.24 cache rename went unnoticed.
"""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from cache_checks import (
    assert_cache_changes_nothing,
    assert_context_matters,
    check_every_decoding_mode,
    reference_greedy,
    sharpen,
)
from conftest import TESTS, random_ids, run_without_mtlm, tiny_config, tiny_model
from test_training import tiny_run
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from mtlm import MtlmLlamaConfig, MtlmLlamaForCausalLM
from mtlm.cli import main as mtlm_main
from mtlm.data.tokenization import make_tokenizer
from mtlm.evaluation.exact_match import greedy_answers
from mtlm.modeling.mtlm_blocks import CACHE_NAME, auto_map, code_files
from mtlm.training.reports import compiled_decoding

pytestmark = pytest.mark.compat

FIXTURE_TEXT = (TESTS / "fixtures" / "shakespeare-6k.txt").read_text(encoding="utf-8")
PROMPTS = [random_ids(1, 7, seed=3)[0], random_ids(1, 3, seed=4)[0], random_ids(1, 5, seed=5)[0]]


def test_every_decoding_mode_gives_the_same_tokens_with_and_without_the_cache(family):
    check_every_decoding_mode(sharpen(tiny_model(family)), PROMPTS)


def test_the_cache_is_taken_under_either_name_and_returned_under_the_installed_one(family):
    model = sharpen(tiny_model(family))
    ids = random_ids(2, 9)
    with torch.no_grad():
        full = model(ids).logits
        for name in ("cache", "past_key_values"):
            prefix = model(ids[:, :5], use_cache=True)
            assert CACHE_NAME in prefix and prefix[CACHE_NAME].get_seq_length() == 5
            rest = model(ids[:, 5:], use_cache=True, **{name: prefix[CACHE_NAME]})
            torch.testing.assert_close(rest.logits, full[:, 5:], rtol=1e-4, atol=1e-5)
            assert rest[CACHE_NAME].get_seq_length() == 9
        with pytest.raises(ValueError, match="as `cache` or as `past_key_values`"):
            model(ids[:, 5:], cache=prefix[CACHE_NAME], past_key_values=prefix[CACHE_NAME])


def char_model_and_tokenizer(family: str, **overrides):
    tokenizer = make_tokenizer("char", [FIXTURE_TEXT])
    torch.manual_seed(0)
    config = tiny_config(family, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **overrides)
    return sharpen(AutoModelForCausalLM.from_config(config).eval()), tokenizer


def reference_text(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """The prompt and its greedy continuation by `reference_greedy`, up to the first eos."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    continuation = reference_greedy(model, ids, max_new_tokens)[0, ids.shape[1] :].tolist()
    if tokenizer.eos_token_id in continuation:
        continuation = continuation[: continuation.index(tokenizer.eos_token_id)]
    return prompt + tokenizer.decode(continuation, skip_special_tokens=True)


def test_pipeline_generates_the_same_text_with_and_without_the_cache(family):
    model, tokenizer = char_model_and_tokenizer(family)
    assert_context_matters(model, tokenizer("ROMEO:\nWhat", return_tensors="pt")["input_ids"], 16)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
    prompt = "ROMEO:\nWhat"
    texts = [generator(prompt, max_new_tokens=16, do_sample=False, use_cache=use_cache)
             [0]["generated_text"] for use_cache in (True, False)]
    assert texts[0] == texts[1] == reference_text(model, tokenizer, prompt, 16)


def test_exact_match_decodes_a_left_padded_batch_as_each_prompt_alone(family):
    tokenizer = make_tokenizer("arithmetic")
    torch.manual_seed(0)
    config = tiny_config(family, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = sharpen(AutoModelForCausalLM.from_config(config).eval(), std=0.5)
    prompts = ["7+5=", "12+345=", "999+1=", "40+40=", "3+123="]
    assert_context_matters(model, tokenizer(f"<bos>{prompts[1]}", return_tensors="pt")["input_ids"], 4)
    answers = greedy_answers(model, tokenizer, prompts, batch_size=5, max_new_tokens=6, progress=False)
    for prompt, answer in zip(prompts, answers):
        alone = reference_text(model, tokenizer, f"{tokenizer.bos_token}{prompt}", 6)
        assert answer == alone.removeprefix(f"{tokenizer.bos_token}{prompt}"), prompt


def test_lm_eval_generate_until_decodes_as_the_reference(tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = char_model_and_tokenizer("mtlm_llama")
    assert_context_matters(model, tokenizer("First Citizen:\nWe", return_tensors="pt")["input_ids"], 12)
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    lm = HFLM(pretrained=str(tmp_path / "ckpt"), trust_remote_code=True, device="cpu", batch_size=4)
    prompts = ["ROMEO:\n", "First Citizen:\nWe", "Be", "MENENIUS:\nWhat is the"]
    settings = {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False}
    requests = [Instance("generate_until", {}, (prompt, settings), index) for index, prompt in enumerate(prompts)]
    for prompt, generated in zip(prompts, lm.generate_until(requests)):
        expected = reference_text(model, tokenizer, prompt, 12)[len(prompt) :].split("\n\n")[0]
        assert generated == expected, prompt


REMOTE_CHECK = r"""
import sys
sys.path.insert(0, sys.argv[2])
import torch
from cache_checks import check_every_decoding_mode, generate_both_ways
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, expect = sys.argv[1], sys.argv[3]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
tokenizer = AutoTokenizer.from_pretrained(folder)
prompts = [tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
           for text in ("ROMEO:", "First Citizen:\nWe", "Be")]
if expect == "broken":
    cached, uncached = generate_both_ways(model, prompts[0][None], do_sample=False, max_new_tokens=10,
                                          eos_token_id=None)
    assert not torch.equal(cached.sequences, uncached.sequences)
else:
    check_every_decoding_mode(model, prompts, max_new_tokens=10)
print("remote-cache-ok")
"""


def assert_remote_code_decodes(folder: Path, tmp_path: Path, expect: str = "right") -> None:
    """In a process without mtlm, the folder's remote code decodes the same with and without the cache (or, with
    expect="broken", it does not)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    result = run_without_mtlm(REMOTE_CHECK, str(folder), str(TESTS), expect, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote-cache-ok" in result.stdout


def test_mtlm_generate_on_a_trained_checkpoint_decodes_as_without_the_cache(tmp_path, capsys):
    """The main job's path: `mtlm train`, then `mtlm generate` greedily; with warnings shown as a user sees them."""
    run = tiny_run(tmp_path, training={"max_steps": 5, "eval_strategy": "steps", "eval_steps": 5})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    folder = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    trained = subprocess.run([sys.executable, "-m", "mtlm.cli", "train", str(tmp_path / "run.yaml")], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    warnings = [line for line in (trained.stdout + trained.stderr).splitlines()
                if re.search(r"deprecat|FutureWarning", line, re.IGNORECASE)]
    assert not warnings, warnings

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    sharpen(model).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt_ids = tokenizer("ROMEO:", return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert_context_matters(model, prompt_ids, 40)
    assert_cache_changes_nothing(model, prompt_ids, do_sample=False, max_new_tokens=40, eos_token_id=None)

    torch._dynamo.reset()
    for compiled in ([], ["--compile"]):
        capsys.readouterr()
        mtlm_main(["generate", str(folder), "--prompt", "ROMEO:", "--temperature", "0", "--max-new-tokens", "40",
                   *compiled])
        assert capsys.readouterr().out.rstrip("\n") == reference_text(model, tokenizer, "ROMEO:", 40), compiled

    assert_remote_code_decodes(folder, tmp_path)


def test_upgrade_code_brings_a_folder_written_before_the_cache_rename_up_to_date(tmp_path, capsys):
    """The fixture is a sharpened mtlm_llama saved by mtlm 0.1 (commit c7657dc), code files included."""
    folder, spare = tmp_path / "old", tmp_path / "spare"
    shutil.copytree(TESTS / "fixtures" / "checkpoint-before-cache-rename", folder)
    shutil.copytree(folder, spare)
    if CACHE_NAME == "cache":  # transformers >= 5.24: the old code drops the cache
        assert_remote_code_decodes(folder, tmp_path / "before", expect="broken")
    shipped = {Path(path).name: Path(path).read_bytes() for path in code_files(MtlmLlamaConfig, MtlmLlamaForCausalLM)}
    mtlm_main(["export", str(folder), str(tmp_path / "exported")])  # export writes the current code as well
    assert {path.name: path.read_bytes() for path in (tmp_path / "exported").glob("*.py")} == shipped
    capsys.readouterr()

    (folder / "modeling_mtlm_gpt.py").write_text("# another family's file, as an earlier layout might leave\n")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoConfig": "old.Config"}}))
    untouched = {path.name: path.read_bytes() for path in folder.iterdir() if path.suffix != ".py"}

    before = {path.name: path.read_bytes() for path in spare.iterdir()}
    with pytest.raises(SystemExit, match="not a checkpoint folder"):  # every folder is checked before any changes
        mtlm_main(["upgrade-code", str(spare), str(tmp_path / "nowhere")])
    assert {path.name: path.read_bytes() for path in spare.iterdir()} == before

    mtlm_main(["upgrade-code", str(folder)])
    changed = capsys.readouterr().out.split("updated ")[1].strip().split(", ")
    assert {"mtlm_blocks.py", "modeling_mtlm_gpt.py", "config.json"} <= set(changed)
    assert {path.name: path.read_bytes() for path in folder.glob("*.py")} == shipped
    assert not list(folder.glob(".*partial*"))
    umask = os.umask(0)
    os.umask(umask)
    mode = 0o666 & ~umask  # as open() would write them, not mkstemp's owner-only 0600
    assert all(stat.S_IMODE(path.stat().st_mode) == mode for path in [*folder.glob("*.py"), folder / "config.json"])
    config = json.loads((folder / "config.json").read_text())
    assert config == {**json.loads(untouched.pop("config.json")),
                      "auto_map": auto_map(MtlmLlamaConfig, MtlmLlamaForCausalLM)}
    assert {path.name: path.read_bytes() for path in folder.iterdir() if path.suffix != ".py"
            and path.name != "config.json"} == untouched
    assert_remote_code_decodes(folder, tmp_path / "after")
    mtlm_main(["upgrade-code", str(folder)])
    assert "already current" in capsys.readouterr().out


@pytest.mark.parametrize("compiled", [False, True], ids=["static-cache", "compiled"])
def test_static_cache_and_compiled_decoding_give_the_reference_tokens(family, compiled):
    torch._dynamo.reset()
    model = sharpen(tiny_model(family))
    prompt = PROMPTS[0][None]
    assert_context_matters(model, prompt, 8)
    decoding = compiled_decoding() if compiled else {"cache_implementation": "static"}
    with torch.no_grad():
        for _ in range(2):  # the second call reuses the static cache and the compiled step
            tokens = model.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None,
                                    pad_token_id=model.config.pad_token_id, **decoding)
            assert torch.equal(tokens, reference_greedy(model, prompt, 8))
    assert compiled == hasattr(model, "_compiled_call")
