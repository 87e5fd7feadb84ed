"""inspect_model: describes valid ONNX files and refuses everything else, specifically."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from core.errors import InvalidModel, UnsupportedModel
from core.formats import ensure_opset, inspect_model, load_model, model_opset
from tests.factories import MkdirOnUnpickle


def test_describes_an_exported_cnn(cnn_onnx: Path, digits_cnn: torch.nn.Module) -> None:
    info = inspect_model(cnn_onnx)

    assert info.format == "onnx"
    assert info.opset == 17
    assert info.ir_version > 0
    assert info.producer.startswith("pytorch")
    assert [(t.name, t.dtype, t.shape) for t in info.inputs] == [
        ("input", "float32", ["batch", 1, 8, 8])
    ]
    assert [(t.name, t.dtype, t.shape) for t in info.outputs] == [
        ("logits", "float32", ["batch", 10])
    ]
    assert info.parameters == sum(p.numel() for p in digits_cnn.parameters())
    assert info.size_bytes == cnn_onnx.stat().st_size
    assert info.op_types["Conv"] == 2
    assert info.node_count == sum(info.op_types.values())


def test_counts_initializers_inside_subgraphs(tmp_path: Path) -> None:
    def branch(name: str) -> onnx.GraphProto:
        weight = numpy_helper.from_array(np.ones((3, 4), np.float32), f"{name}_w")
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [3, 4])
        node = helper.make_node("Identity", [f"{name}_w"], [f"{name}_out"])
        return helper.make_graph([node], name, [], [out], initializer=[weight])

    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])
    if_node = helper.make_node(
        "If", ["cond"], ["y"], then_branch=branch("then"), else_branch=branch("else")
    )
    graph = helper.make_graph([if_node], "g", [cond], [out])
    path = tmp_path / "if.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)

    info = inspect_model(path)

    assert info.parameters == 2 * 3 * 4  # both branches' weights
    assert info.op_types == {"Identity": 2, "If": 1}


def test_refuses_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "random.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InvalidModel, match="not an ONNX model"):
        inspect_model(path)


def test_refuses_a_truncated_model(tmp_path: Path, cnn_onnx: Path) -> None:
    raw = cnn_onnx.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InvalidModel) as raised:
        inspect_model(path)
    assert raised.value.code == "invalid_model"


def test_refuses_a_pickle_without_unpickling_it(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(MkdirOnUnpickle(marker)))
    with pytest.raises(InvalidModel, match="pickle"):
        inspect_model(path)
    assert not marker.exists()


def test_refuses_a_torch_checkpoint(tmp_path: Path, digits_cnn: torch.nn.Module) -> None:
    path = tmp_path / "model.pt"
    torch.save(digits_cnn.state_dict(), path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(InvalidModel, match="export the model to ONNX"):
        inspect_model(path)


def test_refuses_a_text_file(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_text("this is not a model\n" * 20)
    with pytest.raises(InvalidModel):
        inspect_model(path)


def test_refuses_external_data_without_reading_it(tmp_path: Path, cnn_onnx: Path) -> None:
    model = onnx.load(cnn_onnx)
    path = tmp_path / "external.onnx"
    onnx.save_model(
        model, path, save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    (tmp_path / "weights.bin").unlink()  # proves the engine never goes looking for it
    # A plain .onnx upload: its folder is not the user's (archives: tests/core/test_archive.py)
    with pytest.raises(InvalidModel, match="external data is not supported") as raised:
        inspect_model(path, allow_external_data=False)
    assert raised.value.code == "external_data_unsupported"


def test_refuses_a_model_onnx_runtime_cannot_load(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    node = helper.make_node("Mystery", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [x], [y])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    with pytest.raises(InvalidModel, match=r"ONNX Runtime \S+ cannot load"):
        inspect_model(path)


def test_refuses_a_model_the_checker_rejects(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    node = helper.make_node("Relu", ["not_defined_anywhere"], ["y"])
    graph = helper.make_graph([node], "g", [x], [y])
    path = tmp_path / "dangling.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(InvalidModel, match="checker"):
        inspect_model(path)


def test_refuses_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(InvalidModel, match="empty"):
        inspect_model(path)


def test_ensure_opset_upgrades_and_reports_the_old_opset(cnn_onnx_opset11: Path) -> None:
    upgraded, upgraded_from = ensure_opset(load_model(cnn_onnx_opset11), 13)
    assert upgraded_from == 11
    assert model_opset(upgraded) == 13


def test_ensure_opset_leaves_new_enough_models_alone(cnn_onnx: Path) -> None:
    model = load_model(cnn_onnx)
    same, upgraded_from = ensure_opset(model, 13)
    assert upgraded_from is None
    assert same is model


def test_ensure_opset_reports_a_failed_conversion(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    # an op the converter has no schema for cannot be carried across opsets
    node = helper.make_node("Mystery", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    with pytest.raises(UnsupportedModel) as raised:
        ensure_opset(model, 13)
    assert raised.value.code == "opset_upgrade_failed"
