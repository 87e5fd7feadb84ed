"""Session-wide models and datasets for the engine's tests, built once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.context import MeasureSettings
from tests.corpus.run import Corpus
from tests.factories import (
    digits_arrays,
    digits_npz,
    export_onnx,
    flat_digits_npz,
    make_mlp,
)


@pytest.fixture(scope="session")
def fast_measure() -> MeasureSettings:
    """Few runs: the tests check what is measured and how, not the machine's speed."""
    return MeasureSettings(threads=1, warmup_runs=1, runs=5)


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("assets")


@pytest.fixture(scope="session")
def cnn_onnx(digits_cnn: torch.nn.Module, assets: Path) -> Path:
    example, _ = digits_arrays("test")
    return export_onnx(digits_cnn, example[:1], assets / "cnn17.onnx", opset=17)


@pytest.fixture(scope="session")
def cnn_onnx_opset11(digits_cnn: torch.nn.Module, assets: Path) -> Path:
    example, _ = digits_arrays("test")
    return export_onnx(digits_cnn, example[:1], assets / "cnn11.onnx", opset=11)


@pytest.fixture(scope="session")
def digits_test_npz(assets: Path) -> Path:
    return digits_npz(assets / "digits_test.npz", split="test")


@pytest.fixture(scope="session")
def digits_train_npz(assets: Path) -> Path:
    return digits_npz(assets / "digits_train.npz", split="train", n=512)


@pytest.fixture(scope="session")
def torch_test_accuracy(digits_cnn: torch.nn.Module) -> float:
    images, labels = digits_arrays("test")
    with torch.no_grad():
        predicted = digits_cnn(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float(np.mean(predicted == labels))


@pytest.fixture(scope="session")
def mlp() -> torch.nn.Module:
    return make_mlp(seed=0)


@pytest.fixture(scope="session")
def mlp_onnx(mlp: torch.nn.Module, assets: Path) -> Path:
    return export_onnx(
        mlp, np.zeros((1, 64), np.float32), assets / "mlp.onnx", output_name="embedding"
    )


@pytest.fixture(scope="session")
def flat_npz(assets: Path) -> Path:
    return flat_digits_npz(assets / "flat_test.npz", split="test")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The corpus of other toolchains' exports (tests/corpus), each model built and each
    (model, method) run once per session."""
    return Corpus(tmp_path_factory.mktemp("corpus"))
