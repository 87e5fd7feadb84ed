"""The teacher's outputs on the training data: run once in ONNX Runtime, cached on disk.

Inputs are not augmented, so every epoch (and a second student trained in the same step)
would see the same teacher outputs: they are computed once and kept as an .npy file
keyed by the sha256 of the teacher's file, the output's name and the training arrays
(names, dtypes, shapes and bytes), so a different dataset or teacher never reads stale
targets.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.context import MeasureSettings
from core.data import Feeds
from core.formats import TensorInfo, model_files
from core.measure import CancelCheck, compute_outputs, eval_batch_size, open_session

_CHUNK_BYTES = 1 << 20
# Rows of outputs that sum to 1 within this are taken to be probabilities.
_PROBABILITY_TOLERANCE = 1e-3
_SMALLEST_PROBABILITY = 1e-12


@dataclass(frozen=True)
class TeacherOutputs:
    outputs: np.ndarray  # float32, (samples, *output shape)
    cache_path: Path
    from_cache: bool


def teacher_outputs(
    model_path: Path,
    feeds: Feeds,
    output_name: str,
    inputs: list[TensorInfo],
    cache_dir: Path,
    settings: MeasureSettings,
    device: str,
    check_cancelled: CancelCheck | None = None,
) -> TeacherOutputs:
    """The teacher's `output_name` over all of `feeds`, from the cache when this teacher
    already ran on exactly these arrays, else computed in ONNX Runtime and cached."""
    key = cache_key(model_path, feeds, output_name)
    cache_path = cache_dir / f"teacher-{key}.npy"
    if cache_path.is_file():
        return TeacherOutputs(np.load(cache_path, allow_pickle=False), cache_path, True)
    session = open_session(model_path, settings, device)
    outputs = compute_outputs(
        session, feeds, output_name, eval_batch_size(inputs), check_cancelled
    ).astype(np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed: a cancelled write leaves no half file.
    partial = cache_path.with_suffix(f".{os.getpid()}.partial.npy")
    np.save(partial, outputs, allow_pickle=False)
    partial.replace(cache_path)
    return TeacherOutputs(outputs, cache_path, False)


def cache_key(model_path: Path, feeds: Feeds, output_name: str) -> str:
    """sha256 over the teacher's files, the output name and every feed array."""
    digest = hashlib.sha256()
    for path in model_files(model_path):
        with path.open("rb") as stream:
            while chunk := stream.read(_CHUNK_BYTES):
                digest.update(chunk)
    digest.update(output_name.encode())
    for name in sorted(feeds):
        array = np.ascontiguousarray(feeds[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.data)  # the buffer, not a copy
    return digest.hexdigest()


def as_logits(outputs: np.ndarray) -> tuple[np.ndarray, bool]:
    """Class scores usable as logits, and whether they were probabilities.

    A teacher exported with its softmax gives probabilities; softmax(p / T) of those
    would flatten them further, so their logarithms (equal to the logits up to a
    per-row constant, which softmax ignores) are used instead."""
    rows = outputs.reshape(len(outputs), -1).astype(np.float64)
    is_probability = (
        rows.size > 0
        and bool(np.all(rows >= 0.0))
        and bool(np.all(rows <= 1.0))
        and bool(np.allclose(rows.sum(axis=1), 1.0, atol=_PROBABILITY_TOLERANCE))
    )
    if not is_probability:
        return outputs, False
    return np.log(np.maximum(outputs, _SMALLEST_PROBABILITY)).astype(np.float32), True
