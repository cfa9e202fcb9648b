"""data.source: shards: a folder of text / JSONL / parquet shards tokenized once, in parallel, into one token file
that later runs reuse and training reads through a memory map; bad folders refused by name before any work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtlm.data import shards
from mtlm.data.shards import TokenBlocks, numpy_encoder, shard_files, shard_splits, token_store
from mtlm.data.tokenization import make_tokenizer
from mtlm.errors import UsageError
from mtlm.training import run_config

FIXTURE = Path(__file__).parent / "fixtures" / "shakespeare-6k.txt"
TEXT = FIXTURE.read_text(encoding="utf-8")


def tokenizer_of(kind: str):
    return make_tokenizer(kind, [TEXT + "é"], vocab_size=300)


def write_shards(folder: Path, kind: str, documents: list[str]) -> Path:
    folder.mkdir(parents=True)
    for index, document in enumerate(documents):
        if kind == "text":
            (folder / f"{index:02d}.txt").write_text(document, encoding="utf-8")
        elif kind == "jsonl":
            rows = [json.dumps({"text": line, "id": number}) for number, line in enumerate(document.split("\n\n"))]
            (folder / f"{index:02d}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
        else:
            table = pa.table({"text": document.split("\n\n")})
            pq.write_table(table, folder / f"{index:02d}.parquet", row_group_size=7)
    return folder


def expected_ids(tokenizer, kind: str, documents: list[str]) -> list[int]:
    """What the store must hold: every document (a text shard, or a JSONL / parquet row) encoded whole, then eos."""
    rows = documents if kind == "text" else [row for document in documents for row in document.split("\n\n")]
    ids = []
    for row in rows:
        ids += tokenizer(row, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return ids


@pytest.mark.parametrize("kind", ["text", "jsonl", "parquet"])
@pytest.mark.parametrize("tokenizer_kind", ["char", "byte", "bpe"])
def test_the_token_file_holds_every_document_encoded_in_order(tmp_path, monkeypatch, kind, tokenizer_kind):
    monkeypatch.setattr(shards, "PIECE_BYTES", 1500)  # many pieces per shard, cut inside lines, over 2 workers
    documents = [TEXT[:5000], "Ünïcödé lines, and a tab\there.\r\nWindows line end.\n\n" + TEXT[5000:], TEXT[:700]]
    folder = write_shards(tmp_path / "corpus", kind, documents)
    tokenizer = tokenizer_of(tokenizer_kind)
    store = token_store(folder, tokenizer, num_proc=2, cache_dir=tmp_path / "cache")
    index = json.loads((store / "index.json").read_text())
    ids = np.fromfile(store / "tokens.bin", dtype=index["dtype"]).tolist()
    expected = expected_ids(tokenizer, kind, documents)
    if tokenizer_kind == "bpe":  # pieces end at line ends, where a BPE may merge differently: the text must survive
        assert tokenizer.decode(ids) == tokenizer.decode(expected)
    else:
        assert ids == expected
    assert index["tokens"] == len(ids)


def test_jsonl_lines_are_split_at_line_feeds_only(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    document = "one\u2028two\u2029three\x85four"  # JSON may hold these raw; str.splitlines would cut there
    (folder / "a.jsonl").write_text(json.dumps({"text": document}, ensure_ascii=False) + "\r\n", encoding="utf-8")
    tokenizer = tokenizer_of("byte")
    store = token_store(folder, tokenizer, num_proc=1, cache_dir=tmp_path / "cache")
    assert np.fromfile(store / "tokens.bin", dtype=np.uint16).tolist() == expected_ids(tokenizer, "jsonl", [document])


def test_numpy_decoding_is_used_for_bytes_and_characters_and_equals_the_tokenizer():
    for kind in ("byte", "char"):
        tokenizer = tokenizer_of(kind)
        encode = numpy_encoder(tokenizer)
        assert encode is not None, kind
        sample = TEXT[:3000] + "é ~ unseen: ∑\n"
        assert encode(sample).tolist() == tokenizer(sample, add_special_tokens=False)["input_ids"], kind
    assert numpy_encoder(tokenizer_of("bpe")) is None  # merges: the tokenizer must run


def test_text_that_spells_a_special_token_is_encoded_by_the_tokenizer(tmp_path):
    tokenizer = tokenizer_of("char")
    document = "before <eos> after\n"
    folder = write_shards(tmp_path / "corpus", "text", [document])
    store = token_store(folder, tokenizer, num_proc=1, cache_dir=tmp_path / "cache")
    assert np.fromfile(store / "tokens.bin", dtype=np.uint16).tolist() == expected_ids(tokenizer, "text", [document])


def test_a_store_is_reused_and_rebuilt_when_a_shard_or_the_tokenizer_changes(tmp_path, monkeypatch):
    folder = write_shards(tmp_path / "corpus", "text", [TEXT[:2000], TEXT[2000:4000]])
    first = token_store(folder, tokenizer_of("char"), cache_dir=tmp_path / "cache")

    def never(piece):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(shards, "_encode_piece", never)
    assert token_store(folder, tokenizer_of("char"), cache_dir=tmp_path / "cache") == first
    monkeypatch.undo()
    (folder / "01.txt").write_text(TEXT[2000:4100], encoding="utf-8")
    changed = token_store(folder, tokenizer_of("char"), cache_dir=tmp_path / "cache")
    other_tokenizer = token_store(folder, tokenizer_of("byte"), cache_dir=tmp_path / "cache")
    assert len({first, changed, other_tokenizer}) == 3
    assert not list((tmp_path / "cache").glob(".*.partial-*"))  # no staging folder left behind


def test_splits_are_contiguous_blocks_read_through_a_memory_map(tmp_path):
    folder = write_shards(tmp_path / "corpus", "text", [TEXT])
    tokenizer = tokenizer_of("byte")
    store = token_store(folder, tokenizer, cache_dir=tmp_path / "cache")
    splits = shard_splits(store, {"train": 0.9, "validation": 0.1}, block_size=16)
    ids = np.fromfile(store / "tokens.bin", dtype=np.uint16)
    train, validation = splits["train"], splits["validation"]
    assert len(train) == int(0.9 * len(ids)) // 16 and len(validation) == (len(ids) - int(0.9 * len(ids))) // 16
    assert train[3]["input_ids"] == ids[48:64].tolist() == train[3]["labels"]
    assert validation[0]["input_ids"] == ids[int(0.9 * len(ids)):][:16].tolist()
    assert isinstance(train.rows(), np.memmap)
    with pytest.raises(UsageError, match="validation split .* holds no block"):
        shard_splits(store, {"train": 0.9999, "validation": 0.0001}, block_size=512)


@pytest.mark.parametrize("layout, problem", [
    ({}, "holds no readable shard \\(nothing\\)"),
    ({"a.txt": ""}, "holds no readable shard"),
    ({"a.txt": "text", "b.jsonl": '{"text": "x"}'}, "mixes formats: 1 text .*1 jsonl"),
    ({"a.txt": "text", "notes.md": "x"}, "mixes formats"),
    ({"notes.md": "x"}, "holds no readable shard"),
])
def test_bad_shard_folders_are_refused_by_name_before_any_work(tmp_path, layout, problem):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, content in layout.items():
        (folder / name).write_text(content)
    with pytest.raises(UsageError, match=problem):
        run_config.validate(shard_run(tmp_path, folder))
    with pytest.raises(UsageError, match="is not a folder"):
        shard_files(folder / "a.txt" if layout else tmp_path / "missing")


@pytest.mark.parametrize("name, content, problem", [
    ("a.jsonl", '{"text": "fine"}\n{"body": "no text"}\n', "line 2 of that piece.*string 'text' field"),
    ("a.jsonl", '{"text": null}\n', "not a JSON object with a string 'text' field"),
    ("a.txt", b"ok\n\xff\xfe bad\n", "is not UTF-8 text \\(byte 3\\)"),
])
def test_unreadable_shards_are_named(tmp_path, name, content, problem):
    folder = tmp_path / "corpus"
    folder.mkdir()
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UsageError, match=problem):
        token_store(folder, tokenizer_of("byte"), num_proc=1, cache_dir=tmp_path / "cache")
    assert not [entry for entry in (tmp_path / "cache").iterdir() if entry.suffix != ".lock"]  # no store, no staging


def shard_run(tmp_path: Path, folder: Path, **data) -> dict:
    return {
        "model": {"model_type": "mtlm_llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "max_position_embeddings": 64},
        "tokenizer": {"kind": "byte"},
        "data": {"source": "shards", "path": str(folder), "block_size": 64, "cache_dir": str(tmp_path / "cache"),
                 **data},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 4, "per_device_train_batch_size": 8,
                     "eval_strategy": "no", "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True,
                     "report_to": "none"},
    }


TRAIN_UNDER_A_LIMIT = r"""
import json, re, resource, sys
from mtlm.training import run_config
from mtlm.training.trainer import train

