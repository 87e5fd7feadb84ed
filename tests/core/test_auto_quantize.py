"""The auto quantization mode: which candidates it tries, which it keeps and why, the
accuracy fallback, and what it reports. Decisions are tested with scripted latencies
(the tuner's measuring function is a parameter): speed itself is the benchmark's job."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnxruntime.quantization.registry import IntegerOpsRegistry

from core.context import MeasureSettings, RunContext
from core.data import load_arrays
from core.errors import JobCancelled
from core.formats import inspect_model, load_model
from core.measure import file_size, measure_model_with_outputs
from core.pipeline import run
from core.quantize.auto import (
    Candidate,
    ModelProfile,
    plan_candidates,
    profile_model,
    shallow_convolutions,
    tune,
)
from core.quantize.int8 import DYNAMIC_DEFAULT_OP_TYPES
from core.quantize.sensitivity import NodeSensitivity
from core.registry import StepData
from core.spec import (
    DEFAULT_METRIC_GUARD_RELATIVE,
    AutoQuantize,
    DynamicQuantize,
    JobSpec,
    StaticQuantize,
    Targets,
    TaskSpec,
)
from core.timing import SpeedComparison
from core.tune.choose import Outcome, choose
from core.tune.judge import Criteria, Measurement, judge
from core.tune.measure import WorkerMeasure
from service.examples import ResidualCNN, digits_arrays, export_onnx, train_classifier

TASK = TaskSpec()
BATCH = 32
ALL_MODES = ["auto", "dynamic", "fp16", "int4", "static"]
# name of a candidate -> (latency ratio vs the input at every batch size, metric drop)
Script = dict[str, tuple[float, float]]


@pytest.fixture(scope="module")
def digits_data(cnn_onnx: Path, digits_test_npz: Path, digits_train_npz: Path) -> StepData:
    """What the pipeline hands the step: eval and calibration data, the original's
    outputs and measured metrics, the job's batch size."""
    eval_arrays = load_arrays(digits_test_npz)
    original, outputs = measure_model_with_outputs(
        cnn_onnx, eval_arrays, TASK, BATCH, MeasureSettings(1, 0, 1), "cpu"
    )
    return StepData(
        eval_arrays=eval_arrays,
        calibration_arrays=load_arrays(digits_train_npz),
        inputs=inspect_model(cnn_onnx).inputs,
        task=TASK,
        batch_size=BATCH,
        reference_outputs=outputs,
        original_metrics=original,
    )


def auto(**options: Any) -> AutoQuantize:
    return AutoQuantize.model_validate({"method": "quantize", "calibration_samples": 64, **options})


def with_targets(data: StepData, **targets: Any) -> StepData:
    return dataclasses.replace(data, targets=Targets(**targets))


def candidate_name(path: Path) -> str:
    # candidates are written to <work>/candidates/<NN>-<name>/model.onnx
    return path.parent.name.split("-", 1)[1] if path.parent.parent.name == "candidates" else ""


def comparison(batch_size: int, ratio: float, tolerance: float = 0.03) -> SpeedComparison:
    return SpeedComparison(
        batch_size=batch_size,
        median_ms=10.0 * ratio,
        p95_ms=10.0 * ratio,
        baseline_median_ms=10.0,
        baseline_p95_ms=10.0,
        ratio=ratio,
        tolerance=tolerance,
        runs=3,
    )


def scripted_latency(path: Path, script: Script) -> tuple[SpeedComparison, ...]:
    ratio = script.get(candidate_name(path), (1.0, 0.0))[0]
    return tuple(comparison(b, ratio) for b in (1, BATCH))


def scripted_measure(data: StepData, script: Script) -> Callable[[Path], Measurement]:
    """Latency and metric drop from the script; the input is the original."""
    assert data.original_metrics is not None
    baseline = data.original_metrics.metric_value

    def measure(path: Path) -> Measurement:
        drop = script.get(candidate_name(path), (1.0, 0.0))[1]
        return Measurement(
            file_size(path), "accuracy", baseline - drop, scripted_latency(path, script)
        )

    return measure


def real_metric_scripted_latency(
    model: Path, data: StepData, ctx: RunContext, script: Script, metric_offset: float = 0.0
) -> Callable[[Path], Measurement]:
    """The real metric (minus `metric_offset` for candidates) and size; scripted latency."""
    worker = WorkerMeasure(model, data, ctx)

    def measure(path: Path) -> Measurement:
        name, value = worker.metric(path)
        if candidate_name(path):
            value -= metric_offset
        return Measurement(file_size(path), name, value, scripted_latency(path, script))

    return measure


def copy_as_candidate(candidate: Candidate, source: Path, target: Path, ctx: RunContext) -> dict:
    """Stands in for a quantizer: the input, marked so every candidate's file differs."""
    model = load_model(source)
    model.doc_string = candidate.name
    onnx.save(model, target)
    return {"mode": candidate.mode, "stand_in": True}


def context(tmp_path: Path, **kw: Any) -> RunContext:
    return RunContext(work_dir=tmp_path / "step", measure=MeasureSettings(1, 1, 3), **kw)


def rows_by_name(details: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in details["candidates"]}


def cpu_that_saturates(monkeypatch: pytest.MonkeyPatch, saturates: bool) -> None:
    """The planner as on a CPU whose INT8 kernels do (AVX2 alone) or do not (VNNI) add
    product pairs in int16: only the candidates it plans change, not the kernels."""
    monkeypatch.setattr(
        "core.quantize.auto.reduce_range_for",
        lambda requested: (saturates if requested is None else requested, "scripted"),
    )


@pytest.fixture(autouse=True)
def _planned_as_on_a_vnni_cpu(request: pytest.FixtureRequest) -> None:
    # the candidate lists below are those of a CPU that accumulates in int32; the tests
    # marked real_cpu plan as this machine's CPU would
    if "real_cpu" not in request.keywords:
        cpu_that_saturates(request.getfixturevalue("monkeypatch"), False)


