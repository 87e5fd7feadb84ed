"""Every file of the hostile corpus (tests/hostile/corpus.py) is refused with a 4xx
problem, stores nothing, leaves no work files, and never runs the code it carries."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.api.conftest import Api, ApiFactory
from tests.hostile.corpus import Hostile, build_corpus

# The canary path is fixed when the corpus is built (at collection); each test checks it.
CANARY = Path(tempfile.gettempdir()) / f"squeeze-hostile-canary-{os.getpid()}"
CORPUS = build_corpus(CANARY)


def test_the_corpus_holds_at_least_fifty_files_of_every_kind() -> None:
    assert len(CORPUS) >= 50
    assert len({case.name + case.route for case in CORPUS}) == len(CORPUS)
    assert {case.route for case in CORPUS} == {"/v1/models", "/v1/datasets"}


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

    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == response.status_code and body["code"] and body["detail"]
    assert hostile_api.snapshot() == before
    assert list((hostile_api.settings.work_dir).iterdir()) == []
    assert not CANARY.exists()
