"""Per-node latency from ONNX Runtime's profiler, mapped back to the float graph; and the
auto tuner's latency-aware candidate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from core.context import MeasureSettings
from core.quantize.common import float_biases_for_float_nodes
from core.quantize.node_profile import (
    Owner,
    int8_nodes,
    kernel_owner,
    plan_latency_aware,
    profile_kernels,
)

SETTINGS = MeasureSettings(threads=1, warmup_runs=1, runs=3)
NODES = {"conv1", "relu1", "dw", "pw"}
PRODUCERS = {"c1": "conv1", "r1": "relu1", "d": "dw", "out": "pw"}
TENSORS = {"input", "w1", "c1", "r1", "d", "out"}


@pytest.mark.parametrize(
    ("kernel", "owner"),
    [
        ("conv1", Owner("node", "conv1")),
        # a QDQ group fused into QLinearConv keeps its node's name plus a token
        ("conv1_token_33", Owner("node", "conv1")),
        # a float Conv + Relu fused in the NCHWc layout is named after what it produces
        ("r1_nchwc", Owner("node", "relu1")),
        ("c1_QuantizeLinear", Owner("quantize", "c1")),
        ("w1_DequantizeLinear", Owner("dequantize", "w1")),
        ("r1_DequantizeLinear/duplicated", Owner("dequantize", "r1")),
        ("ReorderOutput", Owner("none", "ReorderOutput")),
    ],
)
def test_ort_kernel_names_map_back_to_the_float_graph(kernel: str, owner: Owner) -> None:
    assert kernel_owner(kernel, NODES, PRODUCERS, TENSORS) == owner


def separable_model(path: Path, channels: int = 16) -> Path:
    """input -> conv 3x3 -> Relu -> depthwise 3x3 -> Relu -> pointwise 1x1 -> output."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.2, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node(
            "Conv", ["r1", "w2", "b2"], ["d"], "dw", pads=[1, 1, 1, 1], group=channels
        ),
        helper.make_node("Relu", ["d"], ["r2"], "relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["output"], "pw"),
    ]
    graph = helper.make_graph(
        nodes,
        "separable",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 32, 16, 16])],
        [
            weight("w1", channels, 8, 3, 3),
            weight("w2", channels, 1, 3, 3),
            weight("w3", 32, channels, 1, 1),
            weight("b1", channels),
            weight("b2", channels),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


class _Reader(CalibrationDataReader):
    def __init__(self) -> None:
        rng = np.random.default_rng(1)
        self._batches = iter(
            [{"input": rng.normal(size=(4, 8, 16, 16)).astype(np.float32)} for _ in range(2)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@pytest.fixture(scope="module")
def float_and_qdq(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("separable")
    fp32 = separable_model(folder / "fp32.onnx")
    qdq = folder / "qdq.onnx"
    qdq_quantize(fp32, qdq)
    return fp32, qdq


def qdq_quantize(fp32: Path, target: Path, nodes: list[str] | None = None) -> None:
    quantize_static(
        str(fp32), str(target), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
    )  # fmt: skip


def feeds(batch: int) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(2).normal(size=(batch, 8, 16, 16)).astype(np.float32)}


def test_the_qdq_quantizer_quantized_the_convs_and_folded_the_relus(
    float_and_qdq: tuple[Path, Path],
) -> None:
    fp32, qdq = (onnx.load(str(p)) for p in float_and_qdq)

    assert int8_nodes(fp32, qdq) == (["conv1", "dw", "pw"], ["relu1", "relu2"])


def test_the_integer_kernels_ort_runs_are_traced_back_to_their_conv_nodes(
    float_and_qdq: tuple[Path, Path], tmp_path: Path
) -> None:
    _, qdq = float_and_qdq

    kernels = profile_kernels(qdq, feeds(1), SETTINGS, tmp_path, runs=3, warmup_runs=1)

    fused = [k for k in kernels.values() if k.op_name == "QLinearConv"]
    assert fused, sorted(f"{k.name}:{k.op_name}" for k in kernels.values())
    owners = {kernel_owner(k.name, {"conv1", "dw", "pw"}, {}, set()).name for k in fused}
    assert owners <= {"conv1", "dw", "pw"}
    assert all(k.median_us > 0 for k in kernels.values())
    assert not list(tmp_path.glob("*.json"))  # the profile file is read, then removed


def test_a_latency_plan_measures_every_unit_both_ways_at_every_batch_size(
    float_and_qdq: tuple[Path, Path], tmp_path: Path
) -> None:
    fp32, qdq = float_and_qdq

    plan = plan_latency_aware(
        fp32, qdq, {1: feeds(1), 8: feeds(8)}, SETTINGS, tmp_path, runs=3, warmup_runs=1
    )

    rows = {row["node"]: row for row in plan.selection.rows}
    assert set(rows) == {"conv1", "dw", "pw"}
    assert rows["conv1"]["nodes"] == ["conv1", "relu1"]  # the Relu goes with its conv
    for row in rows.values():
        assert set(row["fp32_us"]) == set(row["int8_us"]) == {"1", "8"}
        assert all(v > 0 for v in [*row["fp32_us"].values(), *row["int8_us"].values()])
        assert row["decision"] in ("int8", "fp32") and row["why"]
    chosen = set(plan.selection.quantize)
    assert set(plan.selection.nodes_to_quantize) == {
        node for row in rows.values() if row["node"] in chosen for node in row["nodes"]
    }


def test_a_float_conv_reading_its_bias_through_dequantize_linear_gets_a_float_bias(
    tmp_path: Path,
) -> None:
    # what ORT 1.32's QDQ quantizer left on convs kept float in the benchmark's CNN
    rng = np.random.default_rng(3)
    scale = np.full(4, 0.01, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["b_dq"], "b_dq", axis=0),
            helper.make_node("Conv", ["input", "w", "b_dq"], ["output"], "float_conv"),
        ],
        "float-conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4, 3, 3])],
        [
            numpy_helper.from_array(rng.normal(size=(4, 2, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([100, -50, 7, 0], dtype=np.int32), "b_q"),
            numpy_helper.from_array(scale, "b_scale"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = {"input": rng.normal(size=(2, 2, 5, 5)).astype(np.float32)}
    before = ort.InferenceSession(model.SerializeToString()).run(None, x)[0]

    assert float_biases_for_float_nodes(model) == 1

    assert [node.op_type for node in model.graph.node] == ["Conv"]
    bias = {init.name: init for init in model.graph.initializer}[model.graph.node[0].input[2]]
    assert bias.data_type == TensorProto.FLOAT
    after = ort.InferenceSession(model.SerializeToString()).run(None, x)[0]
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
