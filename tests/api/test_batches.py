"""Batches: one spec over many models, one job per model, created all or none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Api, ApiFactory, assert_problem
from worker.runner import JobRunner


@pytest.fixture
def tenant(api: Api) -> Api:
    return api.tenant("batcher", quota_concurrent_jobs=3)


def template(dataset_id: str) -> dict[str, Any]:
    return {"eval_dataset_id": dataset_id, "steps": [{"method": "quantize", "mode": "dynamic"}]}


def batch_body(tenant: Api, model_file: Path, dataset_file: Path, models: int) -> dict[str, Any]:
    """`models` uploads of the digits model (each its own id) and one dataset."""
    return {
        "model_ids": [tenant.model_id(model_file, variant=str(n)) for n in range(models)],
        "spec": template(tenant.dataset_id(dataset_file)),
    }


def test_a_batch_makes_one_queued_job_per_model(
    tenant: Api, model_file: Path, dataset_file: Path
) -> None:
    body = batch_body(tenant, model_file, dataset_file, models=2)
    response = tenant.client.post("/v1/batches", json=body)

    assert response.status_code == 202, response.text
    batch = response.json()
    assert response.headers["location"] == f"/v1/batches/{batch['id']}"
    assert batch["total"] == 2 and batch["state"] == "active"
    assert batch["counts"]["queued"] == 2
    assert [job["model_id"] for job in batch["jobs"]] == body["model_ids"]
    for job in batch["jobs"]:
        record = tenant.client.get(job["url"]).json()
        assert record["batch_id"] == batch["id"]
        assert record["spec"]["eval_dataset_id"] == body["spec"]["eval_dataset_id"]
    assert "model_id" not in batch["spec"]
    # sent to the broker after the commit, one message per job
    assert len(tenant.broker_messages()) == 2


def test_a_batch_aggregates_its_jobs_states_and_progress(
    tenant: Api, model_file: Path, dataset_file: Path
) -> None:
    batch = tenant.client.post(
        "/v1/batches", json=batch_body(tenant, model_file, dataset_file, models=3)
    ).json()
    first, second, _ = (job["id"] for job in batch["jobs"])
    services = tenant.client.app.state.services  # type: ignore[attr-defined]
    JobRunner(services.settings, services.sessions, services.blobs).run(first)
    tenant.client.post(f"/v1/jobs/{second}/cancel")

    read = tenant.client.get(f"/v1/batches/{batch['id']}").json()

    assert {k: v for k, v in read["counts"].items() if v} == {
        "succeeded": 1,
        "cancelled": 1,
        "queued": 1,
    }
    assert read["state"] == "active"
    assert read["progress"] == pytest.approx(1 / 3)
    states = {job["id"]: (job["state"], job["targets_met"]) for job in read["jobs"]}
    assert states[first][0] == "succeeded" and states[first][1] is not None
    assert states[second] == ("cancelled", None)
    listed = tenant.client.get("/v1/batches").json()["items"]
    assert [(b["id"], b["counts"]) for b in listed] == [(batch["id"], read["counts"])]


def test_a_batch_is_finished_when_every_job_is(
    tenant: Api, model_file: Path, dataset_file: Path
) -> None:
    batch = tenant.client.post(
        "/v1/batches", json=batch_body(tenant, model_file, dataset_file, models=1)
    ).json()
    tenant.client.post(f"/v1/jobs/{batch['jobs'][0]['id']}/cancel")
    assert tenant.client.get(f"/v1/batches/{batch['id']}").json()["state"] == "finished"


def test_a_batch_over_the_concurrent_job_quota_creates_nothing(
    tenant: Api, model_file: Path, dataset_file: Path
) -> None:
    body = batch_body(tenant, model_file, dataset_file, models=4)  # quota: 3
    before = tenant.row_counts()
    problem = assert_problem(tenant.client.post("/v1/batches", json=body), 429, "quota_exceeded")
    assert "needs 4 slots" in problem["detail"]
    assert tenant.row_counts() == before
    assert tenant.client.get("/v1/batches").json()["items"] == []


def test_a_batch_naming_an_unknown_model_creates_nothing(
    tenant: Api, model_file: Path, dataset_file: Path
) -> None:
    body = batch_body(tenant, model_file, dataset_file, models=2)
    body["model_ids"].append("mdl_missing")
    before = tenant.row_counts()
    assert_problem(tenant.client.post("/v1/batches", json=body), 422, "unknown_model")
    assert tenant.row_counts() == before
    assert tenant.broker_messages() == []


def test_an_idempotency_key_replays_the_batch_and_refuses_another_body(
    tenant: Api, model_file: Path, dataset_file: Path
) -> None:
    body = batch_body(tenant, model_file, dataset_file, models=2)
    headers = {"Idempotency-Key": "nightly-1"}
    first = tenant.client.post("/v1/batches", json=body, headers=headers)
    again = tenant.client.post("/v1/batches", json=body, headers=headers)

    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert [j["id"] for j in again.json()["jobs"]] == [j["id"] for j in first.json()["jobs"]]
    assert len(tenant.client.get("/v1/jobs").json()["items"]) == 2
    other = {**body, "model_ids": body["model_ids"][:1]}
    assert_problem(
        tenant.client.post("/v1/batches", json=other, headers=headers), 409, "idempotency_conflict"
    )


def test_another_tenant_gets_404_for_a_batch(
    api: Api, tenant: Api, model_file: Path, dataset_file: Path
) -> None:
    batch = tenant.client.post(
        "/v1/batches", json=batch_body(tenant, model_file, dataset_file, models=1)
    ).json()
    other = api.tenant("other")
    assert_problem(other.client.get(f"/v1/batches/{batch['id']}"), 404, "not_found")
    assert other.client.get("/v1/batches").json()["items"] == []
    # nor may another tenant put this tenant's model in its own batch
    body = {"model_ids": [batch["jobs"][0]["model_id"]], "spec": batch["spec"]}
    assert_problem(other.client.post("/v1/batches", json=body), 422, "unknown_model")


@pytest.mark.parametrize(
    ("change", "location"),
    [
        ({"model_ids": []}, "model_ids"),
        ({"model_ids": ["mdl_a", "mdl_a"]}, "model_ids"),
        ({"spec": {"steps": [{"method": "quantize"}]}}, "eval_dataset_id"),
        ({"spec": {"model_id": "mdl_a", "eval_dataset_id": "ds_a", "steps": []}}, "model_id"),
        ({"webhook_url": "ftp://example.com"}, "webhook_url"),
    ],
)
def test_an_invalid_batch_is_refused(
    tenant: Api, change: dict[str, Any], location: str
) -> None:
    body = {"model_ids": ["mdl_a"], "spec": template("ds_a"), **change}
    problem = assert_problem(tenant.client.post("/v1/batches", json=body), 422, "invalid_request")
    assert any(location in map(str, error["loc"]) for error in problem["errors"])


def test_a_batch_larger_than_the_service_allows_is_refused(
    make_api: ApiFactory, model_file: Path, dataset_file: Path
) -> None:
    api = make_api(max_batch_jobs=1)
    body = batch_body(api, model_file, dataset_file, models=2)
    assert_problem(api.client.post("/v1/batches", json=body), 422, "batch_too_large")


def test_batch_pages_follow_the_cursor(tenant: Api, model_file: Path, dataset_file: Path) -> None:
    model_id, dataset_id = tenant.model_id(model_file), tenant.dataset_id(dataset_file)
    created = []
    for _ in range(3):
        body = {"model_ids": [model_id], "spec": template(dataset_id)}
        batch = tenant.client.post("/v1/batches", json=body).json()
        tenant.client.post(f"/v1/jobs/{batch['jobs'][0]['id']}/cancel")  # frees the slot
        created.append(batch["id"])
    first = tenant.client.get("/v1/batches", params={"limit": 2}).json()
    rest = tenant.client.get(
        "/v1/batches", params={"limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [b["id"] for b in first["items"] + rest["items"]] == created[::-1]
    assert rest["next_cursor"] is None
    bad_cursor = tenant.client.get("/v1/batches", params={"cursor": "nope"})
    assert_problem(bad_cursor, 400, "invalid_cursor")
