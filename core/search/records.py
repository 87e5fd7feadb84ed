"""A trial as the search reports it, read back from Optuna's stored trial.

Everything a trial measured is stored with it (Optuna user attributes), so a trial run
by another worker, or by an earlier attempt of the job, reads back exactly like one run
here: that is what lets a resumed or shared search report and choose from all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

# user attribute keys
ARCHITECTURE = "architecture"
COSTS = "costs"
METRIC = "metric"
EPOCH_METRICS = "epoch_metrics"
TRAIN_S = "train_s"
WORKER = "worker"
SEED = "seed"
NOTE = "note"
# set on a trial that was asked for but not run because others already fill the budget
ABANDONED = "abandoned"


@dataclass(frozen=True)
class TrialRecord:
    number: int
    state: str  # complete | pruned | fail | running | waiting
    params: dict[str, Any]
    architecture: dict[str, Any] | None = None
    costs: dict[str, Any] | None = None  # see core.search.cost.Costs
    metric: float | None = None  # the best epoch's validation metric
    values: list[float] | None = None  # what Optuna optimised (complete trials)
    epoch_metrics: list[float] = field(default_factory=list)
    train_s: float | None = None
    duration_s: float | None = None
    worker: str | None = None
    seed: int | None = None
    note: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("complete", "pruned")

    def cost(self, name: str) -> float:
        if self.costs is None:
            raise ValueError(f"trial {self.number} has no measured costs")
        return float(self.costs[name])

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "state": self.state,
            "params": self.params,
            "architecture": self.architecture,
            "metric": self.metric,
            "costs": self.costs,
            "objective_values": self.values,
            "epoch_metrics": self.epoch_metrics,
            "train_s": self.train_s,
            "duration_s": self.duration_s,
            "worker": self.worker,
            "seed": self.seed,
            "note": self.note,
        }


def record_of(trial: FrozenTrial) -> TrialRecord:
    attrs = trial.user_attrs
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return TrialRecord(
        number=trial.number,
        state=trial.state.name.lower(),
        params=dict(trial.params),
        architecture=attrs.get(ARCHITECTURE),
        costs=attrs.get(COSTS),
        metric=attrs.get(METRIC),
        values=list(trial.values) if trial.values is not None else None,
        epoch_metrics=list(attrs.get(EPOCH_METRICS, [])),
        train_s=attrs.get(TRAIN_S),
        duration_s=round(duration, 3) if duration is not None else None,
        worker=attrs.get(WORKER),
        seed=attrs.get(SEED),
        note=attrs.get(NOTE),
    )


def is_abandoned(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(ABANDONED))
