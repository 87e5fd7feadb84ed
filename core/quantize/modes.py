"""Quantization modes by name: each turns a float32 model file into a quantized one.

A mode is `(model_path, output_path, config, data, ctx) -> details`; the "quantize" step
refuses already-quantized input, dispatches on `config.mode`, and validates the output.
Adding a mode means one module with `@register_mode` and its config in core.spec.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from core.context import RunContext
from core.registry import StepData

ModeFn = Callable[[Path, Path, Any, StepData, RunContext], dict[str, Any]]
F = TypeVar("F", bound=ModeFn)

_MODES: dict[str, ModeFn] = {}


def register_mode(name: str) -> Callable[[F], F]:
    def decorator(function: F) -> F:
        if name in _MODES and _MODES[name] is not function:
            raise ValueError(f"quantization mode {name!r} is already registered")
        _MODES[name] = function
        return function

    return decorator


def get_mode(name: str) -> ModeFn:
    try:
        return _MODES[name]
    except KeyError:
        raise ValueError(f"no quantization mode {name!r}; known: {sorted(_MODES)}") from None


def registered_modes() -> list[str]:
    return sorted(_MODES)
