"""core.report: the report built from a job record, and its plots, on step details shaped
as each step writes them (tests/api/test_report.py checks real quantize and prune jobs)."""

from __future__ import annotations

from typing import Any

import pytest

from core.report import JobRecord, ProgressEvent, build_report, render_html
from core.report.model import (
    FallbackCurvePlot,
    LayerBarsPlot,
    ParetoPlot,
    RankingPlot,
    TrainingPlot,
)
from core.report.plots import plain, render_svg
from core.report.steps import step_section
from core.results import Latency, ModelMetrics

SPEC = {
    "model_id": "mdl_1",
    "eval_dataset_id": "ds_1",
    "steps": [{"method": "quantize", "mode": "static"}],
    "batch_size": 4,
}


def metrics(size_bytes: int, metric_value: float, change: float = 0.0) -> dict[str, Any]:
    return ModelMetrics(
        size_bytes=size_bytes,
        parameters=size_bytes // 4,
        latency=[
            Latency(batch_size=1, median_ms=1.0, p95_ms=1.2, runs=5),
            Latency(batch_size=4, median_ms=3.0, p95_ms=3.5, runs=5),
        ],
        metric_name="accuracy",
        metric_value=metric_value,
        metric_change=change,
    ).model_dump()


def trial(number: int, metric: float, latency_ms: float, state: str = "complete") -> dict[str, Any]:
    costs = {
        "parameters": 1000 * number,
        "macs": 5000,
        "size_bytes": 4000,
        "latency_ms": latency_ms,
    }
    return {"number": number, "state": state, "metric": metric, "costs": costs, "params": {}}


def test_a_search_step_gets_a_pareto_plot_of_its_completed_trials() -> None:
    details = {
        "objective": {"kind": "pareto", "costs": ["latency_ms", "parameters"]},
        "metric_name": "accuracy",
        "trials": [
            trial(0, 0.9, 2.0),
            trial(1, 0.8, 1.0),
            trial(2, 0.7, 3.0),
            trial(3, 0.95, 9.0, "pruned"),
        ],
        "front": [0, 1],
        "chosen": {"trial": 0, "reason": "the best metric on the front"},
    }
    section = step_section(0, "search", "search (cnn)", 12.0, details)
    [plot] = section.plots
    assert isinstance(plot, ParetoPlot)
    assert plot.costs == ["latency_ms", "parameters"]
    assert [(t.number, t.on_front, t.chosen) for t in plot.trials] == [
        (0, True, True),
        (1, True, False),
        (2, False, False),
    ]
    assert {"label": "chosen trial", "value": "0"} in [f.model_dump() for f in section.facts]
    assert render_svg(plot).startswith("<svg")


def test_a_weighted_search_is_drawn_against_its_one_cost() -> None:
    details = {"objective": {"kind": "weighted", "cost": "macs"}, "trials": [trial(0, 0.9, 2.0)]}
    [plot] = step_section(0, "search", "search", None, details).plots
    assert isinstance(plot, ParetoPlot) and plot.costs == ["macs"]


def test_distillation_history_and_its_label_only_run_are_two_training_series() -> None:
    history = [{"epoch": 0, "train_loss": None, "eval_metric": 0.5}] + [
        {"epoch": e, "train_loss": 1.0 / e, "eval_metric": 0.5 + e / 10} for e in (1, 2, 3)
    ]
    details = {
        "student": {"source": "family"},
        "epochs": history,
        "best_epoch": 3,
        "eval_metric_name": "accuracy",
        "label_only": {"epochs": history[:3], "best_epoch": 2},
        "eval_metric": {"teacher": 0.9, "distilled": 0.8, "label_only": 0.7},
    }
    [plot] = step_section(0, "distill", "distill", 3.0, details).plots
    assert isinstance(plot, TrainingPlot)
    assert [s.label for s in plot.series] == ["distilled", "labels only"]
    assert plot.series[0].epochs == [0, 1, 2, 3] and plot.series[0].train_loss[0] is None
    assert plot.best_epoch == 3
    assert "<svg" in render_svg(plot)


def test_quantize_node_sensitivity_is_ranked_largest_first() -> None:
    details = {
        "mode": "auto",
        "sensitivity": {
            "base": "static-qdq-per-channel",
            "error": "relative L2 added by the node",
            "top": [
                {"node": "/conv2/Conv", "op_type": "Conv", "score": 0.3},
                {"node": "/fc/Gemm", "op_type": "Gemm", "score": 0.1},
            ],
        },
    }
    [plot] = step_section(0, "quantize", "quantize (auto)", 1.0, details).plots
    assert isinstance(plot, RankingPlot)
    assert [(n.name, n.score) for n in plot.nodes] == [("/conv2/Conv", 0.3), ("/fc/Gemm", 0.1)]


