"""The ONNX <-> PyTorch bridge: round trips compute what ONNX Runtime computes, old and
new opsets convert, and graphs onnx2torch cannot convert fail naming what it lacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from core.errors import UnsupportedModel
from core.formats import TensorInfo, inspect_model, model_opset
from core.torch_bridge import onnx_to_torch, reshape_to, torch_to_onnx, write_back_weights
from tests.factories import digits_arrays

IMAGES, _ = digits_arrays("test")
TOLERANCE = 1e-5


def ort_outputs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def torch_output(module: torch.nn.Module, *arrays: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(*(torch.from_numpy(a) for a in arrays)).numpy()


def assert_round_trip(model: Path, images: np.ndarray, tmp_path: Path) -> Path:
    """torch computes what ORT computes on the original, and so does the re-export,
    which keeps the original's input/output names and dynamic batch dim."""
    info = inspect_model(model)
    expected = ort_outputs(model, {info.inputs[0].name: images})[0]

    module = onnx_to_torch(model, tmp_path / "bridge")
    np.testing.assert_allclose(torch_output(module, images), expected, atol=TOLERANCE)

    exported = torch_to_onnx(
        module,
        {info.inputs[0].name: images[:1]},
        tmp_path / "exported.onnx",
        inputs=info.inputs,
        outputs=info.outputs,
        opset=17,
    )
    exported_info = inspect_model(exported)
    assert [t.name for t in exported_info.inputs] == [t.name for t in info.inputs]
    assert [t.name for t in exported_info.outputs] == [t.name for t in info.outputs]
    assert exported_info.inputs[0].shape == info.inputs[0].shape  # ["batch", ...]
    assert exported_info.opset == 17
    actual = ort_outputs(exported, {info.inputs[0].name: images})[0]
    np.testing.assert_allclose(actual, expected, atol=TOLERANCE)
    return exported


def test_digits_cnn_round_trips_through_torch(cnn_onnx: Path, tmp_path: Path) -> None:
    assert_round_trip(cnn_onnx, IMAGES, tmp_path)


def test_mlp_round_trips_through_torch(mlp_onnx: Path, tmp_path: Path) -> None:
    assert_round_trip(mlp_onnx, IMAGES.reshape(-1, 64), tmp_path)


def test_converted_layers_have_trainable_parameters(cnn_onnx: Path, tmp_path: Path) -> None:
    module = onnx_to_torch(cnn_onnx, tmp_path)

    layers = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert len(layers) == 4
    assert all(p.requires_grad for layer in layers for p in layer.parameters())


def test_opset_11_export_converts(cnn_onnx_opset11: Path, tmp_path: Path) -> None:
    assert model_opset(onnx.load(cnn_onnx_opset11)) == 11
    assert_round_trip(cnn_onnx_opset11, IMAGES, tmp_path)


def test_opset_20_export_of_torch_2_14_converts(
    digits_cnn: torch.nn.Module, tmp_path: Path
) -> None:
    # torch 2.14's own exporter: opset 20, Reshape with allowzero=1 (onnx2torch refuses
    # both as they come), batch dim named by torch.export.
    path = tmp_path / "cnn20.onnx"
    torch.onnx.export(
        digits_cnn,
        (torch.from_numpy(IMAGES[:2]),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        opset_version=20,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    assert model_opset(onnx.load(path)) == 20

    assert_round_trip(path, IMAGES, tmp_path)


def test_matmul_by_a_constant_becomes_a_trainable_linear(tmp_path: Path) -> None:
    # Exporters write Linear on 3-D inputs as MatMul + Add; onnx2torch would keep the
    # weight as a frozen buffer.
    weight = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    bias = np.arange(4, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["product"]),
            helper.make_node("Add", ["product", "b"], ["y"]),
        ],
        "linear3d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 4])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    path = tmp_path / "linear3d.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = np.random.default_rng(1).standard_normal((5, 3, 8)).astype(np.float32)

    module = onnx_to_torch(path, tmp_path / "bridge")

    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 and linears[0].weight.requires_grad
    np.testing.assert_allclose(torch_output(module, x), x @ weight + bias, atol=TOLERANCE)


def unsupported_graph(tmp_path: Path) -> Path:
    """Gemm -> ThresholdedRelu -> Hardmax: ONNX Runtime runs it, onnx2torch has no
    converter for the last two."""
    weight = np.ones((4, 4), np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w"], ["h"]),
            helper.make_node("ThresholdedRelu", ["h"], ["t"], alpha=0.5),
            helper.make_node("Hardmax", ["t"], ["y"]),
        ],
        "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(weight, "w")],
    )
    path = tmp_path / "unsupported.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    inspect_model(path)  # a valid model ONNX Runtime loads
    return path


def test_ops_onnx2torch_lacks_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel) as raised:
        onnx_to_torch(unsupported_graph(tmp_path), tmp_path / "bridge")

    assert raised.value.code == "unsupported_op"
    assert "Hardmax" in raised.value.message
    assert "ThresholdedRelu" in raised.value.message
    assert "Gemm" not in raised.value.message


