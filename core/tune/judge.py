"""What was measured of a candidate and how it is judged against a job's targets: the
verdict's own rules (core.verdict for the metric, core.timing for "slower"), at every
deployment batch size. Quantize's auto mode, the cross-method recipe and the deployment
targets all judge their candidates here. Pure."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from core.errors import StepFailed
from core.spec import Targets
from core.timing import MIN_TOLERANCE, SpeedComparison
from core.verdict import metric_checks

_TINY = 1e-12


@dataclass(frozen=True)
class Measurement:
    size_bytes: int
    metric_name: str
    metric_value: float
    # against the step's input at each deployment batch size (core.timing's rule)
    latency: tuple[SpeedComparison, ...]
    # the job's original model's metric on the same rows (None: the measurer does not
    # know it, and the original's metric on the whole eval data is the baseline)
    reference_metric: float | None = None

    def at(self, batch_size: int) -> SpeedComparison:
        for latency in self.latency:
            if latency.batch_size == batch_size:
                return latency
        raise StepFailed(f"no latency was measured at batch size {batch_size}")


@dataclass(frozen=True)
class MetricCriterion:
    key: Literal["max_metric_drop", "default_metric_guard"]
    limit: float
    mode: Literal["absolute", "relative"]


@dataclass(frozen=True)
class Criteria:
    """What every candidate is judged against."""

    targets: Targets
    baseline_metric: float  # the job's original model's metric
    input_size_bytes: int
    batch_sizes: tuple[int, ...]  # the deployment batch sizes latency is judged at
    allow_slower: bool = False
    # the noise the input showed against itself: candidates closer than this are equally fast
    tolerance: float = MIN_TOLERANCE

    @property
    def metric_criterion(self) -> MetricCriterion | None:
        """The metric check the verdict will make (core.verdict.metric_checks)."""
        checks = metric_checks(self.baseline_metric, self.baseline_metric, self.targets)
        if not checks:
            return None  # the guard is off, or has no scale (an original metric of 0)
        mode: Literal["absolute", "relative"] = (
            self.targets.metric_drop_mode if checks[0].target == "max_metric_drop" else "relative"
        )
        key: Literal["max_metric_drop", "default_metric_guard"] = (
            "max_metric_drop" if checks[0].target == "max_metric_drop" else "default_metric_guard"
        )
        return MetricCriterion(key, checks[0].limit, mode)


@dataclass(frozen=True)
class Judgement:
    metric_change: float  # value - original's value (higher-is-better metrics)
    metric_drop: float | None  # in the metric criterion's units; None without one
    metric_excess: float  # how far the drop is over its limit (0 when within)
    latency_ms: float  # median at the largest deployment batch size
    # vs the input, interleaved: the geometric mean over the deployment batch sizes
    latency_ratio: float
    slower: bool  # slower than the input at some deployment batch size
    slower_at: tuple[int, ...]  # the batch sizes it is slower at
    met: dict[str, bool]  # per target set, the metric guard, and not_slower_than_input

    @property
    def metric_ok(self) -> bool:
        return self.metric_excess <= 0.0

    @property
    def latency_ok(self) -> bool:
        return self.met.get("max_latency_ms", True) and self.met.get("min_speedup", True)

    @property
    def size_ok(self) -> bool:
        return self.met.get("max_size_bytes", True)

    @property
    def targets_ok(self) -> bool:
        return self.metric_ok and self.latency_ok and self.size_ok


def metric_drop(value: float, baseline: float, criterion: MetricCriterion) -> float:
    """How far `value` fell below `baseline`, in the criterion's units (pure)."""
    drop = 0.0 - (value - baseline)  # (not -change: no "-0.0" in reports)
    if criterion.mode == "relative":
        drop = drop / max(abs(baseline), _TINY)
    return drop


def judge(measurement: Measurement, criteria: Criteria) -> Judgement:
    """Check one measured candidate against the targets, by the verdict's own rules
    (core.verdict for the metric, core.timing for "slower"), at every deployment batch
    size (pure)."""
    change = measurement.metric_value - criteria.baseline_metric
    met: dict[str, bool] = {}
    drop: float | None = None
    excess = 0.0
    value = measurement.metric_value
    for check in metric_checks(criteria.baseline_metric, value, criteria.targets):
        drop = check.measured
        excess = max(drop - check.limit, 0.0)
        met[check.target] = check.met
    # every comparison measured: one per deployment batch size (and, for a deployment
    # target, per thread count)
    latencies = list(measurement.latency) or [measurement.at(b) for b in criteria.batch_sizes]
    targets = criteria.targets
    if targets.min_speedup is not None:
        goal = 1.0 / targets.min_speedup
        met["min_speedup"] = all(lat.ratio <= goal for lat in latencies)
    if targets.max_latency_ms is not None:
        limit = targets.max_latency_ms
        met["max_latency_ms"] = all(lat.median_ms <= limit for lat in latencies)
    if targets.max_size_bytes is not None:
        met["max_size_bytes"] = measurement.size_bytes <= targets.max_size_bytes
    slower_at = tuple(lat.batch_size for lat in latencies if lat.slower)
    met["not_slower_than_input"] = not slower_at
    ratio = float(np.exp(np.mean([np.log(max(lat.ratio, _TINY)) for lat in latencies])))
    return Judgement(
        metric_change=change,
        metric_drop=drop,
        metric_excess=excess,
        latency_ms=latencies[-1].median_ms,
        latency_ratio=ratio,
        slower=bool(slower_at),
        slower_at=slower_at,
        met=met,
    )


def as_the_baseline(judgement: Judgement) -> Judgement:
    """The input judged against itself: never "slower" than itself, whatever the noise."""
    met = dict(judgement.met) | {"not_slower_than_input": True}
    return dataclasses.replace(judgement, slower=False, slower_at=(), met=met)
