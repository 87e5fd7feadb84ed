"""The one timing rule: how two models' speeds are compared, wherever they are compared.

Quantize's auto mode choosing a candidate and the job's verdict judging the final model
both call this module, so they cannot disagree about what "slower" means:

- Models are timed interleaved in one process, alternating which runs first (A B, B A,
  ...), after each warms up: machine noise (other processes, frequency steps) then falls
  on both alike.
- A ratio compares lower quartiles of those runs. Preemption on a busy worker only ever
  adds time: medians of the same model timed against itself came out 0.2x-1.8x apart on a
  2-core machine at load 4, lower quartiles within about 10%.
- "Slower" means a ratio above 1 + tolerance, "faster" below 1 - tolerance. The tolerance
  is what timing the baseline against a second session of itself showed right now,
  never less than `MIN_TOLERANCE` nor more than `MAX_TOLERANCE`.

Absolute latencies (a `max_latency_ms` target) are medians: what users quote.
Timing itself is injected (`Timer`), so decisions are tested on controlled numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# Interleaved lower quartiles of the same model differ by about this much on a quiet
# 2-core machine; the tolerance never goes below it.
MIN_TOLERANCE = 0.03
# However noisy the self-comparison was, a model 10% slower is called slower.
MAX_TOLERANCE = 0.10
# Sessions deployed with their runtime's defaults (threads spinning after a run) are timed
# in turns of this many runs (see `time_interleaved`'s `block`).
SPINNING_BLOCK = 5
_TINY = 1e-12

RunFn = Callable[[], object]


def time_interleaved(
    runs: Sequence[RunFn], warmup_runs: int, timed_runs: int, block: int = 1
) -> list[list[float]]:
    """Wall times in ms of each zero-argument callable, interleaved and alternating order
    (A B, B A, ...) so that neither always follows the other; each warms up first.

    With `block` > 1 each turn is `block` timed runs after one untimed run: sessions
    deployed with their runtime's defaults keep their threads spinning after a run, and
    a session timed right after another would pay for the other's spinning (4-7x on a
    2-core machine, field notes); the untimed run absorbs the hand-over.
    """
    for run in runs:
        for _ in range(warmup_runs):
            run()
    times_ms: list[list[float]] = [[] for _ in runs]
    rounds = -(-timed_runs // block)
    for round_index in range(rounds):
        order = range(len(runs)) if round_index % 2 == 0 else reversed(range(len(runs)))
        for index in order:
            if block > 1:
                runs[index]()
            for _ in range(min(block, timed_runs - len(times_ms[index]))):
                start = time.perf_counter()
                runs[index]()
                times_ms[index].append((time.perf_counter() - start) * 1000.0)
    return times_ms


def lower_quartile(times_ms: Sequence[float]) -> float:
    return float(np.percentile(times_ms, 25))


def quartile_ratio(times_ms: Sequence[float], baseline_times_ms: Sequence[float]) -> float:
    """The rule's ratio: lower quartile of `times_ms` over the baseline's."""
    return lower_quartile(times_ms) / max(lower_quartile(baseline_times_ms), _TINY)


def noise_tolerance(baseline_times_ms: Sequence[float], copy_times_ms: Sequence[float]) -> float:
    """How far the baseline's ratio to a second session of itself strayed from 1,
    clamped to [MIN_TOLERANCE, MAX_TOLERANCE]."""
    stray = abs(quartile_ratio(copy_times_ms, baseline_times_ms) - 1.0)
    return min(max(MIN_TOLERANCE, stray), MAX_TOLERANCE)


@dataclass(frozen=True)
class SpeedComparison:
    """A model against a baseline at one batch size, both timed interleaved."""

    batch_size: int
    median_ms: float
    p95_ms: float
    baseline_median_ms: float
    baseline_p95_ms: float
    ratio: float  # lower quartile over the baseline's: below 1 is faster
    tolerance: float
    runs: int
    # the session's thread count, where a deployment target measures several
    threads: int | None = None

    @property
    def slower(self) -> bool:
        return self.ratio > 1.0 + self.tolerance

    @property
    def faster(self) -> bool:
        return self.ratio < 1.0 - self.tolerance

    @property
    def speedup(self) -> float:
        return 1.0 / max(self.ratio, _TINY)


def compare_times(
    batch_size: int,
    times_ms: Sequence[float],
    baseline_times_ms: Sequence[float],
    tolerance: float,
    threads: int | None = None,
) -> SpeedComparison:
    """The comparison of measured run times (pure)."""
    return SpeedComparison(
        threads=threads,
        batch_size=batch_size,
        median_ms=float(np.median(times_ms)),
        p95_ms=float(np.percentile(times_ms, 95)),
        baseline_median_ms=float(np.median(baseline_times_ms)),
        baseline_p95_ms=float(np.percentile(baseline_times_ms, 95)),
        ratio=quartile_ratio(times_ms, baseline_times_ms),
        tolerance=tolerance,
        runs=len(times_ms),
    )


def compare_runs(
    batch_size: int,
    baseline: RunFn,
    baseline_copy: RunFn,
    candidates: Sequence[RunFn],
    warmup_runs: int,
    timed_runs: int,
    block: int = 1,
    threads: int | None = None,
) -> list[SpeedComparison]:
    """Time the baseline, a second session of it (the noise check) and each candidate
    interleaved; compare each candidate with the baseline under the measured tolerance
    (`threads`: the sessions' thread count, recorded on each comparison)."""
    base, copy, *others = time_interleaved(
        [baseline, baseline_copy, *candidates], warmup_runs, timed_runs, block
    )
    tolerance = noise_tolerance(base, copy)
    return [compare_times(batch_size, times, base, tolerance, threads) for times in others]