@pytest.mark.parametrize("op_type", ["GreaterOrEqual", "LessOrEqual"])
def test_comparisons_at_opset_17_convert_like_opset_12(op_type: str, tmp_path: Path) -> None:
    # a HuggingFace encoder's attention mask compares positions with GreaterOrEqual-16,
    # which onnx2torch never registered
    graph = helper.make_graph(
        [
            helper.make_node(op_type, ["x", "limit"], ["mask"]),
            helper.make_node("Cast", ["mask"], ["y"], to=TensorProto.FLOAT),
        ],
        "compare",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array([0.0], np.float32), "limit")],
    )
    path = tmp_path / "compare.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = np.array([[-1.0, 0.0, 1.0, 2.0]], np.float32)

    module = onnx_to_torch(path, tmp_path / "bridge")
    np.testing.assert_array_equal(torch_output(module, x), ort_outputs(path, {"x": x})[0])


def test_a_node_the_converter_rejects_is_named(tmp_path: Path) -> None:
    # Reshape with allowzero=1 and a 0 in the shape: onnx2torch has a Reshape converter
    # but refuses this attribute, which (unlike allowzero without zeros) matters here.
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="keep_zero", allowzero=1)],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 0, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [0, 6])],
        [numpy_helper.from_array(np.array([0, 6], np.int64), "shape")],
    )
    path = tmp_path / "reshape.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)

    with pytest.raises(UnsupportedModel) as raised:
        onnx_to_torch(path, tmp_path / "bridge")

    assert raised.value.code == "unsupported_op"
    assert "'keep_zero' (Reshape)" in raised.value.message
    assert "allowzero" in raised.value.message


def test_a_pinned_batch_stays_pinned(digits_cnn: torch.nn.Module, tmp_path: Path) -> None:
    module = torch.nn.Sequential(digits_cnn).eval()
    inputs = [TensorInfo(name="input", dtype="float32", shape=[4, 1, 8, 8])]
    outputs = [TensorInfo(name="logits", dtype="float32", shape=[4, 10])]

    path = torch_to_onnx(
        module,
        {"input": IMAGES[:4]},
        tmp_path / "pinned.onnx",
        inputs=inputs,
        outputs=outputs,
        opset=17,
    )

    assert inspect_model(path).inputs[0].shape == [4, 1, 8, 8]
    np.testing.assert_allclose(
        ort_outputs(path, {"input": IMAGES[:4]})[0],
        torch_output(module, IMAGES[:4]),
        atol=TOLERANCE,
    )


def test_a_bias_added_after_a_matmul_becomes_the_linears_bias_and_is_written_back(
    tmp_path: Path,
) -> None:
    """MatMul + Add of a constant vector (a Linear on 3-D inputs): one nn.Linear with its
    bias, so that the bias trains and channel pruning shrinks it with the weight."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 4)).astype(np.float32)
    bias = np.arange(4, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["product"]),
            helper.make_node("Add", ["b", "product"], ["y"]),  # bias first, as torch writes it
        ],
        "linear3d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 4])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    path = tmp_path / "linear3d.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = rng.standard_normal((5, 3, 8)).astype(np.float32)

    module = onnx_to_torch(path, tmp_path / "bridge")

    (linear,) = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    assert linear.bias is not None and linear.bias.requires_grad
    assert not [n for n in module.graph.nodes if "add" in n.name.lower()]
    np.testing.assert_allclose(torch_output(module, x), x @ weight + bias, atol=TOLERANCE)
    with torch.no_grad():
        linear.bias += 1.0
    written = write_back_weights(module, path, tmp_path / "written.onnx")
    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(written)).graph.initializer}
    np.testing.assert_allclose(stored["b"], bias + 1.0)
    np.testing.assert_allclose(ort_outputs(written, {"x": x})[0], x @ weight + bias + 1.0,
                               atol=TOLERANCE)  # fmt: skip


def test_a_reshape_flattening_to_a_constant_width_converts_as_flatten(tmp_path: Path) -> None:
    """torch.export writes nn.Flatten as Reshape(x, [-1, C*H*W]); converted as Flatten,
    the width follows the channels when pruning removes some."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Reshape", ["c", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "head"], ["y"]),
        ],
        "flatten_by_reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [
            numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([-1, 32], np.int64), "shape"),
            numpy_helper.from_array(rng.standard_normal((32, 3)).astype(np.float32), "head"),
        ],
    )
    path = tmp_path / "flatten.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)

    module = onnx_to_torch(path, tmp_path / "bridge")

    assert not [n for n in module.graph.nodes if n.target is reshape_to]
    assert any(isinstance(m, torch.nn.Flatten) or "Flatten" in type(m).__name__
               for m in module.modules())  # fmt: skip
    np.testing.assert_allclose(
        torch_output(module, x), ort_outputs(path, {"x": x})[0], atol=TOLERANCE
    )
