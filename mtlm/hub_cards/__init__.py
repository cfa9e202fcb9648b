"""Hub publishing: model cards from what a checkpoint folder records, Hub-ready exports, and pushes."""

from .card import render_card, write_card

__all__ = ["render_card", "write_card"]
