"""The training recipe where a run config is silent (both backends, and the model card's description of a run)."""

import math
from pathlib import Path

import torch

from ..errors import UsageError

# The seeds' recipe where the run config is silent: AdamW, linear warm-up then cosine to 0.1 * lr, clipping at 1.
TRAINING_DEFAULTS = dict(
    lr_scheduler_type="cosine_with_min_lr",
    lr_scheduler_kwargs={"min_lr_rate": 0.1},
    max_grad_norm=1.0,
    weight_decay=0.1,
    adam_beta1=0.9,
    adam_beta2=0.95,
    report_to="none",
    dataloader_pin_memory=torch.cuda.is_available(),
    # Without an accelerator, say so: then torchrun / accelerate launch give data-parallel CPU processes (gloo).
    use_cpu=not torch.accelerator.is_available(),
    bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    include_num_input_tokens_seen="non_padding",  # the model card's token count
    logging_nan_inf_filter=False,  # it reads every step's loss back on the host; a non-finite loss stops the run
)


def training_settings(training: dict) -> dict:
    """A run config's training section over the defaults. A warmup-stable-decay cooldown may be given as a fraction of
    the run (0 < lr_scheduler_kwargs.num_decay_steps < 1), as warmup_steps may: it becomes a step count here, so that
    `--set training.max_steps=N` keeps a cooldown at the end."""
    settings = {**TRAINING_DEFAULTS, **training}
    if settings.get("output_dir") and not settings.get("run_name"):
        # the trackers' name for the run; the same name after training lets the final evaluation join its run
        settings["run_name"] = Path(settings["output_dir"]).name
    options = settings.get("lr_scheduler_kwargs") or {}
    decay = options.get("num_decay_steps")
    if settings.get("lr_scheduler_type") == "warmup_stable_decay" and isinstance(decay, float) and 0 < decay < 1:
        if not settings.get("max_steps", -1) > 0:
            raise UsageError(f"training.lr_scheduler_kwargs.num_decay_steps={decay} is a fraction of the run, which "
                             "needs training.max_steps: set it, or give num_decay_steps in steps.")
        settings["lr_scheduler_kwargs"] = {**options, "num_decay_steps": math.ceil(decay * settings["max_steps"])}
    return settings
