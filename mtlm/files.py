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

from .configuration import MtlmGPTConfig, MtlmLlamaConfig, MtlmMoeConfig


@contextmanager
def atomic_folder(destination: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `destination`; when the block succeeds it becomes `destination`, when it
    fails it is removed and `destination` is left as it was."""
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise FileExistsError(f"{destination} exists and is not a folder: choose another output path.")
    if destination.is_dir() and any(destination.iterdir()) and not overwrite:
        raise FileExistsError(f"{destination} exists and is not empty: choose another path or pass --overwrite.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if destination.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
        destination.rename(retired / destination.name)
        staging.rename(destination)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(destination)


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
    becomes `destination` only when all of it succeeded (see atomic_folder)."""
    with atomic_folder(destination, overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if add_files is not None:
            add_files(staging)


@contextmanager
def atomic_file(destination: str | os.PathLike) -> Iterator[TextIO]:
    """Yield a text handle on a temporary file beside `destination`; it replaces `destination` only when the block
    succeeds."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_file(destination)
    try:
        with open(partial, "w", encoding="utf-8") as handle:
            yield handle
        os.replace(partial, destination)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def partial_file(destination: Path) -> str:
    """A new empty temporary file beside `destination`, with the permissions open() would give `destination` (mkstemp
    makes its files the owner's alone)."""
    descriptor, partial = tempfile.mkstemp(prefix=f".{destination.name}.partial-", dir=destination.parent)
    os.close(descriptor)
    os.chmod(partial, 0o666 & ~current_umask())
    return partial


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def read_checkpoint_config(folder: str | os.PathLike) -> dict:
    """The config.json of an mtlm checkpoint folder, read before any weights are, with a clear error for a folder that
    is not one."""
    families = [config_class.model_type for config_class in (MtlmLlamaConfig, MtlmGPTConfig, MtlmMoeConfig)]
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (no config.json): pass a folder written by "
                                "mtlm train or save_pretrained.")
    config = json.loads(path.read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if model_type not in families:
        hint = " Convert it first with `mtlm convert SRC DST`." if model_type in ("llama", "gpt2", "mixtral") else ""
        raise ValueError(f"{folder} holds a {model_type!r} model, not an mtlm one ({', '.join(families)}).{hint}")
    return config


def require_tokenizer(folder: str | os.PathLike) -> None:
    """Refuse a checkpoint folder without a tokenizer before any model is loaded."""
    folder = Path(folder)
    if folder.is_dir() and not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise FileNotFoundError(f"{folder} has no tokenizer: save one beside the weights with "
                                "tokenizer.save_pretrained(folder) (mtlm train does this).")


def code_updates(folder: str | os.PathLike) -> dict[str, bytes | None]:
    """What `upgrade_code` would change in an mtlm checkpoint folder: file name -> this version's bytes, or None for
    a file to remove (another family's, left by an earlier layout). Empty when the folder's code is current."""
    from . import FAMILIES
    from .modeling.mtlm_blocks import auto_map, code_files

    folder = Path(folder)
    config = read_checkpoint_config(folder)
    config_class, model_class = next((config_class, lm_class) for config_class, (_, lm_class) in FAMILIES.items()
                                     if config_class.model_type == config["model_type"])
    current = {Path(path).name: Path(path).read_bytes() for path in code_files(config_class, model_class)}
    updates = {name: source for name, source in current.items()
               if not (folder / name).is_file() or (folder / name).read_bytes() != source}
    every_family = {Path(path).name for family, (_, lm_class) in FAMILIES.items()
                    for path in code_files(family, lm_class)}
    updates.update({name: None for name in sorted(every_family - set(current)) if (folder / name).is_file()})
    if config.get("auto_map") != auto_map(config_class, model_class):
        updates["config.json"] = (json.dumps({**config, "auto_map": auto_map(config_class, model_class)}, indent=2,
                                             sort_keys=True) + "\n").encode()
    return updates


def upgrade_code(folder: str | os.PathLike) -> list[str]:
    """Replace the remote-code files of an mtlm checkpoint folder (and its config's `auto_map`) with this version's,
    leaving the weights, tokenizer and every other file as they are. Every new file is written under a temporary name
    first; only when all are written are they renamed into place, config.json last. Returns the names changed."""
    folder = Path(folder)
    updates = code_updates(folder)
    staged = {}
    try:
        for name, source in updates.items():
            if source is not None:
                staged[name] = partial_file(folder / name)
                Path(staged[name]).write_bytes(source)
    except BaseException:
        for partial in staged.values():
            Path(partial).unlink(missing_ok=True)
        raise
    for name in sorted(updates, key=lambda name: name == "config.json"):
        if updates[name] is None:
            (folder / name).unlink()
        else:
            os.replace(staged[name], folder / name)
    return list(updates)
