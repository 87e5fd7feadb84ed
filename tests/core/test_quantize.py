"""The quantize step: smaller models that still run and still score, measured, per mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from core.context import MeasureSettings, RunContext
from core.data import load_arrays
from core.errors import EngineError, JobCancelled, StepFailed
from core.formats import inspect_model, model_opset
from core.measure import measure_model_with_outputs
from core.quantize.common import StreamingCalibrationReader, gemm_to_matmul, validate_runs
from core.registry import StepData, StepOutput, get_step
from core.spec import QUANTIZE_STEP_ADAPTER, StaticQuantize, TaskSpec

TASK = TaskSpec()


@pytest.fixture(scope="module")
def step_data(cnn_onnx: Path, digits_test_npz: Path, digits_train_npz: Path) -> StepData:
    return StepData(
        eval_arrays=load_arrays(digits_test_npz),
        calibration_arrays=load_arrays(digits_train_npz),
        inputs=inspect_model(cnn_onnx).inputs,
        task=TASK,
    )


def run_quantize(model: Path, work_dir: Path, data: StepData, **config: object) -> StepOutput:
    step = QUANTIZE_STEP_ADAPTER.validate_python({"method": "quantize", **config})
    return get_step("quantize")(model, step, data, RunContext(work_dir=work_dir))


def accuracy(path: Path, data: StepData, settings: MeasureSettings) -> float:
    metrics, _ = measure_model_with_outputs(path, data.eval_arrays, TASK, 1, settings, "cpu")
    return metrics.metric_value


def op_counts(path: Path) -> dict[str, int]:
    return inspect_model(path).op_types


def test_static_int8_is_much_smaller_and_as_accurate(
    cnn_onnx: Path, step_data: StepData, tmp_path: Path, fast_measure: MeasureSettings
) -> None:
    output = run_quantize(cnn_onnx, tmp_path, step_data, mode="static")

    assert output.model_path.parent == tmp_path
    assert cnn_onnx.stat().st_size / output.model_path.stat().st_size >= 3.0
    assert op_counts(output.model_path).get("QuantizeLinear", 0) > 0
    assert (
        abs(
            accuracy(output.model_path, step_data, fast_measure)
            - accuracy(cnn_onnx, step_data, fast_measure)
        )
        <= 0.02
    )
    assert output.details["format"] == "QDQ"
    assert output.details["opset_upgraded_from"] is None
    assert output.details["calibration_samples"] == 256


def test_static_per_channel_upgrades_an_old_opset_first(
    cnn_onnx_opset11: Path, step_data: StepData, tmp_path: Path, fast_measure: MeasureSettings
) -> None:
    output = run_quantize(cnn_onnx_opset11, tmp_path, step_data, mode="static", per_channel=True)

    assert output.details["opset_upgraded_from"] == 11
    model = onnx.load(output.model_path)
    assert model_opset(model) >= 13
    weight_dequantizers = [
        node
        for node in model.graph.node
        if node.op_type == "DequantizeLinear" and any(a.name == "axis" for a in node.attribute)
    ]
    assert weight_dequantizers  # per-channel scales, which need opset 13
    assert accuracy(output.model_path, step_data, fast_measure) >= 0.93


def test_dynamic_int8_leaves_conv_out_and_quantizes_linear_layers(
    cnn_onnx: Path, step_data: StepData, tmp_path: Path, fast_measure: MeasureSettings
) -> None:
    output = run_quantize(cnn_onnx, tmp_path, step_data, mode="dynamic")

    ops = op_counts(output.model_path)
    assert ops.get("MatMulInteger", 0) == 2  # both Linear layers (exported as Gemm)
    assert "ConvInteger" not in ops
    assert ops["Conv"] == 2
    assert "Conv" not in output.details["op_types"]
    assert "ConvInteger is slow" in output.details["op_types_note"]
    assert cnn_onnx.stat().st_size / output.model_path.stat().st_size >= 3.0
    assert (
        abs(
            accuracy(output.model_path, step_data, fast_measure)
            - accuracy(cnn_onnx, step_data, fast_measure)
        )
        <= 0.02
    )


def test_dynamic_with_only_ops_the_model_lacks_changes_nothing_and_says_so(
    cnn_onnx: Path, step_data: StepData, tmp_path: Path
) -> None:
    output = run_quantize(cnn_onnx, tmp_path, step_data, mode="dynamic", op_types=["LSTM"])
    assert output.details["quantized_node_counts"] == {}
    assert "no node was quantized" in output.details["warning"]


def test_fp16_halves_the_file_and_keeps_float32_io(
    cnn_onnx: Path, step_data: StepData, tmp_path: Path, fast_measure: MeasureSettings
) -> None:
    output = run_quantize(cnn_onnx, tmp_path, step_data, mode="fp16")

    info = inspect_model(output.model_path)
    assert [t.dtype for t in info.inputs] == ["float32"]
    assert [t.dtype for t in info.outputs] == ["float32"]
    ratio = cnn_onnx.stat().st_size / output.model_path.stat().st_size
    assert 1.8 <= ratio <= 2.1
    weights = onnx.load(output.model_path).graph.initializer
    assert {w.data_type for w in weights if len(w.dims) > 1} == {TensorProto.FLOAT16}
    assert (
        abs(
            accuracy(output.model_path, step_data, fast_measure)
            - accuracy(cnn_onnx, step_data, fast_measure)
        )
        <= 0.01
    )


def test_calibration_streams_a_capped_seeded_sample(cnn_onnx: Path, step_data: StepData) -> None:
    rows = np.arange(0, 100, 2)  # 50 chosen rows
    reader = StreamingCalibrationReader(
        step_data.calibration_arrays, step_data.inputs, TASK, rows, 16, lambda: None
    )
    batches = []
    while (batch := reader.get_next()) is not None:
        batches.append(batch)

    assert [b["input"].shape[0] for b in batches] == [16, 16, 16, 16]  # last one padded
    assert reader.samples_served == 50
    images = step_data.calibration_arrays["input"]
    np.testing.assert_array_equal(batches[0]["input"], images[rows[:16]])
    reader.rewind()
    assert reader.get_next() is not None


def test_cancelling_during_calibration_stops_the_step(
    cnn_onnx: Path, step_data: StepData, tmp_path: Path
) -> None:
    calls = {"n": 0}

    def cancelled_after_two_checks() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    step = StaticQuantize(method="quantize", mode="static")
    ctx = RunContext(work_dir=tmp_path, is_cancelled=cancelled_after_two_checks)
    with pytest.raises(JobCancelled):
        get_step("quantize")(cnn_onnx, step, step_data, ctx)


def test_validation_refuses_a_model_that_does_not_run(step_data: StepData, tmp_path: Path) -> None:
    # declares a float input, but reshapes 64 values into 65: fails at run time
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 65])
    shape = numpy_helper.from_array(np.array([-1, 65], np.int64), "shape")
    node = helper.make_node("Reshape", ["input", "shape"], ["logits"])
    graph = helper.make_graph([node], "bad", [x], [y], initializer=[shape])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)

    with pytest.raises(StepFailed, match="does not run in ONNX Runtime"):
        validate_runs(path, step_data, "cpu", what="the model")


def test_gemm_rewrite_computes_the_same_function() -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(5, 3)).astype(np.float32)  # transB: (out, in)
    bias = rng.normal(size=(5,)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])
    gemm = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.5, beta=2.0)
    graph = helper.make_graph(
        [gemm],
        "g",
        [x],
        [y],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    rewritten, count = gemm_to_matmul(model)

    assert count == 1
    assert [n.op_type for n in rewritten.graph.node] == ["MatMul", "Add"]
    onnx.checker.check_model(rewritten)
    inputs = {"x": rng.normal(size=(4, 3)).astype(np.float32)}
    before = ort.InferenceSession(model.SerializeToString()).run(None, inputs)[0]
    after = ort.InferenceSession(rewritten.SerializeToString()).run(None, inputs)[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(before, 0.5 * inputs["x"] @ weight.T + 2.0 * bias, rtol=1e-5)


def test_the_registry_finds_quantize_and_prune_and_names_unknown_methods() -> None:
    assert get_step("quantize").__name__ == "quantize"
    assert callable(get_step("prune"))
    with pytest.raises(EngineError, match="no step is registered for method 'teleport'") as raised:
        get_step("teleport")
    assert raised.value.code == "unknown_method"
