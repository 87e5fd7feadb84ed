"""Every quantization option is selectable and shows in the graph it writes.

Static INT8 (format, calibration method, activation type, symmetry, exclusions), dynamic
INT8 exclusions, FP16's keep list, INT4 weight-only blocks, and the size report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, calibrate, quantize_static
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

from core.context import RunContext
from core.data import load_arrays
from core.errors import UnsupportedModel
from core.formats import inspect_model
from core.quantize import common
from core.quantize.common import compact_zero_points, size_report
from core.registry import StepData, StepOutput, get_step
from core.spec import QUANTIZE_STEP_ADAPTER, TaskSpec
from service.examples import TransformerEncoderClassifier, export_onnx
from tests.core import zoo

TASK = TaskSpec()
FIRST_CONV = "/features/features.0/Conv"
FIRST_GEMM = "/classifier/classifier.1/Gemm"


@pytest.fixture(scope="module")
def step_data(cnn_onnx: Path, digits_test_npz: Path, digits_train_npz: Path) -> StepData:
    return StepData(
        eval_arrays=load_arrays(digits_test_npz),
        calibration_arrays=load_arrays(digits_train_npz),
        inputs=inspect_model(cnn_onnx).inputs,
        task=TASK,
    )


@pytest.fixture(scope="module")
def mlp_data(mlp_onnx: Path, flat_npz: Path) -> StepData:
    arrays = load_arrays(flat_npz)
    return StepData(
        eval_arrays=arrays,
        calibration_arrays=arrays,
        inputs=inspect_model(mlp_onnx).inputs,
        task=TaskSpec(kind="embedding"),
    )


Quantize = Callable[..., StepOutput]


@pytest.fixture
def quantize(cnn_onnx: Path, step_data: StepData, tmp_path: Path) -> Quantize:
    """Quantize the digits CNN (or `model` with `data`) with a spec's fields."""

    def run(model: Path = cnn_onnx, data: StepData = step_data, **config: Any) -> StepOutput:
        spec = {"method": "quantize", **config}
        if config.get("mode") == "static":
            spec.setdefault("calibration_samples", 128)
        step = QUANTIZE_STEP_ADAPTER.validate_python(spec)
        work_dir = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        return get_step("quantize")(model, step, data, RunContext(work_dir=work_dir))

    return run


def op_counts(path: Path) -> dict[str, int]:
    return inspect_model(path).op_types


def accuracy(path: Path, data: StepData) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores = session.run(None, {"input": data.eval_arrays["input"]})[0]
    return float(np.mean(scores.argmax(axis=1) == data.eval_arrays["label"]))


def initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def activation_zero_points(path: Path) -> list[np.ndarray]:
    """Zero points of the QuantizeLinear nodes: those quantize activations (weights are
    stored quantized and only dequantized)."""
    model = onnx.load(str(path))
    values = initializers(path)
    return [
        values[node.input[2]]
        for node in model.graph.node
        if node.op_type == "QuantizeLinear" and len(node.input) > 2
    ]


def weight_zero_points(path: Path) -> list[np.ndarray]:
    """Zero points of the DequantizeLinear nodes that read a stored int8 weight."""
    model = onnx.load(str(path))
    values = initializers(path)
    return [
        values[node.input[2]]
        for node in model.graph.node
        if node.op_type == "DequantizeLinear"
        and node.input[0] in values
        and values[node.input[0]].dtype == np.int8
        and len(node.input) > 2
    ]


def activation_scales(path: Path) -> dict[str, float]:
    model = onnx.load(str(path))
    values = initializers(path)
    return {
        node.input[0]: float(values[node.input[1]])
        for node in model.graph.node
        if node.op_type == "QuantizeLinear"
    }


# --- static INT8 ---------------------------------------------------------------------


def test_static_qdq_format_inserts_quantize_dequantize_pairs(quantize: Quantize) -> None:
    output = quantize(mode="static", format="qdq")

    ops = op_counts(output.model_path)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert "QLinearConv" not in ops
    assert output.details["format"] == "QDQ"


def test_static_qoperator_format_writes_quantized_operators(
    quantize: Quantize, cnn_onnx: Path, step_data: StepData
) -> None:
    output = quantize(mode="static", format="qoperator")

    ops = op_counts(output.model_path)
    assert ops["QLinearConv"] == 2
    assert ops["QGemm"] == 2  # the Linear layers, as com.microsoft QGemm
    assert ops.get("DequantizeLinear", 0) <= 1  # only the logits leave int8
    assert output.details["format"] == "QOperator"
    assert abs(accuracy(output.model_path, step_data) - accuracy(cnn_onnx, step_data)) <= 0.02


