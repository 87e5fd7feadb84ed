"""Pruning kinds by name: what a kind hands back, and how one is registered and found.

A kind is `(module, config, tuner, ctx) -> KindResult`. This module is the registry the
step (core.prune.step) dispatches through and every kind module registers in; it imports
neither, so the step, the sensitivity sweep and the kinds import each other in one
direction only (step -> sensitivity -> structured -> kinds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from core.context import RunContext
from core.errors import EngineError
from core.prune.training import FineTuner

if TYPE_CHECKING:
    from torch import fx, nn


@dataclass
class KindResult:
    """What a kind hands back: the pruned (fine-tuned) module and its facts."""

    module: nn.Module
    details: dict[str, Any] = field(default_factory=dict)
    # the sparsity each pruned layer was configured to reach, by module name
    target_sparsity: dict[str, float] = field(default_factory=dict)
    fine_tune_history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # False when layers were resized (channels removed): the weights no longer fit the
    # converted graph, the module must be exported by tracing it
    structure_kept: bool = True


KindFn = Callable[["fx.GraphModule", Any, FineTuner, RunContext], KindResult]
F = TypeVar("F", bound=KindFn)

_KINDS: dict[str, KindFn] = {}


def register_kind(name: str) -> Callable[[F], F]:
    def decorator(function: F) -> F:
        if name in _KINDS and _KINDS[name] is not function:
            raise ValueError(f"pruning kind {name!r} is already registered")
        _KINDS[name] = function
        return function

    return decorator


def get_kind(name: str) -> KindFn:
    try:
        return _KINDS[name]
    except KeyError:
        raise EngineError(
            f"no pruning kind {name!r} is registered; known: {sorted(_KINDS)}",
            code="unknown_method",
        ) from None


def registered_kinds() -> list[str]:
    return sorted(_KINDS)
