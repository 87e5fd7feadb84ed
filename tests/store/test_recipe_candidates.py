"""The auto recipe's candidates of a job on SQLite and a real PostgreSQL: a recipe's
start is recorded by its first attempt only, a candidate is kept once (the first attempt
to finish it wins), the rows name their blobs while they exist, and the job's end
forgets them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from store import blob_refs, jobs, recipe_candidates
from store.db import transaction
from store.recipe_candidates import CandidateRecord
from store.tables import JobRow
from tests.services import database_with_tenant

TENANT = "ten_recipe"
SPEC = {"model_id": "mdl_x", "eval_dataset_id": "ds_x", "steps": [{"method": "auto"}]}
MODEL_SHA = "a" * 64
FLOAT_SHA = "b" * 64


@pytest.fixture(params=["sqlite", "postgres"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with database_with_tenant(request, tmp_path, TENANT, "recipe") as (engine, factory):
        yield factory
        with engine.begin() as connection:  # the session database is shared
            connection.execute(JobRow.__table__.delete().where(JobRow.tenant_id == TENANT))


@pytest.fixture
def job_id(sessions: sessionmaker[Session]) -> str:
    with transaction(sessions) as session:
        job, _ = jobs.create_job(
            session, tenant_id=TENANT, spec=SPEC, queue="cpu", request_sha256="0" * 64,
            idempotency_key=None,
        )  # fmt: skip
        return job.id


def candidate(key: str, attempt: int, measured: bool = True) -> CandidateRecord:
    return CandidateRecord(
        key=key,
        attempt=attempt,
        seconds=1.5,
        measurement={"size_bytes": 10, "metric_name": "accuracy"} if measured else None,
        details={"ratio": 0.3},
        note=None if measured else "failed: it did not fit",
        model_file="model.onnx" if measured else None,
        sha256=MODEL_SHA if measured else None,
        float_model_file="model.onnx" if measured else None,
        float_sha256=FLOAT_SHA if measured else None,
    )


def test_the_recipe_start_is_the_first_attempts(
    sessions: sessionmaker[Session], job_id: str
) -> None:
    with transaction(sessions) as session:
        first = recipe_candidates.begin(session, job_id, "auto-1", attempt=1)
    with transaction(sessions) as session:
        again = recipe_candidates.begin(session, job_id, "auto-1", attempt=2)
        other = recipe_candidates.begin(session, job_id, "auto-2", attempt=2)
    assert again == first and first.first_attempt == 1
    assert other.first_attempt == 2 and other.started_at >= first.started_at


def test_a_candidate_is_kept_once_and_read_back_as_recorded(
    sessions: sessionmaker[Session], job_id: str
) -> None:
    with transaction(sessions) as session:
        assert recipe_candidates.record(session, job_id, "auto-1", candidate("once:a<original", 1))
        assert recipe_candidates.record(
            session, job_id, "auto-1", candidate("short:b<original", 1, measured=False)
        )
    with transaction(sessions) as session:
        # a stale attempt finishing the same candidate later changes nothing
        assert not recipe_candidates.record(
            session, job_id, "auto-1", candidate("once:a<original", 2)
        )
    with transaction(sessions) as session:
        kept = recipe_candidates.finished(session, job_id, "auto-1")
        assert recipe_candidates.finished(session, job_id, "auto-2") == []
    assert kept == [
        candidate("once:a<original", 1),
        candidate("short:b<original", 1, measured=False),
    ]


def test_the_rows_name_their_blobs_until_the_job_forgets_them(
    sessions: sessionmaker[Session], job_id: str
) -> None:
    with transaction(sessions) as session:
        recipe_candidates.begin(session, job_id, "auto-1", attempt=1)
        recipe_candidates.record(session, job_id, "auto-1", candidate("once:a<original", 1))
    with transaction(sessions) as session:
        assert blob_refs.is_referenced(session, MODEL_SHA)
        assert {MODEL_SHA, FLOAT_SHA} <= blob_refs.referenced_blobs(session)
    with transaction(sessions) as session:
        assert sorted(recipe_candidates.forget_job(session, job_id)) == [MODEL_SHA, FLOAT_SHA]
    with transaction(sessions) as session:
        assert not blob_refs.is_referenced(session, MODEL_SHA)
        assert recipe_candidates.finished(session, job_id, "auto-1") == []
        # a new start: the forgotten recipe's budget is not counted again
        assert recipe_candidates.begin(session, job_id, "auto-1", attempt=3).first_attempt == 3


def claim(
    sessions: sessionmaker[Session], job_id: str, key: str, holder: str, lease_s: float
) -> bool:
    with transaction(sessions) as session:
        return recipe_candidates.claim(session, job_id, "auto-r", key, holder, lease_s)


def test_a_candidate_is_claimed_by_one_holder_until_its_claim_lapses(
    sessions: sessionmaker[Session], job_id: str
) -> None:
    assert claim(sessions, job_id, "short:prune-30<original", "helper-1", 60)
    assert claim(sessions, job_id, "short:prune-30<original", "helper-1", 60)  # its own
    assert not claim(sessions, job_id, "short:prune-30<original", "runner", 60)
    # a claim whose holder stopped renewing it lapses: another takes it over
    assert claim(sessions, job_id, "short:prune-50<original", "helper-2", 0.0)
    assert claim(sessions, job_id, "short:prune-50<original", "runner", 60)
    assert not claim(sessions, job_id, "short:prune-50<original", "helper-2", 60)


def test_renewing_keeps_a_claim_and_a_recorded_candidate_cannot_be_claimed(
    sessions: sessionmaker[Session], job_id: str
) -> None:
    assert claim(sessions, job_id, "short:prune-30<original", "helper-1", 0.0)
    with transaction(sessions) as session:
        assert recipe_candidates.renew(session, job_id, "helper-1", 60) == 1
    assert not claim(sessions, job_id, "short:prune-30<original", "runner", 60)
    with transaction(sessions) as session:
        recipe_candidates.record(session, job_id, "auto-r", candidate("short:prune-70<original", 1))
    assert not claim(sessions, job_id, "short:prune-70<original", "helper-1", 60)
    with transaction(sessions) as session:
        recipe_candidates.forget_job(session, job_id)
    # forgotten with the job's recipes: nobody holds it any more
    assert claim(sessions, job_id, "short:prune-30<original", "runner", 60)


def test_a_helpers_candidate_says_who_measured_it(
    sessions: sessionmaker[Session], job_id: str
) -> None:
    helper_made = dataclasses.replace(
        candidate("short:prune-30<original", 1), measured_by="helper-1"
    )
    with transaction(sessions) as session:
        recipe_candidates.record(session, job_id, "auto-r", helper_made)
        [kept] = recipe_candidates.finished(session, job_id, "auto-r")
    assert kept.measured_by == "helper-1"
