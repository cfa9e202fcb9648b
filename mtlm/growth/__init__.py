"""Depth growth (MTLM1's progressive growth): stack a trained checkpoint's layers into a deeper model."""

from .depth import METHODS, grow_folder, grow_model, layer_map

__all__ = ["METHODS", "grow_folder", "grow_model", "layer_map"]