# --- which candidates ------------------------------------------------------------------------


def profile(kind: str, conv: int = 0, matmul: int = 0, recurrent: int = 0) -> ModelProfile:
    return ModelProfile(kind, {}, conv, matmul, recurrent)  # type: ignore[arg-type]


def names(profile: ModelProfile, targets: Targets | None = None, **options: Any) -> list[str]:
    candidates, _ = plan_candidates(profile, auto(**options), targets or Targets(), ALL_MODES)
    return [c.name for c in candidates]


def test_the_digits_cnn_is_profiled_as_a_convolution_model(cnn_onnx: Path) -> None:
    digits = profile_model(load_model(cnn_onnx))
    assert (digits.kind, digits.conv_nodes, digits.matmul_nodes) == ("conv", 2, 2)


def test_convolution_models_try_static_first_and_dynamic_only_without_conv() -> None:
    assert names(profile("conv", conv=4, matmul=1)) == [
        "static-qdq-per-channel",
        "static-qoperator-per-channel",
        "dynamic-per-channel",
    ]
    # dynamic would quantize nothing (Conv is left out of it): not tried
    assert names(profile("conv", conv=4)) == [
        "static-qdq-per-channel",
        "static-qoperator-per-channel",
    ]
    candidates, _ = plan_candidates(profile("conv", 4, 1), auto(), Targets(), ALL_MODES)
    dynamic = next(c.config for c in candidates if c.mode == "dynamic")
    assert isinstance(dynamic, DynamicQuantize) and dynamic.op_types is None  # no Conv


def test_matmul_models_try_dynamic_per_channel_first_and_int4_when_registered() -> None:
    assert names(profile("matmul", matmul=12)) == [
        "dynamic-per-channel",
        "dynamic-per-tensor",
        "static-qdq-per-channel",
        "int4-block32",
    ]
    without_int4, notes = plan_candidates(
        profile("matmul", matmul=12), auto(), Targets(), ["dynamic", "static", "fp16"]
    )
    assert [c.mode for c in without_int4] == ["dynamic", "dynamic", "static"]
    assert notes == []


