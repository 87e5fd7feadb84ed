"""Unstructured magnitude pruning: exact sparsities (global and local, with skips and
overrides), masks kept through fine-tuning into the exported ONNX, accuracy kept on the
digits CNN, a report with the compressed size, and a prune -> quantize pipeline job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from core.context import MeasureSettings, RunContext
from core.data import load_arrays
from core.errors import InputError
from core.formats import inspect_model
from core.measure import measure_model_with_outputs
from core.pipeline import run
from core.prune.report import UNSTRUCTURED_NOTE
from core.prune.unstructured import global_masks, layer_plan, local_mask
from core.registry import StepData, StepOutput, get_step
from core.spec import PRUNE_STEP_ADAPTER, JobSpec, TaskSpec, UnstructuredPrune

LAYERS = [
    "features/features/0/Conv",
    "features/features/2/Conv",
    "classifier/classifier/1/Gemm",
    "classifier/classifier/3/Gemm",
]
Event = tuple[float, str, dict[str, Any]]


def unstructured(**fields: Any) -> UnstructuredPrune:
    config = PRUNE_STEP_ADAPTER.validate_python({"method": "prune"} | fields)
    assert isinstance(config, UnstructuredPrune)
    return config


def onnx_weights(path: Path) -> dict[tuple[int, ...], np.ndarray]:
    """The model's initializers by shape (each weight shape is unique in the CNN)."""
    return {
        tuple(init.dims): numpy_helper.to_array(init) for init in onnx.load(path).graph.initializer
    }


@pytest.fixture(scope="module")
def step_data(cnn_onnx: Path, digits_test_npz: Path, digits_train_npz: Path) -> StepData:
    train = load_arrays(digits_train_npz)
    return StepData(
        eval_arrays=load_arrays(digits_test_npz),
        calibration_arrays=train,
        inputs=inspect_model(cnn_onnx).inputs,
        task=TaskSpec(),
        train_arrays=train,
    )


def test_global_masks_remove_exactly_the_smallest_weights_across_layers() -> None:
    scores = {"a": torch.tensor([0.1, 5.0, 0.3]), "b": torch.tensor([[0.2, 4.0], [3.0, 0.4]])}

    masks = global_masks(scores, 0.4)  # round(0.4 * 7) = 3 of the 7 weights

    assert masks["a"].tolist() == [False, True, False]
    assert masks["b"].tolist() == [[False, True], [True, True]]


def test_local_mask_removes_exactly_the_ratio_of_each_layer() -> None:
    scores = torch.rand(64, 33, generator=torch.Generator().manual_seed(0))

    mask = local_mask(scores, 0.3)

    assert int((~mask).sum()) == round(0.3 * 64 * 33)
    assert scores[~mask].max() <= scores[mask].min()


def test_first_and_last_layers_are_skipped_by_default() -> None:
    plan = layer_plan(unstructured(sparsity=0.6), LAYERS)

    assert plan.targets == {LAYERS[1]: 0.6, LAYERS[2]: 0.6}
    assert plan.ranked_together == LAYERS[1:3]


def test_layer_sparsity_overrides_rank_their_layer_alone() -> None:
    config = unstructured(sparsity=0.6, skip_layers=[], layer_sparsity={LAYERS[0]: 0.2})

    plan = layer_plan(config, LAYERS)

    assert plan.ranked_together == LAYERS[1:]
    assert plan.per_layer == {LAYERS[0]: 0.2}


def test_unknown_layer_names_are_refused_with_the_known_ones() -> None:
    with pytest.raises(InputError, match="no prunable layer named") as error:
        layer_plan(unstructured(skip_layers=["conv1"]), LAYERS)

    assert LAYERS[0] in str(error.value)


@pytest.fixture(scope="module")
def pruned(
    cnn_onnx: Path, step_data: StepData, tmp_path_factory: pytest.TempPathFactory
) -> tuple[StepOutput, list[Event]]:
    events: list[Event] = []
    config = unstructured(sparsity=0.8, fine_tune={"epochs": 2, "batch_size": 32})
    ctx = RunContext(
        work_dir=tmp_path_factory.mktemp("unstructured"),
        seed=1,
        on_progress=lambda p, m, d: events.append((p, m, d)),
    )
    return get_step("prune")(cnn_onnx, config, step_data, ctx), events


def test_global_sparsity_is_exact_and_kept_in_the_exported_onnx(
    pruned: tuple[StepOutput, list[Event]],
) -> None:
    output, _ = pruned
    weights = onnx_weights(output.model_path)

    conv2, fc1 = weights[(32, 16, 3, 3)], weights[(128, 2048)]
    zeros = conv2.size - np.count_nonzero(conv2) + fc1.size - np.count_nonzero(fc1)
    # pruned weights stayed exactly zero through 2 epochs of fine-tuning
    assert zeros == round(0.8 * (conv2.size + fc1.size))
    assert np.count_nonzero(weights[(16, 1, 3, 3)]) == 16 * 9  # skipped: first layer
    assert np.count_nonzero(weights[(10, 128)]) == 10 * 128  # skipped: last layer


