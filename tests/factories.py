"""Small models and datasets built in the test session (no shipped blobs).

The digits CNN and ONNX export come from `squeeze.examples` (what a user runs on their
side); this adds an MLP for the regression and embedding tasks, .npz writers and a
harmless pickle payload.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

# The user-side builders are the ones the demo and benchmarks use.
from squeeze.examples import DigitsCNN, digits_arrays, export_onnx, train_digits_cnn

__all__ = ["DigitsCNN", "digits_arrays", "export_onnx", "train_digits_cnn"]

Split = Literal["train", "test"]


def make_mlp(
    in_features: int = 64, hidden: int = 256, out_features: int = 32, seed: int = 0
) -> torch.nn.Module:
    """A randomly initialised (seeded) MLP: an "embedding" or regression model on
    flattened digits. Its weights are big enough for quantization to shrink the file."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(in_features, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, out_features),
    ).eval()


def digits_npz(
    path: Path, split: Split = "test", n: int | None = None, *, labels: bool = True
) -> Path:
    """Write digits as an .npz: "input" float32 (N, 1, 8, 8) and "label" int64 (N,)."""
    images, targets = digits_arrays(split)
    arrays: dict[str, Any] = {"input": images[:n]}  # Any: numpy's stub types savez's **kwds
    if labels:
        arrays["label"] = targets[:n]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def flat_digits_npz(
    path: Path, split: Split = "test", n: int | None = None, *, targets: np.ndarray | None = None
) -> Path:
    """Digits flattened to "input" float32 (N, 64), for the MLP; optional "label" targets
    (e.g. regression targets) written alongside."""
    images, _ = digits_arrays(split)
    arrays: dict[str, Any] = {"input": images[:n].reshape(-1, 64)}
    if targets is not None:
        arrays["label"] = targets
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


class MkdirOnUnpickle:
    """Unpickling this creates `marker` as a directory: a harmless stand-in for the code a
    malicious pickle would run. Tests assert the marker never appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)
