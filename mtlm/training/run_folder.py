"""The output folder of a run, shared by both backends."""

import shutil
from pathlib import Path


def prepare_output_dir(output_dir: Path, overwrite: bool, resume: bool) -> None:
    """Refuse to mix two runs in one folder."""
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (overwrite or resume):
        raise FileExistsError(
            f"{output_dir} already holds a run: pass --resume to continue it, --overwrite to replace it, or "
            "choose another training.output_dir."
        )
    if overwrite and output_dir.is_dir():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
