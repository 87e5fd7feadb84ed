"""Runtimes by name ("onnxruntime", "openvino"): adapters behind one interface.

Adding a runtime (TensorRT) means one module with a class that has the `Runtime`
methods and one `register_runtime(...)` below; measurement and the tuner find it by
name. See `base.py` for the interface and `settings.py` for the deployment settings
each runtime honours.
"""

from __future__ import annotations

from core.errors import RuntimeUnavailable
from core.runtimes.base import PreparedModel, Runner, Runtime, copy_files
from core.runtimes.openvino_runtime import OpenVinoRuntime
from core.runtimes.ort_runtime import OnnxRuntime
from core.runtimes.settings import DeploymentSettings, RunSettings, usable_cpus

__all__ = [
    "DeploymentSettings",
    "PreparedModel",
    "RunSettings",
    "Runner",
    "Runtime",
    "available_runtimes",
    "copy_files",
    "get_runtime",
    "register_runtime",
    "registered_runtimes",
    "runtime_devices",
    "usable_cpus",
]

_RUNTIMES: dict[str, Runtime] = {}


def register_runtime(runtime: Runtime) -> Runtime:
    """Make `runtime` findable by its name (once per name)."""
    existing = _RUNTIMES.get(runtime.name)
    if existing is not None and existing is not runtime:
        raise ValueError(f"runtime {runtime.name!r} is already registered")
    _RUNTIMES[runtime.name] = runtime
    return runtime


def registered_runtimes() -> list[str]:
    return sorted(_RUNTIMES)


def get_runtime(name: str) -> Runtime:
    """The runtime called `name`; RuntimeUnavailable when none is registered by that name
    or its library is not installed here."""
    runtime = _RUNTIMES.get(name)
    if runtime is None:
        raise RuntimeUnavailable(f"no runtime {name!r}; known: {registered_runtimes()}")
    if not runtime.available():
        raise RuntimeUnavailable(f"runtime {name!r} is not installed here")
    return runtime


def available_runtimes() -> list[str]:
    return [name for name in registered_runtimes() if _RUNTIMES[name].available()]


def runtime_devices() -> dict[str, list[str]]:
    """Each installed runtime's devices here. Asking for "cuda" initialises CUDA: call
    this in a pool process or a probe subprocess, never in a worker's forking parent."""
    return {name: _RUNTIMES[name].devices() for name in available_runtimes()}


register_runtime(OnnxRuntime())
register_runtime(OpenVinoRuntime())