def test_the_fp32_fallback_is_drawn_as_its_curve_with_the_trials_it_did_not_keep() -> None:
    def point(nodes: int, drop: float, unit: str | None, accepted: bool = True) -> dict[str, Any]:
        return {"nodes": nodes, "metric_drop": drop, "metric": 0.9 - drop, "unit": unit,
                "accepted": accepted}

    details = {
        "mode": "auto",
        "fallback": {
            "ran": True,
            "metric_name": "accuracy",
            "metric_criterion": {"key": "max_metric_drop", "limit": 0.01, "mode": "absolute"},
            "curve": [point(0, 0.03, None), point(1, 0.018, "a"), point(2, 0.008, "b")],
            "trials": [point(1, 0.04, "p1", False), point(1, 0.018, "a"), point(2, 0.008, "b")],
            "nodes_to_exclude": ["a", "b"],
            "metric_with_nodes_kept": 0.892,
            "metric_drop_with_nodes_kept": 0.008,
            "stopped": "the metric target holds with 2 nodes in float32",
            "measurements": 3,
        },
    }
    section = step_section(0, "quantize", "quantize (auto)", 1.0, details)

    [plot] = section.plots
    assert isinstance(plot, FallbackCurvePlot)
    assert [(p.nodes, p.metric_drop) for p in plot.curve] == [(0, 0.03), (1, 0.018), (2, 0.008)]
    assert [(p.nodes, p.unit) for p in plot.trials] == [(1, "p1")]
    assert plot.chosen is not None and (plot.chosen.nodes, plot.chosen.metric_drop) == (2, 0.008)
    assert plot.limit == 0.01 and plot.drop_label == "absolute drop"
    facts = {f.label: f.value for f in section.facts}
    assert facts["FP32 fallback"] == "the metric target holds with 2 nodes in float32"
    assert "<svg" in render_svg(plot)


def test_structured_pruning_plots_the_channels_removed_per_layer() -> None:
    details = {
        "kind": "structured",
        "channels": {"conv1": [16, 8], "conv2": [32, 32]},
        "layer_sparsity": {"conv1": 0.5},
        "layers": [{"layer": "conv1", "sparsity": 0.0, "target_sparsity": None}],
    }
    [plot] = step_section(0, "prune", "prune (structured)", 1.0, details).plots
    assert isinstance(plot, LayerBarsPlot)
    assert [(b.layer, b.value, b.target) for b in plot.layers] == [
        ("conv1", 0.5, 0.5),
        ("conv2", 0.0, None),
    ]


def test_details_it_cannot_read_cost_the_plot_and_say_so() -> None:
    details = {"mode": "auto", "candidates": [{"name": "x"}], "epochs": "not a list"}
    section = step_section(0, "quantize", "quantize (auto)", 1.0, details)
    assert section.plots == []
    assert any("candidates plot could not be read" in note for note in section.notes)


def test_a_step_of_an_unknown_method_is_listed_without_plots() -> None:
    section = step_section(0, "sparsify", "sparsify", 1.0, {"anything": 1})
    assert section.plots == [] and section.facts == []


def test_a_running_job_is_reported_from_its_progress_events() -> None:
    record = JobRecord(
        id="job_1",
        state="running",
        progress=0.5,
        attempt=2,
        spec=SPEC,
        events=[
            ProgressEvent(message="validating", data={"progress": 0.0}),
            ProgressEvent(
                message="measured the original model", data={"metrics": metrics(400, 0.9)}
            ),
            ProgressEvent(
                message="step 1/1 (quantize): done",
                data={
                    "step": 0,
                    "method": "quantize",
                    "metrics": metrics(100, 0.88, -0.02),
                    "details": {"mode": "static"},
                },
            ),
        ],
    )
    report = build_report(record)
    assert not report.complete and report.verdict is None
    assert [(r.label, r.size_ratio) for r in report.comparison] == [
        ("original", 1.0),
        ("after step 1: quantize (static)", 0.25),
    ]
    # one latency column per deployment batch size: 1 and the job's 4
    assert report.job.batch_sizes == [1, 4]
    cells = report.comparison[1].latency
    assert [cell.batch_size if cell else None for cell in cells] == [1, 4]
    assert cells[1] is not None and cells[1].median_ms == 3.0
    assert report.job.last_message == "step 1/1 (quantize): done"
    assert "1 of 1 steps finished" in report.notes[0]


def test_a_failed_job_shows_its_error_and_what_it_measured() -> None:
    record = JobRecord(
        id="job_2",
        state="failed",
        spec=SPEC,
        error_code="step_failed",
        error_message="boom",
        events=[
            ProgressEvent(
                message="measured the original model", data={"metrics": metrics(400, 0.9)}
            )
        ],
    )
    report = build_report(record)
    assert report.error is not None and report.error.code == "step_failed"
    assert [r.role for r in report.comparison] == ["original"]
    html = render_html(report)
    assert "<code>step_failed</code> boom" in html


