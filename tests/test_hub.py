"""Model cards, Hub-ready exports and pushes (the Hub itself replaced by a recorder; nothing leaves the machine)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import random_ids, tiny_model
from huggingface_hub import HfApi, ModelCard
from test_training import tiny_run
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

from mtlm.cli import main as mtlm_main
from mtlm.data.tokenization import make_tokenizer
from mtlm.evaluation.results import save_into_checkpoint
from mtlm.growth import grow_folder
from mtlm.hub_cards import render_card
from mtlm.training import run_config
from mtlm.training.trainer import train

LM_EVAL_SUMMARY = {  # the shape mtlm eval stores (harness.card_summary)
    "results": {"arc_easy": {"alias": "arc_easy", "sample_len": 2376, "acc,none": 0.3864, "acc_stderr,none": 0.0100,
                             "acc_norm,none": 0.3510, "acc_norm_stderr,none": 0.0098}},
    "n-shot": {"arc_easy": 0}, "limit": {"arc_easy": None},
    "datasets": {"arc_easy": {"path": "allenai/ai2_arc", "name": "ARC-Easy", "split": "test"}},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run trained by mtlm train (trainer_state.json, run_config.yaml, tokenizer), with evaluations."""
    tmp_path = tmp_path_factory.mktemp("hub")
    trainer = train(run_config.validate(tiny_run(tmp_path, training={"max_steps": 6, "eval_strategy": "steps",
                                                                     "eval_steps": 3})))
    folder = Path(trainer.args.output_dir)
    save_into_checkpoint(folder, "lm_eval", LM_EVAL_SUMMARY)
    save_into_checkpoint(folder, "perplexity", {"results": {"wikitext-2/test.txt": {
        "max_length": 64, "stride": 32, "loss": 3.1, "token_perplexity": 22.2, "bits_per_byte": 4.47,
        "word_perplexity": 1.2e6, "tokens": 5000}}})
    return folder


def test_card_reports_what_the_folder_records(trained):
    mtlm_main(["card", str(trained), "--repo-id", "someone/tiny", "--license", "apache-2.0"])
    card = ModelCard.load(trained / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert data.license == "apache-2.0" and {"custom_code", "mtlm_llama", "mtlm"} <= set(data.tags)
    accuracy = next(result for result in data.eval_results if result.metric_type == "acc")
    assert (accuracy.dataset_type, accuracy.dataset_config, accuracy.metric_value) == ("allenai/ai2_arc", "ARC-Easy",
                                                                                        0.3864)
    text = card.text
    parameters = AutoModelForCausalLM.from_pretrained(trained).num_parameters()
    assert f"| parameters | {parameters:,} " in text and "| layers | 2 |" in text and "| context | 64 tokens |" in text
    state = json.loads((trained / "trainer_state.json").read_text())
    assert state["num_input_tokens_seen"] == 6 * 8 * 32  # steps x sequences x block
    assert "| steps | 6 |" in text and f"| tokens | {6 * 8 * 32:,} |" in text
    assert "| hardware | CPU (" in text and "| training time |" in text and "final validation loss" in text
    assert "| arc_easy | acc | 0.3864 | 0.0100 | 0 | all |" in text and "sample_len" not in str(card)
    assert "| wikitext-2/test.txt | 64 / 32 | 3.1000 |" in text
    assert 'from_pretrained("someone/tiny", trust_remote_code=True)' in text
    assert "## Growth history" not in text and "base_model" not in str(data.to_dict())


def test_missing_information_is_left_out(tmp_path):
    folder = tmp_path / "bare"
    tiny_model("mtlm_moe").save_pretrained(folder)
    card = render_card(folder)
    for absent in ("## Training", "## Evaluation", "## Growth history", "license", "model-index", "datasets"):
        assert absent not in str(card), absent
    assert "| experts | 4, 2 per token |" in card.text and "written with mtlm" in card.text


def test_grown_models_record_their_growth_and_base_model(trained, tmp_path):
    grown = tmp_path / "grown"
    grow_folder(trained, grown, num_layers=3, method="stack", function_preserving=True)
    text = render_card(grown).text
    assert "## Growth history" in text and "| 1 | " in text and "| stack | 2 → 3 | yes | 0 1 0 | 6 steps," in text
    assert render_card(grown).data.base_model is None  # a local folder is not a Hub id
    config = AutoConfig.from_pretrained(grown)
    config.growth_history[0]["source"] = "someone/tiny-base"
    config.save_pretrained(grown)
    assert render_card(grown).data.base_model == "someone/tiny-base"
    assert render_card(grown, base_model="other/base").data.base_model == "other/base"


def test_export_writes_a_hub_ready_folder_with_remote_code_or_natively(tmp_path):
    source = tmp_path / "llama"
    tokenizer = make_tokenizer("byte")
    model = tiny_model("mtlm_llama", vocab_size=len(tokenizer))
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    (source / "checkpoint-5").mkdir()
    ids = random_ids(2, 10)
    with torch.no_grad():
        expected = model(ids).logits

    mtlm_main(["export", str(source), str(tmp_path / "remote")])
    remote = tmp_path / "remote"
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md",
            "modeling_mtlm_llama.py"} <= {path.name for path in remote.iterdir()}
    assert "auto_map" in json.loads((remote / "config.json").read_text()) and not (remote / "checkpoint-5").exists()

    mtlm_main(["export", str(source), str(tmp_path / "native"), "--native"])
    native = tmp_path / "native"
    assert not list(native.glob("*.py")) and "auto_map" not in json.loads((native / "config.json").read_text())
    upstream = AutoModelForCausalLM.from_pretrained(native)
    assert isinstance(upstream, LlamaForCausalLM)
    with torch.no_grad():
        torch.testing.assert_close(upstream(ids).logits, expected, rtol=1e-5, atol=1e-5)
    card = ModelCard.load(native / "README.md")
    assert "custom_code" not in card.data.tags and "trust_remote_code" not in card.text


