"""Training a run config, step by step: run_config (the YAML) -> datasets (texts, then training data) -> tokenizer ->
model -> trainer (the HF Trainer) or flax_trainer; defaults holds the recipe, run_folder the output folder, reports
the loss plot and samples."""
