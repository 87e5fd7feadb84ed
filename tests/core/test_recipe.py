"""The auto recipe: a goal becomes targets and an auto step; the planner tries cheap kinds
first, gives training kinds successive halving, quantizes survivors, measures and judges
every candidate like quantize auto, stops at its budget, and reports the front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.context import MeasureSettings, RunContext
from core.pipeline import run
from core.report.build import build_report
from core.report.model import JobRecord
from core.spec import AutoStep, JobSpec
from core.tune.front import Point, pareto_front
from core.tune.halving import survivors

FAST = MeasureSettings(threads=1, warmup_runs=1, runs=3)


def test_a_goal_without_steps_is_one_auto_step_and_a_target() -> None:
    spec = JobSpec.model_validate(
        {"model_id": "m", "eval_dataset_id": "e", "goal": {"speedup": 2}}
    )
    [step] = spec.steps
    assert isinstance(step, AutoStep) and step.goal.speedup == 2
    assert spec.targets.min_speedup == 2
    with pytest.raises(ValueError, match="give steps, or a goal"):
        JobSpec.model_validate({"model_id": "m", "eval_dataset_id": "e"})
    with pytest.raises(ValueError, match="a goal needs speedup"):
        JobSpec.model_validate({"model_id": "m", "eval_dataset_id": "e", "goal": {}})


def test_the_front_keeps_what_nothing_dominates() -> None:
    points = [
        Point("a", 0.95, {"latency_ms": 10, "size_bytes": 100}),
        Point("b", 0.90, {"latency_ms": 5, "size_bytes": 100}),
        Point("c", 0.90, {"latency_ms": 6, "size_bytes": 100}),  # b beats it
        Point("d", 0.80, {"latency_ms": 5, "size_bytes": 20}),
    ]
    assert pareto_front(points) == ["a", "b", "d"]


def test_successive_halving_keeps_the_best_share() -> None:
    assert survivors([5, 1, 4, 2, 3], 0.5, lambda x: x) == [1, 2, 3]
    assert survivors([5], 0.1, lambda x: x) == [5]
    assert survivors([], 0.5, lambda x: x) == []


def auto_job(**step: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model_id": "m",
            "eval_dataset_id": "eval",
            "train_dataset_id": "train",
            "steps": [{"method": "auto", **step}],
            "batch_size": 8,
            "targets": {"max_metric_drop": 0.03, "allow_slower": True},
        }
    )


def test_the_recipe_tries_every_kind_in_order_and_picks_a_candidate(
    cnn_onnx: Path, digits_test_npz: Path, digits_train_npz: Path, tmp_path: Path
) -> None:
    spec = auto_job(
        kinds=["graph", "quantize", "prune_distill"],
        prune_ratios=[0.3, 0.6],
        short_epochs=1,
        long_epochs=1,
        keep=0.5,
    )
    result, final = run(
        cnn_onnx,
        {"eval": digits_test_npz, "train": digits_train_npz},
        spec,
        RunContext(work_dir=tmp_path / "w", measure=FAST),
    )
    details = result.steps[0].details
    rows = [row for row in details["candidates"] if row["name"] != "input"]
    stages = [(row["kind"], row["stage"]) for row in rows]
    # cheap first, then short rounds of both ratios, a long round of the survivor, then
    # quantization of what survived
    assert stages[0] == ("graph", "once")
    assert ("quantize", "once") in stages
    assert stages.count(("prune_distill", "short")) == 2
    assert stages.count(("prune_distill", "long")) == 1
    assert ("quantize", "quantized") in stages
    assert all("why" in row and row["seconds"] >= 0 for row in rows)
    assert details["training_source"] == "training data"
    assert [row["chosen"] for row in details["candidates"]].count(True) <= 1
    front = set(details["front"])
    assert front and front <= {row["number"] for row in rows if row["status"] == "measured"}
    assert details["budget"]["stopped_by"] is None
    # the step's output is the chosen candidate's model, measured by the pipeline
    assert final.exists() and result.final.metric_rows == result.evaluation.held_out_rows  # type: ignore[union-attr]
    # the report draws the candidates and the front
    record = JobRecord(
        id="job_x", state="succeeded", progress=1.0, spec=spec, result=result, attempt=1
    )
    kinds = [plot.kind for plot in build_report(record).steps[0].plots]
    assert "candidates" in kinds and "pareto" in kinds


def test_the_budget_stops_the_planner_and_the_original_is_kept(
    cnn_onnx: Path, digits_test_npz: Path, digits_train_npz: Path, tmp_path: Path
) -> None:
    spec = auto_job(time_budget_s=0.001)
    result, final = run(
        cnn_onnx,
        {"eval": digits_test_npz, "train": digits_train_npz},
        spec,
        RunContext(work_dir=tmp_path / "w", measure=FAST),
    )
    details = result.steps[0].details
    assert "time budget" in details["budget"]["stopped_by"]
    assert details["chosen"] == "input"
    assert result.verdict.outcome == "unchanged"
    assert final.read_bytes() == cnn_onnx.read_bytes()


def test_kinds_that_train_say_they_were_skipped_for_an_input_fed_as_a_constant(
    tmp_path: Path,
) -> None:
    import numpy as np
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "gain"], ["y"])],
        "scaled",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("gain", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    model = tmp_path / "scaled.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "eval.npz", x=rng.normal(size=(64, 3)).astype(np.float32))
    np.savez(tmp_path / "train.npz", x=rng.normal(size=(64, 3)).astype(np.float32))
    spec = JobSpec.model_validate(
        auto_job(kinds=["prune_distill", "student"]).model_dump()
        | {"task": {"kind": "regression", "inputs": {"gain": {"constant": 2.0}}}}
    )
    result, _ = run(
        model,
        {"eval": tmp_path / "eval.npz", "train": tmp_path / "train.npz"},
        spec,
        RunContext(work_dir=tmp_path / "w", measure=FAST),
    )
    skipped = result.steps[0].details["skipped_kinds"]
    assert set(skipped) == {"prune_distill", "student"}
    assert all("constants" in why and "no training" not in why for why in skipped.values())
