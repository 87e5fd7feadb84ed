"""Candidate kinds of the auto recipe, by name: each proposes what it would try on this
model and data (and why), and produces a candidate model file from a base model.

Adding a kind is one module in this package and one `register_kind` there; the planner
(core.recipe.step) orders kinds by `cost` (cheap first) and gives the ones that train
successive halving (short epochs for all, long for the best).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from core.context import RunContext
from core.registry import StepData
from core.spec import AutoStep

# the modules that register the built-in kinds (imported on first lookup)
_KIND_MODULES = (
    "core.recipe.kinds.graph",
    "core.recipe.kinds.quantize",
    "core.recipe.kinds.prune_distill",
    "core.recipe.kinds.student",
)


@dataclass(frozen=True)
class Proposal:
    """One candidate to try: its name, its kind, why it is tried, its parameters."""

    name: str
    kind: str
    why: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Produced:
    """A candidate model, what was done to make it, and (for a quantized one) the float
    model it was quantized from, which runtimes that quantize themselves take instead."""

    path: Path
    details: dict[str, Any] = field(default_factory=dict)
    float_path: Path | None = None


@dataclass(frozen=True)
class KindContext:
    """What every kind may use."""

    original: Path
    config: AutoStep
    data: StepData  # selection eval rows; train_arrays: the training source below
    # "training data", "calibration data" or None (kinds that train are then skipped)
    training_source: str | None
    ctx: RunContext
    # why nothing can be trained here, when training_source is None
    no_training_reason: str = "nothing to train on"


class Kind(Protocol):
    name: str
    cost: int  # 0 rewrites, 1 quantizes, 2 trains
    trains: bool

    def propose(self, kc: KindContext) -> tuple[list[Proposal], str | None]:
        """The candidates worth trying here, or none and why not."""
        ...

    def produce(
        self, proposal: Proposal, base: Path, epochs: int, kc: KindContext, work_dir: Path
    ) -> Produced:
        """The candidate from `base` (the original, or this kind's earlier round when it
        trains on: `epochs` more), written under `work_dir`."""
        ...


_KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    if kind.name in _KINDS and _KINDS[kind.name] is not kind:
        raise ValueError(f"recipe kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def kinds() -> list[Kind]:
    """Every registered kind, cheapest first."""
    for module in _KIND_MODULES:
        importlib.import_module(module)
    return sorted(_KINDS.values(), key=lambda kind: (kind.cost, kind.name))


def get_kind(name: str) -> Kind:
    return next(kind for kind in kinds() if kind.name == name)


def sub_context(kc: KindContext, work_dir: Path) -> RunContext:
    """The job's context with its work dir under the candidate's folder."""
    import dataclasses

    return dataclasses.replace(kc.ctx, work_dir=work_dir)