def test_int8_activations_get_int8_zero_points(quantize: Quantize) -> None:
    signed = quantize(mode="static", activation_type="int8")
    unsigned = quantize(mode="static", activation_type="uint8")

    assert {zp.dtype for zp in activation_zero_points(signed.model_path)} == {np.dtype(np.int8)}
    assert {zp.dtype for zp in activation_zero_points(unsigned.model_path)} == {np.dtype(np.uint8)}
    assert signed.details["activation_type"] == "QInt8"
    assert unsigned.details["activation_type"] == "QUInt8"


@pytest.mark.parametrize(("activation_type", "midpoint"), [("int8", 0), ("uint8", 128)])
def test_symmetric_activations_put_every_zero_point_at_the_midpoint(
    quantize: Quantize, activation_type: str, midpoint: int
) -> None:
    output = quantize(mode="static", activation_type=activation_type, activation_symmetric=True)

    zero_points = activation_zero_points(output.model_path)
    assert zero_points
    assert all(int(zp) == midpoint for zp in zero_points)
    assert output.details["activation_symmetric"] is True


def test_asymmetric_activations_use_the_range_after_relu(quantize: Quantize) -> None:
    output = quantize(mode="static", activation_type="uint8", activation_symmetric=False)
    # post-ReLU tensors are >= 0: asymmetric uint8 puts their zero at 0, not 128
    assert 0 in {int(zp) for zp in activation_zero_points(output.model_path)}


def test_weight_symmetry_sets_the_weight_zero_points(quantize: Quantize) -> None:
    symmetric = quantize(mode="static", per_channel=False, weight_symmetric=True)
    asymmetric = quantize(mode="static", per_channel=False, weight_symmetric=False)

    assert all(int(zp) == 0 for zp in weight_zero_points(symmetric.model_path))
    assert any(int(zp) != 0 for zp in weight_zero_points(asymmetric.model_path))
    assert symmetric.details["weight_symmetric"] is True
    assert asymmetric.details["weight_symmetric"] is False


def test_per_channel_qdq_weights_stay_symmetric_and_the_details_say_so(
    quantize: Quantize,
) -> None:
    output = quantize(mode="static", per_channel=True, weight_symmetric=False)

    assert all(np.all(zp == 0) for zp in weight_zero_points(output.model_path))
    assert output.details["weight_symmetric"] is True
    assert "always symmetric" in output.details["weight_symmetric_note"]


@pytest.mark.parametrize("quant_format", [QuantFormat.QDQ, QuantFormat.QOperator])
def test_all_zero_per_channel_zero_points_are_compacted_without_changing_an_output(
    cnn_onnx: Path, step_data: StepData, tmp_path: Path, quant_format: QuantFormat
) -> None:
    images = step_data.calibration_arrays["input"]
    raw = tmp_path / "raw.onnx"
    quantize_static(
        cnn_onnx,
        raw,
        _Batches(images[:64]),
        quant_format=quant_format,
        per_channel=True,
        weight_type=QuantType.QInt8,
    )
    model = onnx.load(str(raw))
    compacted = compact_zero_points(model)
    onnx.save(model, str(tmp_path / "compact.onnx"))

    # per-channel zeros: the QDQ biases' int32 zero points (optional), QLinearConv's
    # weight zero points (one value suffices): one tensor per convolution or linear layer
    assert compacted == (4 if quant_format == QuantFormat.QDQ else 2)
    weights = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in weights:
            bias = weights[node.input[0]].data_type == onnx.TensorProto.INT32
            assert len(node.input) == (2 if bias else 3)
        if node.op_type == "QLinearConv":
            assert list(weights[node.input[5]].dims) == []
    assert (tmp_path / "compact.onnx").stat().st_size < raw.stat().st_size
    inputs = {"input": step_data.eval_arrays["input"]}
    before = ort.InferenceSession(str(raw)).run(None, inputs)[0]
    after = ort.InferenceSession(str(tmp_path / "compact.onnx")).run(None, inputs)[0]
    assert np.array_equal(before, after)


def test_the_static_mode_compacts_its_zero_points(quantize: Quantize) -> None:
    assert quantize(mode="static", per_channel=True).details["zero_points_compacted"] == 4


