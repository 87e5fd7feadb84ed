"""Sensitivity analysis: each layer pruned alone over a sweep, on copies; per-layer ratios
derived from the curves (Distiller's rule)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.formats import inspect_model
from core.prune.sensitivity import (
    derive_layer_ratios,
    magnitude_mask_action,
    run_sensitivity,
    sensitivity_curves,
    structured_action,
    torch_evaluator,
)
from core.prune.structured import prunable_layers
from core.registry import StepData
from core.spec import PruneSensitivity, TaskSpec
from core.torch_bridge import onnx_to_torch
from service.examples import digits_arrays

X_TEST, Y_TEST = digits_arrays("test")


@pytest.fixture()
def cnn_module(cnn_onnx: Path, tmp_path: Path) -> torch.nn.Module:
    return onnx_to_torch(cnn_onnx, tmp_path / "torch")


@pytest.fixture()
def data(cnn_onnx: Path) -> StepData:
    return StepData(
        eval_arrays={"input": X_TEST, "label": Y_TEST},
        calibration_arrays={"input": X_TEST},
        inputs=inspect_model(cnn_onnx).inputs,
        task=TaskSpec(),
    )


def test_the_largest_sparsity_within_the_drop_is_chosen_per_layer() -> None:
    curves = {
        "robust": [(0.25, 0.95), (0.5, 0.95), (0.75, 0.945)],
        "fragile": [(0.25, 0.90), (0.5, 0.80), (0.75, 0.95)],  # no skipping past a drop
        "broken": [(0.25, 0.5)],
    }
    assert derive_layer_ratios(curves, baseline=0.95, max_metric_drop=0.01) == {
        "robust": 0.75,
        "fragile": 0.0,
        "broken": 0.0,
    }


def test_magnitude_masks_zero_the_smallest_weights(cnn_module: torch.nn.Module) -> None:
    name = next(iter(prunable_layers(cnn_module)))
    weight = cnn_module.get_submodule(name).weight
    largest = weight.detach().abs().max()

    magnitude_mask_action(cnn_module, name, 0.5)

    assert float((weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    assert weight.detach().abs().max() == largest


def test_curves_prune_copies_and_leave_the_model_untouched(
    cnn_module: torch.nn.Module, data: StepData
) -> None:
    layers = list(prunable_layers(cnn_module))[:-1]
    before = {k: v.clone() for k, v in cnn_module.state_dict().items()}
    action = structured_action({"input": torch.from_numpy(X_TEST[:2])})

    curves = sensitivity_curves(cnn_module, layers, [0.9, 0.25], action, torch_evaluator(data))

    assert list(curves) == layers
    for points in curves.values():
        assert [s for s, _ in points] == [0.25, 0.9]
        assert points[0][1] >= points[1][1] - 0.02  # more pruning, not better
    after = cnn_module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_run_sensitivity_reports_curves_and_derived_ratios(
    cnn_module: torch.nn.Module, data: StepData
) -> None:
    layers = list(prunable_layers(cnn_module))[:-1]
    config = PruneSensitivity(
        sparsities=[0.1, 0.95], derive_layer_ratios=True, max_metric_drop=0.05
    )

    details = run_sensitivity(
        cnn_module, config, layers, magnitude_mask_action, torch_evaluator(data, rows=200)
    )

    assert details["baseline_metric"] > 0.9
    assert set(details["curves"]) == set(details["layer_sparsity"]) == set(layers)
    assert all(ratio in (0.0, 0.1, 0.95) for ratio in details["layer_sparsity"].values())
    # the first Linear holds most weights but 10% of them pruned by magnitude is harmless
    assert details["layer_sparsity"][layers[2]] >= 0.1
