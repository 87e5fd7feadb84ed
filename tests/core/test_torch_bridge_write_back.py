"""Writing a converted module's weights back into the ONNX graph it came from: ONNX
Runtime then computes what the module computes, at any batch size the original took,
and a module whose layers were resized is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from core.context import RunContext
from core.formats import inspect_model
from core.prune.structured import prune_channels
from core.spec import StructuredPrune
from core.torch_bridge import WriteBackRefused, onnx_to_torch, write_back_weights
from tests.core.test_prune_heads import FEATURES, LENGTH, family_transformer
from tests.factories import digits_arrays, export_onnx

IMAGES, _ = digits_arrays("test")
TOLERANCE = 1e-4


def ort_output(path: Path, array: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: array})[0])


def torch_output(module: nn.Module, array: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(module(torch.from_numpy(array)).numpy())


def shifted(path: Path, tmp_path: Path) -> tuple[nn.Module, Path]:
    """The model converted, every parameter moved by noise (as training moves them; a
    transposed weight written back untransposed would not fit or not compute the same),
    and written back."""
    module = onnx_to_torch(path, tmp_path / "bridge")
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return module, write_back_weights(module, path, tmp_path / "written.onnx")


def assert_same_as_torch(module: nn.Module, written: Path, *batches: np.ndarray) -> None:
    onnx.checker.check_model(str(written))
    for batch in batches:
        expected = torch_output(module, batch)
        np.testing.assert_allclose(ort_output(written, batch), expected, atol=TOLERANCE)


def mlp_3d() -> nn.Module:
    """Linear layers on (N, L, F): exported as MatMul by a constant [in, out] + Add."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def sequences(rows: int) -> np.ndarray:
    return np.random.default_rng(rows).random((rows, LENGTH, FEATURES), dtype=np.float32)


def test_a_cnn_with_conv_and_gemm_round_trips(cnn_onnx: Path, tmp_path: Path) -> None:
    module, written = shifted(cnn_onnx, tmp_path)

    assert_same_as_torch(module, written, IMAGES[:1], IMAGES[:5])
    assert inspect_model(written).inputs == inspect_model(cnn_onnx).inputs
    assert not np.allclose(ort_output(written, IMAGES[:5]), ort_output(cnn_onnx, IMAGES[:5]))


def test_matmul_by_constant_weights_are_written_transposed_back(tmp_path: Path) -> None:
    path = export_onnx(mlp_3d(), sequences(2), tmp_path / "mlp.onnx")
    assert "Gemm" not in inspect_model(path).op_types

    module, written = shifted(path, tmp_path)

    assert any(isinstance(layer, nn.Linear) for layer in module.modules())
    assert_same_as_torch(module, written, sequences(1), sequences(3))


def test_a_dynamic_batch_transformer_round_trips(tmp_path: Path) -> None:
    path = export_onnx(family_transformer(), sequences(2), tmp_path / "transformer.onnx")

    module, written = shifted(path, tmp_path)

    assert_same_as_torch(module, written, sequences(1), sequences(3))
    original, result = onnx.load(path), onnx.load(written)
    assert [node.op_type for node in result.graph.node] == [
        node.op_type for node in original.graph.node
    ]
    assert result.opset_import == original.opset_import


def test_weights_held_by_constant_and_identity_nodes_become_initializers(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((8, 4), np.float32), rng.standard_normal(4, np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight)),
            helper.make_node("Identity", ["shared_bias"], ["b"]),
            helper.make_node("Gemm", ["x", "w", "b"], ["y"]),
        ],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(bias, "shared_bias")],
    )
    path = tmp_path / "gemm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)

    module, written = shifted(path, tmp_path)

    batch = rng.standard_normal((3, 8), np.float32)
    assert_same_as_torch(module, written, batch[:1], batch)
    result = onnx.load(written)
    assert [node.op_type for node in result.graph.node] == ["Gemm"]
    assert {init.name for init in result.graph.initializer} >= {"w", "b"}


def test_a_module_whose_channels_were_pruned_is_refused(cnn_onnx: Path, tmp_path: Path) -> None:
    module = onnx_to_torch(cnn_onnx, tmp_path / "bridge")
    config = StructuredPrune.model_validate(
        {"method": "prune", "kind": "structured", "sparsity": 0.5}
    )
    prune_channels(module, config, {"input": torch.from_numpy(IMAGES[:2])}, RunContext(tmp_path))

    with pytest.raises(WriteBackRefused, match="structure changed"):
        write_back_weights(module, cnn_onnx, tmp_path / "written.onnx")
    assert not (tmp_path / "written.onnx").exists()


def test_a_parameter_without_a_source_is_refused(cnn_onnx: Path, tmp_path: Path) -> None:
    module = onnx_to_torch(cnn_onnx, tmp_path / "bridge")
    module.register_parameter("added", nn.Parameter(torch.zeros(3)))

    with pytest.raises(WriteBackRefused, match="added"):
        write_back_weights(module, cnn_onnx, tmp_path / "written.onnx")


def test_a_module_not_converted_by_the_bridge_is_refused(cnn_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(WriteBackRefused, match="not converted"):
        write_back_weights(mlp_3d(), cnn_onnx, tmp_path / "written.onnx")
