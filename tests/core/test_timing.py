"""The one timing rule (core.timing): interleaved, alternating order, lower-quartile ratios,
a tolerance measured against the baseline itself and clamped."""

from __future__ import annotations

import pytest

from core.timing import (
    MAX_TOLERANCE,
    MIN_TOLERANCE,
    compare_runs,
    compare_times,
    noise_tolerance,
    quartile_ratio,
    time_interleaved,
)


def test_runs_alternate_which_model_goes_first_after_each_warms_up() -> None:
    order: list[str] = []
    runs = [lambda: order.append("A"), lambda: order.append("B")]
    times = time_interleaved(runs, warmup_runs=1, timed_runs=4)
    assert order == ["A", "B", "A", "B", "B", "A", "A", "B", "B", "A"]
    assert [len(t) for t in times] == [4, 4]


def test_the_ratio_compares_lower_quartiles_so_preemption_spikes_do_not_count() -> None:
    baseline = [10.0] * 8
    spiky = [10.0] * 6 + [80.0, 90.0]  # two preempted runs
    assert quartile_ratio(spiky, baseline) == pytest.approx(1.0)


def test_the_tolerance_is_the_baseline_s_own_stray_within_bounds() -> None:
    base = [10.0] * 8
    assert noise_tolerance(base, [10.0] * 8) == MIN_TOLERANCE
    assert noise_tolerance(base, [10.6] * 8) == pytest.approx(0.06)
    assert noise_tolerance(base, [20.0] * 8) == MAX_TOLERANCE


def test_slower_and_faster_are_judged_beyond_the_tolerance() -> None:
    base = [10.0] * 8
    assert compare_times(1, [10.4] * 8, base, 0.05).slower is False
    assert compare_times(1, [10.6] * 8, base, 0.05).slower is True
    assert compare_times(1, [9.6] * 8, base, 0.05).faster is False
    assert compare_times(1, [9.4] * 8, base, 0.05).faster is True
    assert compare_times(1, [5.0] * 8, base, 0.05).speedup == pytest.approx(2.0)


def test_compare_runs_times_the_baseline_copy_for_the_noise() -> None:
    calls: list[str] = []
    comparisons = compare_runs(
        4,
        lambda: calls.append("base"),
        lambda: calls.append("copy"),
        [lambda: calls.append("x"), lambda: calls.append("y")],
        warmup_runs=0,
        timed_runs=3,
    )
    assert [c.batch_size for c in comparisons] == [4, 4]
    assert calls.count("copy") == 3 and calls.count("x") == 3
    assert all(MIN_TOLERANCE <= c.tolerance <= MAX_TOLERANCE for c in comparisons)


def test_blocks_time_several_runs_per_turn_after_an_untimed_one() -> None:
    order: list[str] = []
    times = time_interleaved(
        [lambda: order.append("A"), lambda: order.append("B")],
        warmup_runs=0,
        timed_runs=4,
        block=2,
    )
    # each turn: one untimed run, then two timed; turns alternate A B, B A
    assert order == ["A"] * 3 + ["B"] * 3 + ["B"] * 3 + ["A"] * 3
    assert [len(t) for t in times] == [4, 4]
