"""Depth growth: layer maps, function preservation, exact copies, checkpoint folders, and training on."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import random_ids, tiny_model
from test_training import tiny_run
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from mtlm.cli import main as mtlm_main
from mtlm.data.tokenization import make_tokenizer
from mtlm.families import FAMILIES
from mtlm.growth import grow_folder, grow_model, layer_map
from mtlm.growth.depth import is_residual_output
from mtlm.training import run_config
from mtlm.training.trainer import train

GROWTHS = [  # (method, layer map, grown depth) from a 2-layer source
    ("stack", None, 4),
    ("interleave", None, 4),
    ("random", None, 4),
    ("stack", None, 5),
    ("interleave", None, 3),
    ("map", [0, 1, 1, 0, 1], 5),
]


def grow(model, method, mapping, num_layers, **kwargs):
    if method == "map":
        return grow_model(model, mapping=mapping, **kwargs)
    return grow_model(model, num_layers, method, **kwargs)


@pytest.mark.parametrize(
    "method, source_layers, num_layers, expected",
    [
        ("stack", 2, 4, [0, 1, 0, 1]),
        ("stack", 12, 18, list(range(12)) + list(range(6))),
        ("interleave", 3, 6, [0, 0, 1, 1, 2, 2]),
        ("interleave", 12, 18, [0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7, 8, 8, 9, 10, 10, 11]),
        ("random", 2, 5, [0, 1, None, None, None]),
    ],
)
def test_layer_maps(method, source_layers, num_layers, expected):
    assert layer_map(method, source_layers, num_layers) == expected


@pytest.mark.parametrize("method, mapping, num_layers", GROWTHS)
def test_function_preserving_growth_computes_the_source_logits(family, method, mapping, num_layers):
    source = tiny_model(family)
    grown = grow(source, method, mapping, num_layers, function_preserving=True).eval()
    assert grown.config.num_hidden_layers == num_layers == len(grown.model.layers)
    ids = random_ids(2, 12)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        difference = (grown(ids, attention_mask=mask).logits - source(ids, attention_mask=mask).logits).abs().max()
    assert difference < 1e-5

    # The silenced layers still learn: their zeroed output projections receive gradient.
    grown.train()
    grown(ids, labels=ids).loss.backward()
    silenced = grown.model.layers[num_layers - 1]
    gradients = [parameter.grad for name, parameter in silenced.named_parameters() if is_residual_output(FAMILIES[family], name)]
    assert gradients and all(gradient is not None and gradient.abs().sum() > 0 for gradient in gradients)


@pytest.mark.parametrize("method, mapping, num_layers", GROWTHS)
def test_grown_layers_are_exact_copies_of_their_source_layers(family, method, mapping, num_layers):
    source = tiny_model(family, seed=3)
    grown = grow(source, method, mapping, num_layers)
    record = grown.config.growth_history[-1]
    assert record["method"] == method and record["source_num_layers"] == 2 and record["num_layers"] == num_layers
    source_layers = [dict(layer.named_parameters()) for layer in source.model.layers]
    for position, index in enumerate(record["layer_map"]):
        parameters = dict(grown.model.layers[position].named_parameters())
        assert parameters.keys() == source_layers[0].keys()
        for name, parameter in parameters.items():
            if index is None:  # a fresh layer: its own initialisation, equal to no source layer
                assert all(not torch.equal(parameter, layer[name]) for layer in source_layers if parameter.ndim > 1)
            else:
                assert torch.equal(parameter, source_layers[index][name]), (position, name)
    grown_parameters = dict(grown.named_parameters())
    for name, parameter in source.named_parameters():
        if not name.startswith("model.layers."):
            assert torch.equal(grown_parameters[name], parameter), name
    assert all(not torch.equal(a, b) for a, b in zip(source.model.layers[0].parameters(),
                                                     source.model.layers[1].parameters()) if a.ndim > 1)


def test_growth_is_recorded_and_can_be_repeated(family):
    source = tiny_model(family)
    once = grow_model(source, 3, "stack", function_preserving=True, source="base")
    twice = grow_model(once, 6, "interleave", function_preserving=True, source="once")
    assert [record["source"] for record in twice.config.growth_history] == ["base", "once"]
    assert twice.config.growth_history[1]["layer_map"] == [0, 0, 1, 1, 2, 2]
    assert not hasattr(source.config, "growth_history") and source.config.num_hidden_layers == 2
    ids = random_ids(1, 8)
    with torch.no_grad():
        assert (twice(ids).logits - source(ids).logits).abs().max() < 1e-5


def folder_digest(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A saved 2-layer mtlm_llama with a byte tokenizer and a trainer_state.json."""
    folder = tmp_path / "base"
    tokenizer = make_tokenizer("byte")
    tiny_model("mtlm_llama", vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 30, "total_flos": 1.5e9}))
    return folder


