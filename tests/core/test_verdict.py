"""The verdict's contract, on injected measurements (no timing noise can pass or fail these):
every target at every deployment batch size, a metric guard by default, and an outcome
that never calls an unchanged or worse result an improvement."""

from __future__ import annotations

import pytest

from core.results import Latency, ModelMetrics
from core.spec import Targets
from core.timing import SpeedComparison
from core.verdict import compute_verdict, metric_checks


def metrics(size_bytes: int = 1000, metric_value: float = 0.9, **latency_ms: float) -> ModelMetrics:
    return ModelMetrics(
        size_bytes=size_bytes,
        parameters=1,
        latency=[
            Latency(batch_size=int(b.removeprefix("b")), median_ms=ms, p95_ms=ms, runs=5)
            for b, ms in latency_ms.items()
        ],
        metric_name="accuracy",
        metric_value=metric_value,
        metric_rows=100,
    )


def speed(batch_size: int, ratio: float, tolerance: float = 0.03) -> SpeedComparison:
    return SpeedComparison(
        batch_size=batch_size,
        median_ms=10.0 * ratio,
        p95_ms=10.0 * ratio,
        baseline_median_ms=10.0,
        baseline_p95_ms=10.0,
        ratio=ratio,
        tolerance=tolerance,
        runs=5,
    )


ORIGINAL = metrics(size_bytes=1000, metric_value=0.90)


def test_a_relative_metric_drop_is_a_fraction_of_the_original() -> None:
    final = metrics(size_bytes=250, metric_value=0.855)
    verdict = compute_verdict(
        ORIGINAL,
        final,
        [speed(1, 0.5), speed(4, 0.5)],
        Targets(max_metric_drop=0.04, metric_drop_mode="relative"),
        batch_size=4,
    )
    [drop] = [c for c in verdict.checks if c.target == "max_metric_drop"]
    assert drop.measured == pytest.approx(0.05)  # 0.045 of 0.90
    assert drop.met is False
    assert verdict.outcome == "targets_missed"
    assert "max_metric_drop" in verdict.outcome_reason


def test_without_a_metric_target_a_collapse_is_never_a_success() -> None:
    # a search that took accuracy from 0.94 to 0.12, with no max_metric_drop set
    original = metrics(metric_value=0.94)
    collapsed = metrics(size_bytes=10, metric_value=0.12)
    verdict = compute_verdict(
        original, collapsed, [speed(1, 0.2), speed(32, 0.1)], Targets(), batch_size=32
    )
    [guard] = [c for c in verdict.checks if c.target == "default_metric_guard"]
    assert guard.limit == 0.01 and guard.met is False
    assert guard.measured == pytest.approx((0.94 - 0.12) / 0.94)
    assert (verdict.targets_met, verdict.outcome) == (False, "targets_missed")


def test_the_default_guard_allows_a_drop_within_one_percent_relative() -> None:
    final = metrics(size_bytes=300, metric_value=0.90 - 0.005)
    verdict = compute_verdict(ORIGINAL, final, [speed(1, 0.8)], Targets(), batch_size=1)
    assert verdict.targets_met is True
    assert verdict.outcome == "improved"


def test_the_guard_is_off_only_when_the_user_says_so() -> None:
    collapsed = metrics(size_bytes=10, metric_value=0.1)
    verdict = compute_verdict(
        ORIGINAL, collapsed, [speed(1, 0.5)], Targets(metric_guard=False), batch_size=1
    )
    assert [c.target for c in verdict.checks] == ["not_slower"]
    assert verdict.outcome == "improved"
    assert metric_checks(0.9, 0.1, Targets(metric_guard=False)) == []


def test_a_batch_one_regression_is_caught_when_the_job_batch_is_faster() -> None:
    # 0.96x at batch 64 and 1.65x slower at batch 1: the verdict checks both
    final = metrics(size_bytes=420)
    verdict = compute_verdict(
        ORIGINAL, final, [speed(1, 1.65), speed(64, 0.96)], Targets(), batch_size=64
    )
    not_slower = {c.batch_size: c for c in verdict.checks if c.target == "not_slower"}
    assert set(not_slower) == {1, 64}
    assert not_slower[1].met is False and not_slower[64].met is True
    assert verdict.outcome == "targets_missed"
    assert "not_slower at batch 1: 1.65x" in verdict.outcome_reason
    assert verdict.latency_ratio == 0.96  # at the job's batch size, for people


def test_allow_slower_accepts_a_slower_but_smaller_model() -> None:
    final = metrics(size_bytes=500)
    verdict = compute_verdict(
        ORIGINAL, final, [speed(1, 1.3)], Targets(allow_slower=True), batch_size=1
    )
    assert verdict.targets_met is True
    assert verdict.outcome == "improved"
    assert "1.30x the original's time at batch 1 (allowed: allow_slower)" in verdict.outcome_reason