def test_where_int8_kernels_can_saturate_static_also_tries_8_bit_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default there is 7-bit weights (no int16 overflow, less precision); which of
    the two costs a model more is measured, not assumed."""
    cpu_that_saturates(monkeypatch, True)
    candidates, _ = plan_candidates(profile("conv", conv=4), auto(), Targets(), ALL_MODES)
    assert [c.name for c in candidates] == [
        "static-qdq-per-channel",
        "static-qoperator-per-channel",
        "static-qdq-per-channel-w8",
    ]
    assert [c.options()["reduce_range"] for c in candidates] == [True, True, False]
    cpu_that_saturates(monkeypatch, False)
    assert "static-qdq-per-channel-w8" not in names(profile("conv", conv=4))


def test_recurrent_models_try_what_onnx_runtimes_dynamic_defaults_produce() -> None:
    # quantize_dynamic's defaults: every integer op (LSTM -> DynamicQuantizeLSTM, MatMul),
    # per-tensor; squeeze's per-tensor candidate is that, Conv aside (none in an LSTM)
    candidates, _ = plan_candidates(profile("recurrent", matmul=1, recurrent=1), auto(),
                                    Targets(), ALL_MODES)  # fmt: skip
    assert [c.name for c in candidates] == [
        "dynamic-per-channel", "dynamic-per-tensor", "static-qdq-per-channel",
    ]  # fmt: skip
    per_tensor = candidates[1].config
    assert isinstance(per_tensor, DynamicQuantize) and not per_tensor.per_channel
    assert per_tensor.op_types is None and per_tensor.nodes_to_exclude == []
    assert set(DYNAMIC_DEFAULT_OP_TYPES) == set(IntegerOpsRegistry) - {"Conv"}
    assert {"LSTM", "MatMul"} <= set(DYNAMIC_DEFAULT_OP_TYPES)


def test_fp16_is_tried_only_when_size_is_the_only_target_or_when_asked() -> None:
    conv = profile("conv", conv=2)
    assert "fp16" not in names(conv)
    assert "fp16" not in names(conv, Targets(max_size_bytes=1000, max_metric_drop=0.01))
    assert names(conv, Targets(max_size_bytes=1000))[-1] == "fp16"
    assert names(conv, candidate_modes=["fp16"]) == ["fp16"]


def test_a_requested_mode_this_worker_lacks_is_reported_not_tried() -> None:
    candidates, notes = plan_candidates(
        profile("matmul", matmul=3),
        auto(candidate_modes=["int4", "dynamic"]),
        Targets(),
        ["dynamic"],
    )
    assert {c.mode for c in candidates} == {"dynamic"}
    assert notes == ["int4 mode is not available on this worker: not tried"]


def test_calibration_options_reach_the_static_candidates() -> None:
    options = {"calibration_method": "percentile", "calibration_samples": 99}
    candidates, _ = plan_candidates(profile("conv", conv=2), auto(**options), Targets(), ALL_MODES)
    assert {c.options()["calibration_method"] for c in candidates} == {"percentile"}
    assert {c.options()["calibration_samples"] for c in candidates} == {99}


def conv_graph(*convs: tuple[str, int, int, int]) -> onnx.ModelProto:
    """Chained Convs, each (name, input channels, output channels, group), 3x3 kernels."""
    nodes, weights, previous = [], [], "input"
    for index, (name, channels_in, channels_out, group) in enumerate(convs):
        weight = np.zeros((channels_out, channels_in // group, 3, 3), np.float32)
        weights.append(onnx.numpy_helper.from_array(weight, f"w{index}"))
        nodes.append(
            onnx.helper.make_node(
                "Conv", [previous, f"w{index}"], [f"y{index}"], name=name, group=group, pads=[1] * 4
            )
        )
        previous = f"y{index}"
    graph = onnx.helper.make_graph(
        nodes,
        "convs",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [onnx.helper.make_tensor_value_info(previous, onnx.TensorProto.FLOAT, None)],
        weights,
    )
    return onnx.helper.make_model(graph)


def test_shallow_convolutions_are_ungrouped_convs_with_fewer_than_four_input_channels() -> None:
    model = conv_graph(
        ("rgb_stem", 3, 16, 1),
        ("pointwise", 16, 16, 1),
        ("depthwise", 16, 16, 16),  # one input channel per group, but its own kernels
        ("", 16, 2, 1),
        ("", 2, 8, 1),  # shallow, but unnamed: nodes_to_exclude could not name it
    )
    assert shallow_convolutions(model) == ["rgb_stem"]


def test_a_convolution_model_with_a_stem_also_tries_each_static_candidate_with_it_in_fp32(
    cnn_onnx: Path,
) -> None:
    digits = profile_model(load_model(cnn_onnx))
    assert digits.shallow_convs == ("/features/features.0/Conv",)  # 1 channel in, not 16
    candidates, _ = plan_candidates(digits, auto(), Targets(), ALL_MODES)
    kept = {c.name: c.nodes_to_exclude for c in candidates}
    assert kept == {
        "static-qdq-per-channel": [],
        "static-qoperator-per-channel": [],
        "static-qdq-per-channel-fp32-stem": ["/features/features.0/Conv"],
        "static-qoperator-per-channel-fp32-stem": ["/features/features.0/Conv"],
        "dynamic-per-channel": [],
    }


def test_a_fallback_variant_keeps_its_base_exclusions_and_adds_the_ranked_nodes() -> None:
    base = Candidate(
        "static-qdq-per-channel-fp32-stem",
        StaticQuantize(method="quantize", mode="static", nodes_to_exclude=["stem"]),
    )
    variant = base.excluding(["head", "stem"])
    assert variant.nodes_to_exclude == ["stem", "head"]
    assert variant.name == "static-qdq-per-channel-fp32-stem-fp32x2"
    assert variant.base == base.name


# --- which one is kept (pure decisions) ----------------------------------------------------


def outcome(
    name: str,
    ratio: float,
    drop: float,
    size: int,
    criteria: Criteria,
    ratio_at_1: float | None = None,
) -> Outcome:
    """A measured candidate: `ratio` at the criteria's largest batch size, `ratio_at_1`
    (default: the same) at batch 1."""
    ratios = {b: ratio for b in criteria.batch_sizes} | (
        {1: ratio_at_1} if ratio_at_1 is not None else {}
    )
    measurement = Measurement(
        size, "accuracy", 0.9 - drop, tuple(comparison(b, r) for b, r in sorted(ratios.items()))
    )
    return Outcome(
        Candidate(name, None),
        "measured",
        measurement=measurement,
        judgement=judge(measurement, criteria),
    )


def criteria(**targets: Any) -> Criteria:
    return Criteria(
        Targets(**targets), baseline_metric=0.9, input_size_bytes=1000, batch_sizes=(8,)
    )


def chosen(outcomes: list[Outcome], decision_criteria: Criteria) -> str | None:
    decision = choose(outcomes, decision_criteria)
    return None if decision.chosen is None else outcomes[decision.chosen].candidate.name


def test_the_fastest_candidate_meeting_every_target_wins() -> None:
    c = criteria(max_metric_drop=0.01, max_size_bytes=500)
    outcomes = [
        outcome("accurate-but-big", 0.5, 0.0, 900, c),
        outcome("fast", 0.6, 0.005, 300, c),
        outcome("faster-but-inaccurate", 0.4, 0.05, 300, c),
    ]
    assert chosen(outcomes, c) == "fast"
    reason = choose(outcomes, c).reason
    assert "faster but missing targets: accurate-but-big (misses max_size_bytes), " in reason
    assert "faster-but-inaccurate (misses max_metric_drop)" in reason


def test_a_candidate_that_compresses_beats_a_faster_one_that_barely_does() -> None:
    c = criteria()
    outcomes = [
        outcome("dynamic-without-conv", 0.95, 0.0, 990, c),  # Conv left in FP32
        outcome("static", 1.0, 0.0, 350, c),  # not faster, but not slower than the input
    ]
    assert chosen(outcomes, c) == "static"
    reason = choose(outcomes, c).reason
    assert "barely compressing: dynamic-without-conv (0.99x the size)" in reason


def test_a_candidate_that_barely_compresses_wins_when_nothing_else_qualifies() -> None:
    c = criteria()
    outcomes = [
        outcome("dynamic-without-conv", 0.95, 0.0, 990, c),
        outcome("static-but-slower", 1.3, 0.0, 350, c),
    ]
    assert chosen(outcomes, c) == "dynamic-without-conv"


def test_equally_fast_candidates_are_separated_by_metric_drop() -> None:
    c = criteria(max_metric_drop=0.02)
    outcomes = [outcome("a", 0.60, 0.015, 300, c), outcome("b", 0.61, 0.002, 300, c)]
    assert chosen(outcomes, c) == "b"
    assert "noise tolerance" in choose(outcomes, c).reason


def test_a_candidate_measurably_slower_than_the_fastest_at_one_batch_size_is_not_as_fast() -> None:
    # the LSTM at bench scale: per-tensor DynamicQuantizeLSTM 0.40x the input's time at
    # batch 1 and 0.093x at 32, per-channel 0.47x and 0.085x: their mean ratios are within
    # the 10% noise, but per-channel is 17% slower at batch 1, so its (noise-sized)
    # smaller metric drop does not make it the choice
    c = Criteria(
        Targets(max_metric_drop=0.01, metric_drop_mode="relative"),
        baseline_metric=0.9,
        input_size_bytes=1000,
        batch_sizes=(1, 32),
        tolerance=0.10,
    )
    outcomes = [
        outcome("dynamic-per-channel", 0.085, -0.009, 268, c, ratio_at_1=0.47),
        outcome("dynamic-per-tensor", 0.093, 0.0, 266, c, ratio_at_1=0.40),
    ]
    assert chosen(outcomes, c) == "dynamic-per-tensor"


def test_without_a_metric_target_a_default_guard_refuses_a_collapse() -> None:
    c = criteria()
    outcomes = [outcome("collapsed", 0.4, 0.3, 300, c), outcome("sane", 0.7, 0.001, 300, c)]
    assert chosen(outcomes, c) == "sane"
    collapsed = outcomes[0].judgement
    assert collapsed is not None and collapsed.met == {
        "default_metric_guard": False,
        "not_slower_than_input": True,
    }
    assert c.metric_criterion is not None
    assert c.metric_criterion.limit == DEFAULT_METRIC_GUARD_RELATIVE


def test_with_the_guard_off_auto_has_no_metric_criterion() -> None:
    c = criteria(metric_guard=False)
    assert c.metric_criterion is None
    collapsed = outcome("collapsed", 0.4, 0.3, 300, c)
    assert collapsed.judgement is not None and collapsed.judgement.metric_ok


def test_a_candidate_slower_at_any_deployment_batch_size_is_not_chosen() -> None:
    # static INT8 on a small CNN: faster at 64, 1.65x slower at 1
    c = Criteria(Targets(), baseline_metric=0.9, input_size_bytes=1000, batch_sizes=(1, 64))
    outcomes = [
        outcome("static", 0.6, 0.0, 300, c, ratio_at_1=1.65),
        outcome("dynamic", 0.95, 0.0, 700, c),
    ]
    static = outcomes[0].judgement
    assert static is not None and static.slower and static.slower_at == (1,)
    assert chosen(outcomes, c) == "dynamic"


def test_when_no_candidate_meets_every_target_the_metric_comes_first_then_speed() -> None:
    c = criteria(max_metric_drop=0.01, max_latency_ms=1.0)  # 1 ms: nothing is that fast
    outcomes = [
        outcome("fast-inaccurate", 0.3, 0.05, 300, c),
        outcome("accurate-slow", 0.9, 0.0, 300, c),
        outcome("accurate-fast", 0.7, 0.005, 300, c),
    ]
    decision = choose(outcomes, c)
    assert chosen(outcomes, c) == "accurate-fast"
    assert decision.reason.startswith("no candidate meets every target")
    assert "max_latency_ms" in decision.reason


def test_relative_metric_drop_is_judged_against_the_original() -> None:
    c = Criteria(
        Targets(max_metric_drop=0.1, metric_drop_mode="relative"),
        baseline_metric=0.5,
        input_size_bytes=1000,
        batch_sizes=(1,),
    )
    ok = outcome("ok", 0.5, 0.04, 300, c)  # 0.9-0.04 vs baseline 0.5: a gain
    judgement = ok.judgement
    assert judgement is not None and judgement.met["max_metric_drop"]


# --- the tuner, with real candidates and controlled measurements ---------------------------


def test_auto_on_the_digits_cnn_picks_a_static_candidate_and_reports_every_one(
    cnn_onnx: Path, digits_data: StepData, tmp_path: Path
) -> None:
    ctx = context(tmp_path)
    events: list[tuple[float, str, dict[str, Any]]] = []
    # static INT8 pays at batch 32 on convolutions; dynamic leaves the convs in FP32
    script = {
        "static-qdq-per-channel": (0.60, 0.0),
        "static-qoperator-per-channel": (0.70, 0.0),
        "static-qdq-per-channel-fp32-stem": (0.75, 0.0),
        "static-qoperator-per-channel-fp32-stem": (0.75, 0.0),
        "dynamic-per-channel": (0.85, 0.0),
    }
    output = tmp_path / "model.onnx"

    details = tune(
        cnn_onnx,
        output,
        auto(),
        digits_data,
        ctx,
        measure=real_metric_scripted_latency(cnn_onnx, digits_data, ctx, script),
        progress=lambda p, m, d: events.append((p, m, d)),
    )

    assert details["model_kind"] == "conv"
    assert details["chosen"] == "static-qdq-per-channel"
    assert details["chosen_reason"].startswith("static-qdq-per-channel meets every target")
    assert details["targets_met_on_selection_rows"] is True
    assert details["slower_than_input"] is False
    rows = rows_by_name(details)
    assert list(rows) == ["input", *script]
    assert [row["name"] for row in details["candidates"] if row["chosen"]] == [details["chosen"]]
    # the stem variants kept the 1-channel conv in FP32 (the tuner checks the graph)
    stem = rows["static-qdq-per-channel-fp32-stem"]["options"]["nodes_to_exclude"]
    assert stem == ["/features/features.0/Conv"]
    for name in script:
        row = rows[name]
        assert row["status"] == "measured"
        assert row["size_ratio"] < 0.5  # INT8 weights: real files, measured
        assert [lat["batch_size"] for lat in row["latency"]] == [1, BATCH]
        assert row["latency_ratio"] == pytest.approx(script[name][0])
        assert row["metric_name"] == "accuracy"
        assert abs(row["metric_change"]) <= 0.02  # real accuracy vs the original
        assert set(row["met"]) == {"default_metric_guard", "not_slower_than_input"}
    assert (
        output.read_bytes()
        == (ctx.work_dir / "candidates" / "00-static-qdq-per-channel" / "model.onnx").read_bytes()
    )
    # progress for every candidate, in order
    reported = [d["candidate"]["name"] for _, _, d in events if "candidate" in d]
    assert reported == list(script)
    assert [p for p, _, _ in events] == sorted(p for p, _, _ in events)


def test_a_full_static_model_slower_than_the_input_brings_a_latency_aware_candidate(
    cnn_onnx: Path, digits_data: StepData, tmp_path: Path
) -> None:
    ctx = context(tmp_path)
    script = {
        "static-qdq-per-channel": (1.3, 0.0),
        "static-qoperator-per-channel": (1.3, 0.0),
        "static-qdq-per-channel-fp32-stem": (1.2, 0.0),
        "static-qoperator-per-channel-fp32-stem": (1.2, 0.0),
        "static-qdq-latency-aware": (0.9, 0.0),
    }

    details = tune(
        cnn_onnx,
        tmp_path / "model.onnx",
        auto(candidate_modes=["static"]),
        digits_data,
        ctx,
        measure=real_metric_scripted_latency(cnn_onnx, digits_data, ctx, script),
    )

    rows = rows_by_name(details)
    row = rows["static-qdq-latency-aware"]
    assert row["options"]["latency_aware"] is True
    assert row["base"] == "static-qdq-per-channel"
    # a real selection, profiled here: every quantizable node with both latencies
    evidence = details["latency_aware"]
    assert evidence["batch_sizes"] == [1, BATCH]
    assert evidence["units"] == len(evidence["table"]) >= 4  # two Convs and two Gemms
    for node in evidence["table"]:
        assert set(node["fp32_us"]) == set(node["int8_us"]) == {"1", str(BATCH)}
        assert node["decision"] in ("int8", "fp32") and node["why"]
    if row["status"] == "measured":  # else the same file as a full candidate
        assert details["chosen"] == "static-qdq-latency-aware"
        assert details["chosen_details"]["latency_aware"]["table"] == evidence["table"]


def test_an_impossible_metric_target_runs_the_fallback_and_says_it_is_not_met(
    cnn_onnx: Path, digits_data: StepData, tmp_path: Path
) -> None:
    ctx = context(tmp_path)
    data = with_targets(digits_data, max_metric_drop=0.01)
    script = {"static-qdq-per-channel": (0.6, 0.0)}
    # every quantized model scores 0.5 below its real accuracy: no exclusion list can help
    measure = real_metric_scripted_latency(cnn_onnx, data, ctx, script, metric_offset=0.5)

    details = tune(
        cnn_onnx,
        tmp_path / "model.onnx",
        auto(candidate_modes=["static"], max_fallback_nodes=3, max_fallback_trials=8),
        data,
        ctx,
        measure=measure,
    )

    sensitivity = details["sensitivity"]
    assert sensitivity["base"] == "static-qdq-per-channel"
    ranked = [item["node"] for item in sensitivity["top"]]
    assert len(ranked) == 4  # two Convs and two Gemms
    assert all(item["score"] >= 0 for item in sensitivity["top"])
    fallback = details["fallback"]
    assert fallback["ran"] and not fallback["met_metric_target"]
    assert fallback["units"] == "nodes"
    assert 1 <= len(fallback["trials"]) <= 8
    assert {t["unit"] for t in fallback["trials"] if t["phase"] == "screen"} == set(ranked)
    assert len(fallback["nodes_to_exclude"]) <= 3
    assert set(fallback["nodes_to_exclude"]) <= set(ranked)
    curve = [point["metric_drop"] for point in fallback["curve"]]
    assert all(later < earlier for earlier, later in itertools.pairwise(curve))
    assert fallback["stopped"]
    if fallback["nodes_to_exclude"]:
        kept = rows_by_name(details)[fallback["candidate"]]
        # the exclusion the fallback found may be one a candidate already tried (the
        # fp32 stem): then it is that file, judged as its twin, not measured again
        assert kept["status"] in ("measured", "duplicate")
        if kept["status"] == "duplicate":
            assert kept["note"].startswith("the same file as ")
        assert kept["options"]["nodes_to_exclude"] == fallback["nodes_to_exclude"]
        assert kept["base"] == "static-qdq-per-channel"
    assert details["targets_met_on_selection_rows"] is False
    assert details["met_on_selection_rows"]["max_metric_drop"] is False
    assert details["chosen_reason"].startswith("no candidate meets every target")


# --- the fallback inside the tuner, with nodes whose effect on the metric is controlled -----

FALLBACK_BASES: Script = {
    "static-qdq-per-channel": (0.6, 0.03),
    "static-qoperator-per-channel": (0.7, 0.03),
    "static-qdq-per-channel-fp32-stem": (0.7, 0.03),
    "static-qoperator-per-channel-fp32-stem": (0.7, 0.03),
}


def produce_marking_exclusions(
    candidate: Candidate, source: Path, target: Path, ctx: RunContext
) -> dict:
    """Stands in for a quantizer, writing which nodes the variant keeps in float32."""
    model = load_model(source)
    model.doc_string = json.dumps({"name": candidate.name, "fp32": candidate.nodes_to_exclude})
    onnx.save(model, target)
    return {"mode": candidate.mode, "stand_in": True}


def metric_by_nodes(
    data: StepData, gains: dict[str, float], calls: list[list[str]] | None = None
) -> tuple[Callable[[Path], Measurement], Callable[[Path], float]]:
    """A measure and a score: a candidate's metric is its base's (FALLBACK_BASES) plus
    the gain of each node it keeps in float32; variants run at 0.65x the input."""
    assert data.original_metrics is not None
    baseline = data.original_metrics.metric_value

    def metric(path: Path) -> float:
        text = load_model(path).doc_string
        if not text:
            return baseline  # the input
        marks = json.loads(text)
        if calls is not None:
            calls.append(marks["fp32"])
        base = marks["name"].split("-fp32x")[0]
        return baseline - FALLBACK_BASES[base][1] + sum(gains.get(n, 0.0) for n in marks["fp32"])

    def measure(path: Path) -> Measurement:
        name = candidate_name(path)
        ratio = FALLBACK_BASES.get(name, (0.65, 0.0))[0] if name else 1.0
        latency = tuple(comparison(b, ratio) for b in (1, BATCH))
        return Measurement(file_size(path), "accuracy", metric(path), latency)

    return measure, metric


def ranked_as(*nodes: str) -> Callable[[Path, Path], list[NodeSensitivity]]:
    """The error proxy's ranking, in this order."""
    return lambda _reference, _quantized: [
        NodeSensitivity(node, "Conv", 1.0 - i / 10, 1.0, 0.0, 0.0, position=i)
        for i, node in enumerate(nodes)
    ]


