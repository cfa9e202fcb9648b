"""mtlm export --gguf (llama.cpp's format, read back with transformers' own GGUF reader) and --onnx (run with
onnxruntime): the same logits as the checkpoint within each format's stated tolerance, the same token ids, and every
config a format cannot express refused by name before anything is written."""

import importlib.util

import numpy as np
import pytest
import torch
from conftest import random_ids, tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from mtlm.cli import main as mtlm_main
from mtlm.data.tokenization import make_tokenizer
from mtlm.errors import UsageError
from mtlm.runtimes import TOLERANCE, export_gguf, export_onnx

TEXT = "ROMEO:\nTo be, or not to be: that is the question.\n0123456789+=\n" * 10
# GPT-2 as GGUF holds it: LayerNorm, biases, a 4 x hidden MLP, tanh GELU, no grouped-query attention, 1,024 positions
GPT2_LIKE = dict(intermediate_size=128, hidden_act="gelu_new", max_position_embeddings=1024)


def checkpoint(tmp_path, family="mtlm_llama", kind="char", **overrides):
    tokenizer = make_tokenizer(kind, [TEXT], vocab_size=300, max_vocab=40)
    folder = tmp_path / f"{family}-{kind}"
    model = tiny_model(family, vocab_size=len(tokenizer), **overrides)
    with torch.no_grad():  # weights far from zero, so that rounding shows in the logits if it is wrong
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


@pytest.mark.parametrize("family, overrides", [("mtlm_llama", {"attention_bias": False}), ("mtlm_gpt", GPT2_LIKE)])
@pytest.mark.parametrize("qtype", ["f32", "f16", "q8_0"])
def test_gguf_reads_back_in_transformers_with_the_checkpoint_logits(tmp_path, family, overrides, qtype):
    folder, model, _ = checkpoint(tmp_path, family, **overrides)
    path, reported = export_gguf(folder, tmp_path / "gguf", qtype)
    assert path == tmp_path / "gguf" / f"model-{qtype}.gguf" and path.is_file()

    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    assert type(loaded).__name__ == {"mtlm_llama": "LlamaForCausalLM", "mtlm_gpt": "GPT2LMHeadModel"}[family]
    ids = random_ids(2, 20, seed=5) % model.config.vocab_size
    with torch.no_grad():
        expected, logits = model(ids).logits, loaded(ids).logits
    error = float((logits - expected).abs().max() / expected.std())
    assert error <= TOLERANCE[qtype]
    if qtype == "f32":
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    else:
        assert error > 1e-6, "a rounded file computed exactly the f32 logits: the weights were not rounded"
    assert reported <= TOLERANCE[qtype]


def test_a_bpe_tokenizer_inside_the_gguf_file_gives_the_same_ids_in_transformers(tmp_path):
    folder, _, tokenizer = checkpoint(tmp_path, kind="bpe", attention_bias=False)
    path, _ = export_gguf(folder, tmp_path / "gguf")
    from_gguf = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    sample = "ROMEO:\nTo be, or not to be, Ünïcödé!"
    assert from_gguf(sample)["input_ids"] == tokenizer(sample)["input_ids"]
    assert from_gguf.decode(tokenizer(sample)["input_ids"]) == sample


@pytest.mark.parametrize("kind", ["char", "byte", "arithmetic"])
def test_a_vocabulary_of_single_bytes_is_written_as_llama_cpp_reads_it(tmp_path, kind):
    from gguf import GGUFReader
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder, _, tokenizer = checkpoint(tmp_path, kind=kind, attention_bias=False)
    path, _ = export_gguf(folder, tmp_path / "gguf")
    fields = GGUFReader(path).fields

    def strings(key):
        field = fields[key]
        return [bytes(field.parts[index]).decode("utf-8") for index in field.data]

    spelled = {character: symbol for byte, symbol in bytes_to_unicode().items() for character in [chr(byte)]}
    vocabulary = tokenizer.get_vocab()
    tokens = strings("tokenizer.ggml.tokens")
    assert len(tokens) == len(vocabulary)
    for token, index in vocabulary.items():  # each id keeps its token, spelled as GPT-2's byte alphabet spells it
        expected = token if token in tokenizer.all_special_tokens or kind == "byte" else spelled[token]
        assert tokens[index] == expected, token
    assert strings("tokenizer.ggml.merges") == [""]  # the key llama.cpp requires, pairing nothing
    assert strings("tokenizer.ggml.model") == ["gpt2"]


