"""Training through the HF Trainer: YAML run configs (run_config) and the training entry point (trainer)."""
