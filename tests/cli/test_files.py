"""The CLI tells models from datasets by their bytes, with the standard library only."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from squeeze.cli.files import LocalFileError, check_dataset, check_model, sniff


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    path = tmp_path_factory.mktemp("sniff") / "relu.onnx"
    onnx.save(helper.make_model(graph), path)
    return path


def test_an_onnx_file_is_recognised(onnx_file: Path) -> None:
    assert sniff(onnx_file).kind == "onnx"
    check_model(onnx_file, "MODEL")


def test_a_truncated_onnx_file_is_not_a_model(onnx_file: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(onnx_file.read_bytes()[:-5])

    with pytest.raises(LocalFileError, match="not an ONNX model"):
        check_model(cut, "MODEL")


def test_an_npz_is_a_dataset_with_its_array_names(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((2, 3)), label=np.zeros(2))

    found = check_dataset(path, "--eval")

    assert found.kind == "npz" and set(found.members) == {"x", "label"}


def test_archives_holding_an_onnx_model_are_models(onnx_file: Path, tmp_path: Path) -> None:
    zipped = tmp_path / "m.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.write(onnx_file, "model/relu.onnx")
    tarred = tmp_path / "m.tgz"
    with tarfile.open(tarred, "w:gz") as archive:
        archive.add(onnx_file, "relu.onnx")

    assert sniff(zipped).kind == sniff(tarred).kind == "model_archive"


def test_a_single_npy_is_not_a_dataset(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(3))

    with pytest.raises(LocalFileError, match=r"a single \.npy array"):
        check_dataset(path, "--eval")


def test_a_folder_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(LocalFileError, match="a folder, not a file"):
        check_model(tmp_path, "MODEL")