@pytest.mark.parametrize(
    ("label", "expected"),
    [("a$b$c", r"a\$b\$c"), ("x" * 50, "x" * 39 + "\u2026"), ("conv/1", "conv/1")],
)
def test_user_labels_are_shortened_and_never_parsed_as_mathtext(label: str, expected: str) -> None:
    assert plain(label) == expected


def test_hostile_labels_come_out_of_the_svg_escaped() -> None:
    hostile = "</svg><script>alert(1)</script>$\\frac{a}{b}$"
    plot = RankingPlot(title="t", score_label="s", nodes=[{"name": hostile, "score": 1.0}])  # type: ignore[list-item]
    svg = render_svg(plot)
    assert "<script" not in svg and svg.count("</svg>") == 1


def test_structured_pruning_reports_channels_removed_not_a_zero_weight_sparsity() -> None:
    details = {
        "kind": "structured",
        "channels": {"conv1": [16, 8], "conv2": [32, 28]},
        "overall_sparsity": 0.0,  # the weights left are not zero: meaningless here
        "removed_channel_fraction": 0.25,
        "layers": [{"layer": "conv1", "sparsity": 0.0, "target_sparsity": None}],
    }
    section = step_section(0, "prune", "prune (structured)", 1.0, details)
    facts = {fact.label: fact.value for fact in section.facts}
    assert "sparsity over all layers" not in facts
    assert facts["output channels removed"] == "12 of 48"
    [plot] = section.plots
    assert isinstance(plot, LayerBarsPlot)
    assert plot.value_label == "fraction of the layer's output channels removed"
    assert [bar.note for bar in plot.layers] == ["8 of 16 removed", "4 of 32 removed"]
    assert render_svg(plot).startswith("<svg")


def test_unstructured_pruning_keeps_its_weight_sparsity() -> None:
    details = {
        "kind": "unstructured",
        "overall_sparsity": 0.5,
        "layers": [{"layer": "conv1", "sparsity": 0.5, "target_sparsity": 0.5}],
        "sensitivity": {"baseline_metric": 0.9, "curves": {"conv1": [[0.5, 0.85]]}},
    }
    section = step_section(0, "prune", "prune (unstructured)", 1.0, details)
    assert {"label": "sparsity over all layers", "value": "0.5"} in [
        fact.model_dump() for fact in section.facts
    ]
    bars, curves = section.plots
    assert isinstance(bars, LayerBarsPlot) and bars.layers[0].note is None
    assert getattr(curves, "x_label", None) == "fraction of the layer's weights set to zero"


def test_a_one_epoch_training_plot_has_a_whole_number_epoch_tick() -> None:
    from core.report.plots import draw

    plot = TrainingPlot(
        title="t",
        metric_name="accuracy",
        series=[{"label": "fine-tuning", "epochs": [1], "eval_metric": [0.9], "train_loss": [0.3]}],
    )
    figure = draw(plot)
    for axis in figure.axes:
        assert list(axis.get_xticks()) == [1.0]  # not 0.95, 1.0, 1.05
        assert axis.get_xlabel() == "epoch"
    many = TrainingPlot(
        title="t",
        metric_name="accuracy",
        series=[
            {
                "label": "x",
                "epochs": list(range(1, 31)),
                "eval_metric": [0.5] * 30,
                "train_loss": [None] * 30,
            }
        ],
    )
    ticks = draw(many).axes[0].get_xticks()
    assert all(float(tick).is_integer() for tick in ticks)


def test_search_costs_are_labelled_with_their_units() -> None:
    from core.report.plots import draw

    plot = ParetoPlot(
        title="t",
        metric_name="accuracy",
        costs=["latency_ms", "macs", "size_bytes"],
        trials=[
            {"number": 0, "metric": 0.9, "costs": {"latency_ms": 1, "macs": 5, "size_bytes": 9}}
        ],
    )
    labels = [axis.get_xlabel() for axis in draw(plot).axes]
    assert labels == [
        "latency (ms, median)", "MACs (multiply-accumulates per sample)", "size (bytes)"
    ]  # fmt: skip


def test_a_batch_size_1_job_has_one_batch_1_latency_column() -> None:
    # a batch size of 1 is both "1" and "the job's batch size": one column, not two
    one = ModelMetrics(
        size_bytes=4000,
        parameters=1000,
        latency=[
            Latency(batch_size=1, median_ms=1.0, p95_ms=1.2, runs=5),
            Latency(batch_size=1, median_ms=1.0, p95_ms=1.2, runs=5),
        ],
        metric_name="accuracy",
        metric_value=0.9,
        metric_change=0.0,
    ).model_dump()
    record = JobRecord(
        id="job_1",
        state="running",
        spec={**SPEC, "batch_size": 1},
        events=[ProgressEvent(message="measured the original model", data={"metrics": one})],
    )
    report = build_report(record)
    assert report.job.batch_sizes == [1]
    assert [len(row.latency) for row in report.comparison] == [1]
    assert render_html(report).count("latency, batch 1 (ms)") == 1
