"""Static calibration within bounded memory: a calibration batch's activations fit a
budget (the calibrator keeps every calibrated tensor of a batch alive at once), so a deep
CNN on large images is calibrated in small batches instead of exhausting memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from core.context import RunContext
from core.formats import inspect_model
from core.quantize import int8
from core.quantize.common import StreamingCalibrationReader
from core.registry import StepData, get_step
from core.spec import QUANTIZE_STEP_ADAPTER, TaskSpec

LAYERS, CHANNELS, SIDE = 6, 8, 32


def deep_cnn(path: Path) -> Path:
    rng = np.random.default_rng(0)
    nodes, inits, previous, channels = [], [], "input", 3
    for index in range(LAYERS):
        weight = rng.normal(0, 0.2, (CHANNELS, channels, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{index}"))
        nodes.append(helper.make_node("Conv", [previous, f"w{index}"], [f"c{index}"], pads=[1] * 4))
        nodes.append(helper.make_node("Relu", [f"c{index}"], [f"r{index}"]))
        previous, channels = f"r{index}", CHANNELS
    nodes.append(helper.make_node("GlobalAveragePool", [previous], ["output"]))
    graph = helper.make_graph(
        nodes,
        "deep",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", CHANNELS, 1, 1])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture
def cnn_and_data(tmp_path: Path) -> tuple[Path, StepData]:
    model = deep_cnn(tmp_path / "deep.onnx")
    images = np.random.default_rng(1).random((40, 3, SIDE, SIDE), dtype=np.float32)
    data = StepData({"input": images}, {"input": images}, inspect_model(model).inputs, TaskSpec())
    return model, data


def test_one_samples_activations_are_counted_from_the_data_shapes(
    cnn_and_data: tuple[Path, StepData],
) -> None:
    model, data = cnn_and_data
    per_tensor = CHANNELS * SIDE * SIDE * 4
    expected = 3 * SIDE * SIDE * 4 + 2 * LAYERS * per_tensor + CHANNELS * 4
    assert int8.activation_bytes_per_sample(model, data) == expected


def test_the_batch_is_cut_to_the_budget_and_to_the_samples() -> None:
    assert int8.calibration_batch_size(32, 256, 268_000_000, 1024**3) == 4
    assert int8.calibration_batch_size(32, 256, 2 * 1024**3, 1024**3) == 1
    assert int8.calibration_batch_size(32, 8, 1000, 1024**3) == 8  # never padded to 32
    assert int8.calibration_batch_size(32, 256, None, 1024**3) == 32


def test_static_calibration_feeds_no_batch_over_the_memory_budget(
    cnn_and_data: tuple[Path, StepData], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = cnn_and_data
    per_sample = int8.activation_bytes_per_sample(model, data)
    assert per_sample is not None
    budget = 3 * per_sample + per_sample // 2
    monkeypatch.setattr(int8, "CALIBRATION_MEMORY_BYTES", budget)
    served: list[int] = []

    class Recording(StreamingCalibrationReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = super().get_next()
            if batch is not None:
                served.append(len(batch["input"]))
            return batch

    monkeypatch.setattr(int8, "StreamingCalibrationReader", Recording)
    step = QUANTIZE_STEP_ADAPTER.validate_python(
        {"method": "quantize", "mode": "static", "calibration_batch_size": 32}
    )
    output = get_step("quantize")(model, step, data, RunContext(work_dir=tmp_path / "work"))

    details: dict[str, Any] = output.details
    assert details["calibration_batch_size"] == 3
    assert served and max(served) * details["calibration_activation_bytes_per_sample"] <= budget
    assert sum(served) >= 40  # every sample was still seen
