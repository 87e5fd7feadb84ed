"""Fixtures shared by every test folder: real PostgreSQL databases and Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from service.examples import digits_arrays, export_onnx, save_npz, train_digits_cnn
from tests import services


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database created for this test session on the real server, dropped afterwards."""
    try:
        name = services.create_database()
    except Exception as error:
        services.service_unavailable("PostgreSQL", error)
    try:
        yield services.postgres_url_for(name)
    finally:
        services.drop_database(name)


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        services.ping_redis()
    except Exception as error:
        services.service_unavailable("Redis", error)
    return services.REDIS_URL


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.ObjectStore]:
    """A SeaweedFS S3 gateway started for this test session, on free ports."""
    try:
        server = services.ObjectStore(tmp_path_factory.mktemp("seaweedfs")).start()
    except Exception as error:
        services.service_unavailable("SeaweedFS (the S3 object store)", error)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.MlflowServer]:
    """A real MLflow tracking server for this test session (its venv built once and
    cached by scripts/mlflow-venv.sh), on a free port."""
    try:
        venv = services.mlflow_venv()
        server = services.MlflowServer(tmp_path_factory.mktemp("mlflow"), venv).start()
    except Exception as error:
        services.service_unavailable("the MLflow tracking server", error)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["local", "s3"])
def blob_backend(request: pytest.FixtureRequest) -> dict[str, object]:
    """Settings overrides for each blob store: local files, or a fresh bucket of the
    session's object store. Tests taking this run once per implementation."""
    if request.param == "local":
        return {"blob_store": "local"}
    store: services.ObjectStore = request.getfixturevalue("object_store")
    return store.settings_overrides()


@dataclass(frozen=True)
class DigitsFiles:
    """A trained digits CNN exported to ONNX, with calibration and labelled eval data."""

    model: Path
    calibration: Path
    evaluation: Path
    torch_parameters: int


@pytest.fixture(scope="session")
def digits_cnn() -> torch.nn.Module:
    """The digits CNN, trained once per test session (a second or two on 2 cores)."""
    return train_digits_cnn(seed=0)


@pytest.fixture(scope="session")
def digits_files(
    tmp_path_factory: pytest.TempPathFactory, digits_cnn: torch.nn.Module
) -> DigitsFiles:
    folder = tmp_path_factory.mktemp("digits")
    model = digits_cnn
    x_train, _ = digits_arrays("train")
    x_test, y_test = digits_arrays("test")
    return DigitsFiles(
        model=export_onnx(model, torch.from_numpy(x_test[:1]), folder / "digits.onnx"),
        calibration=save_npz(folder / "calibration.npz", x_train[:128]),
        evaluation=save_npz(folder / "eval.npz", x_test, y_test),
        torch_parameters=sum(p.numel() for p in model.parameters()),
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run where ONNX Runtime and torch both reach a GPU and are
    skipped elsewhere with what is missing (scripts/gpu-check.sh runs them on a GPU)."""
    marked = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not marked:
        return
    from core.devices import detect

    report = detect(with_runtimes=False)
    if report.cuda:
        return
    reason = "no GPU here: " + "; ".join(report.missing_for_cuda())
    if os.environ.get("SQUEEZE_REQUIRE_GPU") == "1":  # scripts/gpu-check.sh
        raise pytest.UsageError(f"SQUEEZE_REQUIRE_GPU=1 but {reason}")
    skip = pytest.mark.skip(reason=reason)
    for item in marked:
        item.add_marker(skip)