def test_native_export_names_the_option_that_prevents_it(tmp_path):
    source = tmp_path / "gpt"
    make_tokenizer("byte").save_pretrained(source)
    tiny_model("mtlm_gpt", vocab_size=259, norm_type="rmsnorm").save_pretrained(source)
    with pytest.raises(SystemExit, match="rmsnorm"):
        mtlm_main(["export", str(source), str(tmp_path / "out"), "--native"])
    assert not (tmp_path / "out").exists()


class HubRecorder:
    """Stands in for the Hub API: records what push asks of it."""

    def __init__(self, monkeypatch):
        self.calls = []
        for name in ("create_repo", "create_branch", "upload_folder"):
            monkeypatch.setattr(HfApi, name, self.recorder(name))

    def recorder(self, name):
        def record(api, *args, **kwargs):
            self.calls.append((name, args, kwargs, api.token))
        return record


@pytest.fixture
def exported(trained, tmp_path) -> Path:
    folder = tmp_path / "export"
    mtlm_main(["export", str(trained), str(folder), "--repo-id", "someone/tiny"])
    (folder / "checkpoint-3").mkdir()
    (folder / "checkpoint-3" / "optimizer.pt").write_bytes(b"0" * 10)
    (folder / "training_args.bin").write_bytes(b"0")
    return folder


def test_push_uploads_the_folder_through_huggingface_hub(exported, monkeypatch, capsys):
    hub = HubRecorder(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    mtlm_main(["push", str(exported), "someone/tiny", "--private", "--revision", "v1"])
    (_, args, create, token), (_, _, branch, _), (_, _, upload, _) = hub.calls
    assert args == ("someone/tiny",) and create["private"] is True and token == "hf_test_token"
    assert branch["branch"] == "v1" and upload["revision"] == "v1" and upload["folder_path"] == str(exported)
    uploaded = set(upload["allow_patterns"])
    assert {"model.safetensors", "README.md", "tokenizer.json", "config.json"} <= uploaded
    assert not any(name.startswith("checkpoint-") or name == "training_args.bin" for name in uploaded)
    assert "Uploaded" in capsys.readouterr().out


def test_dry_run_validates_and_lists_files_offline(exported, monkeypatch, capsys):
    hub = HubRecorder(monkeypatch)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    mtlm_main(["push", str(exported), "someone/tiny", "--dry-run"])
    printed = capsys.readouterr().out
    size = (exported / "model.safetensors").stat().st_size
    assert f"{size:>14,}  model.safetensors" in printed and "checkpoint-3" not in printed
    assert "the card is valid" in printed and hub.calls == []


@pytest.mark.parametrize("problem, message", [
    ("no token", "No Hugging Face token: run `hf auth login`"),
    ("bad repo id", "Invalid repo id"),
    ("no weights", "has no weights"),
    ("no tokenizer", "has no tokenizer"),
    ("no card", "has no model card"),
    ("broken card", "fails validation"),
    ("card without metadata", "lacks library_name, pipeline_tag"),
    ("card for another repository", "does not load someone/other"),
])
def test_push_refuses_bad_input_before_uploading(exported, monkeypatch, problem, message):
    hub = HubRecorder(monkeypatch)
    token = None if problem == "no token" else "hf_test_token"
    monkeypatch.setattr("mtlm.hub_cards.publish.get_token", lambda: token)
    repo_id = {"bad repo id": "not a repo id", "card for another repository": "someone/other"}.get(problem,
                                                                                              "someone/tiny")
    if problem == "no weights":
        (exported / "model.safetensors").unlink()
    if problem == "no tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (exported / name).unlink()
    if problem == "no card":
        (exported / "README.md").unlink()
    if problem == "broken card":
        (exported / "README.md").write_text("---\nlicense: [unclosed\n---\n\n# A card\n")
    if problem == "card without metadata":
        (exported / "README.md").write_text("---\nlicense: mit\n---\n\n# A card\n")
    with pytest.raises(SystemExit, match=message):
        mtlm_main(["push", str(exported), repo_id])
    assert hub.calls == []
