"""Checkpoint folders: reading their config safely, writing files and folders so that a good one is never replaced
by a half-written one, and bringing the code files a folder carries up to date."""

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from .families import FAMILIES, upstream_model_types


def _entry(path: str | os.PathLike) -> Path:
    """`path` made absolute (so that "." has a name and a parent), a symbolic link followed: the entry a write
    replaces."""
    path = Path(os.path.abspath(path))
    return path.resolve() if path.is_symlink() else path


def staging_path(destination: str | os.PathLike, merge: bool = False) -> Path:
    """Where a shared `staged` write puts `destination` until it is complete, the same path in every process: NAME
    (so a writer that picks the format by the name, or writes NAME into the folder it is given, writes as it would)
    in a hidden folder beside `destination`; with `merge`, a hidden folder inside it."""
    destination = _entry(destination)
    return destination / ".partial" if merge else destination.parent / f".{destination.name}.partial" / destination.name


@contextmanager
def staged(destination: str | os.PathLike, folder: bool = False, overwrite: bool = True, merge: bool = False,
           shared: bool = False) -> Iterator[Path]:
    """Yield the path to write `destination` at: a file path, or with `folder` an empty folder. When the block
    succeeds, everything written there is flushed to disk (fsync) and renamed to `destination`, replacing the file or
    folder that was there; with `merge`, the staged folder's entries are renamed into the folder `destination` one by
    one (config.json last: a folder holds a checkpoint once its config is in place) and its other entries stay. When
    the block fails, what was staged is removed and `destination` is left as it was. `overwrite=False` refuses a
    non-empty `destination` folder before anything is written.

    The staging folder has a name of its own, so that two writers never meet, unless `shared`: then it is
    `staging_path(destination, merge)`, for a save that several processes write into, and the leftovers of a writer
    killed there are removed first."""
    destination = _entry(destination)
    folder = folder or merge
    if folder and destination.exists() and not destination.is_dir():
        raise FileExistsError(f"{destination} exists and is not a folder: choose another output path.")
    if folder and not overwrite and destination.is_dir() and any(destination.iterdir()):
        raise FileExistsError(f"{destination} exists and is not empty: choose another path or pass --overwrite.")
    (destination if merge else destination.parent).mkdir(parents=True, exist_ok=True)
    if shared:
        staging = staging_path(destination, merge)
        holder = staging if merge else staging.parent
        shutil.rmtree(holder, ignore_errors=True)
        holder.mkdir()
    else:
        holder = Path(tempfile.mkdtemp(prefix=".partial-" if merge else f".{destination.name}.partial-",
                                       dir=destination if merge else destination.parent))
        staging = holder if merge else holder / destination.name
    if folder and not merge:
        staging.mkdir()
    try:
        yield staging
        _fsync_tree(staging)
        if merge:
            for entry in sorted(staging.iterdir(), key=lambda entry: (entry.name == "config.json", entry.name)):
                _replace(entry, destination / entry.name)
            _fsync(destination)
        else:
            _replace(staging, destination)
        _fsync(destination.parent)
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def _replace(source: Path, target: Path) -> None:
    if source.is_dir() and target.is_dir():  # os.replace cannot replace a folder that holds files
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        target.rename(retired / target.name)
        source.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(source, target)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(path: Path) -> None:
    """Flush a file, or a folder and everything under it, to disk."""
    if path.is_dir():
        for entry in path.iterdir():
            _fsync_tree(entry)
    if path.exists():
        _fsync(path)


