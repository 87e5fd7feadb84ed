"""/healthz and /readyz: liveness, and readiness that names the failing dependency."""

from __future__ import annotations

import dataclasses
import gc
import shutil

from api.app import freeze_startup_objects
from store.db import make_engine
from tests.api.conftest import Api, ApiFactory, assert_problem


def test_healthz_says_ok(api: Api) -> None:
    response = api.client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ready_when_database_and_broker_answer(api: Api) -> None:
    response = api.client.get("/readyz")

    assert response.status_code == 200
    body = response.json()
    checks = {"database": "ok", "broker": "ok", "blob_store": "ok"}
    assert (body["status"], body["checks"]) == ("ready", checks)
    # no worker runs here: readiness stays 200 and says so (tests/api/test_workers.py)
    assert body["workers"] == {"cpu": 0, "gpu": 0}


def test_readyz_is_a_503_naming_the_broker_when_its_folder_is_gone(api: Api) -> None:
    shutil.rmtree(api.settings.broker_dir)

    body = assert_problem(api.client.get("/readyz"), 503, "not_ready")

    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("failed")
    assert "broker" in body["detail"]


def test_readyz_is_a_503_naming_the_database_when_it_cannot_be_opened(api: Api) -> None:
    app_state = api.client.app.state  # type: ignore[attr-defined]
    unreachable = make_engine(f"sqlite:///{api.settings.data_dir / 'no-such-dir' / 'x.db'}")
    app_state.services = dataclasses.replace(app_state.services, engine=unreachable)

    body = assert_problem(api.client.get("/readyz"), 503, "not_ready")

    assert body["checks"]["database"].startswith("failed")
    assert body["checks"]["broker"] == "ok"


def test_the_served_app_keeps_start_up_objects_out_of_full_collections(
    make_api: ApiFactory,
) -> None:
    # a full collection walking ~150k start-up objects stalled every request for ~100 ms
    freeze_startup_objects.cache_clear()
    gc.unfreeze()

    make_api()

    assert gc.get_freeze_count() > 10_000
