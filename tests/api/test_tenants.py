"""API keys and tenants: every call needs a key, and a tenant sees only its own things.

Another tenant's model, dataset, job, event log and artifact answer exactly as an id that
never existed does, so ids reveal nothing across tenants.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from service.settings import Settings
from store.tables import ApiKeyRow
from tests.api.conftest import ADMIN_TOKEN, Api, Uploaded, assert_problem
from worker.runner import JobRunner

# Routes anyone may call: liveness, readiness and the API's own description.
PUBLIC_PATHS = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def all_operations(api: Api) -> list[tuple[str, str]]:
    """Every (method, path) of the OpenAPI document, ids filled with a placeholder."""
    operations = []
    for path, methods in api.client.get("/openapi.json").json()["paths"].items():
        if path in PUBLIC_PATHS:
            continue
        concrete = path.replace("{", "").replace("}", "")  # /v1/jobs/job_id: any id will do
        operations += [(method.upper(), concrete) for method in methods]
    return operations


def test_every_route_but_health_and_docs_needs_a_key(api: Api) -> None:
    anonymous = api.with_token(None)
    operations = all_operations(api)
    assert len(operations) >= 14
    for method, path in operations:
        response = anonymous.client.request(method, path)
        body = assert_problem(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"] == "Bearer", (method, path)
        assert "API key" in body["detail"]
    assert anonymous.client.get("/healthz").status_code == 200


def test_an_unknown_key_is_refused_and_the_x_api_key_header_also_works(api: Api) -> None:
    assert_problem(api.with_token("sqz_not-a-key").client.get("/v1/jobs"), 401, "unauthenticated")
    assert api.client.get("/v1/account", headers={"Authorization": ""}).status_code == 401
    via_header = api.with_token(None).client.get("/v1/jobs", headers={"X-API-Key": ADMIN_TOKEN})
    assert via_header.status_code == 200


def test_a_new_key_is_shown_once_stored_hashed_and_stops_working_when_revoked(api: Api) -> None:
    created = api.client.post("/v1/api-keys", json={"name": "ci"})
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    assert token.startswith("sqz_") and len(token) > 40
    holder = api.with_token(token)
    assert holder.client.get("/v1/account").json()["key_id"] == created.json()["id"]

    listed = api.client.get("/v1/api-keys").json()["items"]
    assert created.json()["id"] in {key["id"] for key in listed}
    assert all("token" not in key for key in listed)
    sessions = api.client.app.state.services.sessions  # type: ignore[attr-defined]
    with sessions() as session:
        row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.id == created.json()["id"]))
        assert row is not None
        assert token not in {row.secret_sha256, row.prefix, row.name}
        assert len(row.secret_sha256) == 64

    revoked = api.client.delete(f"/v1/api-keys/{created.json()['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert_problem(holder.client.get("/v1/account"), 401, "unauthenticated")


def test_tenant_keys_cannot_manage_tenants(api: Api) -> None:
    tenant = api.tenant("acme")
    assert_problem(tenant.client.post("/v1/tenants", json={"name": "x"}), 403, "forbidden")
    own_tenant = tenant.client.get("/v1/account").json()["tenant"]["id"]
    forbidden = tenant.client.post(f"/v1/tenants/{own_tenant}/api-keys", json={})
    assert_problem(forbidden, 403, "forbidden")
    assert tenant.client.get("/v1/account").json()["is_admin"] is False


def test_a_tenant_cannot_revoke_another_tenants_key(api: Api) -> None:
    first, second = api.tenant("first"), api.tenant("second")
    key_of_first = first.client.get("/v1/account").json()["key_id"]
    assert_problem(second.client.delete(f"/v1/api-keys/{key_of_first}"), 404, "not_found")
    assert first.client.get("/v1/account").status_code == 200


def answers(api: Api, resources: dict[str, str]) -> dict[str, tuple[int, str]]:
    """Status and problem code of every read of the given ids (a tenant's things)."""
    job, model, dataset = resources["job"], resources["model"], resources["dataset"]
    calls = {
        "model": ("GET", f"/v1/models/{model}"),
        "dataset": ("GET", f"/v1/datasets/{dataset}"),
        "job": ("GET", f"/v1/jobs/{job}"),
        "events": ("GET", f"/v1/jobs/{job}/events"),
        "artifacts": ("GET", f"/v1/jobs/{job}/artifacts"),
        "download": ("GET", f"/v1/jobs/{job}/artifacts/model.onnx"),
        "cancel": ("POST", f"/v1/jobs/{job}/cancel"),
    }
    result = {}
    for name, (method, path) in calls.items():
        response = api.client.request(method, path)
        code = response.json().get("code", "") if response.status_code >= 400 else ""
        result[name] = (response.status_code, code)
    return result


def test_tenant_a_gets_404_for_everything_of_tenant_b(
    api: Api, model_file: Path, dataset_file: Path
) -> None:
    tenant_a, tenant_b = api.tenant("a"), api.tenant("b")
    owned = Uploaded(tenant_b.model_id(model_file), tenant_b.dataset_id(dataset_file))
    submitted = tenant_b.submit(owned.spec(steps=[{"method": "quantize", "mode": "dynamic"}]))
    job_id = submitted.json()["id"]
    services = api.client.app.state.services  # type: ignore[attr-defined]
    JobRunner(services.settings, services.sessions, services.blobs).run(job_id)
    b_things = {"job": job_id, "model": owned.model_id, "dataset": owned.dataset_id}

    # B reads its own things...
    assert all(status < 400 for status, _ in answers(tenant_b, b_things).values() if status != 409)
    # ...A gets for each exactly what an id that never existed gets.
    never = {"job": "job_missing", "model": "mdl_missing", "dataset": "ds_missing"}
    assert answers(tenant_a, b_things) == answers(tenant_a, never)
    assert {status for status, _ in answers(tenant_a, b_things).values()} == {404}

    assert tenant_a.client.get("/v1/jobs").json()["items"] == []
    assert [job["id"] for job in tenant_b.client.get("/v1/jobs").json()["items"]] == [job_id]
    # A job of A may not name B's uploads: the same answer as an id never uploaded.
    borrowed = assert_problem(tenant_a.submit(owned.spec()), 422, "unknown_model")
    missing = assert_problem(
        tenant_a.submit(owned.spec(model_id="mdl_missing")), 422, "unknown_model"
    )
    assert borrowed["detail"].replace(owned.model_id, "X") == missing["detail"].replace(
        "mdl_missing", "X"
    )


def test_idempotency_keys_belong_to_their_tenant(
    api: Api, model_file: Path, dataset_file: Path
) -> None:
    tenant_a, tenant_b = api.tenant("a"), api.tenant("b")
    spec_a = Uploaded(tenant_a.model_id(model_file), tenant_a.dataset_id(dataset_file)).spec()
    spec_b = Uploaded(tenant_b.model_id(model_file), tenant_b.dataset_id(dataset_file)).spec()
    first = tenant_a.submit(spec_a, key="nightly-1")
    second = tenant_b.submit(spec_b, key="nightly-1")
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] != second.json()["id"]
    assert "idempotent-replayed" not in second.headers


