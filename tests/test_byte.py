"""mtlm_byte (STLM's byte model): a causal LM over ids whatever the chunk boundaries, a true probability of the text,
its tokenizer lossless on any text, and transformers-native (Auto classes, generate, pipeline, remote code, mtlm
train, growth)."""

import itertools
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_without_mtlm
from test_training import tiny_run
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline

from mtlm.cli import main as mtlm_main
from mtlm.data.sources import TINY_SHAKESPEARE
from mtlm.data.tokenization import bpe_tokenizer, read_corpus
from mtlm.data.tokenization_mtlm_byte import MtlmByteTokenizer
from mtlm.families import FAMILIES, MtlmByteForCausalLM
from mtlm.growth import grow_model
from mtlm.modeling.modeling_mtlm_byte import chunk_layout
from mtlm.training import run_config
from mtlm.training.trainer import train

SHAKESPEARE = read_corpus(TINY_SHAKESPEARE)
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            encoder_hidden_sizes=[16, 16, 32], encoder_num_attention_heads=2, decoder_hidden_size=16,
            decoder_num_attention_heads=2, decoder_num_hidden_layers=1, max_chunk_bytes=4)
VARIANTS = [dict(chunk_boundary=boundary, decoder_type=decoder, pooling=pooling)
            for boundary, decoder, pooling in itertools.product(("bpe", "space"), ("causal", "parallel"),
                                                                 ("mean", "stlm"))]
NAMES = ["-".join(variant.values()) for variant in VARIANTS]


def tiny(seed: int = 0, std: float = 0.3, **overrides) -> MtlmByteForCausalLM:
    torch.manual_seed(seed)
    config = AutoConfig.for_model("mtlm_byte", **{**TINY, **overrides})
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # larger weights than the initialisation's, so that every input visibly matters
        for name, parameter in model.named_parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, std)
    return model


def byte_ids(length: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Bytes with spaces and chunk marks among them (ids 0-255, 32 and 259)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (batch, length), generator=generator)
    ids[torch.rand(batch, length, generator=generator) < 0.2] = 32
    ids[torch.rand(batch, length, generator=generator) < 0.2] = 259
    return ids


@pytest.mark.parametrize("variant", VARIANTS, ids=NAMES)
def test_a_logit_never_sees_the_bytes_after_it(variant):
    model = tiny(**variant)
    ids = byte_ids(30)
    with torch.no_grad():
        logits = model(ids).logits
        for t in (0, 3, 9, 17, 28):
            changed = ids.clone()
            changed[:, t + 1:] = byte_ids(29 - t, seed=t + 7)
            later = model(changed).logits
            torch.testing.assert_close(later[:, : t + 1], logits[:, : t + 1], rtol=0, atol=1e-5)
            assert not torch.allclose(later[:, t + 1:], logits[:, t + 1:], atol=1e-3)


@pytest.mark.parametrize("boundary, decoder", list(itertools.product(("bpe", "space"), ("causal", "parallel"))))
def test_the_probabilities_of_every_string_of_a_toy_alphabet_sum_to_one(boundary, decoder):
    """Every id string of a fixed length after <bos> (chunk marks, eos and, for space boundaries, the space byte
    included; the pad id is never predicted): the model's probabilities sum to 1, so bits per byte are a true
    probability of the text."""
    # bpe: 3 bytes and the 4 specials; space: bytes 0-32 (32 is the space), so chunks end after spaces too.
    vocab = 7 if boundary == "bpe" else 37
    pad, bos, eos, eoc = range(vocab - 4, vocab)
    model = tiny(std=0.5, vocab_size=vocab, pad_token_id=pad, bos_token_id=bos, eos_token_id=eos,
                 end_of_chunk_token_id=eoc, chunk_boundary=boundary, decoder_type=decoder, max_chunk_bytes=3).double()
    alphabet = [token for token in range(vocab) if token != pad]
    length = 5 if boundary == "bpe" else 3
    strings = torch.tensor([[bos, *string] for string in itertools.product(alphabet, repeat=length)])
    with torch.no_grad():
        log_probs = model(strings).logits.log_softmax(-1)[:, :-1].gather(-1, strings[:, 1:, None]).sum((1, 2))
    assert abs(log_probs.exp().sum().item() - 1) < 1e-5
    assert log_probs.exp().max().item() > 2 / len(strings)  # far from uniform: the sum is not trivially 1


