"""One PreTrainedConfig per family (configuration_<model_type>.py), and the named presets of the originals."""
