"""Small array helpers shared by the catalog structures (trie, item codes)."""

from __future__ import annotations

import numpy as np


def ragged_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions ``start_i, ..., start_i + length_i - 1`` of every run, concatenated."""
    return np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(int(np.sum(lengths)))