def test_not_slower_allows_the_measured_noise_and_no_more() -> None:
    final = metrics(size_bytes=500)
    within = compute_verdict(ORIGINAL, final, [speed(1, 1.07, 0.08)], Targets(), batch_size=1)
    beyond = compute_verdict(ORIGINAL, final, [speed(1, 1.09, 0.08)], Targets(), batch_size=1)
    assert within.targets_met is True
    assert beyond.targets_met is False
    [check] = [c for c in beyond.checks if c.target == "not_slower"]
    assert check.limit == pytest.approx(1.08)


def test_max_latency_holds_at_every_deployment_batch_size() -> None:
    final = metrics(size_bytes=500)
    verdict = compute_verdict(
        ORIGINAL,
        final,
        [speed(1, 0.5), speed(32, 0.9)],  # medians 5 ms and 9 ms
        Targets(max_latency_ms=8.0),
        batch_size=32,
    )
    latency = {c.batch_size: c.met for c in verdict.checks if c.target == "max_latency_ms"}
    assert latency == {1: True, 32: False}
    assert verdict.outcome == "targets_missed"


def test_a_result_that_is_the_input_is_unchanged_not_improved() -> None:
    verdict = compute_verdict(
        ORIGINAL,
        ORIGINAL,
        [speed(1, 1.0), speed(32, 1.0)],
        Targets(max_metric_drop=0.01),
        batch_size=32,
        unchanged_reason="the result is the input, byte for byte",
    )
    assert verdict.targets_met is True
    assert verdict.outcome == "unchanged"
    assert verdict.outcome_reason == "the result is the input, byte for byte"


def test_nothing_measurable_changed_is_unchanged() -> None:
    # 1.004x the size and the same speed: reported as met before, unchanged now
    final = metrics(size_bytes=1004)
    verdict = compute_verdict(
        ORIGINAL, final, [speed(1, 0.99), speed(32, 1.01)], Targets(), batch_size=32
    )
    assert verdict.targets_met is True
    assert verdict.outcome == "unchanged"
    assert "nothing measurable changed" in verdict.outcome_reason


@pytest.mark.parametrize(
    ("size_bytes", "ratios", "expected"),
    [
        (250, (1.0, 1.0), "4.00x smaller, as fast at batch 1, as fast at batch 32"),
        (1000, (1.0, 0.5), "as fast at batch 1, 2.00x faster at batch 32"),
    ],
)
def test_smaller_or_faster_within_the_targets_is_improved(
    size_bytes: int, ratios: tuple[float, float], expected: str
) -> None:
    final = metrics(size_bytes=size_bytes)
    verdict = compute_verdict(
        ORIGINAL, final, [speed(1, ratios[0]), speed(32, ratios[1])], Targets(), batch_size=32
    )
    assert (verdict.outcome, verdict.outcome_reason) == ("improved", expected)


@pytest.mark.parametrize("size_bytes", [100, 1000, 2000])
@pytest.mark.parametrize("ratio", [0.5, 1.0, 1.5])
@pytest.mark.parametrize("metric_value", [0.2, 0.9, 0.95])
def test_an_unchanged_result_is_never_improved(
    size_bytes: int, ratio: float, metric_value: float
) -> None:
    final = metrics(size_bytes=size_bytes, metric_value=metric_value)
    verdict = compute_verdict(
        ORIGINAL,
        final,
        [speed(1, ratio)],
        Targets(),
        batch_size=1,
        unchanged_reason="every step left the model as it was",
    )
    assert verdict.outcome in ("unchanged", "targets_missed")
    assert verdict.outcome != "improved"
    assert verdict.targets_met is (verdict.outcome == "unchanged")


def test_every_outcome_agrees_with_targets_met() -> None:
    for ratio in (0.5, 1.0, 1.2):
        for value in (0.5, 0.9):
            final = metrics(size_bytes=400, metric_value=value)
            verdict = compute_verdict(ORIGINAL, final, [speed(1, ratio)], Targets(), batch_size=1)
            assert (verdict.outcome == "targets_missed") is (not verdict.targets_met)


def test_a_speedup_goal_holds_at_every_deployment_batch_size() -> None:
    final = metrics(size_bytes=300)
    verdict = compute_verdict(
        ORIGINAL,
        final,
        [speed(1, 0.6), speed(32, 0.4)],
        Targets(min_speedup=2.0),
        batch_size=32,
    )
    goal = {c.batch_size: c.met for c in verdict.checks if c.target == "min_speedup"}
    assert goal == {1: False, 32: True}
    assert verdict.outcome == "targets_missed"
    assert "min_speedup at batch 1: 1.67x faster (goal 2.00x)" in verdict.outcome_reason
