"""Scores: query x train products in blocks, and streaming reductions (top-k)."""

from tdakit.scoring.blocks import ScoreBlock, TopK, check_k, row_blocks

__all__ = ["ScoreBlock", "TopK", "check_k", "row_blocks"]
