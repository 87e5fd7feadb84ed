"""/v1/jobs: submission (idempotent, checked against the uploads), reading, listing,
cancelling, events and artifacts. No worker runs: jobs stay queued."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from api.schemas import JobState
from store import catalog, jobs, outbox
from store.db import transaction
from store.jobs import STATES, ArtifactRecord
from tests.api.conftest import Api, Uploaded, assert_problem, write_npz


def session_factory(api: Api) -> sessionmaker[Session]:
    return api.client.app.state.services.sessions  # type: ignore[attr-defined, no-any-return]


def submitted(api: Api, uploaded: Uploaded, **overrides: Any) -> dict[str, Any]:
    response = api.submit(uploaded.spec(**overrides))
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


# --- submission ------------------------------------------------------------------------


def test_job_submission_answers_202_with_location_and_a_queued_job(
    api: Api, uploaded: Uploaded
) -> None:
    response = api.submit(uploaded.spec())

    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued"
    assert job["progress"] == 0
    assert job["result"] is None and job["error"] is None
    assert job["spec"]["model_id"] == uploaded.model_id
    assert job["links"]["self"] == f"/v1/jobs/{job['id']}"


def test_job_submission_sends_one_message_to_the_broker(api: Api, uploaded: Uploaded) -> None:
    job = submitted(api, uploaded)

    messages = api.broker_messages()
    assert len(messages) == 1
    assert messages[0].name.endswith(f".{api.settings.queue_cpu}.msg")
    assert job["id"] in messages[0].read_text()


def test_job_submission_records_that_the_message_was_sent(api: Api, uploaded: Uploaded) -> None:
    job = submitted(api, uploaded)

    with transaction(session_factory(api)) as session:
        assert jobs.get_job(session, job["id"], tenant_id=None).enqueued_at is not None


def test_cuda_jobs_go_to_the_gpu_queue(api: Api, uploaded: Uploaded) -> None:
    submitted(api, uploaded, device="cuda")

    [message] = api.broker_messages()
    assert message.name.endswith(f".{api.settings.queue_gpu}.msg")


def test_job_is_committed_and_accepted_when_the_broker_is_down(
    api: Api, uploaded: Uploaded, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broker_down(job_id: str, queue: str) -> None:
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(api.client.app.state.services.queue, "send", broker_down)  # type: ignore[attr-defined]

    response = api.submit(uploaded.spec())

    assert response.status_code == 202
    job_id = response.json()["id"]
    assert api.client.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
    with transaction(session_factory(api)) as session:
        # its message waits in the outbox, for the broker's return
        assert jobs.get_job(session, job_id, tenant_id=None).enqueued_at is None
        assert outbox.backlog(session).pending == 1


def test_job_without_labels_in_its_data_is_accepted(
    api: Api, uploaded: Uploaded, unlabelled_dataset_file: Path
) -> None:
    unlabelled = api.dataset_id(unlabelled_dataset_file)

    response = api.submit(
        uploaded.spec(eval_dataset_id=unlabelled, calibration_dataset_id=unlabelled)
    )

    assert response.status_code == 202, response.text


# --- idempotency -----------------------------------------------------------------------


def test_same_idempotency_key_and_body_replays_the_same_job(api: Api, uploaded: Uploaded) -> None:
    first = api.submit(uploaded.spec(), key="key-1")
    second = api.submit(uploaded.spec(), key="key-1")

    assert second.status_code == 202
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert len(api.broker_messages()) == 1


def test_replay_is_recognised_by_meaning_not_by_bytes(api: Api, uploaded: Uploaded) -> None:
    """Key order and spelled-out defaults do not change the request's identity."""
    first = api.submit(uploaded.spec(), key="key-1")
    reordered = dict(reversed(list(uploaded.spec(device="auto", batch_size=1).items())))

    second = api.submit(reordered, key="key-1")

    assert second.json()["id"] == first.json()["id"]


def test_same_idempotency_key_with_another_body_is_a_409(api: Api, uploaded: Uploaded) -> None:
    api.submit(uploaded.spec(), key="key-1")

    response = api.submit(uploaded.spec(batch_size=8), key="key-1")

    assert_problem(response, 409, "idempotency_conflict")
    assert api.row_counts()["jobs"] == 1


def test_an_idempotency_key_over_200_characters_is_refused(api: Api, uploaded: Uploaded) -> None:
    assert_problem(api.submit(uploaded.spec(), key="k" * 201), 422, "invalid_request")


# --- specs that cannot run -------------------------------------------------------------


def test_spec_naming_a_missing_model_is_refused(api: Api, uploaded: Uploaded) -> None:
    body = assert_problem(api.submit(uploaded.spec(model_id="mdl_missing")), 422, "unknown_model")

    assert "mdl_missing" in body["detail"]
    assert api.row_counts()["jobs"] == 0
    assert api.broker_messages() == []