def fallback_tune(
    cnn_onnx: Path,
    data: StepData,
    tmp_path: Path,
    gains: dict[str, float],
    *ranking: str,
    **options: Any,
) -> dict[str, Any]:
    measure, score = metric_by_nodes(data, gains)
    return tune(
        cnn_onnx,
        tmp_path / "model.onnx",
        auto(candidate_modes=["static"], **options),
        data,
        context(tmp_path),
        measure=measure,
        score=score,
        produce=produce_marking_exclusions,
        rank=ranked_as(*ranking),
    )


def test_the_fallback_keeps_the_nodes_whose_float32_measurably_brings_the_metric_back(
    cnn_onnx: Path, digits_data: StepData, tmp_path: Path
) -> None:
    # the proxy blames p1 and p2 most, but keeping them in float32 costs accuracy (as on
    # the detector); a and b, ranked last, are what the task needs
    data = with_targets(digits_data, max_metric_drop=0.01)
    gains = {"p1": -0.01, "p2": -0.005, "a": 0.012, "b": 0.01}

    details = fallback_tune(cnn_onnx, data, tmp_path, gains, "p1", "p2", "a", "b")

    fallback = details["fallback"]
    assert fallback["met_metric_target"] is True
    assert fallback["nodes_to_exclude"] == ["a", "b"]
    assert [p["unit"] for p in fallback["curve"]] == [None, "a", "b"]
    assert [p["nodes"] for p in fallback["curve"]] == [0, 1, 2]
    assert [p["metric_drop"] for p in fallback["curve"]] == pytest.approx([0.03, 0.018, 0.008])
    never_kept = [t for t in fallback["trials"] if t["unit"] in ("p1", "p2")]
    assert never_kept and not any(t["accepted"] for t in never_kept)
    assert details["chosen"] == "static-qdq-per-channel-fp32x2"
    assert details["nodes_to_exclude"] == ["a", "b"]
    assert details["targets_met_on_selection_rows"] is True
    # trials are not candidates: only the kept set is a row (measured, timed)
    fallback_rows = [r for r in details["candidates"] if r["base"]]
    assert [r["name"] for r in fallback_rows] == ["static-qdq-per-channel-fp32x2"]
    assert fallback_rows[0]["latency_ratio"] == pytest.approx(0.65)


