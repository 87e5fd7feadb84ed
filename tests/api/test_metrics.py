"""`/metrics`: Prometheus text from the database (jobs, queues, durations) and the API
process (upload bytes); admin key only. Structured logs carry the job id."""

from __future__ import annotations

import io
import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from api.log_context import JobLogContextMiddleware
from service.logs import JobIdFilter, JsonFormatter, configure_logging, log_context
from store.tables import JobRow, utcnow
from tests.api.conftest import Api, assert_problem


def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition: (name, sorted labels) -> value."""
    response = api.client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_need_the_admin_key(api: Api) -> None:
    assert_problem(api.with_token(None).client.get("/metrics"), 401, "unauthenticated")
    assert_problem(api.tenant().client.get("/metrics"), 403, "forbidden")


def test_jobs_by_state_and_queue_depth_are_read_from_the_database(
    api: Api, model_file: Path, dataset_file: Path
) -> None:
    tenant = api.tenant()
    spec = {
        "model_id": tenant.model_id(model_file),
        "eval_dataset_id": tenant.dataset_id(dataset_file),
        "steps": [{"method": "quantize", "mode": "dynamic"}],
    }
    for _ in range(3):
        assert tenant.submit(spec).status_code == 202
    cancelled = tenant.submit(spec).json()["id"]
    tenant.client.post(f"/v1/jobs/{cancelled}/cancel")

    samples = scrape(api)
    queue = api.settings.queue_cpu
    assert samples[("squeeze_jobs", (("state", "queued"),))] == 3
    assert samples[("squeeze_jobs", (("state", "cancelled"),))] == 1
    assert samples[("squeeze_jobs", (("state", "running"),))] == 0
    assert samples[("squeeze_queue_depth", (("queue", queue),))] == 3
    # the file-system broker holds the four messages sent (the cancel does not take one back)
    assert samples[("squeeze_broker_queue_length", (("queue", queue),))] == 4


def test_job_durations_are_a_histogram_per_method_and_state(
    api: Api, model_file: Path, dataset_file: Path
) -> None:
    spec = {
        "model_id": api.model_id(model_file),
        "eval_dataset_id": api.dataset_id(dataset_file),
        "steps": [{"method": "quantize", "mode": "dynamic"}],
    }
    durations_s = {api.submit(spec).json()["id"]: 3.0, api.submit(spec).json()["id"]: 120.0}
    sessions = api.client.app.state.services.sessions  # type: ignore[attr-defined]
    with sessions.begin() as session:
        for job_id, seconds in durations_s.items():
            started = utcnow() - timedelta(hours=1)
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id)
                .values(
                    state="succeeded",
                    started_at=started,
                    finished_at=started + timedelta(seconds=seconds),
                )
            )

    samples = scrape(api)
    labels = (("method", "quantize"), ("state", "succeeded"))
    assert samples[("squeeze_job_duration_seconds_count", labels)] == 2
    assert samples[("squeeze_job_duration_seconds_sum", labels)] == pytest.approx(123.0, abs=0.01)
    assert samples[("squeeze_job_duration_seconds_bucket", (("le", "1.0"), *labels))] == 0
    assert samples[("squeeze_job_duration_seconds_bucket", (("le", "5.0"), *labels))] == 1
    assert samples[("squeeze_job_duration_seconds_bucket", (("le", "300.0"), *labels))] == 2
    assert samples[("squeeze_job_duration_seconds_bucket", (("le", "+Inf"), *labels))] == 2


def test_upload_bytes_are_counted_per_kind(
    api: Api, model_file: Path, dataset_file: Path
) -> None:
    before = scrape(api)
    assert before[("squeeze_upload_bytes_total", (("kind", "model"),))] == 0
    api.model_id(model_file)
    api.model_id(model_file)
    api.dataset_id(dataset_file)
    assert api.upload("/v1/datasets", b"not an npz", "bad.npz").status_code == 422

    samples = scrape(api)
    model_bytes = 2 * model_file.stat().st_size
    assert samples[("squeeze_upload_bytes_total", (("kind", "model"),))] == model_bytes
    assert samples[("squeeze_upload_bytes_total", (("kind", "dataset"),))] == (
        dataset_file.stat().st_size
    )
    assert samples[("squeeze_uploads_total", (("kind", "model"),))] == 2
    assert samples[("squeeze_uploads_total", (("kind", "dataset"),))] == 1  # the refused one not


# --- structured logs ----------------------------------------------------------------------


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def json_log() -> io.StringIO:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(JobIdFilter())
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)


def test_json_log_lines_carry_the_job_id_of_their_context(json_log: io.StringIO) -> None:
    logger = logging.getLogger("tests.logs")
    logger.info("before")
    with log_context(job_id="job_1"):
        logger.info("inside %s", "the job", extra={"attempt": 2})
    logger.info("after")

    before, inside, after = json_lines(json_log)
    assert "job_id" not in before and "job_id" not in after
    assert inside["job_id"] == "job_1"
    assert inside["message"] == "inside the job"
    assert inside["attempt"] == 2
    assert inside["level"] == "INFO" and inside["logger"] == "tests.logs"


def test_the_api_logs_job_routes_with_the_job_id(api: Api, json_log: io.StringIO) -> None:
    logger = logging.getLogger("tests.logs")

    async def downstream(scope: Scope, receive: Receive, send: Send) -> None:
        logger.info("handled %s", scope["path"])
        await PlainTextResponse("ok")(scope, receive, send)

    client = TestClient(JobLogContextMiddleware(downstream))
    client.get("/v1/jobs/job_abc/events")
    client.get("/v1/account")

    job_line, account_line = json_lines(json_log)
    assert job_line["job_id"] == "job_abc"
    assert "job_id" not in account_line
    app = api.client.app  # the service installs it
    assert JobLogContextMiddleware in [m.cls for m in app.user_middleware]  # type: ignore[attr-defined]


def test_configure_logging_writes_json_and_keeps_other_handlers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    kept = logging.NullHandler()
    root.addHandler(kept)
    try:
        configure_logging("json")
        configure_logging("json")  # idempotent: one handler of ours
        with log_context(job_id="job_2"):
            logging.getLogger("tests.configured").warning("hello")
        ours = [h for h in root.handlers if h.get_name() == "squeeze"]
        assert len(ours) == 1 and kept in root.handlers
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert json.loads(line)["job_id"] == "job_2"
    finally:
        root.removeHandler(kept)
        configure_logging("text")
