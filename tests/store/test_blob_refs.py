"""Deleting blobs no row names, safely: on SQLite and PostgreSQL, a delete racing an
upload of the same bytes keeps them (it waits for the upload's lock, then sees its row)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from store import blob_refs, catalog, tenants
from store.blobs import LocalBlobStore
from store.db import make_engine, make_sessionmaker, transaction
from store.migrate import upgrade_to_head
from tests import services


@pytest.fixture(params=["sqlite", "postgres"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'refs.db'}"
        name = None
    else:
        try:
            name = services.create_database()
        except Exception as error:
            services.service_unavailable("PostgreSQL", error)
        url = services.postgres_url_for(name)
    upgrade_to_head(url)
    engine = make_engine(url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()
        if name is not None:
            services.drop_database(name)


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def add_model(session: Session, sha256: str) -> str:
    tenant = tenants.create_tenant(session, "refs")
    row = catalog.add_model(
        session, tenant_id=tenant.id, filename="m.onnx", sha256=sha256, size_bytes=1, info={}
    )
    return row.id


def test_a_blob_no_row_names_is_deleted_and_one_a_row_names_is_kept(
    sessions: sessionmaker[Session], blobs: LocalBlobStore
) -> None:
    named = blobs.put([b"named"], max_bytes=10).sha256
    orphan = blobs.put([b"orphan"], max_bytes=10).sha256
    with transaction(sessions) as session:
        add_model(session, named)
    assert blob_refs.release(sessions, blobs, [named, orphan, orphan]) == [orphan]
    assert blobs.exists(named) and not blobs.exists(orphan)


def test_a_delete_racing_an_upload_of_the_same_bytes_keeps_them(
    sessions: sessionmaker[Session], blobs: LocalBlobStore
) -> None:
    sha256 = blobs.put([b"same bytes"], max_bytes=100).sha256
    locked, outcome = threading.Event(), {}

    def upload() -> None:  # as api/uploads: lock, publish, insert the row, then commit
        with transaction(sessions) as session:
            blob_refs.lock(session, sha256)
            blobs.put([b"same bytes"], max_bytes=100)
            add_model(session, sha256)
            locked.set()
            time.sleep(0.5)

    uploader = threading.Thread(target=upload)
    uploader.start()
    assert locked.wait(10)
    started = time.monotonic()
    outcome["deleted"] = blob_refs.delete_if_unreferenced(sessions, blobs, sha256)
    waited_s = time.monotonic() - started
    uploader.join()

    assert outcome["deleted"] is False and blobs.exists(sha256)
    assert waited_s > 0.2  # it waited for the upload's commit, then saw its row
