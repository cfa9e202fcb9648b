"""Every checkpoint folder mtlm writes loads with trust_remote_code=True in a process where mtlm cannot be
imported, computes identical logits, decodes the same with and without the cache (tests/cache_checks.py), and saves
a folder that loads the same way again."""

import json
from pathlib import Path

import pytest
import torch
from conftest import FIXTURE_ATOL, TESTS, random_ids, run_without_mtlm, tiny_model
from safetensors.torch import load_file

from mtlm.families import FAMILIES
from mtlm.growth import grow_folder

pytestmark = pytest.mark.compat

REMOTE_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[5])
from cache_checks import check_every_decoding_mode, sharpen
import torch
from transformers import AutoConfig, AutoModelForCausalLM

folder, ids_file, logits_file, resaved = sys.argv[1:5]
ids, expected, atol = torch.load(ids_file), torch.load(logits_file), float(sys.argv[6])
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
assert type(config).__module__.startswith("transformers_modules."), type(config).__module__
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
with torch.no_grad():
    logits = model(ids).logits
torch.testing.assert_close(logits, expected, rtol=0, atol=atol)
generated = model.generate(ids[:, :4], max_new_tokens=6, do_sample=False, eos_token_id=None)
assert generated.shape == (ids.shape[0], 10), generated.shape

model.save_pretrained(resaved)
again = AutoModelForCausalLM.from_pretrained(resaved, trust_remote_code=True).eval()
with torch.no_grad():
    torch.testing.assert_close(again(ids).logits, logits, rtol=0, atol=0)
assert torch.equal(again.generate(ids[:, :4], max_new_tokens=6, do_sample=False, eos_token_id=None), generated)
check_every_decoding_mode(sharpen(model), [ids[0], ids[1, :6]])
print("remote-ok", type(model).__name__)
"""


def assert_loads_as_remote_code(folder: Path, ids: torch.Tensor, expected_logits: torch.Tensor, tmp_path: Path,
                                atol: float = 0.0) -> str:
    """Run REMOTE_SCRIPT on `folder` in a process without mtlm; returns the class name it loaded."""
    torch.save(ids, tmp_path / "ids.pt")
    torch.save(expected_logits, tmp_path / "logits.pt")
    result = run_without_mtlm(REMOTE_SCRIPT, str(folder), str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt"),
                              str(tmp_path / "resaved"), str(TESTS), str(atol), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split("remote-ok ")[-1].strip()


@pytest.mark.parametrize("written_by", ["save_pretrained", "grow_folder"])
def test_checkpoint_loads_as_remote_code_without_mtlm(family, written_by, tmp_path):
    model = tiny_model(family)
    folder = tmp_path / "checkpoint"
    if written_by == "grow_folder":
        model.save_pretrained(tmp_path / "base")
        model = grow_folder(tmp_path / "base", folder, num_layers=3, method="stack").eval()
    else:
        model.save_pretrained(folder)

    config = json.loads((folder / "config.json").read_text())
    module, class_name = config["auto_map"]["AutoModelForCausalLM"].split(".")
    assert class_name == type(model).__name__ and (folder / f"{module}.py").is_file()
    assert (folder / "model.safetensors").is_file()
    code = {path.name: path.read_text() for path in folder.glob("*.py")}
    for name, text in code.items():
        assert "import mtlm" not in text and "from mtlm" not in text and "from .." not in text, name

    ids = random_ids(2, 10)
    with torch.no_grad():
        logits = model(ids).logits
    assert assert_loads_as_remote_code(folder, ids, logits, tmp_path) == type(model).__name__
    assert sorted(path.name for path in (tmp_path / "resaved").glob("*.py")) == sorted(code)


def test_checkpoints_written_by_mtlm_0_2_0_load_as_remote_code_with_the_same_logits(family, tmp_path):
    """The fixture folders carry mtlm 0.2.0's code files; the installed transformers runs them unchanged."""
    folder = TESTS / "fixtures" / "checkpoints-0.2.0" / family
    expected = load_file(str(folder / "expected_logits.safetensors"))
    class_name = FAMILIES[family].causal_lm_class.__name__
    assert assert_loads_as_remote_code(folder, expected["input_ids"], expected["logits"], tmp_path,
                                       atol=FIXTURE_ATOL) == class_name


TOKENIZER_SCRIPT = r"""
import os, sys, time
from transformers import AutoTokenizer

start = time.perf_counter()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=False)
print("ids", tokenizer(sys.argv[2])["input_ids"])
print("seconds", time.perf_counter() - start)
print("custom code", os.path.exists(os.path.join(os.environ["HF_MODULES_CACHE"], "transformers_modules")))
"""


@pytest.mark.parametrize("kind", ["char", "byte", "bpe", "word", "arithmetic"])
def test_tokenizers_load_with_no_question_and_no_custom_code_without_mtlm(kind, tmp_path):
    from mtlm.data.tokenization import make_tokenizer

    text = "To be, or not to be: that is the question. 0123456789+=\n" * 20
    tokenizer = make_tokenizer(kind, [text], vocab_size=300, max_vocab=40)
    folder = tmp_path / "checkpoint"
    tiny_model("mtlm_llama", vocab_size=len(tokenizer)).save_pretrained(folder)  # config.json names remote code
    tokenizer.save_pretrained(folder)
    assert "AutoConfig" in json.loads((folder / "config.json").read_text())["auto_map"]

    sample = "12+3=15" if kind == "arithmetic" else "To be, or not to be: 12+3=15"
    result = run_without_mtlm(TOKENIZER_SCRIPT, str(folder), sample, tmp_path=tmp_path, keep_stdin_open=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Do you wish to run the custom code" not in result.stdout
    assert "custom code False" in result.stdout
    assert f"ids {tokenizer(sample)['input_ids']}" in result.stdout
