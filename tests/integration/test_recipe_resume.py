"""An auto recipe whose worker is killed after some candidates finished: the job's next
attempt, on another real Celery worker process, resumes the recipe from the candidates
the first attempt recorded instead of producing and measuring them again."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from store.db import make_engine
from store.tables import RecipeCandidateRow
from tests.conftest import DigitsFiles
from tests.integration.conftest import Deployment, DeploymentFactory
from tests.services import wait_for

pytestmark = pytest.mark.slow


def measured_candidates(deployment: Deployment, job_url: str, attempt: int) -> list[str]:
    """The recipe's candidates the attempt measured itself, by name (from the job's
    events; a recipe's row has a stage, quantize auto's own candidates inside it none)."""
    events = deployment.get(f"{job_url}/events?limit=1000")["items"]
    rows = [
        event["data"]["candidate"]
        for event in events
        if event["kind"] == "progress"
        and event["attempt"] == attempt
        and "stage" in event["data"].get("candidate", {})
    ]
    return [
        row["name"]
        for row in rows
        if row["status"] == "measured" and "resumed_from_attempt" not in row
    ]


def test_a_killed_workers_recipe_resumes_from_its_finished_candidates(
    deploy: DeploymentFactory, digits_files: DigitsFiles
) -> None:
    # enough timing runs that the recipe is still busy when its first candidate is done
    deployment = deploy(measure_runs=200, lease_s=3.0, heartbeat_s=0.5)
    first = deployment.start_worker()
    spec: dict[str, Any] = {
        **deployment.upload_digits(digits_files),
        "steps": [{"method": "auto", "kinds": ["graph", "quantize"], "time_budget_s": 150}],
        "targets": {"max_metric_drop": 0.05, "allow_slower": True},
    }
    job_url = deployment.submit(spec)
    assert wait_for(
        lambda: len(measured_candidates(deployment, job_url, 1)) >= 1, timeout_s=240
    ), deployment.worker_logs()
    assert deployment.get(job_url)["state"] == "running"
    first.kill()
    finished_by_first = measured_candidates(deployment, job_url, 1)

    deployment.start_worker()
    job = deployment.wait_final(job_url, timeout_s=400)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempt"] == 2
    details = job["result"]["steps"][0]["details"]
    rows = {row["name"]: row for row in details["candidates"] if row["name"] != "input"}
    resumed = {name for name, row in rows.items() if row.get("resumed_from_attempt") == 1}
    # what attempt 1 finished is taken as it was; the rest was produced by attempt 2
    assert set(finished_by_first) <= resumed
    # measured ones with their numbers (a recorded failure is resumed too, with its note)
    assert all("metric_value" in rows[name] for name in finished_by_first)
    assert set(measured_candidates(deployment, job_url, 2)).isdisjoint(resumed)
    assert set(rows) == resumed | set(measured_candidates(deployment, job_url, 2)) | {
        name for name, row in rows.items() if row["status"] == "failed"
    }
    assert sorted(details["resumed"]) == sorted(
        f"{name}: resumed from attempt 1" for name in resumed
    )
    # the job ended: its recipe's candidates (and the blobs only they named) are forgotten
    engine = make_engine(deployment.settings.resolved_database_url)
    try:
        with engine.connect() as connection:
            left = connection.scalar(
                select(func.count()).where(RecipeCandidateRow.job_id == job["id"])
            )
    finally:
        engine.dispose()
    assert left == 0