run, headroom = json.loads(sys.argv[1]), int(sys.argv[2])
# What this process may still allocate (heap and private mappings), from here on: the corpus is larger than that.
data = int(re.search(r"VmData:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_DATA, (data + headroom, data + headroom))
trainer = train(run_config.validate(run))
print("tokens seen", trainer.state.num_input_tokens_seen)
"""


def test_training_streams_a_corpus_larger_than_the_memory_it_may_use(tmp_path):
    headroom = 192 << 20
    folder = tmp_path / "corpus"
    folder.mkdir()
    line = (TEXT[:4000] + "\n").encode("utf-8")
    for index in range(2):  # 2 x 128 MB of text: more than the headroom, as text and again as ids
        with open(folder / f"{index}.txt", "wb") as shard:
            for _ in range((128 << 20) // len(line)):
                shard.write(line)
    assert sum(path.stat().st_size for path in folder.iterdir()) > headroom
    run = shard_run(tmp_path, folder, num_proc=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", TRAIN_UNDER_A_LIMIT, json.dumps(run), str(headroom)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tokens seen 2048" in result.stdout  # 4 steps x 8 blocks x 64 tokens
    store = next(path for path in (tmp_path / "cache").iterdir() if path.is_dir())  # not the build lock
    assert json.loads((store / "index.json").read_text())["tokens"] == 2 * ((128 << 20) // len(line)) * len(line) + 2

    # the same run without the limit but loading the whole corpus would not fit: check the limit bites
    eager = TRAIN_UNDER_A_LIMIT.replace("trainer = train(run_config.validate(run))",
                                        "text = [open(p, encoding='utf-8').read() for p in sorted(__import__('glob')"
                                        f".glob({str(folder / '*.txt')!r}))]")
    failed = subprocess.run([sys.executable, "-c", eager, json.dumps(run), str(headroom)], capture_output=True,
                            text=True, timeout=600, env=env)
    assert failed.returncode != 0 and "MemoryError" in failed.stderr


def test_token_blocks_pickle_without_their_memory_map(tmp_path):
    import pickle

    folder = write_shards(tmp_path / "corpus", "text", [TEXT])
    store = token_store(folder, tokenizer_of("byte"), cache_dir=tmp_path / "cache")
    blocks = TokenBlocks(store, 32, 0, 3200)
    blocks[0]
    copy = pickle.loads(pickle.dumps(blocks))
    assert copy._tokens is None and copy[5] == blocks[5]


def test_shuffled_blocks_are_a_permutation_fixed_by_the_seed():
    import torch

    from mtlm.data.shards import ShuffledBlocks

    first, again = list(ShuffledBlocks(200_003, seed=3)), list(ShuffledBlocks(200_003, seed=3))
    assert first == again and sorted(first) == list(range(200_003)) and first[:50] != list(range(50))
    torch.manual_seed(0)  # the global generator plays no part: a resumed run draws the same order before its RNG loads
    sampler = ShuffledBlocks(200_003, seed=3)
    assert list(sampler) == first
    sampler.set_epoch(1)
    second_epoch = list(sampler)
    assert second_epoch != first and sorted(second_epoch) == sorted(first)


def test_the_flax_trainer_reads_the_same_token_file(tmp_path):
    pytest.importorskip("flax")
    from mtlm.training.flax_trainer import train_flax

    folder = write_shards(tmp_path / "corpus", "text", [TEXT])
    state = train_flax(run_config.validate(shard_run(tmp_path, folder, splits={"train": 0.8, "validation": 0.2})))
    assert state["global_step"] == 4 and state["num_input_tokens_seen"] == 4 * 8 * 64


def test_two_processes_draw_the_same_shuffled_blocks_as_one(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    folder = write_shards(tmp_path / "corpus", "text", [TEXT, TEXT[::-1]])
    runs = {}
    for processes, per_device in ((1, 8), (2, 4)):  # the same global batch, blocks in random order
        run = shard_run(tmp_path / f"p{processes}", folder, block_size=32)
        run["training"].update(per_device_train_batch_size=per_device, max_steps=6, seed=3)
        run["data"]["cache_dir"] = str(tmp_path / "cache")
        config = tmp_path / f"p{processes}.yaml"
        config.write_text(json.dumps(run))
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_port",
                   str(29610 + processes), "-m", "mtlm.cli", "train", str(config)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        runs[processes] = AutoModelForCausalLM.from_pretrained(tmp_path / f"p{processes}" / "run")
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        torch.testing.assert_close(runs[2](ids).logits, runs[1](ids).logits, rtol=0, atol=1e-4)


def test_numpy_decoding_refuses_or_steps_aside_where_it_would_differ():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    no_unknown = Tokenizer(models.BPE({"a": 0, "b": 1}, merges=[]))
    encode = numpy_encoder(PreTrainedTokenizerFast(tokenizer_object=no_unknown))
    assert encode("abba").tolist() == [0, 1, 1, 0]
    with pytest.raises(UsageError, match="cannot encode 'x'"):
        encode("abx")

    prefixed = make_tokenizer("byte")
    prefixed.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)
    assert numpy_encoder(prefixed) is None  # it adds a space the byte table would not


def test_a_store_is_built_once_and_a_killed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    folder = write_shards(tmp_path / "corpus", "text", [TEXT])
    tokenizer = tokenizer_of("char")
    key = shards.store_key(shard_files(folder)[0], tokenizer)
    leftover = tmp_path / "cache" / f".{key}.partial-killed"
    leftover.mkdir(parents=True)  # what a build killed half-way leaves
    builds = []
    real_build = shards._build_store
    monkeypatch.setattr(shards, "_build_store", lambda *args: builds.append(1) or real_build(*args))
    with ThreadPoolExecutor(2) as pool:  # two runs sharing the cache at once
        stores = list(pool.map(lambda _: token_store(folder, tokenizer, num_proc=1, cache_dir=tmp_path / "cache"),
                               range(2)))
    assert stores[0] == stores[1] and len(builds) == 1 and not leftover.exists()