def test_the_fallback_stops_and_says_so_when_no_set_of_nodes_reaches_the_target(
    cnn_onnx: Path, digits_data: StepData, tmp_path: Path
) -> None:
    data = with_targets(digits_data, max_metric_drop=0.01)
    gains = {"a": 0.004, "b": 0.003, "c": 0.002}

    details = fallback_tune(cnn_onnx, data, tmp_path, gains, "c", "b", "a")

    fallback = details["fallback"]
    assert fallback["met_metric_target"] is False
    assert fallback["nodes_to_exclude"] == ["a", "b", "c"]
    assert fallback["stopped"].startswith("every unit was tried and the metric target still fails")
    # the closest set competes, and comes closest
    assert details["chosen"] == "static-qdq-per-channel-fp32x3"
    assert details["chosen_reason"].startswith("no candidate meets every target")
    assert details["targets_met_on_selection_rows"] is False


def test_the_fallback_spends_no_more_measurements_than_max_fallback_trials(
    cnn_onnx: Path, digits_data: StepData, tmp_path: Path
) -> None:
    data = with_targets(digits_data, max_metric_drop=0.01)
    nodes = [f"n{i}" for i in range(12)]
    calls: list[list[str]] = []
    measure, score = metric_by_nodes(data, {n: 0.001 for n in nodes}, calls)

    details = tune(
        cnn_onnx,
        tmp_path / "model.onnx",
        auto(candidate_modes=["static"], max_fallback_trials=5),
        data,
        context(tmp_path),
        measure=measure,
        score=score,
        produce=produce_marking_exclusions,
        rank=ranked_as(*nodes),
    )

    fallback = details["fallback"]
    assert fallback["units"] == "blocks of up to 6 neighbouring nodes"
    assert len(fallback["trials"]) <= 5
    # each trial scored once, then the set kept measured whole
    assert len([c for c in calls if c and c[0] in nodes]) == len(fallback["trials"]) + 1
    assert fallback["max_fallback_trials"] == 5


