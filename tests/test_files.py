"""`staged`, the one writer of every file and folder mtlm writes: a temporary sibling, fsync, rename. A write that
fails leaves what was there; a write that succeeds replaces it whole."""

import os
import stat
from pathlib import Path

import pytest

from mtlm import files
from mtlm.files import atomic_file, staged, staging_path


def contents(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_a_staged_file_replaces_the_old_one_only_when_written_whole(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as handle:
            handle.write("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["results.json"]

    with staged(path) as partial:
        assert partial.name == path.name and partial.parent != tmp_path and not path.with_name("x").exists()
        partial.write_text("new")
        assert path.read_text() == "old"  # nothing visible until the block ends
    assert path.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["results.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_a_staged_folder_replaces_the_old_one_whole_or_not_at_all(tmp_path):
    destination = tmp_path / "model"
    destination.mkdir()
    (destination / "config.json").write_text("old config")
    (destination / "stale.bin").write_text("old")

    with pytest.raises(FileExistsError, match="not empty: choose another path or pass --overwrite"):
        with staged(destination, folder=True, overwrite=False):
            raise AssertionError("the check comes before the block")
    with pytest.raises(OSError):
        with staged(destination, folder=True) as staging:
            (staging / "config.json").write_text("new config")
            raise OSError(28, "No space left on device")
    assert contents(destination) == {"config.json": b"old config", "stale.bin": b"old"}

    with staged(destination, folder=True) as staging:
        assert staging.is_dir() and not any(staging.iterdir())
        (staging / "config.json").write_text("new config")
        (staging / "sub").mkdir()
        (staging / "sub" / "weights").write_bytes(b"w")
    assert contents(destination) == {"config.json": b"new config", "sub/weights": b"w"}
    assert sorted(os.listdir(tmp_path)) == ["model"]

    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        with staged(tmp_path / "file", folder=True):
            pass


def test_a_merge_moves_the_new_entries_in_config_last_and_keeps_the_others(tmp_path, monkeypatch):
    destination = tmp_path / "run"
    destination.mkdir()
    (destination / "run_config.yaml").write_text("kept")
    (destination / "model.safetensors").write_text("old weights")
    renamed = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda source, target: (renamed.append(Path(target).name),
                                                               replace(source, target)))
    with staged(destination, merge=True) as staging:
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (staging / name).write_text(f"new {name}")
    assert renamed[-1] == "config.json" and sorted(renamed) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert contents(destination) == {"run_config.yaml": b"kept", "config.json": b"new config.json",
                                     "model.safetensors": b"new model.safetensors",
                                     "tokenizer.json": b"new tokenizer.json"}


def test_every_staged_file_is_flushed_and_a_killed_writers_leftovers_are_cleared(tmp_path, monkeypatch):
    destination = tmp_path / "checkpoint-4"
    leftover = staging_path(destination)  # as a writer killed halfway through leaves it
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half")

    flushed = []
    fsync = files._fsync
    monkeypatch.setattr(files, "_fsync", lambda path: (flushed.append(Path(path)), fsync(path)))
    with staged(destination, folder=True, shared=True) as staging:
        assert staging == leftover and not (staging / "model.safetensors").exists()
        (staging / "model.safetensors").write_bytes(b"whole")
        (staging / "trainer_state.json").write_text("{}")
    assert {path.name for path in flushed} >= {"model.safetensors", "trainer_state.json", "checkpoint-4",
                                               tmp_path.name}
    assert contents(destination) == {"model.safetensors": b"whole", "trainer_state.json": b"{}"}
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4"]


def test_writers_stage_apart_and_dot_or_a_link_names_the_folder_it_stands_for(tmp_path, monkeypatch):
    with staged(tmp_path / "a.json") as first, staged(tmp_path / "a.json") as second:
        assert first != second
        first.write_text("first")
        second.write_text("second")
    assert (tmp_path / "a.json").read_text() == "first"  # the last to finish wins, whole

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint-2").mkdir()
    (run / "run_config.yaml").write_text("kept")
    monkeypatch.chdir(run)
    with staged(".", merge=True) as staging:
        assert staging.parent == run
        (staging / "config.json").write_text("{}")
    assert sorted(os.listdir(run)) == ["checkpoint-2", "config.json", "run_config.yaml"]

    target, link = tmp_path / "disk" / "model", tmp_path / "model"
    target.mkdir(parents=True)
    link.symlink_to(target)
    for generation in ("one", "two"):
        with staged(link, folder=True) as staging:
            (staging / "weights").write_text(generation)
        assert link.is_symlink() and (target / "weights").read_text() == generation
    assert sorted(os.listdir(tmp_path / "disk")) == ["model"]
