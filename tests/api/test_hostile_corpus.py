"""Every file of the hostile corpus (tests/hostile/corpus.py) is refused with a 4xx
problem naming the reason it was built to hit (its code and a fragment of its detail),
stores nothing, leaves no work files, and never runs the code it carries."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.api.conftest import Api, ApiFactory
from tests.hostile.corpus import (
    DATASET_REASONS,
    MODEL_REASONS,
    Hostile,
    build_corpus,
    expected_refusal,
)

# The canary path is fixed when the corpus is built (at collection); each test checks it.
CANARY = Path(tempfile.gettempdir()) / f"squeeze-hostile-canary-{os.getpid()}"
CORPUS = build_corpus(CANARY)


def test_the_corpus_holds_at_least_fifty_files_of_every_kind() -> None:
    assert len(CORPUS) >= 50
    assert len({case.name + case.route for case in CORPUS}) == len(CORPUS)
    assert {case.route for case in CORPUS} == {"/v1/models", "/v1/datasets"}


def test_every_case_says_what_it_must_be_refused_for() -> None:
    models = {case.name for case in CORPUS if case.route == "/v1/models"}
    datasets = {case.name for case in CORPUS if case.route == "/v1/datasets"}
    assert models == set(MODEL_REASONS)
    assert datasets == set(DATASET_REASONS)


@pytest.fixture
def hostile_api(make_api: ApiFactory) -> Api:
    # Small caps keep the bombs cheap: refused on their declared sizes.
    return make_api(
        max_model_uncompressed_bytes=20_000_000, max_dataset_uncompressed_bytes=100_000_000
    )


@pytest.mark.parametrize("case", CORPUS, ids=[f"{c.route[4:]}: {c.name}" for c in CORPUS])
def test_a_hostile_upload_is_refused_and_leaves_nothing(hostile_api: Api, case: Hostile) -> None:
    before = hostile_api.snapshot()

    response = hostile_api.upload(case.route, case.content, case.filename)

    code, reason = expected_refusal(case)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    if case.status is not None:
        assert response.status_code == case.status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == response.status_code
    assert body["code"] == code, body
    assert reason.lower() in body["detail"].lower(), body
    assert hostile_api.snapshot() == before
    assert list((hostile_api.settings.work_dir).iterdir()) == []
    assert not CANARY.exists()