@pytest.fixture(scope="module")
def residual_cnn_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small residual CNN, briefly trained: deeper than the digits CNN (7 Convs)."""
    images, labels = digits_arrays("train")
    torch.manual_seed(0)  # the initial weights too: the same model every session
    module = train_classifier(
        ResidualCNN(width=8), images[:1024], labels[:1024], epochs=3, lr=3e-3, seed=0
    )
    example, _ = digits_arrays("test")
    return export_onnx(
        module, example[:1], tmp_path_factory.mktemp("residual") / "residual.onnx", opset=17
    )


@pytest.mark.real_cpu
def test_on_a_real_cnn_the_fallback_reaches_a_target_static_int8_misses(
    residual_cnn_onnx: Path, tmp_path: Path
) -> None:
    """Agreement with the original on 300 rows: static INT8 with 8-bit weights changes 3
    decisions, the target allows one (a drop of 0.005). Measured, not scripted: only
    latency is scripted, so that speed noise decides nothing. Measured on a VNNI Xeon
    (seeded): keeping any of the error proxy's top 3 nodes in float32 changes nothing,
    its 6th alone makes it worse; the Gemm head helps alone, and with it the stem Conv (no
    gain alone) does. On an AVX2-only AMD EPYC the default 7-bit weights change 8
    decisions and no fallback set reaches the target; the 8-bit twin tried there (3
    decisions) is as fast and closer, so the fallback starts from it and reaches it."""
    images, _ = digits_arrays("test")
    train, _ = digits_arrays("train")
    eval_arrays = {"input": images[:300]}  # no labels: agreement with the original
    original, outputs = measure_model_with_outputs(
        residual_cnn_onnx, eval_arrays, TASK, BATCH, MeasureSettings(1, 0, 1), "cpu"
    )
    data = StepData(
        eval_arrays=eval_arrays,
        calibration_arrays={"input": train[:256]},
        inputs=inspect_model(residual_cnn_onnx).inputs,
        task=TASK,
        batch_size=BATCH,
        reference_outputs=outputs,
        original_metrics=original,
        targets=Targets(max_metric_drop=0.005),
    )
    ctx = context(tmp_path)
    script = {"static-qdq-per-channel": (0.6, 0.0), "static-qdq-per-channel-w8": (0.6, 0.0)}

    details = tune(
        residual_cnn_onnx,
        tmp_path / "model.onnx",
        auto(candidate_modes=["static"]),
        data,
        ctx,
        measure=real_metric_scripted_latency(residual_cnn_onnx, data, ctx, script),
    )

    rows = rows_by_name(details)
    assert rows["static-qdq-per-channel"]["met"]["max_metric_drop"] is False
    fallback = details["fallback"]
    assert fallback["met_metric_target"] is True
    drops = [point["metric_drop"] for point in fallback["curve"]]
    assert drops[0] > 0.005 >= drops[-1]
    assert all(later < earlier for earlier, later in itertools.pairwise(drops))
    assert len(fallback["trials"]) <= AutoQuantize.model_fields["max_fallback_trials"].default
    assert details["chosen"] == fallback["candidate"]
    assert details["nodes_to_exclude"] == fallback["nodes_to_exclude"]
    assert rows[details["chosen"]]["met"]["max_metric_drop"] is True


def test_candidates_are_judged_on_the_rows_the_step_is_given(
    cnn_onnx: Path, digits_data: StepData, tmp_path: Path
) -> None:
    rows = np.arange(0, 200, 2)  # what the pipeline hands a step: the selection rows
    data = dataclasses.replace(
        digits_data,
        eval_arrays={name: array[rows] for name, array in digits_data.eval_arrays.items()},
        reference_outputs=None
        if digits_data.reference_outputs is None
        else digits_data.reference_outputs[rows],
    )
    details = tune(
        cnn_onnx,
        tmp_path / "model.onnx",
        auto(candidate_modes=["dynamic"]),
        data,
        context(tmp_path),
        produce=copy_as_candidate,  # the input itself: its metric is the original's
    )

    labels, reference = data.eval_arrays["label"], data.reference_outputs
    assert reference is not None
    original_accuracy = float(np.mean(np.argmax(reference, axis=1) == labels))
    assert details["metric_rows"] == {"selection": len(rows)}
    # the baseline is the original on the same rows, not on the whole eval data
    assert details["metric_baseline"] == pytest.approx(original_accuracy)
    assert rows_by_name(details)["dynamic-per-channel"]["metric_value"] == pytest.approx(
        original_accuracy
    )
    assert "held_out" not in details  # the job's verdict holds out rows, not the step


# --- speed rules, with stand-in candidates --------------------------------------------------


def test_a_slower_candidate_is_not_chosen_without_allow_slower(
    cnn_onnx: Path, digits_data: StepData, tmp_path: Path
) -> None:
    script = {
        "static-qdq-per-channel": (1.40, 0.0),  # most accurate, but slower than the input
        "static-qoperator-per-channel": (1.20, 0.0),
        "dynamic-per-channel": (0.90, 0.004),
    }
    details = tune(
        cnn_onnx,
        tmp_path / "model.onnx",
        auto(),
        digits_data,
        context(tmp_path),
        measure=scripted_measure(digits_data, script),
        produce=copy_as_candidate,
    )

    assert details["chosen"] == "dynamic-per-channel"
    rows = rows_by_name(details)
    assert rows["static-qdq-per-channel"]["met"]["not_slower_than_input"] is False
    assert details["slower_than_input"] is False


def test_when_every_candidate_is_slower_the_input_is_returned_unchanged(
    cnn_onnx: Path, digits_data: StepData, tmp_path: Path
) -> None:
    script = {
        "static-qdq-per-channel": (1.30, 0.0),
        "static-qoperator-per-channel": (1.20, 0.0),
        "static-qdq-per-channel-fp32-stem": (1.25, 0.0),
        "static-qoperator-per-channel-fp32-stem": (1.25, 0.0),
        "static-qdq-latency-aware": (1.15, 0.0),
        "dynamic-per-channel": (1.10, 0.0),
    }
    output = tmp_path / "model.onnx"
    details = tune(
        cnn_onnx,
        output,
        auto(),
        with_targets(digits_data, max_metric_drop=0.01),
        context(tmp_path),
        measure=scripted_measure(digits_data, script),
        produce=copy_as_candidate,
    )

    assert details["returned_input_unchanged"] is True
    assert details["chosen"] == "input"
    assert rows_by_name(details)["input"]["chosen"] is True
    assert output.read_bytes() == cnn_onnx.read_bytes()
    assert "allow_slower is false" in details["chosen_reason"]
    assert "dynamic-per-channel" in details["chosen_reason"]  # the fastest, named
    assert details["slower_than_input"] is False
    assert "fallback" not in details  # the metric was never the problem


def test_allow_slower_returns_the_fastest_and_marks_it_slower(
    cnn_onnx: Path, digits_data: StepData, tmp_path: Path
) -> None:
    script = {
        "static-qdq-per-channel": (1.30, 0.0),
        "static-qoperator-per-channel": (1.20, 0.0),
        "static-qdq-per-channel-fp32-stem": (1.25, 0.0),
        "static-qoperator-per-channel-fp32-stem": (1.25, 0.0),
        "static-qdq-latency-aware": (1.15, 0.0),
        "dynamic-per-channel": (1.10, 0.0),
    }
    details = tune(
        cnn_onnx,
        tmp_path / "model.onnx",
        auto(allow_slower=True),
        digits_data,
        context(tmp_path),
        measure=scripted_measure(digits_data, script),
        produce=copy_as_candidate,
    )

    assert details["chosen"] == "dynamic-per-channel"
    assert details["slower_than_input"] is True
    assert details["met_on_selection_rows"]["not_slower_than_input"] is False
    assert details["targets_met_on_selection_rows"] is True  # allow_slower: speed not required
    assert "allow_slower permits" in details["chosen_reason"]


def test_a_candidate_that_fails_is_reported_and_the_others_still_compete(
    cnn_onnx: Path, digits_data: StepData, tmp_path: Path
) -> None:
    def produce(candidate: Candidate, source: Path, target: Path, ctx: RunContext) -> dict:
        if candidate.mode == "dynamic":
            raise RuntimeError("NOT_IMPLEMENTED: no kernel for this op")
        return copy_as_candidate(candidate, source, target, ctx)

    script = {"static-qdq-per-channel": (0.8, 0.0), "dynamic-per-channel": (0.5, 0.0)}
    details = tune(
        cnn_onnx,
        tmp_path / "model.onnx",
        auto(),
        digits_data,
        context(tmp_path),
        measure=scripted_measure(digits_data, script),
        produce=produce,
    )

    dynamic = rows_by_name(details)["dynamic-per-channel"]
    assert dynamic["status"] == "failed"
    assert dynamic["note"].startswith("unsupported_model")
    assert details["chosen"] == "static-qdq-per-channel"


def test_identical_candidates_are_measured_once(
    cnn_onnx: Path, digits_data: StepData, tmp_path: Path
) -> None:
    def same_file(candidate: Candidate, source: Path, target: Path, ctx: RunContext) -> dict:
        onnx.save(load_model(source), target)
        return {}

    details = tune(
        cnn_onnx,
        tmp_path / "model.onnx",
        auto(),
        digits_data,
        context(tmp_path),
        measure=scripted_measure(digits_data, {}),
        produce=same_file,
    )
    statuses = [row["status"] for row in details["candidates"][1:]]
    assert statuses == ["measured", *["duplicate"] * 4]


def test_cancelling_stops_the_tuner_between_candidates(
    cnn_onnx: Path, digits_data: StepData, tmp_path: Path
) -> None:
    produced: list[str] = []

    def produce(candidate: Candidate, source: Path, target: Path, ctx: RunContext) -> dict:
        produced.append(candidate.name)
        return copy_as_candidate(candidate, source, target, ctx)

    ctx = context(tmp_path, is_cancelled=lambda: len(produced) >= 1)
    with pytest.raises(JobCancelled):
        tune(
            cnn_onnx,
            tmp_path / "model.onnx",
            auto(),
            digits_data,
            ctx,
            measure=scripted_measure(digits_data, {}),
            produce=produce,
        )
    assert produced == ["static-qdq-per-channel"]


# --- through the pipeline -------------------------------------------------------------------


def test_a_job_with_the_default_mode_runs_auto_and_returns_the_chosen_model(
    cnn_onnx: Path,
    digits_test_npz: Path,
    digits_train_npz: Path,
    tmp_path: Path,
    fast_measure: MeasureSettings,
) -> None:
    spec = JobSpec.model_validate(
        {
            "model_id": "m",
            "eval_dataset_id": "eval",
            "calibration_dataset_id": "calib",
            "steps": [{"method": "quantize", "calibration_samples": 64}],
            "batch_size": BATCH,
            "targets": {"max_metric_drop": 0.02},
        }
    )
    result, final_path = run(
        cnn_onnx,
        {"eval": digits_test_npz, "calib": digits_train_npz},
        spec,
        RunContext(work_dir=tmp_path / "job", measure=fast_measure),
    )

    details = result.steps[0].details
    assert details["mode"] == "auto"
    assert [row["chosen"] for row in details["candidates"]].count(True) == 1
    if details["returned_input_unchanged"]:  # every candidate timed slower on this machine
        assert final_path.read_bytes() == cnn_onnx.read_bytes()
    else:
        chosen = rows_by_name(details)[details["chosen"]]
        assert chosen["met"]["not_slower_than_input"] is True
        assert result.final.size_bytes == chosen["size_bytes"]
        assert details["quantized_node_counts"]  # the step counted the chosen model's nodes
    # the tuner chose on the selection rows; the pipeline reports the held-out rows
    evaluation = result.evaluation
    assert evaluation is not None and evaluation.split
    assert details["metric_rows"] == {"selection": evaluation.selection_rows}
    assert result.steps[0].metrics.metric_rows == evaluation.held_out_rows
    assert np.isfinite(result.verdict.latency_ratio)
