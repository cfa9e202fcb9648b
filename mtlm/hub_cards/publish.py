"""Hub-ready folders (`export`) and uploads (`push`) through huggingface_hub. Everything is checked before anything
is written or uploaded."""

import os
import shutil
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoTokenizer

from ..convert import to_upstream
from ..errors import UsageError
from ..files import load_causal_lm, read_checkpoint_config, require_tokenizer, save_checkpoint
from .card import render_card

WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER = ("tokenizer.json", "tokenizer_config.json")
# Training records worth publishing beside the model (the card is written from them).
RECORDS = ("run_config.yaml", "trainer_state.json", "eval_results.json", "loss.png")
# Files a training folder holds that do not belong in a model repository (besides checkpoint-*/ and hidden files).
NOT_UPLOADED = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state*.pth")


def export_folder(source: str | os.PathLike, destination: str | os.PathLike, native: bool = False,
                  repo_id: str | None = None, license: str | None = None, overwrite: bool = False) -> Path:
    """Write a Hub-ready copy of the checkpoint `source`: safetensors weights, config, tokenizer, generation config,
    the training records and the model card; with remote code, or (`native`) as the upstream transformers class."""
    source, destination = Path(source), Path(destination)
    read_checkpoint_config(source)
    require_tokenizer(source)
    if destination.resolve() == source.resolve():
        raise ValueError(f"Export into a new folder, not into {source} itself.")
    model = load_causal_lm(source)
    exported = to_upstream(model) if native else model  # ValueError naming the option an upstream class lacks
    tokenizer = AutoTokenizer.from_pretrained(source)
    upstream_class = type(exported).__name__ if native else None
    card = render_card(source, repo_id=repo_id, license=license, upstream_class=upstream_class)
    def add_records_and_card(staging: Path) -> None:
        for name in RECORDS:
            if (source / name).is_file():
                shutil.copyfile(source / name, staging / name)
        (staging / "README.md").write_text(str(card), encoding="utf-8")

    save_checkpoint(exported, tokenizer, destination, overwrite=overwrite, add_files=add_records_and_card)
    return destination


def check_card(folder: Path) -> ModelCard:
    """The folder's README.md, parsed as the Hub parses model cards, with the metadata a model repository needs."""
    path = folder / "README.md"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no model card (README.md): write one with `mtlm card {folder}` or "
                                f"`mtlm export`.")
    try:
        card = ModelCard.load(path)
    except Exception as error:  # YAML or model-index errors, raised by huggingface_hub
        raise ValueError(f"The model card {path} fails validation: {error}. Regenerate it with `mtlm card`.") from None
    missing = [key for key in ("library_name", "pipeline_tag") if not getattr(card.data, key, None)]
    if missing:
        raise ValueError(f"The model card {path} fails validation: its metadata lacks {', '.join(missing)}. "
                         "Regenerate it with `mtlm card`.")
    if not card.text.strip():
        raise ValueError(f"The model card {path} fails validation: it has metadata but no text.")
    return card


def files_to_upload(folder: Path) -> list[tuple[str, int]]:
    """(path inside the repository, size in bytes) of every file `push` uploads."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or relative.parts[0].startswith(("checkpoint-", ".")):
            continue
        if not any(fnmatch(relative.name, pattern) for pattern in NOT_UPLOADED):
            files.append((relative.as_posix(), path.stat().st_size))
    return files


def check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UsageError(f"Invalid repo id {repo_id!r}: {error} Use owner/name, e.g. my-user/tiny-llama.") from None
    if repo_id.count("/") != 1:
        raise UsageError(f"Invalid repo id {repo_id!r}: use owner/name, e.g. my-user/tiny-llama.")


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool = False, revision: str | None = None,
                dry_run: bool = False, token: str | None = None) -> list[tuple[str, int]]:
    """Upload the Hub-ready `folder` to the model repository `repo_id` (created if needed; `revision` a branch,
    created if needed). Returns the uploaded files; with `dry_run`, checks everything offline and uploads nothing."""
    folder = Path(folder)
    check_repo_id(repo_id)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (no config.json).")
    if not any((folder / name).is_file() for name in WEIGHTS):
        raise FileNotFoundError(f"{folder} has no weights ({' or '.join(WEIGHTS)}): export it with `mtlm export`.")
    require_tokenizer(folder)
    card = check_card(folder)
    if f'from_pretrained("{repo_id}"' not in card.text:
        raise ValueError(f"The model card's usage snippet does not load {repo_id}: write the card for this repository "
                         f"with `mtlm card {folder} --repo-id {repo_id}` (or mtlm export --repo-id).")
    files = files_to_upload(folder)
    if dry_run:
        return files
    token = token or get_token()
    if not token:
        raise PermissionError("No Hugging Face token: run `hf auth login`, or set HF_TOKEN to a token with write "
                              "access (https://huggingface.co/settings/tokens).")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", revision=revision,
                      allow_patterns=[name for name, _ in files], commit_message="Upload model with mtlm")
    return files
