"""Issue 18, second round: quotas that cannot be escaped, admin key rotation that revokes,
the admin audit log, and the per-key rate limit of the write routes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from service.settings import Settings
from store.tenants import RevokedAdminKey
from tests.api.conftest import ADMIN_TOKEN, Api, ApiFactory, assert_problem
from tests.api.test_quantize_modes_e2e import digits_job_spec
from tests.api.test_search_e2e import TINY_SEARCH

# --- quotas ---------------------------------------------------------------------------------


def test_a_concurrent_jobs_quota_of_zero_means_none_not_the_default(
    api: Api, model_file: Path, dataset_file: Path
) -> None:
    tenant = api.tenant("frozen", quota_concurrent_jobs=0)
    account = tenant.client.get("/v1/account").json()
    assert account["tenant"]["quotas"]["concurrent_jobs"] == 0
    spec = {
        "model_id": tenant.model_id(model_file),
        "eval_dataset_id": tenant.dataset_id(dataset_file),
        "steps": [{"method": "quantize", "mode": "dynamic"}],
    }
    body = assert_problem(tenant.submit(spec), 429, "quota_exceeded")
    assert body["quota"] == "concurrent_jobs"


def test_a_storage_quota_of_zero_refuses_every_upload(api: Api, model_file: Path) -> None:
    tenant = api.tenant("no-room", quota_storage_bytes=0)
    assert tenant.client.get("/v1/account").json()["tenant"]["quotas"]["storage_bytes"] == 0
    assert_problem(tenant.upload_model(model_file), 429, "quota_exceeded")


def search_spec(api: Api, model_file: Path, tmp_path: Path, workers: int) -> dict[str, Any]:
    return digits_job_spec(
        api, model_file, tmp_path, [{**TINY_SEARCH, "parallel_workers": workers}]
    )


def test_search_helpers_count_against_the_concurrent_jobs_quota(
    api: Api, model_file: Path, tmp_path: Path
) -> None:
    """A search with parallel_workers P occupies P workers: it takes P slots."""
    tenant = api.tenant("searcher", quota_concurrent_jobs=4)
    three = tenant.submit(search_spec(tenant, model_file, tmp_path, 3))
    assert three.status_code == 202, three.text

    body = assert_problem(
        tenant.submit(search_spec(tenant, model_file, tmp_path, 2)), 429, "quota_exceeded"
    )
    assert "occupy 3 workers" in body["detail"]
    one = tenant.submit(search_spec(tenant, model_file, tmp_path, 1))
    assert one.status_code == 202, one.text


def test_a_search_wider_than_the_whole_quota_is_refused_naming_the_field(
    api: Api, model_file: Path, tmp_path: Path
) -> None:
    tenant = api.tenant("greedy", quota_concurrent_jobs=2)
    body = assert_problem(
        tenant.submit(search_spec(tenant, model_file, tmp_path, 64)),
        422,
        "parallel_workers_over_quota",
    )
    assert "steps[0].parallel_workers = 64" in body["detail"]
    assert tenant.client.get("/v1/jobs").json()["items"] == []


# --- admin key rotation and the audit log ---------------------------------------------------


def service(data_dir: Path, admin_key: str) -> TestClient:
    settings = Settings(data_dir=data_dir, admin_api_key=admin_key, absent_worker_policy="off")
    return TestClient(create_app(settings))


def test_rotating_the_admin_key_revokes_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    old, new = "sqz_admin-before-the-leak", "sqz_admin-after-rotation"
    with service(tmp_path / "data", old) as before:
        assert before.get("/v1/account", headers={"X-API-Key": old}).status_code == 200

    with service(tmp_path / "data", new) as after:
        assert_problem(after.get("/v1/account", headers={"X-API-Key": old}), 401, "unauthenticated")
        assert after.get("/v1/account", headers={"X-API-Key": new}).status_code == 200
        entries = after.get("/v1/admin/audit", headers={"X-API-Key": new}).json()["items"]
    # the same transaction wrote both: their order within it is not defined
    rotation = {entry["action"]: entry for entry in entries[:2]}
    assert set(rotation) == {"admin_key.created", "admin_key.revoked_by_rotation"}
    assert rotation["admin_key.revoked_by_rotation"]["details"]["prefix"] == old[:12]
    assert all(entry["actor_key_id"] is None for entry in entries[:2])

    # the leaked secret does not come back by configuration: the start refuses it
    with pytest.raises(RevokedAdminKey, match="revoked"):
        create_app(Settings(data_dir=tmp_path / "data", admin_api_key=old))


def test_admin_actions_on_tenants_and_keys_are_in_the_audit_log(api: Api) -> None:
    admin_key_id = api.client.get("/v1/account").json()["key_id"]
    tenant = api.client.post("/v1/tenants", json={"name": "audited"}).json()
    key = api.client.post(f"/v1/tenants/{tenant['id']}/api-keys", json={"name": "ci"}).json()
    assert api.client.post(f"/v1/api-keys/{key['id']}/webhook-secret").status_code == 201
    assert api.client.delete(f"/v1/api-keys/{key['id']}").status_code == 200
    assert api.client.delete(f"/v1/api-keys/{key['id']}").status_code == 200  # again: no entry

    first = api.client.get("/v1/admin/audit", params={"limit": 2})
    assert first.status_code == 200, first.text
    second = api.client.get(
        "/v1/admin/audit", params={"limit": 2, "cursor": first.json()["next_cursor"]}
    ).json()
    entries = first.json()["items"] + second["items"]
    actions = [(e["action"], e["target_id"]) for e in entries]
    assert actions == [
        ("api_key.revoked", key["id"]),
        ("api_key.webhook_secret_rotated", key["id"]),
        ("api_key.created", key["id"]),
        ("tenant.created", tenant["id"]),
    ]
    assert all(e["actor_key_id"] == admin_key_id for e in entries)
    assert all(e["tenant_id"] == tenant["id"] for e in entries)
    assert entries[3]["details"]["name"] == "audited"
    assert "token" not in str(entries) and key["token"] not in str(entries)

    only = api.client.get("/v1/admin/audit", params={"tenant_id": tenant["id"]}).json()
    assert len(only["items"]) == 4 and only["next_cursor"] is None


def test_a_tenant_key_cannot_read_the_audit_log(api: Api) -> None:
    tenant = api.tenant("curious")
    assert_problem(tenant.client.get("/v1/admin/audit"), 403, "forbidden")
    assert_problem(
        api.client.get("/v1/admin/audit", params={"cursor": "garbage"}), 400, "invalid_cursor"
    )


# --- rate limits --------------------------------------------------------------------------


def test_write_routes_are_rate_limited_per_key_with_retry_after(make_api: ApiFactory) -> None:
    api = make_api(rate_limit_per_s=0.5, rate_limit_burst=4)
    tenant = api.tenant("busy")  # the admin's 4 writes: two tenants and their keys
    other = api.tenant("calm")
    for _ in range(4):
        assert tenant.client.post("/v1/api-keys", json={"name": "k"}).status_code == 201

    refused = tenant.client.post("/v1/api-keys", json={"name": "k"})

    body = assert_problem(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["retry-after"]) <= 2
    assert body["retry_after_s"] == int(refused.headers["retry-after"])
    # reads are not limited, and other keys have buckets of their own
    assert tenant.client.get("/v1/account").status_code == 200
    assert other.client.post("/v1/api-keys", json={"name": "k"}).status_code == 201


def test_the_rate_limit_in_redis_is_shared_by_every_api_process(
    make_api: ApiFactory, redis_url: str
) -> None:
    first = make_api(rate_limit_per_s=0.5, rate_limit_burst=2, rate_limit_redis_url=redis_url)
    key = first.client.post("/v1/api-keys", json={"name": "shared"}).json()
    # a second API process on the same database and Redis
    second = make_api(
        rate_limit_per_s=0.5,
        rate_limit_burst=2,
        rate_limit_redis_url=redis_url,
        database_url=first.settings.resolved_database_url,
    )
    headers = {"Authorization": f"Bearer {key['token']}"}

    assert first.client.post("/v1/api-keys", json={}, headers=headers).status_code == 201
    assert second.client.post("/v1/api-keys", json={}, headers=headers).status_code == 201
    refused = first.client.post("/v1/api-keys", json={}, headers=headers)
    assert_problem(refused, 429, "rate_limited")
    assert_problem(
        second.client.post("/v1/api-keys", json={}, headers=headers), 429, "rate_limited"
    )
    assert ADMIN_TOKEN not in refused.text