def test_pruned_cnn_runs_and_keeps_its_accuracy_after_fine_tuning(
    cnn_onnx: Path,
    pruned: tuple[StepOutput, list[Event]],
    step_data: StepData,
    fast_measure: MeasureSettings,
) -> None:
    def accuracy(path: Path) -> float:
        metrics, _ = measure_model_with_outputs(
            path, step_data.eval_arrays, step_data.task, 1, fast_measure, "cpu"
        )
        return metrics.metric_value

    assert accuracy(pruned[0].model_path) >= accuracy(cnn_onnx) - 0.02


def test_report_has_layers_sparsity_parameters_zip_size_history_and_note(
    pruned: tuple[StepOutput, list[Event]],
) -> None:
    output, events = pruned
    details = output.details

    assert details["kind"] == "unstructured" and details["scope"] == "global"
    assert [row["layer"] for row in details["layers"]] == LAYERS
    assert [row["target_sparsity"] for row in details["layers"]] == [None, 0.8, 0.8, None]
    assert details["pruned_layers_sparsity"] == pytest.approx(0.8, abs=1e-5)
    assert 0.7 < details["overall_sparsity"] < 0.8
    parameters = details["parameters"]
    assert parameters["total"] == details["parameters_original"]["total"]
    assert parameters["nonzero"] < 0.3 * parameters["total"]
    assert details["zip_size_bytes"]["after"] < 0.5 * details["zip_size_bytes"]["before"]
    assert UNSTRUCTURED_NOTE in details["notes"]
    assert [set(e) for e in details["epochs"]] == [{"epoch", "train_loss", "eval_metric"}] * 2
    epoch_events = [m for _, m, _ in events if "epoch" in m]
    assert epoch_events == ["prune fine-tune epoch 1/2", "prune fine-tune epoch 2/2"]


def test_local_scope_prunes_each_layer_to_its_ratio_without_fine_tuning(
    cnn_onnx: Path, step_data: StepData, tmp_path: Path
) -> None:
    config = unstructured(
        sparsity=0.5, scope="local", layer_sparsity={LAYERS[3]: 0.25}, fine_tune={"epochs": 0}
    )

    output = get_step("prune")(cnn_onnx, config, step_data, RunContext(work_dir=tmp_path))

    sparsities = {row["layer"]: row["sparsity"] for row in output.details["layers"]}
    assert sparsities == {
        LAYERS[0]: 0.0,
        LAYERS[1]: pytest.approx(0.5),
        LAYERS[2]: pytest.approx(0.5),
        LAYERS[3]: pytest.approx(0.25),
    }
    assert output.details["epochs"] == []


def test_prune_then_quantize_runs_as_one_pipeline_job(
    cnn_onnx: Path,
    digits_test_npz: Path,
    digits_train_npz: Path,
    tmp_path: Path,
    fast_measure: MeasureSettings,
) -> None:
    spec = JobSpec.model_validate(
        {
            "model_id": "m1",
            "eval_dataset_id": "eval",
            "train_dataset_id": "train",
            "steps": [
                {"method": "prune", "sparsity": 0.7, "fine_tune": {"epochs": 1}},
                {"method": "quantize", "mode": "dynamic"},
            ],
            # speed is the benchmark's to judge: timing noise must not decide this test
            "targets": {"max_metric_drop": 0.03, "allow_slower": True},
            "device": "cpu",
        }
    )
    ctx = RunContext(work_dir=tmp_path / "work", measure=fast_measure)

    result, final_path = run(
        cnn_onnx, {"eval": digits_test_npz, "train": digits_train_npz}, spec, ctx
    )

    assert [step.method for step in result.steps] == ["prune", "quantize"]
    assert result.steps[0].details["kind"] == "unstructured"
    assert result.verdict.targets_met
    assert final_path.exists()


def test_sensitivity_derived_ratios_become_the_layer_sparsities(
    cnn_onnx: Path, step_data: StepData, tmp_path: Path
) -> None:
    config = unstructured(
        sparsity=0.5,
        fine_tune={"epochs": 0},
        sensitivity={
            "sparsities": [0.3, 0.6, 0.99],
            "derive_layer_ratios": True,
            "max_metric_drop": 0.05,
        },
    )

    output = get_step("prune")(cnn_onnx, config, step_data, RunContext(work_dir=tmp_path))

    sensitivity = output.details["sensitivity"]
    assert set(sensitivity["curves"]) == set(LAYERS[1:3])  # first and last skipped
    derived = sensitivity["layer_sparsity"]
    targets = {row["layer"]: row["target_sparsity"] for row in output.details["layers"]}
    assert {name: targets[name] for name in derived} == derived
    assert all(ratio < 0.99 for ratio in derived.values())  # 99% costs more than 5 points