@pytest.mark.parametrize("family, overrides, kind, named", [
    ("mtlm_moe", {}, "char", "mtlm_moe"),
    ("mtlm_llama", {"attention_bias": True}, "char", "attention_bias"),
    ("mtlm_gpt", {**GPT2_LIKE, "intermediate_size": 64}, "char", "intermediate_size=64"),
    ("mtlm_gpt", {**GPT2_LIKE, "hidden_act": "relu"}, "char", "hidden_act='relu'"),
    ("mtlm_gpt", {**GPT2_LIKE, "max_position_embeddings": 64}, "char", "max_position_embeddings=64"),
    ("mtlm_llama", {"attention_bias": False}, "word", "not a single byte"),
])
def test_what_gguf_cannot_express_is_refused_by_name_before_writing(tmp_path, family, overrides, kind, named):
    folder, _, _ = checkpoint(tmp_path, family, kind, **overrides)
    with pytest.raises(UsageError, match=named):
        export_gguf(folder, tmp_path / "gguf")
    assert not (tmp_path / "gguf").exists()


@pytest.mark.parametrize("family", ["mtlm_llama", "mtlm_gpt", "mtlm_moe"])
def test_onnx_runs_in_onnxruntime_with_the_checkpoint_logits_at_any_batch_and_length(tmp_path, family):
    import onnxruntime

    folder, model, _ = checkpoint(tmp_path, family)
    path, reported = export_onnx(folder, tmp_path / "onnx")
    assert reported <= TOLERANCE["onnx"]
    assert {"model.onnx", "config.json", "tokenizer.json"} <= {entry.name for entry in path.parent.iterdir()}

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = random_ids(3, 17, seed=9) % model.config.vocab_size  # not the batch and length it was exported with
    mask = torch.ones_like(ids)
    mask[2, :5] = 0
    logits = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits.numpy()
    keep = mask.bool().numpy()
    np.testing.assert_allclose(logits[keep], expected[keep], rtol=0, atol=1e-4)


def test_cli_export_gguf_and_its_refusals(tmp_path, capsys, monkeypatch):
    folder, _, _ = checkpoint(tmp_path, attention_bias=False)
    mtlm_main(["export", str(folder), str(tmp_path / "q8"), "--gguf", "--gguf-type", "q8_0"])
    assert "Wrote" in capsys.readouterr().out and (tmp_path / "q8" / "model-q8_0.gguf").is_file()
    with pytest.raises(SystemExit):
        mtlm_main(["export", str(folder), str(tmp_path / "x"), "--gguf", "--repo-id", "me/tiny"])
    assert "--repo-id goes into a model card" in capsys.readouterr().err

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "onnxruntime" else
                        real_find_spec(name, *args))
    with pytest.raises(SystemExit):
        mtlm_main(["export", str(folder), str(tmp_path / "o"), "--onnx"])
    assert "needs the onnxruntime package: pip install 'mtlm[export]'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "o").exists()


def test_onnx_exports_the_tiny_lm_baselines_and_refuses_the_byte_model_by_name(tmp_path):
    from test_byte import tiny as tiny_byte_model
    from test_tiny_lm import tiny as tiny_baseline

    from mtlm.data.tokenization import byte_chunk_tokenizer

    tokenizer = make_tokenizer("char", ["abcdefghijklmnopqrs"])  # the 23 ids of test_tiny_lm's models
    for family in ("mtlm_linear", "mtlm_mlp", "mtlm_attention"):
        folder = tmp_path / family
        tiny_baseline(family).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _, error = export_onnx(folder, tmp_path / f"{family}-onnx")
        assert error <= TOLERANCE["onnx"], family

    folder = tmp_path / "byte"
    tiny_byte_model(chunk_boundary="space").save_pretrained(folder)
    byte_chunk_tokenizer([TEXT], chunk_boundary="space", max_chunk_bytes=4).save_pretrained(folder)
    with pytest.raises(UsageError, match="mtlm_byte pools bytes into chunks"):
        export_onnx(folder, tmp_path / "byte-onnx")
    assert not (tmp_path / "byte-onnx").exists()


def test_gguf_types_share_a_folder_and_a_model_vocabulary_larger_than_the_tokenizer_is_padded(tmp_path):
    from gguf import GGUFReader

    tokenizer = make_tokenizer("char", [TEXT])
    folder = tmp_path / "padded"
    model = tiny_model("mtlm_llama", vocab_size=len(tokenizer) + 5, attention_bias=False)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    export_gguf(folder, tmp_path / "gguf", "f32")
    export_gguf(folder, tmp_path / "gguf", "q8_0")
    assert {path.name for path in (tmp_path / "gguf").iterdir()} == {"model-f32.gguf", "model-q8_0.gguf"}
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_gguf(folder, tmp_path / "gguf", "f32")

    field = GGUFReader(tmp_path / "gguf" / "model-f32.gguf").fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[index]).decode() for index in field.data]
    assert len(tokens) == model.config.vocab_size and tokens[-5:] == [f"[PAD{len(tokenizer) + i}]" for i in range(5)]
