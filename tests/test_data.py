"""Tokenizers, text sources, tokenizing and packing through `datasets`, prompt/target masking, collation and the
synthetic arithmetic generator."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config, tiny_model
from datasets import Dataset
from transformers import AutoTokenizer

from mtlm.cli import main as mtlm_main
from mtlm.data import arithmetic
from mtlm.data.processing import (RandomPositionOffsets, check_block_size, collator, pack, tokenize,
                                  tokenize_prompt_target)
from mtlm.data.sources import TINY_SHAKESPEARE, contiguous_splits, load_local_files, tiny_shakespeare
from mtlm.data.tokenization import arithmetic_tokenizer, bpe_tokenizer, byte_tokenizer, char_tokenizer
from mtlm.errors import UsageError
from mtlm.evaluation.exact_match import read_answer

HARD_TEXTS = [
    "plain ascii",
    "  leading and   inner   runs of spaces  ",
    "new\nlines\n\n\nand\ttabs\r\n",
    "ünïcödé — ½ ∑ 漢字 🙂🚀",
    "",
]
CORPUS = "".join(HARD_TEXTS) + "To be, or not to be, that is the question.\n" * 20


@pytest.mark.parametrize("kind", ["byte", "char", "bpe"])
def test_decode_inverts_encode_on_any_text_the_tokenizer_covers(kind):
    tokenizer = {"byte": byte_tokenizer, "char": lambda: char_tokenizer([CORPUS]),
                 "bpe": lambda: bpe_tokenizer([CORPUS], 300)}[kind]()
    for text in HARD_TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in tokenizer(CORPUS)["input_ids"]


def test_byte_tokenizer_gives_each_byte_its_value():
    tokenizer = byte_tokenizer()
    text = "aé\n🙂"
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == list(text.encode("utf-8"))
    assert len(tokenizer) == 259 and tokenizer.pad_token_id == 256


def test_char_tokenizer_maps_unseen_characters_to_unk():
    tokenizer = char_tokenizer(["abc"])
    assert len(tokenizer) == 4 + 3
    assert tokenizer("abz", add_special_tokens=False)["input_ids"][-1] == tokenizer.unk_token_id


def test_arithmetic_tokenizer_has_the_seed_ids():
    tokenizer = arithmetic_tokenizer()
    expected = ["<pad>", "<bos>", "<eos>", *"0123456789", "+", "-", "*", "/", "="]
    assert tokenizer.convert_ids_to_tokens(list(range(18))) == expected
    ids = tokenizer("<bos>554+456=1010<eos>")["input_ids"]
    assert ids == [1, 8, 8, 7, 13, 7, 8, 9, 17, 4, 3, 4, 3, 2]
    assert tokenizer.decode(ids) == "<bos>554+456=1010<eos>"


def test_tokenizer_folders_load_with_autotokenizer_without_mtlm(tmp_path):
    for kind in ("arithmetic", "byte"):
        mtlm_main(["tokenizer", kind, "--out", str(tmp_path / kind)])
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    mtlm_main(["tokenizer", "char", "--input", str(corpus), "--out", str(tmp_path / "char")])
    mtlm_main(["tokenizer", "bpe", "--input", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "bpe")])
    expected = {kind: AutoTokenizer.from_pretrained(tmp_path / kind)("12+3=45")["input_ids"]
                for kind in ("arithmetic", "byte", "char", "bpe")}
    script = (
        "import sys, json\nsys.modules['mtlm'] = None\nfrom transformers import AutoTokenizer\n"
        "print(json.dumps({k: AutoTokenizer.from_pretrained(sys.argv[1] + '/' + k)('12+3=45')['input_ids'] "
        "for k in ('arithmetic', 'byte', 'char', 'bpe')}))"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                            env={"HF_HUB_OFFLINE": "1", "PATH": os.environ.get("PATH", "")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected
    for kind in expected:
        assert "auto_map" not in json.loads((tmp_path / kind / "tokenizer_config.json").read_text())


def test_tokenizer_command_errors_name_the_cause(tmp_path):
    with pytest.raises(SystemExit, match="No corpus file at"):
        mtlm_main(["tokenizer", "char", "--input", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "t")])
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(SystemExit, match="is empty"):
        mtlm_main(["tokenizer", "bpe", "--input", str(tmp_path / "empty.txt"), "--vocab-size", "300",
                   "--out", str(tmp_path / "t")])
    (tmp_path / "some.txt").write_text("some text")
    with pytest.raises(SystemExit, match="vocab_size=100 is too small"):
        mtlm_main(["tokenizer", "bpe", "--input", str(tmp_path / "some.txt"), "--vocab-size", "100",
                   "--out", str(tmp_path / "t")])
    assert not (tmp_path / "t").exists()


def test_tiny_shakespeare_splits_are_the_first_90_and_last_10_percent_of_characters():
    text = TINY_SHAKESPEARE.read_text(encoding="utf-8")
    splits = tiny_shakespeare()
    train, validation = ("".join(splits[name]["text"]) for name in ("train", "validation"))
    cut = int(0.9 * len(text))
    assert train == text[:cut] and validation == text[cut:]


def test_local_text_jsonl_and_parquet_files_load(tmp_path):
    (tmp_path / "a.txt").write_text("line one\nline two\n")
    rows = [{"text": "first doc"}, {"text": "second doc"}]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    Dataset.from_list(rows).to_parquet(str(tmp_path / "c.parquet"))
    loaded = load_local_files({"train": tmp_path / "a.txt", "validation": tmp_path / "b.jsonl",
                               "test": tmp_path / "c.parquet"})
    assert list(loaded["train"]["text"]) == ["line one\n", "line two\n"]
    assert list(loaded["validation"]["text"]) == list(loaded["test"]["text"]) == ["first doc", "second doc"]
    with pytest.raises(FileNotFoundError, match="No data file at"):
        load_local_files({"train": tmp_path / "nope.txt"})
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_local_files({"train": tmp_path / "empty.txt"})


def _small_corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return contiguous_splits(path, {"train": 0.8, "validation": 0.2})


def test_packing_cuts_the_token_stream_into_full_blocks(tmp_path):
    splits = _small_corpus(tmp_path)
    tokenizer = byte_tokenizer()
    ids = tokenize(splits["train"], tokenizer)
    stream = [token for row in ids["input_ids"] for token in row]
    assert tokenizer.decode(stream) == "".join(splits["train"]["text"])
    blocks = pack(ids, 16)
    assert all(len(block) == 16 for block in blocks["input_ids"])
    assert list(blocks["labels"]) == list(blocks["input_ids"])
    assert [token for block in blocks["input_ids"] for token in block] == stream[: len(blocks) * 16]
    assert len(stream) - len(blocks) * 16 < 16


def test_tokenize_and_pack_are_cached_by_fingerprint(tmp_path):
    splits = _small_corpus(tmp_path)
    first = tokenize(splits["train"], byte_tokenizer())
    again = tokenize(splits["train"], byte_tokenizer())
    assert first.cache_files and again.cache_files == first.cache_files
    assert again._fingerprint == first._fingerprint
    other_tokenizer = tokenize(splits["train"], char_tokenizer([CORPUS]))
    assert other_tokenizer._fingerprint != first._fingerprint
    assert pack(first, 16)._fingerprint == pack(again, 16)._fingerprint != pack(first, 32)._fingerprint


def test_parallel_tokenization_matches_serial(tmp_path):
    splits = _small_corpus(tmp_path)
    serial = tokenize(splits["train"], byte_tokenizer(), num_proc=1)
    parallel = tokenize(splits["train"], byte_tokenizer(), num_proc=2)
    assert list(parallel["input_ids"]) == list(serial["input_ids"])


def test_prompt_target_labels_only_the_answer_and_the_collator_pads():
    rows = [{"text": "<bos>1+2=3<eos>"}, {"text": "<bos>7-9*2=-4<eos>"}]
    tokenizer = arithmetic_tokenizer()
    examples = tokenize_prompt_target(Dataset.from_list(rows), tokenizer)
    assert examples[0]["labels"] == [-100] * 5 + tokenizer("3<eos>", add_special_tokens=False)["input_ids"]
    assert examples[1]["labels"] == [-100] * 7 + tokenizer("-4<eos>", add_special_tokens=False)["input_ids"]
    batch = collator(tokenizer)([examples[0], examples[1]])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, 10)
    assert batch["attention_mask"][0].tolist() == [1] * 7 + [0] * 3
    assert batch["input_ids"][0, 7:].tolist() == [tokenizer.pad_token_id] * 3
    assert batch["labels"][0, 7:].tolist() == [-100] * 3
    assert batch["attention_mask"][1].tolist() == [1] * 10


def test_layout_weights_draw_every_operand_layout_equally_often_at_balance_one():
    examples = arithmetic.generate(5000, seed=3)
    prompts = [row["prompt"] for row in examples]
    layouts = [arithmetic.layout(prompt) for prompt in prompts]
    kinds = len(set(layouts))  # d+d= is 1 in 10,000 and may be missing
    assert layouts.count("ddd+ddd=") > 0.75 * len(prompts) and kinds >= 8
    assert torch.equal(arithmetic.layout_weights(prompts, 0), torch.ones(len(prompts), dtype=torch.double))
    for balance in (0.5, 1.0):
        weights = arithmetic.layout_weights(prompts, balance)
        share = {shape: float(sum(w for w, other in zip(weights, layouts) if other == shape) / weights.sum())
                 for shape in set(layouts)}
        rows = {shape: layouts.count(shape) for shape in share}
        if balance == 1.0:  # each layout's rows together weigh the same
            assert max(share.values()) == pytest.approx(1 / kinds) and min(share.values()) == pytest.approx(1 / kinds)
        else:  # in between: a layout's share grows as the square root of its rows
            expected = {shape: n ** 0.5 / sum(m ** 0.5 for m in rows.values()) for shape, n in rows.items()}
            assert share == pytest.approx(expected)
    torch.manual_seed(0)
    drawn = torch.multinomial(arithmetic.layout_weights(prompts, 1.0), 1000 * kinds, replacement=True)
    counts = {shape: 0 for shape in set(layouts)}
    for index in drawn.tolist():
        counts[layouts[index]] += 1
    assert min(counts.values()) > 800 and max(counts.values()) < 1200  # 1000 each, the rare ones repeated


def test_random_position_offsets_shift_each_row_within_the_context_and_only_learned_positions_notice():
    tokenizer = arithmetic_tokenizer()
    rows = [{"text": "<bos>1+2=3<eos>"}, {"text": "<bos>7-9*2=-4<eos>"}, {"text": "<bos>12+34=46<eos>"}]
    examples = list(tokenize_prompt_target(Dataset.from_list(rows), tokenizer))
    shifted = RandomPositionOffsets(collator(tokenizer), max_positions=16)
    torch.manual_seed(0)
    starts = set()
    for _ in range(200):
        batch = shifted(examples)
        for row, mask in zip(batch["position_ids"], batch["attention_mask"]):
            real = row[mask.bool()]
            assert real.tolist() == list(range(real[0], real[0] + len(real)))  # contiguous: only the start moves
            assert 0 <= real[0] <= 16 - len(real) and row.max() <= 15
            starts.add((len(real), int(real[0])))
    assert {(7, 0), (7, 9), (10, 0), (10, 6)} <= starts  # both ends of each row's room are drawn
    plain = collator(tokenizer)(examples)
    for family, moves in (("mtlm_llama", False), ("mtlm_gpt", True)):  # rotary positions are relative
        model = tiny_model(family, vocab_size=len(tokenizer), max_position_embeddings=16).eval()
        with torch.no_grad():
            loss = model(**plain).loss
            shifted_loss = model(**batch).loss
        assert (abs(shifted_loss - loss) > 1e-4) == moves, family
        assert moves or torch.allclose(shifted_loss, loss, atol=1e-5)


def test_text_the_tokenizer_cannot_encode_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot encode 'twelve plus three'.*no unknown token"):
        tokenize(Dataset.from_list([{"text": "12+3"}, {"text": "twelve plus three"}]), arithmetic_tokenizer())
    with pytest.raises(ValueError, match="no 'text' column"):
        tokenize(Dataset.from_list([{"body": "12"}]), arithmetic_tokenizer())


def test_block_size_beyond_the_model_context_is_refused():
    config = tiny_config("mtlm_gpt", max_position_embeddings=32)
    check_block_size(32, config)
    with pytest.raises(ValueError, match="block_size=33 is larger than the model's context"):
        check_block_size(33, config)


def test_arithmetic_is_evaluated_left_to_right_with_exact_division_only():
    assert arithmetic.running_totals([2, 3, 4], "+*")[-1] == 20
    assert arithmetic.running_totals([3, 5], "-")[-1] == -2
    assert arithmetic.running_totals([12, 4], "/")[-1] == 3
    assert arithmetic.running_totals([7, 2], "/") is None
    assert arithmetic.running_totals([7, 0], "/") is None
    for example in arithmetic.generate(300, n_operands=3, ops="+-*/", seed=5):
        operands = [int(x) for x in example["prompt"][:-1].replace("+", " ").replace("-", " ").replace("*", " ")
                    .replace("/", " ").split()]
        operators = "".join(c for c in example["prompt"] if c in "+-*/")
        assert int(example["target"]) == arithmetic.running_totals(operands, operators)[-1]
        assert example["text"] == f"<bos>{example['prompt']}{example['target']}<eos>"


def test_arithmetic_command_writes_disjoint_deterministic_splits(tmp_path):
    args = ["data", "arithmetic", "--n_samples", "500", "--N", "2", "--A", "0", "--B", "99", "--seed", "7"]
    mtlm_main([*args, "--out_dir", str(tmp_path / "a"), "--ops", "+", "-", "*", "/"])
    mtlm_main([*args, "--out_dir", str(tmp_path / "b"), "--ops", "+-*/"])
    splits = {}
    for name in ("train", "val", "test"):
        text = (tmp_path / "a" / f"{name}.jsonl").read_text()
        assert text == (tmp_path / "b" / f"{name}.jsonl").read_text()
        splits[name] = [json.loads(line) for line in text.splitlines()]
    assert [len(rows) for rows in splits.values()] == [400, 50, 50]
    prompts = [{row["prompt"] for row in rows} for rows in splits.values()]
    assert sum(len(p) for p in prompts) == len(set.union(*prompts)) == 500
    everything = [row for rows in splits.values() for row in rows]
    assert {row["prompt"][:-1].strip("0123456789")[:1] for row in everything} <= set("+-*/")
    assert any(row["target"].startswith("-") for row in everything)
    assert not list((tmp_path / "a").glob(".*")), "a partial file was left behind"
    loaded = arithmetic.load_splits(tmp_path / "a")
    assert {name: len(rows) for name, rows in loaded.items()} == {"train": 400, "validation": 50, "test": 50}
    assert loaded["test"][0] == splits["test"][0]


def test_reversed_arithmetic_teaches_digits_least_significant_first_and_is_scored_in_the_usual_order():
    plain = arithmetic.generate(200, ops="+-", seed=3)
    flipped = arithmetic.generate(200, ops="+-", seed=3, reverse=True)
    assert [row["target"] for row in plain] == [row["target"] for row in flipped]
    for row in flipped:
        sign = "-" if row["target"].startswith("-") else ""
        assert row["reversed"] and row["text"] == f"<bos>{row['prompt']}{sign}{row['target'].lstrip('-')[::-1]}<eos>"
    assert arithmetic.reverse_digits("-120") == "-021" and arithmetic.reverse_digits("-021") == "-120"
    learned = [row["text"].removeprefix(f"<bos>{row['prompt']}").removesuffix("<eos>") for row in flipped]
    assert [read_answer(row, f" {text}") for row, text in zip(flipped, learned)] == [row["target"] for row in plain]
    assert read_answer(plain[0], plain[0]["target"]) == plain[0]["target"]


def test_a_scratchpad_writes_each_running_total_and_trains_on_it():
    rows = arithmetic.generate(300, n_operands=4, high=99, ops="+-", seed=4, scratchpad=True)
    for row in rows:
        numbers = [int(x) for x in re.findall(r"\d+", row["prompt"])]
        operators = "".join(c for c in row["prompt"] if c in "+-")
        totals = arithmetic.running_totals(numbers, operators)
        assert row["scratchpad"] == f"{totals[0]}{operators[1]}{numbers[2]}{operators[2]}{numbers[3]}=" \
            f"{totals[1]}{operators[2]}{numbers[3]}=" and row["target"] == str(totals[2])
        assert row["text"] == f"<bos>{row['prompt']}{row['scratchpad']}{row['target']}<eos>"
    flipped = arithmetic.generate(50, n_operands=3, seed=1, reverse=True, scratchpad=True)
    first = flipped[0]
    partial = sum(int(x) for x in first["prompt"][:-1].split("+")[:2])
    assert first["scratchpad"] == f"{str(partial)[::-1]}+{first['prompt'][:-1].split('+')[2]}="
    assert first["text"] == f"<bos>{first['prompt']}{first['scratchpad']}{first['target'][::-1]}<eos>"
    tokenizer = arithmetic_tokenizer()
    labels = tokenize_prompt_target(Dataset.from_list([first]), tokenizer)[0]["labels"]
    learned = tokenizer(f"{first['scratchpad']}{first['target'][::-1]}<eos>", add_special_tokens=False)["input_ids"]
    assert labels == [-100] * (len(labels) - len(learned)) + learned  # loss from the first "=" on: steps, answer
    with pytest.raises(UsageError, match="N >= 3"):
        arithmetic.generate(10, scratchpad=True)


def test_constructed_division_is_exact_and_spans_the_range_rejection_cannot_fill():
    with pytest.raises(UsageError, match="Found only"):  # [0, 99] holds ~480 exact pairs a/b
        arithmetic.generate(2000, high=99, ops="/")
    rows = arithmetic.generate(2000, high=99, ops="/", division="construct", seed=1)
    pairs = [tuple(map(int, row["prompt"][:-1].split("/"))) for row in rows]
    assert all(dividend == divisor * int(row["target"]) for (dividend, divisor), row in zip(pairs, rows))
    assert {divisor for _, divisor in pairs} == set(range(1, 100))
    assert {int(row["target"]) for row in rows} == set(range(100))
    assert max(dividend for dividend, _ in pairs) > 99
    mixed = arithmetic.generate(300, n_operands=3, high=99, ops="+/", division="construct", seed=2)
    for row in mixed:  # a leading division is constructed, a later one still kept only where exact
        numbers = [int(x) for x in row["prompt"][:-1].replace("+", " ").replace("/", " ").split()]
        operators = "".join(c for c in row["prompt"] if c in "+/")
        assert int(row["target"]) == arithmetic.running_totals(numbers, operators)[-1]
    with pytest.raises(UsageError, match="needs '/' among the operators"):
        arithmetic.generate(10, ops="+", division="construct")
    with pytest.raises(UsageError, match="division='round' is not a rule"):
        arithmetic.generate(10, ops="/", division="round")


def test_an_arithmetic_folder_made_with_other_settings_is_refused_not_reused(tmp_path):
    from mtlm.training.datasets import load_texts

    data = {"source": "arithmetic", "arithmetic": {"out_dir": str(tmp_path / "add"), "n_samples": 100, "B": 99}}
    assert load_texts(data)["train"][0]["text"].endswith("<eos>")
    written = (tmp_path / "add" / "train.jsonl").read_text()
    assert load_texts({**data, "arithmetic": {**data["arithmetic"], "ops": ["+"]}})["train"].num_rows == 80
    with pytest.raises(UsageError, match=r"other settings \(reverse=False there, True here\)"):
        load_texts({**data, "arithmetic": {**data["arithmetic"], "reverse": True}})
    with pytest.raises(UsageError, match=r"division='reject' there, 'construct' here\)"):
        load_texts({**data, "arithmetic": {**data["arithmetic"], "ops": "+/", "division": "construct"}})
    with pytest.raises(UsageError, match=r"scratchpad=False there, True here"):
        load_texts({**data, "arithmetic": {**data["arithmetic"], "N": 3, "scratchpad": True}})
    settings = tmp_path / "add" / arithmetic.SETTINGS_FILE  # as written before `division` was recorded
    settings.write_text(json.dumps({k: v for k, v in json.loads(settings.read_text()).items() if k != "division"}))
    assert load_texts(data)["train"].num_rows == 80
    assert (tmp_path / "add" / "train.jsonl").read_text() == written


def test_impossible_arithmetic_requests_fail_before_writing(tmp_path):
    with pytest.raises(SystemExit, match="allow at most 100"):
        mtlm_main(["data", "arithmetic", "--out_dir", str(tmp_path / "x"), "--n_samples", "101", "--B", "9"])
    with pytest.raises(SystemExit, match="--ops takes operators"):
        mtlm_main(["data", "arithmetic", "--out_dir", str(tmp_path / "x"), "--ops", "^"])
    with pytest.raises(SystemExit, match="Found only"):
        mtlm_main(["data", "arithmetic", "--out_dir", str(tmp_path / "x"), "--n_samples", "90", "--B", "9",
                   "--ops", "/"])
    assert not (tmp_path / "x").exists()


def test_a_char_tokenizer_built_from_a_file_round_trips_it_exactly(tmp_path):
    """CRLF line endings, a lone \\r, tabs and non-ASCII text are the corpus's characters: none becomes <unk>."""
    from transformers import AutoTokenizer

    from mtlm.cli import main as mtlm_main
    from mtlm.training.datasets import load_texts
    from mtlm.training.tokenizer import build_tokenizer

    corpus = "line one\r\nline\ttwo\r\n\rcafé — 漢字 🙂\n" * 50
    (tmp_path / "crlf.txt").write_bytes(corpus.encode("utf-8"))
    mtlm_main(["tokenizer", "char", "--input", str(tmp_path / "crlf.txt"), "--out", str(tmp_path / "tok")])
    written = AutoTokenizer.from_pretrained(tmp_path / "tok")
    texts = load_texts({"source": "text", "path": str(tmp_path / "crlf.txt")})
    assert "".join([*texts["train"]["text"], *texts["validation"]["text"]]) == corpus
    built = build_tokenizer({"kind": "char"}, texts)
    for tokenizer in (written, built):
        assert len(tokenizer) == len(set(corpus)) + 4 and "\r" in tokenizer.get_vocab()
        ids = tokenizer(corpus, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == corpus


def test_a_word_tokenizer_keeps_the_most_frequent_words_and_loads_with_auto_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from mtlm.cli import main as mtlm_main
    from mtlm.data.tokenization import word_tokenizer

    corpus = "the cat sat .\nthe dog ran , !\n" * 10 + "rare words here\n"
    tokenizer = word_tokenizer([corpus], max_vocab=13)  # 4 specials and the 9 words seen 10 times or more
    vocabulary = tokenizer.get_vocab()
    assert len(tokenizer) == 13 and {"the", "cat", "sat", ".", "dog", "ran", ",", "!", "\n"} <= set(vocabulary)
    ids = tokenizer("the cat ran , rare ! <unk>", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["the", "cat", "ran", ",", "<unk>", "!", "<unk>"]
    assert tokenizer.decode(tokenizer("the dog , the cat\n", add_special_tokens=False)["input_ids"]) == \
        "the dog , the cat \n"

    (tmp_path / "corpus.txt").write_text(corpus)
    mtlm_main(["tokenizer", "word", "--input", str(tmp_path / "corpus.txt"), "--max-vocab", "13",
               "--out", str(tmp_path / "words")])
    assert AutoTokenizer.from_pretrained(tmp_path / "words").get_vocab() == vocabulary
    with pytest.raises(ValueError, match="max_vocab=4 leaves no room for words"):
        word_tokenizer([corpus], max_vocab=4)


def test_a_word_tokenizer_numbers_its_ids_without_gaps_when_the_text_holds_unk_itself():
    from mtlm.data.tokenization import word_tokenizer

    corpus = "the <unk> sat on the <unk> .\n" * 5  # PTB marks its rare words <unk> in the text
    tokenizer = word_tokenizer([corpus], max_vocab=100)
    ids = sorted(tokenizer.get_vocab().values())
    assert ids == list(range(len(tokenizer))), ids
    encoded = tokenizer(corpus, add_special_tokens=False)["input_ids"]
    assert max(encoded) < len(tokenizer) and tokenizer.convert_ids_to_tokens(encoded[:3]) == ["the", "<unk>", "sat"]
    assert tokenizer.convert_tokens_to_ids(["<pad>", "<bos>", "<eos>", "<unk>"]) == [0, 1, 2, 3]


@pytest.mark.parametrize("make", [lambda: char_tokenizer(["abc de\n"]), byte_tokenizer])
def test_tokenize_decodes_bytes_and_characters_with_numpy_as_the_tokenizer_would(make):
    tokenizer = make()
    plain = ["abc de\nab", "ünïcödé ∑ unseen", ""]
    spelled = [*plain, "spells <eos> in the text"]  # a batch with a special token's spelling goes to the tokenizer
    for rows in (plain, spelled):
        for with_eos in (False, True):
            ids = tokenize(Dataset.from_dict({"text": rows}), tokenizer, append_eos=with_eos)["input_ids"]
            eos = [tokenizer.eos_token_id] if with_eos else []
            assert ids == [tokenizer(row, add_special_tokens=False)["input_ids"] + eos for row in rows]
