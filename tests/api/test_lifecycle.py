"""Listing and deleting what a tenant stored: models, datasets and finished jobs, with
their files; usage drops at once; what a queued or running job reads cannot go; other
tenants' ids are unknown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from store import catalog, jobs
from store.tables import ModelRow
from tests.api.conftest import Api, Uploaded, assert_problem
from worker.runner import JobRunner


def usage_bytes(api: Api) -> int:
    response = api.client.get("/v1/account")
    assert response.status_code == 200, response.text
    return int(response.json()["tenant"]["usage"]["storage_bytes"])


def blob_names(api: Api) -> set[str]:
    return {info.sha256 for info in api.client.app.state.services.blobs.list()}  # type: ignore[attr-defined]


def run_job(api: Api, job_id: str) -> str:
    """Run the queued job here, as a worker would."""
    services = api.client.app.state.services  # type: ignore[attr-defined]
    return JobRunner(api.settings, services.sessions, services.blobs).run(job_id)


def set_created(api: Api, model_id: str, when: datetime) -> None:
    sessions = api.client.app.state.services.sessions  # type: ignore[attr-defined]
    with sessions.begin() as session:
        session.execute(update(ModelRow).where(ModelRow.id == model_id).values(created_at=when))


# --- listings ----------------------------------------------------------------------------


def test_models_are_listed_newest_first_a_page_at_a_time(api: Api, model_file: Path) -> None:
    ids = [api.model_id(model_file, variant=str(n)) for n in range(3)]
    first = api.client.get("/v1/models", params={"limit": 2}).json()
    second = api.client.get(
        "/v1/models", params={"limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [item["id"] for item in first["items"]] == ids[::-1][:2]
    assert [item["id"] for item in second["items"]] == ids[:1]
    assert second["next_cursor"] is None


def test_datasets_are_listed_newest_first(api: Api, dataset_file: Path) -> None:
    ids = [api.dataset_id(dataset_file, variant=str(n)) for n in range(2)]
    body = api.client.get("/v1/datasets").json()
    assert [item["id"] for item in body["items"]] == ids[::-1]
    assert body["items"][0]["info"]["samples"] == 64


def test_a_listing_filters_by_name_in_any_case(api: Api, model_file: Path) -> None:
    wanted = api.upload_model(model_file, name="ResNet_small.onnx").json()["id"]
    api.upload_model(model_file, name="bert.onnx", variant="2")
    # % is a character, not a wildcard
    api.upload_model(model_file, name="resnet%large.onnx", variant="3")
    items = api.client.get("/v1/models", params={"name": "resnet_"}).json()["items"]
    assert [item["id"] for item in items] == [wanted]


def test_a_listing_filters_by_creation_date(api: Api, model_file: Path) -> None:
    old, recent = api.model_id(model_file), api.model_id(model_file, variant="recent")
    now = datetime.now(UTC)
    set_created(api, old, now - timedelta(days=10))
    cutoff = (now - timedelta(days=1)).isoformat()
    after = api.client.get("/v1/models", params={"created_after": cutoff}).json()["items"]
    before = api.client.get("/v1/models", params={"created_before": cutoff}).json()["items"]
    assert [item["id"] for item in after] == [recent]
    assert [item["id"] for item in before] == [old]


def test_a_date_without_a_zone_is_taken_as_utc(api: Api, model_file: Path) -> None:
    model_id = api.model_id(model_file)
    naive = (datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None).isoformat()
    items = api.client.get("/v1/models", params={"created_after": naive}).json()["items"]
    assert [item["id"] for item in items] == [model_id]


def test_a_cursor_this_service_did_not_issue_is_a_400(api: Api) -> None:
    response = api.client.get("/v1/datasets", params={"cursor": "bogus"})
    assert_problem(response, 400, "invalid_cursor")


def test_a_tenant_lists_only_its_own_uploads(api: Api, model_file: Path) -> None:
    api.model_id(model_file)
    other = api.tenant("other")
    mine = other.model_id(model_file)
    assert [item["id"] for item in other.client.get("/v1/models").json()["items"]] == [mine]


# --- deleting models and datasets -----------------------------------------------------------


def test_a_deleted_model_is_gone_with_its_file_and_its_bytes_leave_the_usage(
    api: Api, model_file: Path
) -> None:
    body = api.upload_model(model_file).json()
    before = usage_bytes(api)

    response = api.client.delete(f"/v1/models/{body['id']}")

    assert response.status_code == 204 and response.content == b""
    assert_problem(api.client.get(f"/v1/models/{body['id']}"), 404, "not_found")
    assert usage_bytes(api) == before - body["size_bytes"]
    assert body["sha256"] not in blob_names(api)


def test_bytes_two_uploads_share_stay_until_the_last_one_is_deleted(
    api: Api, dataset_file: Path
) -> None:
    first = api.upload_dataset(dataset_file).json()
    # a second record of the same bytes: an upload reuses the first record, but two
    # concurrent uploads (or records from before reuse) still share one blob
    sessions = api.client.app.state.services.sessions  # type: ignore[attr-defined]
    with sessions.begin() as session:
        row = catalog.get_dataset(session, first["id"], tenant_id=None)
        second = {"id": catalog.add_dataset(
            session, tenant_id=row.tenant_id, filename="copy.npz", sha256=row.sha256,
            size_bytes=row.size_bytes, info=row.info,
        ).id, "sha256": row.sha256}  # fmt: skip
    assert first["sha256"] == second["sha256"]

    assert api.client.delete(f"/v1/datasets/{first['id']}").status_code == 204
    assert first["sha256"] in blob_names(api)
    assert api.client.get(f"/v1/datasets/{second['id']}").status_code == 200

    assert api.client.delete(f"/v1/datasets/{second['id']}").status_code == 204
    assert first["sha256"] not in blob_names(api)


def test_a_model_a_queued_job_reads_cannot_be_deleted(api: Api, uploaded: Uploaded) -> None:
    job_id = api.submit(uploaded.spec()).json()["id"]
    problem = assert_problem(api.client.delete(f"/v1/models/{uploaded.model_id}"), 409, "in_use")
    assert problem["job_id"] == job_id and job_id in problem["detail"]
    assert api.client.get(f"/v1/models/{uploaded.model_id}").status_code == 200


def test_a_dataset_can_be_deleted_once_the_job_reading_it_is_cancelled(
    api: Api, uploaded: Uploaded
) -> None:
    job_id = api.submit(uploaded.spec()).json()["id"]
    assert_problem(api.client.delete(f"/v1/datasets/{uploaded.dataset_id}"), 409, "in_use")
    assert api.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    assert api.client.delete(f"/v1/datasets/{uploaded.dataset_id}").status_code == 204


def test_a_job_cannot_be_submitted_on_a_deleted_model(api: Api, uploaded: Uploaded) -> None:
    assert api.client.delete(f"/v1/models/{uploaded.model_id}").status_code == 204
    assert_problem(api.submit(uploaded.spec()), 422, "unknown_model")


def test_another_tenants_model_and_dataset_are_not_found(api: Api, uploaded: Uploaded) -> None:
    other = api.tenant("other")
    assert_problem(other.client.delete(f"/v1/models/{uploaded.model_id}"), 404, "not_found")
    assert_problem(other.client.delete(f"/v1/datasets/{uploaded.dataset_id}"), 404, "not_found")
    assert api.client.get(f"/v1/models/{uploaded.model_id}").status_code == 200


# --- deleting jobs -------------------------------------------------------------------------


def test_a_queued_job_cannot_be_deleted_before_it_is_cancelled(
    api: Api, uploaded: Uploaded
) -> None:
    job_id = api.submit(uploaded.spec()).json()["id"]
    problem = assert_problem(api.client.delete(f"/v1/jobs/{job_id}"), 409, "job_active")
    assert problem["state"] == "queued" and "cancel" in problem["detail"]
    api.client.post(f"/v1/jobs/{job_id}/cancel")
    assert api.client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert_problem(api.client.get(f"/v1/jobs/{job_id}"), 404, "not_found")
    assert_problem(api.client.get(f"/v1/jobs/{job_id}/events"), 404, "not_found")


def test_a_running_job_cannot_be_deleted_and_the_answer_says_cancel_first(
    api: Api, uploaded: Uploaded
) -> None:
    job_id = api.submit(uploaded.spec()).json()["id"]
    sessions = api.client.app.state.services.sessions  # type: ignore[attr-defined]
    with sessions.begin() as session:  # a worker takes it
        assert jobs.claim(session, job_id, worker="test", lease_s=60) == 1
    problem = assert_problem(api.client.delete(f"/v1/jobs/{job_id}"), 409, "job_active")
    assert problem["state"] == "running"
    assert f"POST /v1/jobs/{job_id}/cancel" in problem["detail"]
    assert api.client.get(f"/v1/jobs/{job_id}").json()["state"] == "running"


@pytest.mark.slow
def test_a_finished_job_goes_with_its_artifacts_and_their_bytes(
    api: Api, uploaded: Uploaded
) -> None:
    job_id = api.submit(uploaded.spec()).json()["id"]
    assert run_job(api, job_id) == "succeeded"
    artifacts = api.client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
    shas = {item["sha256"] for item in artifacts}
    assert shas <= blob_names(api)
    before = usage_bytes(api)

    assert api.client.delete(f"/v1/jobs/{job_id}").status_code == 204

    assert usage_bytes(api) == before - sum(item["size_bytes"] for item in artifacts)
    assert shas.isdisjoint(blob_names(api))
    assert_problem(api.client.get(f"/v1/jobs/{job_id}/artifacts"), 404, "not_found")
    # the job's inputs are the user's own uploads: they stay
    assert api.client.get(f"/v1/models/{uploaded.model_id}").status_code == 200


def test_another_tenants_job_is_not_found(api: Api, uploaded: Uploaded) -> None:
    job_id = api.submit(uploaded.spec()).json()["id"]
    api.client.post(f"/v1/jobs/{job_id}/cancel")
    assert_problem(api.tenant("other").client.delete(f"/v1/jobs/{job_id}"), 404, "not_found")
    assert api.client.get(f"/v1/jobs/{job_id}").status_code == 200
