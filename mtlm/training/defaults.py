"""The training recipe where a run config is silent (both backends, and the model card's description of a run)."""

import torch

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