def test_a_tenant_at_its_job_quota_gets_429_with_retry_after_until_a_job_ends(
    api: Api, model_file: Path, dataset_file: Path
) -> None:
    tenant = api.tenant("small", quota_concurrent_jobs=2)
    spec = Uploaded(tenant.model_id(model_file), tenant.dataset_id(dataset_file)).spec()
    accepted = [tenant.submit(spec, key=f"k{index}") for index in range(2)]
    assert [response.status_code for response in accepted] == [202, 202]

    refused = tenant.submit(spec, key="k2")
    body = assert_problem(refused, 429, "quota_exceeded")
    assert int(refused.headers["retry-after"]) == api.settings.quota_retry_after_s
    assert body["quota"] == "concurrent_jobs"
    # A replay of an accepted submission is still answered at the quota.
    assert tenant.submit(spec, key="k0").status_code == 202
    # Another tenant is not limited by this one's jobs.
    other = api.tenant("other")
    assert (
        other.submit(
            Uploaded(other.model_id(model_file), other.dataset_id(dataset_file)).spec()
        ).status_code
        == 202
    )

    tenant.client.post(f"/v1/jobs/{accepted[0].json()['id']}/cancel")
    assert tenant.submit(spec, key="k3").status_code == 202
    usage = tenant.client.get("/v1/account").json()["tenant"]
    assert usage["usage"]["active_jobs"] == 2 and usage["quotas"]["concurrent_jobs"] == 2


def test_an_upload_over_the_storage_quota_is_refused_and_stores_nothing(
    api: Api, model_file: Path, dataset_file: Path
) -> None:
    quota = dataset_file.stat().st_size + model_file.stat().st_size // 2
    tenant = api.tenant("tiny", quota_storage_bytes=quota)
    assert tenant.upload_dataset(dataset_file).status_code == 201
    before = api.snapshot()

    refused = tenant.upload_model(model_file)

    body = assert_problem(refused, 429, "quota_exceeded")
    assert body["quota"] == "storage_bytes" and "retry-after" in refused.headers
    assert api.snapshot() == before
    account = tenant.client.get("/v1/account").json()["tenant"]
    assert account["usage"]["storage_bytes"] == dataset_file.stat().st_size
    # The admin's own tenant keeps its default quota.
    assert api.upload_model(model_file).status_code == 201


def test_the_embedded_default_makes_an_admin_key_file_readable_only_by_its_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(data_dir=tmp_path / "data")
    create_app(settings)
    key_file = settings.admin_key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    token = key_file.read_text().strip()

    again = create_app(settings)  # a restart keeps the same key
    assert key_file.read_text().strip() == token
    client = TestClient(again, headers={"Authorization": f"Bearer {token}"})
    account: dict[str, Any] = client.get("/v1/account").json()
    assert account["is_admin"] is True


def test_admin_reads_any_tenant_with_its_usage(api: Api) -> None:
    created = api.client.post("/v1/tenants", json={"name": "acme", "quota_storage_bytes": 1000})
    tenant_id = created.json()["id"]
    read = api.client.get(f"/v1/tenants/{tenant_id}").json()
    assert read["quotas"]["storage_bytes"] == 1000
    assert read["quotas"]["concurrent_jobs"] == api.settings.quota_concurrent_jobs
    assert read["usage"] == {"storage_bytes": 0, "active_jobs": 0}
    assert_problem(api.client.get("/v1/tenants/ten_missing"), 404, "not_found")