def test_grow_command_writes_a_checkpoint_folder_and_leaves_the_source_alone(checkpoint, tmp_path, capsys):
    before = folder_digest(checkpoint)
    out = tmp_path / "grown"
    mtlm_main(["grow", str(checkpoint), "--num-layers", "3", "--method", "interleave", "--function-preserving",
               "--out", str(out)])
    assert "layer map (source layer of each grown layer, - for a fresh one): 0 0 1" in capsys.readouterr().out
    assert folder_digest(checkpoint) == before
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
                 "modeling_mtlm_llama.py", "configuration_mtlm_llama.py", "mtlm_blocks.py"):
        assert (out / name).is_file(), name
    config = AutoConfig.from_pretrained(out)
    assert config.num_hidden_layers == 3 and "auto_map" in json.loads((out / "config.json").read_text())
    assert config.growth_history == [{
        "source": str(checkpoint.resolve()), "method": "interleave", "layer_map": [0, 0, 1], "function_preserving": True,
        "source_num_layers": 2, "num_layers": 3, "source_training": {"global_step": 30, "total_flos": 1.5e9},
    }]
    source, grown = AutoModelForCausalLM.from_pretrained(checkpoint), AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("To be, or not", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (grown(ids).logits - source(ids).logits).abs().max() < 1e-5

    mtlm_main(["grow", str(checkpoint), "--layer-map", "0,1,0,1,1", "--out", str(tmp_path / "mapped")])
    assert AutoConfig.from_pretrained(tmp_path / "mapped").growth_history[0]["layer_map"] == [0, 1, 0, 1, 1]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--num-layers", "1", "--method", "stack"], "more layers than the source's 2"),
        (["--num-layers", "2", "--method", "stack"], "more layers than the source's 2"),
        (["--layer-map", "0,1,2,1"], r"names layers \[2\] but the source has layers 0 to 1"),
        (["--layer-map", "0,1,-1"], r"names layers \[-1\]"),
        (["--layer-map", "0,1,0,1", "--num-layers", "5"], "has 4 entries but the grown model has 5 layers"),
        (["--layer-map", "1,0,0,1", "--function-preserving"], "first uses in order 0..1"),
        (["--layer-map", "0,0,0", "--function-preserving"], "must use every source layer"),
        (["--num-layers", "4"], "Pass either --method"),
        (["--method", "stack"], "needs --num-layers"),
        (["--method", "stack", "--num-layers", "4", "--layer-map", "0,1,0,1"], "Pass either --method"),
    ],
)
def test_bad_growth_requests_are_refused_before_anything_is_written(checkpoint, tmp_path, arguments, message):
    before = folder_digest(checkpoint)
    with pytest.raises(SystemExit, match=message):
        mtlm_main(["grow", str(checkpoint), *arguments, "--out", str(tmp_path / "grown")])
    assert not (tmp_path / "grown").exists() and folder_digest(checkpoint) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["base"]  # no staging folder left either


def test_only_mtlm_checkpoints_grow(tmp_path, checkpoint):
    upstream = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(upstream)
    with pytest.raises(ValueError, match="holds a 'llama' model, not an mtlm one.*mtlm convert"):
        grow_folder(upstream, tmp_path / "out", num_layers=2)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        grow_folder(tmp_path, tmp_path / "out", num_layers=2)
    with pytest.raises(ValueError, match="would replace its source"):
        grow_folder(checkpoint, checkpoint, num_layers=4)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="--overwrite"):
        grow_folder(checkpoint, tmp_path / "taken", num_layers=4)
    assert not (tmp_path / "out").exists() and (tmp_path / "taken" / "keep.txt").read_text() == "keep"


def test_training_goes_on_from_a_grown_checkpoint(tmp_path):
    base = train(run_config.validate(tiny_run(tmp_path, training={"output_dir": str(tmp_path / "base")})))
    base_loss = base.evaluate(base.train_dataset)["eval_loss"]
    grow_folder(tmp_path / "base", tmp_path / "grown", num_layers=4, method="stack", function_preserving=True)

    run = tiny_run(tmp_path, training={"output_dir": str(tmp_path / "on"), "max_steps": 10, "logging_steps": 1})
    run["model"] = {"init_from": str(tmp_path / "grown"), "hidden_dropout": 0.0}
    run["tokenizer"] = {}
    trainer = train(run_config.validate(run))
    assert trainer.model.config.num_hidden_layers == 4
    first_loss = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    assert abs(first_loss - base_loss) < 0.15  # it starts where the base model ended, not from scratch (~4.3)
    assert AutoConfig.from_pretrained(tmp_path / "on").growth_history[0]["method"] == "stack"

    run["model"] = {"init_from": str(tmp_path / "grown"), "num_hidden_layers": 6}
    run["training"]["output_dir"] = str(tmp_path / "reshaped")
    with pytest.raises(ValueError, match="changes the shape of"):
        train(run_config.validate(run))
    run["model"] = {"init_from": str(tmp_path / "grown"), "model_type": "mtlm_llama"}
    with pytest.raises(ValueError, match="exactly one of"):
        run_config.validate(run)
