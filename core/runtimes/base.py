"""The runtime interface: what measurement, the verdict and the tuner may ask of a runtime.

A runtime turns an ONNX file into its own artifact (`prepare`), opens it for inference
under one session's settings (`open` -> a `Runner`), says how big the artifact is and
copies it out for download. Everything else (timing, metrics, choosing) is written once
against this interface, so a third runtime (TensorRT) is one module and one
`register_runtime` call.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from core.runtimes.settings import RunSettings

Feeds = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class PreparedModel:
    """A runtime's artifact of one model: its files (the first is the one to load, e.g.
    `model.xml` before its `model.bin`), what was done to make it, and the settings the
    runtime applies whenever it opens it (e.g. OpenVINO's inference precision)."""

    runtime: str
    files: tuple[Path, ...]
    details: dict[str, Any] = field(default_factory=dict)
    open_config: dict[str, str] = field(default_factory=dict)

    @property
    def entry(self) -> Path:
        return self.files[0]

    def size_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)


@runtime_checkable
class Runner(Protocol):
    """An opened model. `run` returns the outputs in the model's output order, as arrays
    the caller owns (a later run does not overwrite them)."""

    @property
    def input_names(self) -> list[str]: ...

    @property
    def output_names(self) -> list[str]: ...

    def run(self, feeds: Feeds) -> list[np.ndarray]: ...


class Runtime(Protocol):
    name: str

    def available(self) -> bool:
        """The runtime's library imports here."""
        ...

    def devices(self) -> list[str]:
        """The devices ("cpu", "cuda") this runtime can run on here. On "cuda" this may
        initialise CUDA: in a worker, ask from a pool process or a probe subprocess."""
        ...

    def prepare(
        self, onnx_path: Path, out_dir: Path, settings: Mapping[str, Any] | None = None
    ) -> PreparedModel:
        """Convert (or copy) the ONNX model into `out_dir`. Raises RuntimeUnsupportedModel
        when the runtime cannot take it, RuntimeUnavailable when it is not installed."""
        ...

    def open(self, prepared: PreparedModel, settings: RunSettings) -> Runner: ...

    def size_bytes(self, prepared: PreparedModel) -> int: ...

    def save_artifact(self, prepared: PreparedModel, dest_dir: Path) -> list[Path]: ...


def copy_files(prepared: PreparedModel, dest_dir: Path) -> list[Path]:
    """Copy an artifact's files into `dest_dir`, keeping their paths relative to the
    entry file's folder (external data files keep the names the model refers to)."""
    root = prepared.entry.parent
    copied: list[Path] = []
    for path in prepared.files:
        target = dest_dir / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copied.append(target)
    return copied
