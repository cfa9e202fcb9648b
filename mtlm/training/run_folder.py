"""The output folder of a run, shared by both backends: never two runs in one folder, an earlier run replaced only
once the new one has saved, and --resume from the newest complete checkpoint."""

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from transformers.utils import logging

from ..errors import UsageError

logger = logging.get_logger(__name__)

# What a checkpoint of the Trainer holds when whole (optimizer and scheduler unless save_only_model).
TRAINER_CHECKPOINT_FILES = ("trainer_state.json", ("model.safetensors", "model.safetensors.index.json"),
                            "optimizer.pt", "scheduler.pt")


def check_output_dir(output_dir: Path, overwrite: bool, resume: bool) -> None:
    """Refuse to mix two runs in one folder; changes nothing."""
    if overwrite and resume:
        raise UsageError("--overwrite replaces the run in the output folder and --resume continues it: pass one.")
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"training.output_dir {output_dir} is a file, not a folder: choose another "
                              "training.output_dir.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (overwrite or resume):
        raise FileExistsError(
            f"{output_dir} already holds a run: pass --resume to continue it, --overwrite to replace it, or "
            "choose another training.output_dir."
        )


def last_complete_checkpoint(output_dir: Path, required: Iterable = TRAINER_CHECKPOINT_FILES) -> Path:
    """The newest checkpoint-N folder holding every `required` file (a tuple: any one of them); incomplete folders,
    as a killed run of an earlier version could leave, are skipped with a warning."""
    folders = sorted((path for path in output_dir.glob("checkpoint-*") if path.is_dir()
                      and path.name.removeprefix("checkpoint-").isdigit()),
                     key=lambda path: int(path.name.removeprefix("checkpoint-")), reverse=True)
    for folder in folders:
        missing = [" or ".join(names) if isinstance(names, tuple) else names for names in required
                   if not any((folder / name).is_file() for name in (names if isinstance(names, tuple) else (names,)))]
        if not missing:
            return folder
        logger.warning(f"--resume skips {folder}: it is incomplete (no {', '.join(missing)}); a run was stopped "
                       "while saving it.")
    raise FileNotFoundError(f"--resume: {output_dir} holds no checkpoint to continue from (no complete "
                            "checkpoint-* folder). Train without --resume (with --overwrite to replace what is there).")


class RunFolder:
    """The output folder while a run starts. `start` (when training starts) creates it, or with `overwrite` first
    renames an earlier run to a hidden sibling; `saved` (once the run has saved a checkpoint or its final model)
    deletes that earlier run; `failed` (when the run fails before it saved anything) removes what the run wrote and
    puts the earlier run back, so that the folder is as it was. A resumed run's folder is left as it is."""

    def __init__(self, output_dir: Path, overwrite: bool = False, resume: bool = False):
        self.output_dir, self.overwrite, self.resume = output_dir, overwrite, resume
        self.aside: Path | None = None
        self.existed = output_dir.is_dir()
        self.has_saved = False

    def start(self) -> None:
        if self.overwrite and self.existed and any(self.output_dir.iterdir()):
            self.aside = Path(tempfile.mkdtemp(prefix=f".{self.output_dir.name}.replaced-",
                                               dir=self.output_dir.parent))
            self.output_dir.rename(self.aside / self.output_dir.name)
            logger.warning(f"--overwrite: the earlier run is kept in {self.aside} until this run saves a checkpoint.")
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def saved(self) -> None:
        self.has_saved = True
        if self.aside is not None:
            shutil.rmtree(self.aside)
            self.aside = None

    def failed(self) -> None:
        if self.has_saved or self.resume:
            return
        if self.existed and self.aside is None:  # it was empty
            for path in self.output_dir.iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        else:
            shutil.rmtree(self.output_dir, ignore_errors=True)
        if self.aside is not None:
            (self.aside / self.output_dir.name).rename(self.output_dir)
            self.aside.rmdir()
            self.aside = None
