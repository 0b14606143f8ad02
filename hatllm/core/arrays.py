"""Small array helpers shared by the catalog structures (trie, item codes)."""

from __future__ import annotations

import numpy as np


def run_starts(lengths: np.ndarray) -> np.ndarray:
    """Where each run of a batch of runs laid end to end starts: ``0, l_0, l_0 + l_1, ...``."""
    return np.r_[0, np.cumsum(lengths)[:-1]]


def run_heads(values: np.ndarray) -> np.ndarray:
    """A mask of the entries of `values` (sorted, or grouped) that begin a run of equal values."""
    return np.r_[True, values[1:] != values[:-1]] if len(values) else np.zeros(0, bool)


def in_sorted(values: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """A mask of the entries of `values` found in `sorted_values` (ascending): `np.isin` without hashing or
    sorting the larger array on every call."""
    at = np.minimum(np.searchsorted(sorted_values, values), max(len(sorted_values) - 1, 0))
    return sorted_values[at] == values if len(sorted_values) else np.zeros(len(values), bool)


def ragged_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions ``start_i, ..., start_i + length_i - 1`` of every run, concatenated."""
    return np.repeat(starts - run_starts(lengths), lengths) + np.arange(int(np.sum(lengths)))


def select_rows(tokens: np.ndarray, lengths: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of a batch (tokens concatenated, tokens per row) that `rows` selects (a mask or indices)."""
    return tokens[ragged_positions(run_starts(lengths)[rows], lengths[rows])], lengths[rows]
