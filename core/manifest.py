"""The run manifest: what a result was measured on, so it can be compared and reproduced."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import onnxruntime as ort

from core.spec import JobSpec

_LIBRARIES = ("onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "torch")
_HASH_CHUNK_BYTES = 1 << 20


def build_manifest(inputs: dict[str, Path], spec: JobSpec, device: str) -> dict[str, Any]:
    """Platform, CPU, accelerators, library versions, seed, the spec and input hashes.

    `inputs` maps a role or id (e.g. "model", a dataset id) to its file; each file's
    sha256 is recorded so a result can be tied to the exact bytes it measured.
    """
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "device": device,
        "onnxruntime_providers": ort.get_available_providers(),
        "gpu": "CUDAExecutionProvider" in ort.get_available_providers(),
        "libraries": library_versions(),
        "seed": spec.seed,
        "spec": spec.model_dump(mode="json"),
        "inputs": {
            name: {"sha256": sha256_file(path), "size_bytes": path.stat().st_size}
            for name, path in sorted(inputs.items())
        },
    }


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def library_versions() -> dict[str, str]:
    """Installed versions from package metadata; importing torch just to ask is too slow."""
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