def source_tokenizer(folder: str | os.PathLike):
    """The tokenizer saved in `folder`, or None when it holds none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError):
        return None


def save_checkpoint(model, tokenizer, destination: str | os.PathLike, overwrite: bool = False,
                    add_files: Callable[[Path], None] | None = None) -> None:
    """Save `model` and `tokenizer` (if any), and whatever `add_files(folder)` writes, into a staging folder that
    becomes `destination` only when all of it succeeded (see staged)."""
    with staged(destination, folder=True, overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if add_files is not None:
            add_files(staging)


@contextmanager
def atomic_file(destination: str | os.PathLike) -> Iterator[TextIO]:
    """Yield a text handle for writing `destination` (see staged)."""
    with staged(destination) as partial, open(partial, "w", encoding="utf-8") as handle:
        yield handle


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of `path`, or an error naming the file: missing, a folder, or not UTF-8 (with the byte)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No {what} at {path}: the file does not exist.")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: pass the path of the {what}.")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(f"{path} is not UTF-8 text (byte {error.start}, line {line}: {data[error.start:error.end]!r})"
                         f": convert the {what} to UTF-8, e.g. iconv -f latin1 -t utf-8.") from None


def read_json(path: str | os.PathLike, what: str = "JSON file"):
    """The JSON in `path`, or an error naming the file, the line and the column."""
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}. Fix "
                         f"or re-create the {what}.") from None


def read_jsonl(path: str | os.PathLike, what: str = "JSONL file", required: tuple[str, ...] = ()) -> list[dict]:
    """The rows of a JSONL file (one JSON object per line; blank lines skipped), each holding the `required` keys;
    an error names the file and the line."""
    rows = []
    for number, line in enumerate(read_text(path, what).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number} is not valid JSON: {error.msg} at column {error.colno}. Each line "
                             "of a .jsonl file holds one JSON object.") from None
        missing = [key for key in required if not isinstance(row, dict) or key not in row]
        if missing:
            raise ValueError(f"{path} line {number} has no {', '.join(repr(key) for key in missing)}: every row needs "
                             f"{', '.join(repr(key) for key in required)}.")
        rows.append(row)
    return rows


def require_folder(folder: str | os.PathLike, what: str = "checkpoint folder") -> Path:
    """`folder` as a Path, or an error saying it does not exist or is a file (before a Hub lookup would take the name
    for a repository id)."""
    path = Path(folder)
    if not path.exists():
        raise FileNotFoundError(f"{folder} is not a {what}: it does not exist (mtlm works on local folders).")
    if not path.is_dir():
        raise NotADirectoryError(f"{folder} is a file: pass a {what}.")
    return path


def read_config_json(folder: str | os.PathLike) -> dict:
    """The config.json of a checkpoint folder, with an error naming what is wrong: no folder, no config, or one that
    does not parse."""
    folder = require_folder(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (no config.json): pass a folder written by "
                                "mtlm train or save_pretrained.")
    config = read_json(folder / "config.json", "checkpoint's config")
    if not isinstance(config, dict):
        raise ValueError(f"{folder / 'config.json'} holds {type(config).__name__}, not a config mapping: re-save the "
                         "checkpoint.")
    return config


def weight_files(folder: Path) -> list[str]:
    """The safetensors files of a checkpoint folder (the shards its index names, or model.safetensors), each
    present."""
    index = folder / "model.safetensors.index.json"
    names = sorted(set(read_json(index, "weights index").get("weight_map", {}).values())) if index.is_file() \
        else ["model.safetensors"]
    for name in names:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}: the weights are missing; copy them again or save the "
                                    "model with save_pretrained.")
    return names


def check_checkpoint_files(folder: str | os.PathLike) -> dict:
    """Read a checkpoint folder's config.json and the headers of its safetensors weights, so that a missing,
    truncated or corrupted file is named before any model is built. Returns the config."""
    from safetensors import SafetensorError, safe_open

    config = read_config_json(folder)
    folder = Path(folder)
    for name in weight_files(folder):
        try:
            with safe_open(str(folder / name), "pt"):
                pass
        except SafetensorError as error:
            raise ValueError(f"{folder / name} cannot be read ({error}): the file is truncated or corrupted; copy it "
                             "again or re-save the model.") from None
    return config


def load_causal_lm(folder: str | os.PathLike, **options):
    """AutoModelForCausalLM.from_pretrained(folder, **options), once check_checkpoint_files has passed."""
    from transformers import AutoModelForCausalLM

    check_checkpoint_files(folder)
    return AutoModelForCausalLM.from_pretrained(folder, **options)


def read_checkpoint_config(folder: str | os.PathLike) -> dict:
    """The config.json of an mtlm checkpoint folder, read before any weights are, with a clear error for a folder that
    is not one."""
    config = read_config_json(folder)
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        hint = " Convert it first with `mtlm convert SRC DST`." if model_type in upstream_model_types() else ""
        raise ValueError(f"{folder} holds a {model_type!r} model, not an mtlm one ({', '.join(FAMILIES)}).{hint}")
    return config


def require_tokenizer(folder: str | os.PathLike) -> None:
    """Refuse a checkpoint folder without a readable tokenizer before any model is loaded."""
    folder = require_folder(folder)
    present = [name for name in ("tokenizer.json", "tokenizer_config.json") if (folder / name).is_file()]
    if not present:
        raise FileNotFoundError(f"{folder} has no tokenizer: save one beside the weights with "
                                "tokenizer.save_pretrained(folder) (mtlm train does this).")
    for name in present:
        read_json(folder / name, "tokenizer file")


def code_updates(folder: str | os.PathLike) -> dict[str, bytes | None]:
    """What `upgrade_code` would change in an mtlm checkpoint folder: file name -> this version's bytes, or None for
    a file to remove (another family's, left by an earlier layout). Empty when the folder's code is current."""
    from .modeling.mtlm_blocks import auto_map, code_files

    folder = Path(folder)
    config = read_checkpoint_config(folder)
    family = FAMILIES[config["model_type"]]
    current = {Path(path).name: Path(path).read_bytes()
               for path in code_files(family.config_class, family.causal_lm_class)}
    updates = {name: source for name, source in current.items()
               if not (folder / name).is_file() or (folder / name).read_bytes() != source}
    every_family = {Path(path).name for other in FAMILIES.values()
                    for path in code_files(other.config_class, other.causal_lm_class)}
    updates.update({name: None for name in sorted(every_family - set(current)) if (folder / name).is_file()})
    classes_map = auto_map(family.config_class, family.causal_lm_class)
    if config.get("auto_map") != classes_map:
        updates["config.json"] = (json.dumps({**config, "auto_map": classes_map}, indent=2, sort_keys=True)
                                  + "\n").encode()
    return updates


def upgrade_code(folder: str | os.PathLike) -> list[str]:
    """Replace the remote-code files of an mtlm checkpoint folder (and its config's `auto_map`) with this version's,
    leaving the weights, tokenizer and every other file as they are. The new files are staged and renamed into
    place only when all are written, config.json last. Returns the names changed."""
    folder = Path(folder)
    updates = code_updates(folder)
    with staged(folder, merge=True) as staging:
        for name, source in updates.items():
            if source is not None:
                (staging / name).write_bytes(source)
    for name, source in updates.items():
        if source is None:
            (folder / name).unlink()
    return list(updates)
