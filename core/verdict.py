"""The verdict: every target checked against measured values, and what the job came to.

Pure functions over measurements, so the rules are tested with controlled numbers:

- The metric: `max_metric_drop` when set (absolute, or relative to the original's
  metric); without it a default guard (`DEFAULT_METRIC_GUARD_RELATIVE` relative drop)
  unless the user turned the guard off. A metric collapse is never a success.
- Latency, at every deployment batch size: `max_latency_ms` on the final model's median,
  and "not_slower" on the interleaved ratio to the original under the measured noise
  tolerance (core.timing, the same rule quantize's auto mode chooses by), unless
  `allow_slower`.
- Size: `max_size_bytes`.

The outcome: `targets_missed` when any check fails; else `unchanged` when the result is
the input (byte for byte, or every step said it left the model alone) or nothing
measurable changed (not smaller, not faster at any batch size); else `improved`.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.results import (
    ModelMetrics,
    Outcome,
    SpeedAtBatch,
    TargetCheck,
    TargetName,
    Verdict,
)
from core.spec import DEFAULT_METRIC_GUARD_RELATIVE, Targets
from core.timing import SpeedComparison

# A file at or below this share of the original's size is "smaller" (sizes are exact:
# no noise to allow for, but 1% of a protobuf is rounding, not compression).
SMALLER_SIZE_RATIO = 0.98
_TINY = 1e-12


def metric_checks(original_value: float, value: float, targets: Targets) -> list[TargetCheck]:
    """The metric check the targets ask for (none when the guard is off and no limit is
    set, or when the guard has no scale: an original metric of 0)."""
    drop = 0.0 - (value - original_value)  # higher is better for every metric; no "-0.0"
    if targets.max_metric_drop is not None:
        relative = targets.metric_drop_mode == "relative"
        measured = _relative(drop, original_value) if relative else drop
        return [
            _check(
                "max_metric_drop",
                targets.max_metric_drop,
                measured,
                note="relative to the original's metric" if relative else "absolute",
            )
        ]
    if targets.metric_guard and abs(original_value) > _TINY:
        return [
            _check(
                "default_metric_guard",
                DEFAULT_METRIC_GUARD_RELATIVE,
                _relative(drop, original_value),
                note=(
                    "no max_metric_drop was set: a relative drop above "
                    f"{DEFAULT_METRIC_GUARD_RELATIVE:.0%} is still no success "
                    "(targets.metric_guard false turns this off)"
                ),
            )
        ]
    return []


def compute_verdict(
    original: ModelMetrics,
    final: ModelMetrics,
    speed: Sequence[SpeedComparison],
    targets: Targets,
    *,
    batch_size: int,
    unchanged_reason: str | None = None,
) -> Verdict:
    """Check each target against the final model's measurements.

    `speed` holds the final model against the original at each deployment batch size,
    timed interleaved. `unchanged_reason` says why the result is the input (None: it
    may differ; the measurements decide)."""
    checks = metric_checks(original.metric_value, final.metric_value, targets)
    for comparison in speed:
        if targets.min_speedup is not None:
            checks.append(
                _check(
                    "min_speedup",
                    1.0 / targets.min_speedup,
                    comparison.ratio,
                    batch_size=comparison.batch_size,
                    threads=comparison.threads,
                    note=f"latency ratio to the original: at most 1/{targets.min_speedup:g}",
                )
            )
        if targets.max_latency_ms is not None:
            checks.append(
                _check(
                    "max_latency_ms",
                    targets.max_latency_ms,
                    comparison.median_ms,
                    batch_size=comparison.batch_size,
                    threads=comparison.threads,
                    note="median",
                )
            )
        if not targets.allow_slower:
            checks.append(
                _check(
                    "not_slower",
                    1.0 + comparison.tolerance,
                    comparison.ratio,
                    batch_size=comparison.batch_size,
                    threads=comparison.threads,
                    note=(
                        "latency ratio to the original (lower quartiles, timed interleaved); "
                        f"limit 1 + the {comparison.tolerance:.0%} noise measured on this run"
                    ),
                )
            )
    if targets.max_size_bytes is not None:
        checks.append(_check("max_size_bytes", targets.max_size_bytes, final.size_bytes))

    size_ratio = final.size_bytes / max(original.size_bytes, 1)
    at_job_batch = next((c for c in speed if c.batch_size == batch_size), None)
    latency_ratio = (
        at_job_batch.ratio
        if at_job_batch is not None
        else (speed[-1].ratio if speed else 1.0)
    )
    outcome, reason = decide_outcome(checks, size_ratio, speed, unchanged_reason)
    return Verdict(
        targets_met=all(check.met for check in checks),
        checks=checks,
        size_ratio=size_ratio,
        latency_ratio=latency_ratio,
        metric_change=final.metric_value - original.metric_value,
        outcome=outcome,
        outcome_reason=reason,
        speed=[
            SpeedAtBatch(
                batch_size=c.batch_size,
                threads=c.threads,
                ratio=c.ratio,
                tolerance=c.tolerance,
                median_ms=c.median_ms,
                original_median_ms=c.baseline_median_ms,
                faster=c.faster,
                slower=c.slower,
            )
            for c in speed
        ],
        metric_rows=final.metric_rows,
    )


def decide_outcome(
    checks: Sequence[TargetCheck],
    size_ratio: float,
    speed: Sequence[SpeedComparison],
    unchanged_reason: str | None,
) -> tuple[Outcome, str]:
    """(outcome, reason in words) from the checks and what was measured (pure)."""
    missed = [check for check in checks if not check.met]
    if missed:
        return "targets_missed", "missed " + "; ".join(describe_miss(c) for c in missed)
    if unchanged_reason is not None:
        return "unchanged", unchanged_reason
    smaller = size_ratio <= SMALLER_SIZE_RATIO
    faster = [c for c in speed if c.faster]
    if not smaller and not faster:
        batches = ", ".join(str(c.batch_size) for c in speed) or "-"
        return "unchanged", (
            f"nothing measurable changed: the file is {size_ratio:.3f}x the original's size "
            f"and no faster beyond the timing noise at batch {batches}"
        )
    gains = []
    if smaller:
        gains.append(f"{1 / max(size_ratio, _TINY):.2f}x smaller")
    for comparison in speed:
        where = f"batch {comparison.batch_size}"
        if comparison.threads is not None:
            where += f", {comparison.threads} thread(s)"
        if comparison.faster:
            gains.append(f"{comparison.speedup:.2f}x faster at {where}")
        elif comparison.slower:
            gains.append(
                f"{comparison.ratio:.2f}x the original's time at {where} (allowed: allow_slower)"
            )
        else:
            gains.append(f"as fast at {where}")
    return "improved", ", ".join(gains)


def describe_miss(check: TargetCheck) -> str:
    where = f" at batch {check.batch_size}" if check.batch_size is not None else ""
    if check.threads is not None:
        where += f", {check.threads} thread(s)"
    if check.target == "not_slower":
        return (
            f"not_slower{where}: {check.measured:.2f}x the original's time "
            f"(limit {check.limit:.2f}x)"
        )
    if check.target == "min_speedup":
        return (
            f"min_speedup{where}: {1 / max(check.measured, 1e-12):.2f}x faster "
            f"(goal {1 / max(check.limit, 1e-12):.2f}x)"
        )
    return f"{check.target}{where}: measured {check.measured:.4g}, limit {check.limit:.4g}"


def _check(
    target: TargetName,
    limit: float,
    measured: float,
    *,
    batch_size: int | None = None,
    threads: int | None = None,
    note: str | None = None,
) -> TargetCheck:
    return TargetCheck(
        target=target,
        limit=float(limit),
        measured=float(measured),
        met=measured <= limit,
        batch_size=batch_size,
        threads=threads,
        note=note,
    )


def _relative(value: float, base: float) -> float:
    # A zero base (e.g. a perfect neg_mse of 0) makes any worsening "infinitely" worse;
    # a huge finite number says so and, unlike inf, survives JSON.
    return value / max(abs(base), _TINY)