class _Batches(calibrate.CalibrationDataReader):
    def __init__(self, images: np.ndarray) -> None:
        self._batches = iter([{"input": images[i : i + 32]} for i in range(0, len(images), 32)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_keeps_the_accuracy(
    quantize: Quantize, method: str, cnn_onnx: Path, step_data: StepData
) -> None:
    output = quantize(mode="static", calibration_method=method)

    assert output.details["calibration_method"] == method
    assert op_counts(output.model_path)["QuantizeLinear"] > 0
    assert abs(accuracy(output.model_path, step_data) - accuracy(cnn_onnx, step_data)) <= 0.03


def test_a_lower_percentile_clips_activation_ranges(quantize: Quantize) -> None:
    clipped = quantize(mode="static", calibration_method="percentile", calibration_percentile=99.0)
    full = quantize(mode="static", calibration_method="percentile", calibration_percentile=100.0)

    clipped_scales = activation_scales(clipped.model_path)
    full_scales = activation_scales(full.model_path)
    assert clipped_scales.keys() == full_scales.keys()
    assert all(clipped_scales[name] <= full_scales[name] * 1.0001 for name in full_scales)
    assert any(clipped_scales[name] < full_scales[name] * 0.99 for name in full_scales)
    assert clipped.details["calibration_percentile"] == 99.0


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_calibration_feeds_one_batch_per_pass_so_memory_stays_bounded(
    quantize: Quantize, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calibrators merge each batch into ranges or histograms before the next one
    arrives: no pass holds more than one batch of activations."""
    outputs_per_pass: list[int] = []

    def counting(original: Callable[..., Any]) -> Callable[..., Any]:
        def collect_data(self: Any, data_reader: Any) -> Any:
            batches = 0
            real_get_next = data_reader.get_next

            def get_next() -> Any:
                nonlocal batches
                batch = real_get_next()
                batches += batch is not None
                return batch

            data_reader.get_next = get_next
            try:
                return original(self, data_reader)
            finally:
                del data_reader.get_next
                outputs_per_pass.append(batches)

        return collect_data

    for calibrator in (calibrate.MinMaxCalibrater, calibrate.HistogramCalibrater):
        monkeypatch.setattr(calibrator, "collect_data", counting(calibrator.collect_data))

    output = quantize(
        mode="static", calibration_method=method, calibration_samples=64, calibration_batch_size=16
    )

    assert outputs_per_pass == [1, 1, 1, 1]
    assert output.details["calibration_batches"] == 4
    assert output.details["calibration_samples"] == 64


def test_static_nodes_to_exclude_stay_float(quantize: Quantize) -> None:
    output = quantize(mode="static", format="qoperator", nodes_to_exclude=[FIRST_CONV])

    ops = op_counts(output.model_path)
    assert ops["Conv"] == 1 and ops["QLinearConv"] == 1
    assert output.details["nodes_to_exclude"] == [FIRST_CONV]
    assert output.details["nodes_to_exclude_not_found"] == []


def test_node_names_the_model_lacks_are_reported(quantize: Quantize) -> None:
    output = quantize(mode="static", nodes_to_exclude=[FIRST_CONV, "no_such_node"])
    assert output.details["nodes_to_exclude_not_found"] == ["no_such_node"]


def test_static_op_types_limit_what_is_quantized(quantize: Quantize) -> None:
    output = quantize(mode="static", format="qoperator", op_types=["Conv"])

    ops = op_counts(output.model_path)
    assert ops["QLinearConv"] == 2
    assert ops["Gemm"] == 2 and "QGemm" not in ops
    assert output.details["op_types"] == ["Conv"]


def test_static_records_every_choice(quantize: Quantize) -> None:
    output = quantize(
        mode="static",
        format="qoperator",
        calibration_method="percentile",
        calibration_percentile=99.9,
        activation_type="int8",
        activation_symmetric=True,
        weight_symmetric=True,
        per_channel=False,
        reduce_range=True,
    )

    expected = {
        "format": "QOperator",
        "calibration_method": "percentile",
        "calibration_percentile": 99.9,
        "activation_type": "QInt8",
        "activation_symmetric": True,
        "weight_type": "QInt8",
        "weight_symmetric": True,
        "per_channel": False,
        "reduce_range": True,
    }
    assert {key: output.details[key] for key in expected} == expected


# --- dynamic INT8 --------------------------------------------------------------------


def test_dynamic_nodes_to_exclude_keep_a_linear_layer_float(
    quantize: Quantize, cnn_onnx: Path
) -> None:
    output = quantize(mode="dynamic", nodes_to_exclude=[FIRST_GEMM])

    assert op_counts(output.model_path)["MatMulInteger"] == 1  # the other Linear
    float_weights = [w for w in initializers(output.model_path).values() if w.shape == (2048, 128)]
    assert [w.dtype for w in float_weights] == [np.dtype(np.float32)]
    assert output.details["nodes_to_exclude"] == [FIRST_GEMM]
    assert output.details["nodes_to_exclude_not_found"] == []


@pytest.fixture(scope="module")
def encoder_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Transformer encoder: nn.MultiheadAttention exports with shape arithmetic."""
    torch.manual_seed(0)
    example = np.zeros((1, 8, 8), np.float32)
    folder = tmp_path_factory.mktemp("encoder")
    return export_onnx(TransformerEncoderClassifier().eval(), example, folder / "encoder.onnx")


def test_dynamic_mode_folds_the_shape_arithmetic_that_does_not_depend_on_the_batch(
    quantize: Quantize, encoder_onnx: Path
) -> None:
    rows = np.random.default_rng(0).random((64, 8, 8), dtype=np.float32)
    data = StepData({"input": rows}, {"input": rows}, inspect_model(encoder_onnx).inputs, TASK)

    output = quantize(model=encoder_onnx, data=data, mode="dynamic")

    folding = output.details["shape_folding"]
    assert folding["folded"] > 20 and folding["nodes_removed"] > folding["folded"]
    shapes_before = op_counts(encoder_onnx)["Shape"]
    assert 0 < op_counts(output.model_path).get("Shape", 0) < shapes_before  # batch's kept
    float_model = ort.InferenceSession(str(encoder_onnx))
    int8_model = ort.InferenceSession(str(output.model_path))
    for batch in (1, 5, 64):  # any batch size still runs, and agrees
        before = float_model.run(None, {"input": rows[:batch]})[0]
        after = int8_model.run(None, {"input": rows[:batch]})[0]
        assert after.shape == before.shape
        assert np.mean(before.argmax(axis=1) == after.argmax(axis=1)) >= 0.8


def test_a_fold_that_changes_an_output_is_not_kept(
    encoder_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = onnx.load(str(encoder_onnx))
    real = common._static_shape_values

    def wrong(model: onnx.ModelProto, work_dir: Path) -> dict[str, np.ndarray]:
        # claim the batch-dependent values are constants: right at batch 1 only
        values = real(model, work_dir)
        return {**values, **_batch_one_shapes(model)}

    monkeypatch.setattr(common, "_static_shape_values", wrong)
    rows = np.random.default_rng(0).random((3, 8, 8), dtype=np.float32)
    folded, report = common.fold_shape_computations(model, tmp_path, {"input": rows})

    assert folded is model
    assert report["folded"] == 0 and "computes otherwise" in report["skipped"]


def _batch_one_shapes(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every Shape node's output as it is at batch 1 (from a run with them as outputs)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    shapes = [node.output[0] for node in probe.graph.node if node.op_type == "Shape"]
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in shapes)
    session = ort.InferenceSession(probe.SerializeToString())
    values = session.run(shapes, {"input": np.zeros((1, 8, 8), np.float32)})
    return dict(zip(shapes, values, strict=True))


def test_dynamic_per_tensor_weights_have_one_scale(quantize: Quantize) -> None:
    per_tensor = quantize(mode="dynamic", per_channel=False)
    per_channel = quantize(mode="dynamic", per_channel=True)

    def largest_scale_size(path: Path) -> int:
        return max(v.size for name, v in initializers(path).items() if name.endswith("_scale"))

    assert largest_scale_size(per_tensor.model_path) == 1
    assert largest_scale_size(per_channel.model_path) == 128  # one per output feature
    assert per_tensor.details["per_channel"] is False


# --- FP16 ------------------------------------------------------------------------------


def test_fp16_keep_list_keeps_those_ops_in_float32(
    quantize: Quantize, cnn_onnx: Path, step_data: StepData
) -> None:
    output = quantize(mode="fp16", keep_fp32_op_types=["Gemm"])

    model = onnx.load(str(output.model_path))
    weights = {t.name: t.data_type for t in model.graph.initializer}
    gemm_weights = {n.input[1] for n in model.graph.node if n.op_type == "Gemm"}
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    assert len(gemm_weights) == 2 and len(conv_weights) == 2
    assert {weights[name] for name in gemm_weights} == {onnx.TensorProto.FLOAT}
    assert {weights[name] for name in conv_weights} == {onnx.TensorProto.FLOAT16}
    assert output.details["op_block_list"] == [*DEFAULT_OP_BLOCK_LIST, "Gemm"]
    info = inspect_model(output.model_path)
    assert [t.dtype for t in info.inputs + info.outputs] == ["float32", "float32"]
    assert abs(accuracy(output.model_path, step_data) - accuracy(cnn_onnx, step_data)) <= 0.01


# --- INT4 ------------------------------------------------------------------------------


def test_int4_stores_mlp_weights_as_4_bit_blocks(
    quantize: Quantize, mlp_onnx: Path, mlp_data: StepData
) -> None:
    output = quantize(model=mlp_onnx, data=mlp_data, mode="int4")

    onnx.checker.check_model(str(output.model_path))  # the contrib op passes the checker
    assert op_counts(output.model_path)["MatMulNBits"] == 3
    assert output.details["gemm_rewritten_to_matmul"] == 3
    assert output.details["matmuls_quantized"] == 3
    # the two 256-wide biases are INT8 (the 32-wide one is too small to gain)
    assert output.details["quantized_node_counts"] == {"DequantizeLinear": 2, "MatMulNBits": 3}
    assert mlp_onnx.stat().st_size / output.model_path.stat().st_size >= 3.0
    assert output.details["size_ratio"] >= 3.0

    inputs = {"input": mlp_data.eval_arrays["input"]}
    before = ort.InferenceSession(str(mlp_onnx)).run(None, inputs)[0]
    after = ort.InferenceSession(str(output.model_path)).run(None, inputs)[0]
    cosine = np.sum(before * after, axis=1) / (
        np.linalg.norm(before, axis=1) * np.linalg.norm(after, axis=1)
    )
    assert float(np.mean(cosine)) >= 0.98


def test_int4_block_size_and_symmetry_reach_the_nodes(
    quantize: Quantize, mlp_onnx: Path, mlp_data: StepData
) -> None:
    output = quantize(model=mlp_onnx, data=mlp_data, mode="int4", block_size=64, symmetric=False)

    nodes = [n for n in onnx.load(str(output.model_path)).graph.node if n.op_type == "MatMulNBits"]
    attributes = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    assert {(a["bits"], a["block_size"]) for a in attributes} == {(4, 64)}
    assert all(len(n.input) == 4 for n in nodes)  # asymmetric blocks carry zero points
    assert output.details["block_size"] == 64 and output.details["symmetric"] is False


def test_int4_stores_the_float_weights_no_4_bit_kernel_holds_as_int8(
    quantize: Quantize, mlp_onnx: Path, mlp_data: StepData
) -> None:
    int8_rest = quantize(model=mlp_onnx, data=mlp_data, mode="int4")
    float_rest = quantize(model=mlp_onnx, data=mlp_data, mode="int4", other_weights="float32")

    weights = initializers(int8_rest.model_path)
    biases = [name for name in weights if name.endswith("bias_int8")]
    assert len(biases) == 2 and all(weights[name].dtype == np.uint8 for name in biases)
    assert int8_rest.details["other_weights_int8"] == {"tensors": 2, "elements": 512}
    assert float_rest.details["other_weights_int8"] == {"tensors": 0, "elements": 0}
    assert "DequantizeLinear" not in op_counts(float_rest.model_path)
    saved = float_rest.details["quantized_size_bytes"] - int8_rest.details["quantized_size_bytes"]
    assert saved >= 512 * 2  # 3 bytes per element, less a node and its scale per tensor

    inputs = {"input": mlp_data.eval_arrays["input"]}
    exact = ort.InferenceSession(str(float_rest.model_path)).run(None, inputs)[0]
    rounded = ort.InferenceSession(str(int8_rest.model_path)).run(None, inputs)[0]
    cosine = np.sum(exact * rounded, axis=1) / (
        np.linalg.norm(exact, axis=1) * np.linalg.norm(rounded, axis=1)
    )
    assert float(np.min(cosine)) >= 0.999


class EmbeddingBag(torch.nn.Module):
    """Token ids (N, 8) -> an embedding table (100 x 48: rows not a multiple of the
    block) -> Linear -> mean over tokens -> 10 scores."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Embedding(100, 48)
        self.head = torch.nn.Linear(48, 10)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.table(ids)).mean(dim=1)


def test_int4_stores_embedding_tables_as_4_bit_blocks(quantize: Quantize, tmp_path: Path) -> None:
    ids = np.random.default_rng(0).integers(0, 100, (64, 8)).astype(np.int64)
    model = export_onnx(EmbeddingBag().eval(), ids[:1], tmp_path / "embedding.onnx", opset=17)
    data = StepData(
        eval_arrays={"input": ids},
        calibration_arrays={"input": ids},
        inputs=inspect_model(model).inputs,
        task=TaskSpec(kind="embedding"),
    )

    output = quantize(model=model, data=data, mode="int4")

    onnx.checker.check_model(str(output.model_path))
    assert op_counts(output.model_path)["GatherBlockQuantized"] == 1
    assert "Gather" not in op_counts(output.model_path)
    assert output.details["embedding_tables"] == 1
    assert output.details["embedding_tables_quantized"] == 1
    assert output.details["opset_upgraded_from"] == 17  # int4 tensors need opset 21
    table_bytes = 100 * 48 * 4
    assert output.details["quantized_size_bytes"] < table_bytes / 4  # 4-bit blocks + scales
    before = ort.InferenceSession(str(model)).run(None, {"input": ids})[0]
    after = ort.InferenceSession(str(output.model_path)).run(None, {"input": ids})[0]
    cosine = np.sum(before * after, axis=1) / (
        np.linalg.norm(before, axis=1) * np.linalg.norm(after, axis=1)
    )
    assert float(np.mean(cosine)) >= 0.99


def test_int4_refuses_a_model_without_matmul(quantize: Quantize, tmp_path: Path) -> None:
    conv_only = zoo.save(zoo.conv_only_model(), tmp_path / "conv_only.onnx")

    with pytest.raises(UnsupportedModel, match="no MatMul or Gemm") as raised:
        quantize(model=conv_only, mode="int4")
    assert raised.value.code == "nothing_to_quantize"


def test_an_int4_model_counts_as_quantized(
    quantize: Quantize, mlp_onnx: Path, mlp_data: StepData
) -> None:
    int4 = quantize(model=mlp_onnx, data=mlp_data, mode="int4")

    with pytest.raises(UnsupportedModel, match="MatMulNBits") as raised:
        quantize(model=int4.model_path, data=mlp_data, mode="dynamic")
    assert raised.value.code == "already_quantized"


# --- size report -----------------------------------------------------------------------


def test_size_report_warns_when_the_file_did_not_shrink(tmp_path: Path) -> None:
    model = zoo.save(zoo.if_model(), tmp_path / "if.onnx")

    report = size_report(model, model)

    assert report["size_ratio"] == 1.0
    assert report["unquantized_subgraph_weights"] == zoo.IF_SUBGRAPH_WEIGHTS
    assert "inside If/Loop/Scan subgraphs were left unquantized" in report["size_warning"]


def test_every_mode_reports_sizes(quantize: Quantize, mlp_onnx: Path, mlp_data: StepData) -> None:
    for config in ({"mode": "dynamic"}, {"mode": "static"}, {"mode": "fp16"}):
        details = quantize(**config).details
        assert details["unquantized_subgraph_weights"] == {"count": 0, "bytes": 0}
        assert details["quantized_size_bytes"] < details["original_size_bytes"]
    int4 = quantize(model=mlp_onnx, data=mlp_data, mode="int4").details
    assert int4["unquantized_subgraph_weights"] == {"count": 0, "bytes": 0}


def test_gemm_biases_stored_as_rows_are_quantized_as_vectors(
    mlp_data: StepData, tmp_path: Path, quantize: Quantize
) -> None:
    """skl2onnx writes intercepts as (1, N) rows; onnxruntime 1.32's per-channel bias
    adjustment fails on them, so static mode stores them as (N,) first."""
    rng = np.random.default_rng(0)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gemm", ["input", "w", "b"], ["embedding"], name="fc")],
        "row_bias",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["n", 64])],
        [onnx.helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["n", 8])],
        [
            numpy_helper.from_array(rng.normal(size=(64, 8)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.normal(size=(1, 8)).astype(np.float32), "b"),
        ],
    )
    path = zoo.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]),
                    tmp_path / "row_bias.onnx")  # fmt: skip

    output = quantize(path, mlp_data, mode="static")

    assert output.details["gemm_biases_reshaped_to_vectors"] == 1
    assert output.details["quantized_node_counts"].get("DequantizeLinear")
