"""Choosing among judged candidates (pure): never one slower than the input unless
allowed, among those meeting every target the fastest (equally fast within the noise: the
smaller metric drop, then the smaller file), else the one closest to the targets, else the
input unchanged. The rules are quantize auto's (core.quantize.auto's docstring, rules 2, 3,
6 and 7); the recipe and the deployment targets choose by them too."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

from core.errors import EngineError
from core.tune.judge import Criteria, Judgement, Measurement

# Metric drops that differ by less than this count as equal when breaking speed ties.
METRIC_RESOLUTION = 1e-4

Status = Literal["measured", "failed", "duplicate", "skipped"]


class CandidateLike(Protocol):
    """What the chooser and the candidates table need of a candidate."""

    @property
    def name(self) -> str: ...

    @property
    def mode(self) -> str: ...

    @property
    def base(self) -> str | None: ...

    def options(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Named:
    """A candidate known by its name only (a recipe's candidate, a deployment variant)."""

    name: str
    mode: str = "none"
    base: str | None = None

    def options(self) -> dict[str, Any]:
        return {}


C = TypeVar("C", bound=CandidateLike)


@dataclass
class Outcome(Generic[C]):
    """A candidate and what became of it: one row of the candidates table."""

    candidate: C
    status: Status
    path: Path | None = None
    measurement: Measurement | None = None
    judgement: Judgement | None = None
    mode_details: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    chosen: bool = False
    error: EngineError | None = None  # why it failed, when it failed with an error

    @property
    def usable(self) -> bool:
        return self.status == "measured" and self.judgement is not None

    def row(self, input_size_bytes: int) -> dict[str, Any]:
        row: dict[str, Any] = {
            "name": self.candidate.name,
            "mode": self.candidate.mode,
            "options": self.candidate.options(),
            "base": self.candidate.base,
            "status": self.status,
        }
        if self.note:
            row["note"] = self.note
        if self.measurement is not None and self.judgement is not None:
            m, j = self.measurement, self.judgement
            row |= {
                "size_bytes": m.size_bytes,
                "size_ratio": m.size_bytes / max(input_size_bytes, 1),
                "latency": [
                    {
                        "batch_size": lat.batch_size,
                        "threads": lat.threads,
                        "median_ms": lat.median_ms,
                        "input_median_ms": lat.baseline_median_ms,
                        "ratio": lat.ratio,
                        "tolerance": lat.tolerance,
                        "slower": lat.slower,
                    }
                    for lat in m.latency
                ],
                "latency_ratio": j.latency_ratio,
                "metric_name": m.metric_name,
                "metric_value": m.metric_value,
                "metric_change": j.metric_change,
                "metric_drop": j.metric_drop,
                "met": dict(j.met),
            }
        row["chosen"] = self.chosen
        return row


@dataclass(frozen=True)
class Decision:
    chosen: int | None  # index into the outcomes; None: return the input unchanged
    reason: str


def choose(outcomes: Sequence[Outcome[Any]], criteria: Criteria) -> Decision:
    """Pick the winner among measured outcomes (rules 2, 3, 6 and 7; pure)."""
    measured = [(i, o, o.judgement) for i, o in enumerate(outcomes) if o.judgement and o.usable]
    if not measured:
        return Decision(None, "no candidate could be produced and measured")
    batch = "/".join(str(size) for size in criteria.batch_sizes)
    eligible = [(i, o, j) for i, o, j in measured if criteria.allow_slower or not j.slower]
    if not eligible:
        _, fastest, j = min(measured, key=lambda item: item[2].latency_ratio)
        return Decision(
            None,
            f"every candidate was slower than the input at some deployment batch size (the "
            f"fastest, {fastest.candidate.name}, took {j.latency_ratio:.2f}x the input's time "
            f"over batch {batch}, slower at batch "
            f"{'/'.join(map(str, j.slower_at))}) and allow_slower is false: the input is "
            "returned unchanged",
        )
    meeting = [(i, o, j) for i, o, j in eligible if j.targets_ok]
    if meeting:
        # A quantize job exists to compress: a candidate that barely shrinks the file (e.g.
        # dynamic mode on a convolution model, which leaves every Conv in FP32) wins only
        # when no candidate that compresses meets the targets without being slower.
        compressing = [
            item
            for item in meeting
            if _size(item[1]) <= criteria.input_size_bytes * COMPRESSED_SIZE_RATIO
        ]
        pool = compressing or meeting
        # speed is compared as ratios: each was timed interleaved with the input
        _, quickest, _ = min(pool, key=lambda item: item[2].latency_ratio)
        as_fast = [item for item in pool if equally_fast(item[1], quickest, criteria.tolerance)]
        index, outcome, j = min(
            as_fast,
            key=lambda item: (
                # drops closer than METRIC_RESOLUTION are the same drop (cosine 0.99999 vs
                # 0.99998 says nothing): then the smaller file decides
                round((item[2].metric_drop or 0.0) / METRIC_RESOLUTION),
                _size(item[1]),
                item[2].latency_ratio,
            ),
        )
        reason = (
            f"{outcome.candidate.name} meets every target and is the fastest at batch {batch} "
            f"({j.latency_ratio:.2f}x the input's latency)"
        )
        faster = [
            f"{o.candidate.name} (misses {', '.join(k for k, ok in j2.met.items() if not ok)})"
            for _, o, j2 in eligible
            if not j2.targets_ok and j2.latency_ratio < j.latency_ratio
        ]
        if faster:
            reason += f"; faster but missing targets: {', '.join(faster)}"
        in_pool = {id(item[1]) for item in pool}
        barely_compressing = [
            f"{o.candidate.name} ({_size(o) / max(criteria.input_size_bytes, 1):.2f}x the size)"
            for _, o, j2 in meeting
            if id(o) not in in_pool and j2.latency_ratio < j.latency_ratio
        ]
        if barely_compressing:
            reason += (
                f"; faster but barely compressing: {', '.join(barely_compressing)}, so the "
                "candidate that compresses was kept"
            )
        if len(as_fast) > 1:
            reason += (
                f"; {len(as_fast)} candidates were equally fast within the "
                f"{criteria.tolerance:.0%} noise tolerance: the smallest metric drop, then the "
                "smallest file, decided"
            )
        if j.slower:
            reason += "; it is slower than the input, which allow_slower permits"
        return Decision(index, reason)

    index, outcome, j = min(
        eligible,
        key=lambda item: (
            not item[2].metric_ok,
            item[2].metric_excess,
            not item[2].latency_ok,
            item[2].latency_ratio,
            not item[2].size_ok,
            _size(item[1]),
        ),
    )
    missed = [name for name, ok in j.met.items() if not ok and name != "not_slower_than_input"]
    reason = (
        f"no candidate meets every target; {outcome.candidate.name} comes closest "
        f"(missed: {', '.join(missed)}; preferring the metric target, then latency, then "
        f"size) at {j.latency_ratio:.2f}x the input's latency at batch {batch}"
    )
    if j.slower:
        reason += "; it is slower than the input, which allow_slower permits"
    return Decision(index, reason)


# A candidate at or above this share of the input's size counts as not compressing.
COMPRESSED_SIZE_RATIO = 0.9


def equally_fast(outcome: Outcome[Any], fastest: Outcome[Any], tolerance: float) -> bool:
    """Equally fast as the fastest: its mean ratio within the noise tolerance, and at no
    deployment batch size and thread count slower than the fastest beyond it (a candidate
    17% slower at batch 1 is not "as fast" because it gains at batch 32)."""
    mine, best = outcome.judgement, fastest.judgement
    assert mine is not None and best is not None
    if mine.latency_ratio > best.latency_ratio * (1 + tolerance):
        return False
    if outcome.measurement is None or fastest.measurement is None:
        return True
    theirs = {(c.batch_size, c.threads): c.ratio for c in fastest.measurement.latency}
    return all(
        c.ratio <= theirs[key] * (1 + tolerance)
        for c in outcome.measurement.latency
        if (key := (c.batch_size, c.threads)) in theirs
    )


def _size(outcome: Outcome[Any]) -> int:
    return outcome.measurement.size_bytes if outcome.measurement else 0
