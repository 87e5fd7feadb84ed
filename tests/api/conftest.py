"""The API in-process: `create_app` on a temporary data dir (SQLite, file-system broker).

No worker runs here: submitted jobs stay queued, and their messages stay in the broker
folder where a test can see them. Models and datasets are built in the test session.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select

from api.app import create_app
from service.settings import Settings
from store.tables import DatasetRow, JobEventRow, JobRow, ModelRow
from tests.factories import digits_arrays, digits_npz, distinct_bytes, export_onnx

ROW_TABLES = (ModelRow, DatasetRow, JobRow, JobEventRow)
# The admin key every test service is started with (a test's own, never a real one).
ADMIN_TOKEN = "sqz_test-admin-key"


# --- files built once per test session ---------------------------------------------------


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api-assets")


@pytest.fixture(scope="session")
def model_file(digits_cnn: torch.nn.Module, assets: Path) -> Path:
    example, _ = digits_arrays("test")
    return export_onnx(digits_cnn, example[:1], assets / "digits.onnx", opset=17)


@pytest.fixture(scope="session")
def dataset_file(assets: Path) -> Path:
    return digits_npz(assets / "digits.npz", split="test", n=64)


@pytest.fixture(scope="session")
def unlabelled_dataset_file(assets: Path) -> Path:
    return digits_npz(assets / "digits-unlabelled.npz", split="train", n=32, labels=False)


def write_npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


# --- the service under test ---------------------------------------------------------------


@dataclass
class Api:
    """A client on a fresh service, with helpers to look at what it stored."""

    client: TestClient
    settings: Settings

    def upload_model(
        self, path: Path, name: str | None = None, variant: str | None = None
    ) -> Response:
        """`variant`: the same model in other bytes (a new record, not the reused one)."""
        return self.upload("/v1/models", _content(path, variant), name or path.name)

    def upload_dataset(
        self, path: Path, name: str | None = None, variant: str | None = None
    ) -> Response:
        return self.upload("/v1/datasets", _content(path, variant), name or path.name)

    def upload(self, route: str, content: bytes, name: str = "upload.bin") -> Response:
        return self.client.post(route, files={"file": (name, io.BytesIO(content))})

    def model_id(self, path: Path, variant: str | None = None) -> str:
        response = self.upload_model(path, variant=variant)
        # 200: these bytes were uploaded before, and that record is reused
        assert response.status_code in (200, 201), response.text
        return str(response.json()["id"])

    def dataset_id(self, path: Path, variant: str | None = None) -> str:
        response = self.upload_dataset(path, variant=variant)
        # 200: these bytes were uploaded before, and that record is reused
        assert response.status_code in (200, 201), response.text
        return str(response.json()["id"])

    def tenant(self, name: str = "tenant", **quotas: int) -> Api:
        """A client of the same service acting as a new tenant (created by this admin)."""
        created = self.client.post("/v1/tenants", json={"name": name, **quotas})
        assert created.status_code == 201, created.text
        issued = self.client.post(f"/v1/tenants/{created.json()['id']}/api-keys", json={})
        assert issued.status_code == 201, issued.text
        return self.with_token(str(issued.json()["token"]))

    def with_token(self, token: str | None) -> Api:
        """A client of the same service sending `token` (None: no key at all)."""
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return Api(client=TestClient(self.client.app, headers=headers), settings=self.settings)

    def submit(self, spec: dict[str, Any], key: str | None = None) -> Response:
        headers = {} if key is None else {"Idempotency-Key": key}
        return self.client.post("/v1/jobs", json=spec, headers=headers)

    def stored_files(self) -> list[Path]:
        """Every file under the blob folder, staging included."""
        return sorted(p for p in self.settings.blob_dir.rglob("*") if p.is_file())

    def row_counts(self) -> dict[str, int]:
        sessions = self.client.app.state.services.sessions  # type: ignore[attr-defined]
        with sessions() as session:
            return {
                table.__tablename__: int(session.scalar(select(func.count()).select_from(table)))
                for table in ROW_TABLES
            }

    def broker_messages(self) -> list[Path]:
        return sorted(self.settings.broker_dir.glob("*.msg"))

    def snapshot(self) -> tuple[list[Path], dict[str, int]]:
        return self.stored_files(), self.row_counts()


def _content(path: Path, variant: str | None) -> bytes:
    return path.read_bytes() if variant is None else distinct_bytes(path, variant)


ApiFactory = Callable[..., Api]


@pytest.fixture
def make_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiFactory]:
    """Builds a service on its own data dir; keyword arguments override Settings fields."""
    # Kombu's file-system transport keeps its exchange table in ./control (relative to the
    # working directory): keep it out of the checkout.
    monkeypatch.chdir(tmp_path)
    clients: list[TestClient] = []

    def build(**overrides: Any) -> Api:
        overrides.setdefault("admin_api_key", ADMIN_TOKEN)
        # no worker runs here (jobs stay queued or run in-process): no submission check
        overrides.setdefault("absent_worker_policy", "off")
        settings = Settings(data_dir=tmp_path / f"data{len(clients)}", **overrides)
        client = TestClient(
            create_app(settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        client.__enter__()
        clients.append(client)
        return Api(client=client, settings=settings)

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def api(make_api: ApiFactory) -> Api:
    return make_api()


@dataclass(frozen=True)
class Uploaded:
    model_id: str
    dataset_id: str

    def spec(self, **overrides: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "model_id": self.model_id,
            "eval_dataset_id": self.dataset_id,
            "steps": [{"method": "quantize", "mode": "static"}],
        }
        spec.update(overrides)
        return spec


@pytest.fixture
def uploaded(api: Api, model_file: Path, dataset_file: Path) -> Uploaded:
    """The digits model and its data, uploaded through the API."""
    return Uploaded(model_id=api.model_id(model_file), dataset_id=api.dataset_id(dataset_file))


def assert_problem(response: Response, status: int, code: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status and stable code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith(code)
    assert body["title"] and body["detail"]
    return body