def test_spec_naming_a_missing_eval_dataset_is_refused(api: Api, uploaded: Uploaded) -> None:
    response = api.submit(uploaded.spec(eval_dataset_id="ds_missing"))

    assert_problem(response, 422, "unknown_dataset")
    assert api.row_counts()["jobs"] == 0


def test_spec_naming_a_missing_calibration_dataset_is_refused(api: Api, uploaded: Uploaded) -> None:
    response = api.submit(uploaded.spec(calibration_dataset_id="ds_missing"))

    assert_problem(response, 422, "unknown_dataset")


def test_spec_with_unknown_fields_is_refused_with_the_field_named(
    api: Api, uploaded: Uploaded
) -> None:
    response = api.submit(uploaded.spec(bogus=1))

    body = assert_problem(response, 422, "invalid_request")
    assert body["errors"][0]["loc"] == ["body", "bogus"]
    assert body["errors"][0]["type"] == "extra_forbidden"
    assert api.row_counts()["jobs"] == 0


def test_spec_with_an_unknown_step_method_is_refused(api: Api, uploaded: Uploaded) -> None:
    response = api.submit(uploaded.spec(steps=[{"method": "teleport"}]))

    assert_problem(response, 422, "invalid_request")


def test_spec_that_is_not_json_is_refused(api: Api) -> None:
    response = api.client.post(
        "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )

    assert_problem(response, 422, "invalid_request")


def test_spec_with_a_non_finite_number_is_refused(api: Api, uploaded: Uploaded) -> None:
    body = json.dumps(uploaded.spec(targets={"max_latency_ms": float("inf")}))

    response = api.client.post(
        "/v1/jobs", content=body.encode(), headers={"content-type": "application/json"}
    )

    assert_problem(response, 422, "invalid_request")
    assert api.row_counts()["jobs"] == 0


def test_dataset_whose_shapes_do_not_fit_the_model_is_refused(
    api: Api, uploaded: Uploaded, tmp_path: Path
) -> None:

    wrong = api.dataset_id(
        write_npz(tmp_path / "wrong.npz", input=np.zeros((4, 1, 28, 28), np.float32))
    )

    response = api.submit(uploaded.spec(eval_dataset_id=wrong))

    body = assert_problem(response, 422, "incompatible_data")
    assert wrong in body["detail"]
    assert api.row_counts()["jobs"] == 0
    assert api.broker_messages() == []


def test_dataset_without_the_models_input_is_refused(
    api: Api, uploaded: Uploaded, tmp_path: Path
) -> None:

    wrong = api.dataset_id(write_npz(tmp_path / "x.npz", images=np.zeros((4, 1, 8, 8), np.float32)))

    response = api.submit(uploaded.spec(calibration_dataset_id=wrong))

    assert_problem(response, 422, "incompatible_data")


@pytest.mark.parametrize("drop", [1, 1.0, 5])
def test_a_max_metric_drop_of_1_or_more_is_refused_with_how_to_write_one_point(
    api: Api, uploaded: Uploaded, drop: float
) -> None:
    response = api.submit(uploaded.spec(targets={"max_metric_drop": drop}))

    body = assert_problem(response, 422, "invalid_request")
    assert "one point is 0.01" in body["detail"] or "one point is 0.01" in json.dumps(body)
    assert api.row_counts()["jobs"] == 0


def test_training_data_that_is_the_eval_dataset_is_refused(api: Api, uploaded: Uploaded) -> None:
    response = api.submit(
        uploaded.spec(
            train_dataset_id=uploaded.dataset_id,
            steps=[{"method": "prune", "sparsity": 0.5}],
        )
    )

    body = assert_problem(response, 422, "invalid_request")
    assert "train_dataset_id and eval_dataset_id name the same dataset" in json.dumps(body)
    assert api.row_counts()["jobs"] == 0


def test_training_data_with_the_eval_data_s_bytes_is_refused_naming_both_fields(
    api: Api, uploaded: Uploaded
) -> None:
    # two records of the same bytes (an upload now reuses the first record, but two
    # concurrent uploads, or rows from before reuse, still make two ids, one sha256)
    sessions = api.client.app.state.services.sessions  # type: ignore[attr-defined]
    with sessions.begin() as session:
        first = catalog.get_dataset(session, uploaded.dataset_id, tenant_id=None)
        again = catalog.add_dataset(
            session,
            tenant_id=first.tenant_id,
            filename="copy.npz",
            sha256=first.sha256,
            size_bytes=first.size_bytes,
            info=first.info,
        ).id
    assert again != uploaded.dataset_id

    response = api.submit(
        uploaded.spec(train_dataset_id=again, steps=[{"method": "prune", "sparsity": 0.5}])
    )

    body = assert_problem(response, 422, "data_leakage")
    assert "train_dataset_id" in body["detail"] and "eval_dataset_id" in body["detail"]
    assert api.row_counts()["jobs"] == 0


def test_batch_sizes_name_every_deployment_batch_and_batch_size_follows(
    api: Api, uploaded: Uploaded
) -> None:
    job = submitted(api, uploaded, batch_sizes=[1, 16, 64])
    assert job["spec"]["batch_sizes"] == [1, 16, 64]
    assert job["spec"]["batch_size"] == 64  # unset: the largest deployment batch

    response = api.submit(uploaded.spec(batch_sizes=[1, 16], batch_size=32))
    body = assert_problem(response, 422, "invalid_request")
    assert "batch_size 32 is not among batch_sizes" in json.dumps(body)


# --- reading and listing ---------------------------------------------------------------


def test_job_can_be_read_back(api: Api, uploaded: Uploaded) -> None:
    job = submitted(api, uploaded)

    response = api.client.get(f"/v1/jobs/{job['id']}")

    assert response.status_code == 200
    assert response.json() == job


def test_unknown_job_is_a_404_problem(api: Api) -> None:
    assert_problem(api.client.get("/v1/jobs/job_missing"), 404, "not_found")


def test_job_list_pages_through_every_job_once_newest_first(api: Api, uploaded: Uploaded) -> None:
    created = [submitted(api, uploaded)["id"] for _ in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0

    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = api.client.get("/v1/jobs", params=params).json()
        pages += 1
        assert len(page["items"]) <= 2
        seen += [job["id"] for job in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == list(reversed(created))
    assert pages == 3


def test_job_list_filters_by_state(api: Api, uploaded: Uploaded) -> None:
    kept = submitted(api, uploaded)["id"]
    cancelled = submitted(api, uploaded)["id"]
    api.client.post(f"/v1/jobs/{cancelled}/cancel")

    queued = api.client.get("/v1/jobs", params={"state": "queued"}).json()
    ended = api.client.get("/v1/jobs", params={"state": "cancelled"}).json()

    assert [job["id"] for job in queued["items"]] == [kept]
    assert [job["id"] for job in ended["items"]] == [cancelled]


def test_job_list_filters_by_step_method_a_page_at_a_time(
    api: Api, uploaded: Uploaded
) -> None:
    prune = [{"method": "prune", "sparsity": 0.5, "fine_tune": {"epochs": 0}}]
    pruned = [submitted(api, uploaded, steps=prune)["id"] for _ in range(3)]
    quantized = submitted(api, uploaded)["id"]  # newest, not a prune job

    first = api.client.get("/v1/jobs", params={"method": "prune", "limit": 2}).json()
    rest = api.client.get(
        "/v1/jobs", params={"method": "prune", "limit": 2, "cursor": first["next_cursor"]}
    ).json()

    assert [job["id"] for job in first["items"] + rest["items"]] == pruned[::-1]
    assert rest["next_cursor"] is None
    only = api.client.get("/v1/jobs", params={"method": "quantize"}).json()["items"]
    assert [job["id"] for job in only] == [quantized]
    assert api.client.get("/v1/jobs", params={"method": "distill"}).json()["items"] == []
    assert_problem(api.client.get("/v1/jobs", params={"method": "zip"}), 422, "invalid_request")


def test_job_list_refuses_an_unknown_state(api: Api) -> None:
    assert_problem(api.client.get("/v1/jobs", params={"state": "done"}), 422, "invalid_request")


@pytest.mark.parametrize("limit", [0, 101])
def test_job_list_refuses_a_limit_outside_1_to_100(api: Api, limit: int) -> None:
    assert_problem(api.client.get("/v1/jobs", params={"limit": limit}), 422, "invalid_request")


@pytest.mark.parametrize(
    "cursor",
    ["not-a-cursor", "NQ", "WzEsIDJd", "WyIyMDI0LTAxLTAxVDAwOjAwOjAwIiwgImpvYiJd", "%%%"],
    ids=["garbage", "json-number", "wrong-types", "naive-datetime", "not-base64"],
)
def test_job_list_refuses_a_cursor_it_did_not_issue(api: Api, cursor: str) -> None:
    response = api.client.get("/v1/jobs", params={"cursor": cursor})

    assert_problem(response, 400, "invalid_cursor")


def test_job_state_values_are_the_stores_states() -> None:
    assert set(get_args(JobState)) == STATES


# --- cancel ----------------------------------------------------------------------------


def test_cancelling_a_queued_job_cancels_it(api: Api, uploaded: Uploaded) -> None:
    job = submitted(api, uploaded)

    response = api.client.post(f"/v1/jobs/{job['id']}/cancel")

    assert response.status_code == 202
    assert response.json()["state"] == "cancelled"
    assert response.json()["finished_at"] is not None
    assert api.client.get(f"/v1/jobs/{job['id']}").json()["state"] == "cancelled"


def test_cancelling_a_job_that_already_ended_is_a_409(api: Api, uploaded: Uploaded) -> None:
    job = submitted(api, uploaded)
    api.client.post(f"/v1/jobs/{job['id']}/cancel")

    response = api.client.post(f"/v1/jobs/{job['id']}/cancel")

    assert_problem(response, 409, "job_already_final")


def test_cancelling_an_unknown_job_is_a_404(api: Api) -> None:
    assert_problem(api.client.post("/v1/jobs/job_missing/cancel"), 404, "not_found")


# --- events ----------------------------------------------------------------------------


def test_job_events_list_its_log_in_order(api: Api, uploaded: Uploaded) -> None:
    job = submitted(api, uploaded)
    api.client.post(f"/v1/jobs/{job['id']}/cancel")

    events = api.client.get(f"/v1/jobs/{job['id']}/events").json()

    assert [event["kind"] for event in events["items"]] == ["created", "cancel_requested"]
    assert events["next_after"] == events["items"][-1]["id"]


def test_job_events_after_an_id_return_only_newer_ones(api: Api, uploaded: Uploaded) -> None:
    job = submitted(api, uploaded)
    first = api.client.get(f"/v1/jobs/{job['id']}/events").json()
    api.client.post(f"/v1/jobs/{job['id']}/cancel")

    newer = api.client.get(
        f"/v1/jobs/{job['id']}/events", params={"after": first["next_after"]}
    ).json()
    nothing_yet = api.client.get(
        f"/v1/jobs/{job['id']}/events", params={"after": newer["next_after"]}
    ).json()

    assert [event["kind"] for event in newer["items"]] == ["cancel_requested"]
    assert nothing_yet == {"items": [], "next_after": newer["next_after"]}


def test_events_of_an_unknown_job_are_a_404(api: Api) -> None:
    assert_problem(api.client.get("/v1/jobs/job_missing/events"), 404, "not_found")


# --- artifacts -------------------------------------------------------------------------


def finish_with_artifact(api: Api, job_id: str, name: str, content: bytes) -> str:
    """Play the worker: claim the job and end it with one artifact stored as a blob."""
    blobs = api.client.app.state.services.blobs  # type: ignore[attr-defined]
    staged = blobs.stage_chunks([content], max_bytes=len(content))
    blobs.publish(staged)
    with transaction(session_factory(api)) as session:
        attempt = jobs.claim(session, job_id, worker="test", lease_s=60)
        assert attempt is not None
        record = ArtifactRecord(
            name=name, media_type="application/json", sha256=staged.sha256, size_bytes=len(content)
        )
        assert jobs.finish(session, job_id, attempt, state="succeeded", artifacts=[record])
    return str(staged.sha256)


def test_a_queued_job_has_no_artifacts(api: Api, uploaded: Uploaded) -> None:
    job = submitted(api, uploaded)

    response = api.client.get(f"/v1/jobs/{job['id']}/artifacts")

    assert response.status_code == 200
    assert response.json() == {"items": []}


def test_artifacts_of_an_unknown_job_are_a_404(api: Api) -> None:
    assert_problem(api.client.get("/v1/jobs/job_missing/artifacts"), 404, "not_found")


def test_finished_job_lists_its_artifacts_with_download_urls(api: Api, uploaded: Uploaded) -> None:
    job = submitted(api, uploaded)
    sha256 = finish_with_artifact(api, job["id"], "report.json", b'{"ok": true}')

    items = api.client.get(f"/v1/jobs/{job['id']}/artifacts").json()["items"]

    assert items == [
        {
            "name": "report.json",
            "media_type": "application/json",
            "size_bytes": 12,
            "sha256": sha256,
            "url": f"/v1/jobs/{job['id']}/artifacts/report.json",
        }
    ]


def test_artifact_downloads_as_an_attachment_with_its_sha256_as_etag(
    api: Api, uploaded: Uploaded
) -> None:
    job = submitted(api, uploaded)
    content = b'{"ok": true}'
    finish_with_artifact(api, job["id"], "report.json", content)

    response = api.client.get(f"/v1/jobs/{job['id']}/artifacts/report.json")

    assert response.status_code == 200
    assert response.content == content
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["etag"].strip('"') == hashlib.sha256(content).hexdigest()
    assert response.headers["content-disposition"] == 'attachment; filename="report.json"'


def test_unknown_artifact_name_is_a_404_problem(api: Api, uploaded: Uploaded) -> None:
    job = submitted(api, uploaded)

    response = api.client.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx")

    assert_problem(response, 404, "not_found")