def test_chunks_end_at_specials_padding_and_spaces_and_long_runs_are_split_not_truncated():
    config = AutoConfig.for_model("mtlm_byte", **{**TINY, "chunk_boundary": "space", "max_chunk_bytes": 3})
    ids = torch.tensor([[0, 0, 0, 0, 0, 32, 1, 259, 2, 258, 3]])  # 5 bytes, a space, a mark, eos
    mask = torch.ones_like(ids)
    layout = chunk_layout(ids, mask, config)
    assert layout.chunk.tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4]]
    assert layout.slot.tolist() == [[0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 0]]
    assert layout.grid[0, :2].tolist() == [[0, 0, 0], [0, 0, 32]]  # all five bytes are kept
    assert layout.next_chunk.tolist() == [[0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4]]
    padded = torch.tensor([[256, 256, 5, 6]])
    layout = chunk_layout(padded, torch.tensor([[0, 0, 1, 1]]), config)
    assert layout.chunk.tolist() == [[0, 1, 2, 2]] and layout.real_chunks.tolist() == [[False, False, True]]


@pytest.mark.parametrize("pooling", ["mean", "stlm"])
def test_a_left_padded_batch_gives_each_row_its_own_logits(pooling):
    model = tiny(pooling=pooling)
    ids = byte_ids(20)
    padded = ids.clone()
    padded[0, :5] = 256
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    with torch.no_grad():
        together = model(padded, attention_mask=mask).logits
        torch.testing.assert_close(together[0, 5:], model(ids[:1, 5:]).logits[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(together[1], model(ids[1:]).logits[0], rtol=0, atol=1e-5)
    # Mean pooling never sees pad slots: a row's chunks do not depend on how long the other rows' chunks are.
    short, long = torch.tensor([[5, 259, 6, 7, 259]]), torch.tensor([[8, 9, 10, 259, 11]])
    with torch.no_grad():
        alone, batched = model(short).logits, model(torch.cat([short, long])).logits[:1]
    if pooling == "mean":
        torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)


@pytest.mark.compat
def test_generate_greedy_and_sampling_with_left_padded_batches():
    model = tiny(std=0.1)
    prompts = [byte_ids(6, batch=1, seed=3)[0], byte_ids(3, batch=1, seed=4)[0]]
    singles = [model.generate(prompt[None], max_new_tokens=15, do_sample=False, pad_token_id=256)[0]
               for prompt in prompts]
    sequence = prompts[1][None]
    with torch.no_grad():
        for _ in range(15):  # the greedy loop written out: one full forward pass per new id
            sequence = torch.cat([sequence, model(sequence).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(singles[1], sequence[0])
    batch = torch.stack([prompts[0], torch.cat([torch.full((3,), 256), prompts[1]])])
    mask = (batch != 256).long()
    generated = model.generate(batch, attention_mask=mask, max_new_tokens=15, do_sample=False, pad_token_id=256)
    assert torch.equal(generated[0], singles[0]) and torch.equal(generated[1, 3:], singles[1])
    torch.manual_seed(0)
    sampled = model.generate(batch, attention_mask=mask, max_new_tokens=15, do_sample=True, top_k=20,
                             pad_token_id=256)
    assert sampled.shape == (2, 21) and (sampled[:, 6:] != 256).all()


@pytest.mark.compat
@pytest.mark.parametrize("variant", VARIANTS, ids=NAMES)
def test_generation_chunk_by_chunk_with_the_core_cache_equals_rereading_everything(variant):
    model = tiny(std=0.1, **variant)
    batch = torch.stack([byte_ids(7, batch=1, seed=3)[0], torch.cat([torch.full((3,), 256), byte_ids(4, seed=5)[0]])])
    options = dict(attention_mask=(batch != 256).long(), max_new_tokens=40, pad_token_id=256, do_sample=True,
                   top_k=40, output_logits=True, return_dict_in_generate=True)
    torch.manual_seed(0)
    cached = model.generate(batch, **options)
    torch.manual_seed(0)
    reread = model.generate(batch, use_cache=False, **options)
    assert torch.equal(cached.sequences, reread.sequences)
    assert len(set(cached.sequences[0, 7:].tolist())) > 5  # the sampled bytes vary, and so do the chunks
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(reread.logits), rtol=1e-4, atol=1e-4)


def test_a_generation_step_runs_the_core_only_for_the_rows_that_end_a_chunk():
    model = tiny(std=0.1, chunk_boundary="space")
    batch = torch.stack([byte_ids(7, batch=1, seed=3)[0], torch.cat([torch.full((3,), 256), byte_ids(4, seed=5)[0]])])
    mask = (batch != 256).long()
    stepped_rows = []
    hook = model.model.core.layers[0].register_forward_hook(lambda module, args, output: stepped_rows.append(
        args[0].shape[0]))
    torch.manual_seed(0)
    new_ids = 40
    sequences = model.generate(batch, attention_mask=mask, max_new_tokens=new_ids, do_sample=True, top_k=40,
                               pad_token_id=256)
    hook.remove()
    full_mask = torch.cat([mask, torch.ones(2, new_ids, dtype=mask.dtype)], dim=1)
    # Every id fed after the prompt (all new ones but the last) that ends its row's chunk steps that row alone.
    ends = chunk_layout(sequences, full_mask, model.config).ends[:, batch.shape[1]:-1]
    assert stepped_rows[0] == 2  # the prompt, both rows at once
    assert sorted(stepped_rows[1:]) == sorted(int(count) for count in ends.sum(0) if count)
    assert 1 in stepped_rows[1:]  # the rows did end chunks at different steps


@pytest.fixture(scope="module")
def bpe_boundaries():
    return bpe_tokenizer([SHAKESPEARE], 400).backend_tokenizer


def test_the_tokenizer_round_trips_every_byte(bpe_boundaries):
    tokenizer = MtlmByteTokenizer(boundary_tokenizer=bpe_boundaries, max_chunk_bytes=3)  # splits 🎉's 4 bytes
    eoc = tokenizer.end_of_chunk_token_id
    assert (len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, eoc) == \
        (260, 256, 257, 258, 259)
    not_utf8 = b"caf\xc3\xa9 \xff\xfe\xc3(".decode("utf-8", "surrogateescape")
    for text in (SHAKESPEARE, "naïve café — 日本語, 🎉 ünïcödé\n\ttabs", not_utf8):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert bytes(token for token in ids if token < 256) == text.encode("utf-8", "surrogateescape")
        run = 0
        for token in ids:  # at most max_chunk_bytes - 1 bytes before each mark
            run = 0 if token == eoc else run + 1
            assert run <= 2
    ids = tokenizer("the king's", add_special_tokens=False)["input_ids"]
    assert ids.count(eoc) >= 2 and ids[-1] == eoc
    space = MtlmByteTokenizer(chunk_boundary="space")
    assert space("hé !", add_special_tokens=False)["input_ids"] == list("hé !".encode())


def test_bad_tokenizer_and_config_input_names_the_field():
    with pytest.raises(ValueError, match="pass boundary_file"):
        MtlmByteTokenizer(chunk_boundary="bpe")
    with pytest.raises(ValueError, match="max_chunk_bytes=1 must be at least 2"):
        MtlmByteTokenizer(chunk_boundary="space", max_chunk_bytes=1)
    for fields, message in [
        (dict(max_chunk_bytes=1), "max_chunk_bytes=1 must be at least 2"),
        (dict(encoder_hidden_sizes=[16, 16]), "must widen towards the core.*hidden_size=32"),
        (dict(encoder_hidden_sizes=[32, 16, 32]), "never shrink"),
        (dict(encoder_hidden_sizes=[32]), "encoder_hidden_sizes must list"),
        (dict(vocab_size=259), "end_of_chunk_token_id=259 must be an id of the byte vocabulary"),
        (dict(chunk_boundary="word"), "chunk_boundary='word' is not supported"),
    ]:
        with pytest.raises(ValueError, match=message):
            AutoConfig.for_model("mtlm_byte", **{**TINY, **fields})


REMOTE = r"""
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, text, logits_file = sys.argv[1:4]
expected = torch.load(logits_file)
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
assert type(tokenizer).__module__.startswith("transformers_modules."), type(tokenizer).__module__
ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
assert tokenizer.decode(ids[0]) == text, (tokenizer.decode(ids[0]), text)
with torch.no_grad():
    torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=0)
print("remote-ok", model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=256).shape[1] - ids.shape[1])
"""


@pytest.mark.compat
def test_save_load_and_remote_code_round_trip(tmp_path, bpe_boundaries):
    model = tiny()
    tokenizer = MtlmByteTokenizer(boundary_tokenizer=bpe_boundaries, max_chunk_bytes=4)
    text = "To be, or not to be: naïve 🎉"
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert type(AutoTokenizer.from_pretrained(folder)) is MtlmByteTokenizer  # mtlm installed: no remote code
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(loaded) is MtlmByteForCausalLM
    ids = AutoTokenizer.from_pretrained(folder)(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert ids[0].tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        expected = model(ids).logits
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=0)
    torch.save(expected, tmp_path / "logits.pt")
    result = run_without_mtlm(REMOTE, str(folder), text, str(tmp_path / "logits.pt"), tmp_path=tmp_path)
    assert result.returncode == 0 and "remote-ok 10" in result.stdout, result.stderr[-3000:]


def test_the_reconstruction_loss_is_weighted_into_the_loss_and_reported_apart():
    model = tiny(reconstruction_loss_weight=0.5)
    ids = byte_ids(24)
    with torch.no_grad():
        out = model(ids, labels=ids)
        plain = model.loss_function(logits=out.logits, labels=ids, vocab_size=model.config.vocab_size)
    assert out.aux_loss > 0 and torch.allclose(out.loss, plain + 0.5 * out.aux_loss)
    model.config.reconstruction_loss_weight = 0.0
    with torch.no_grad():
        assert model(ids, labels=ids).aux_loss is None


def test_growth_deepens_the_core_and_copies_its_layers():
    model = tiny(num_hidden_layers=2)
    grown = grow_model(model, num_layers=4, function_preserving=True)
    assert grown.config.num_hidden_layers == 4 and len(grown.model.core.layers) == 4
    source = model.model.core.layers[1].mlp.gate_proj.weight
    assert torch.equal(grown.model.core.layers[1].mlp.gate_proj.weight, source)
    assert torch.equal(grown.model.encoder.byte_embeddings.weight, model.model.encoder.byte_embeddings.weight)
    ids = byte_ids(16)
    with torch.no_grad():
        torch.testing.assert_close(grown(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


def test_flops_count_what_the_model_computes():
    ids = byte_ids(32)
    shallow, deep = tiny(num_hidden_layers=2), tiny(num_hidden_layers=4)
    chunks = chunk_layout(ids, torch.ones_like(ids), shallow.config).grid.shape[1]
    core_layer = 2 * 32 * 16 * (2 * 2 + 2 * 2) + 2 * 2 * chunks * 2 * 16 + 2 * 3 * 32 * 64
    extra = deep.floating_point_ops({"input_ids": ids}) - shallow.floating_point_ops({"input_ids": ids})
    assert extra == 3 * 2 * chunks * 2 * core_layer
    family = FAMILIES["mtlm_byte"]
    assert 0 < family.flops_per_token(shallow.config, 32) < shallow.floating_point_ops({"input_ids": ids})
    pytest.importorskip("jax")
    from mtlm.modeling.flax_mtlm import FlaxMtlmForCausalLM

    with pytest.raises(ValueError, match="mtlm_byte family has no Flax twin"):
        FlaxMtlmForCausalLM.from_config(shallow.config)


def test_mtlm_train_with_byte_chunks_and_a_pipeline(tmp_path):
    run = tiny_run(tmp_path, model={"model_type": "mtlm_byte", **TINY, "reconstruction_loss_weight": 0.1},
                   tokenizer={"kind": "byte_chunks", "vocab_size": 300, "max_chunk_bytes": 4},
                   training={"max_steps": 4, "logging_steps": 2}, data={"block_size": 48})
    del run["model"]["max_chunk_bytes"], run["model"]["max_position_embeddings"]
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    mtlm_main(["train", str(tmp_path / "run.yaml")])
    folder = tmp_path / "run"
    config = AutoConfig.from_pretrained(folder)
    assert (config.chunk_boundary, config.max_chunk_bytes) == ("bpe", 4)
    state = yaml.safe_load((folder / "trainer_state.json").read_text())
    assert any("aux_loss" in entry for entry in state["log_history"])
    generator = pipeline("text-generation", model=str(folder), tokenizer=str(folder))
    text = generator("ROMEO:", max_new_tokens=20, do_sample=False)[0]["generated_text"]
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")

    run["model"]["max_chunk_bytes"] = 6
    with pytest.raises(ValueError, match="model.max_chunk_bytes=6 disagrees with the tokenizer's 4"):
        train(run_config.validate(run), overwrite=True)
    run["model"].pop("max_chunk_bytes")
    run["tokenizer"] = {"kind": "char"}
    with pytest.raises(ValueError, match="set tokenizer.kind: byte_chunks"):
        train(run_config.validate(run), overwrite=True)


def test_the_tokenizer_command_and_the_bundled_config(tmp_path):
    mtlm_main(["tokenizer", "byte_chunks", "--chunk-boundary", "space", "--max-chunk-bytes", "8",
               "--out", str(tmp_path / "tok")])
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert (type(tokenizer), tokenizer.chunk_boundary, tokenizer.max_chunk_bytes) == (MtlmByteTokenizer, "space", 8)
    with pytest.raises(SystemExit):
        mtlm_main(["tokenizer", "byte_chunks", "--out", str(tmp_path / "none")])  # bpe boundaries need a text
    run = run_config.load("byte-small", [])
    assert run["model"]["preset"] == "byte-small" and run["tokenizer"]["kind"] == "byte_chunks"


def test_lm_eval_and_bits_per_byte_read_it_as_any_causal_lm(tmp_path, bpe_boundaries):
    pytest.importorskip("lm_eval")
    from mtlm.evaluation import harness
    from mtlm.evaluation.perplexity import perplexity, read_documents

    tasks = Path(__file__).parent / "fixtures" / "lm_eval"
    folder = tmp_path / "byte"
    tiny(std=0.1).save_pretrained(folder)
    MtlmByteTokenizer(boundary_tokenizer=bpe_boundaries, max_chunk_bytes=4).save_pretrained(folder)
    results = harness.evaluate(folder, "tiny_arc,tiny_rolling", include_path=tasks, save=False)
    assert results["results"]["tiny_arc"]["sample_len"] == 12
    assert 0 <= results["results"]["tiny_arc"]["acc,none"] <= 1
    documents = read_documents(tasks / "data" / "rolling.jsonl")
    ours = perplexity(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), documents,
                      max_length=1024, stride=1024, show_progress=False)
    assert ours["bits_per_byte"] == pytest.approx(results["results"]["tiny_rolling"]["bits_per_byte,none"], rel=1e-4)
    assert ours["tokens"] > ours["bytes"]  # the chunk marks are scored too: an upper bound on the bytes alone
