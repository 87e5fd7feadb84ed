"""Work directories: an attempt's folder and its job's go when the job ends, and the
cleanup pass (run when a worker starts, then periodically) sweeps what killed attempts
left behind."""

from __future__ import annotations

from pathlib import Path

from store import jobs
from store.db import transaction
from tests.worker.conftest import StoreFactory, StoreWithDigits
from worker.cleanup import clean_once
from worker.runner import JobRunner


def leave(path: Path) -> Path:
    """A folder with a file in it, as a killed attempt leaves its work."""
    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(b"left behind")
    return path


def claim(store: StoreWithDigits, job_id: str) -> int:
    with transaction(store.sessions) as session:
        attempt = jobs.claim(session, job_id, worker="elsewhere:1", lease_s=60)
    assert attempt is not None
    return attempt


def test_a_job_that_ended_leaves_no_work_dir(make_store: StoreFactory) -> None:
    store = make_store()
    job_id = store.submit()
    assert JobRunner(store.settings, store.sessions, store.blobs).run(job_id) == "succeeded"
    assert not (store.settings.work_dir / job_id).exists()
    assert list(store.settings.work_dir.iterdir()) == []


def test_the_cleanup_pass_removes_the_folders_no_running_attempt_uses(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    root = store.settings.work_dir
    ended, queued, running = store.submit(), store.submit(), store.submit()
    assert JobRunner(store.settings, store.sessions, store.blobs).run(ended) == "succeeded"
    leave(root / ended / "attempt-1")  # e.g. a helper's or an attempt's, killed
    # queued again after its worker died: nothing runs it now
    claim(store, queued)
    with transaction(store.sessions) as session:
        assert jobs.release(session, queued, 1, "worker lost")
    leave(root / queued / "attempt-1")
    # running its second attempt; the first one's worker was killed
    claim(store, running)
    with transaction(store.sessions) as session:
        assert jobs.release(session, running, 1, "worker lost")
    assert claim(store, running) == 2
    leave(root / running / "attempt-1")
    current = leave(root / running / "attempt-2")
    helper = leave(root / running / "helper-0-abcdef12")
    leave(root / "job_00000000000000000000gone")  # its row was deleted
    unrelated = leave(root / "model-upload-x")

    clean_once(store.sessions, store.blobs, store.settings)

    assert not (root / ended).exists()
    assert list((root / queued).iterdir()) == []
    assert sorted((root / running).iterdir()) == [current, helper]
    assert not (root / "job_00000000000000000000gone").exists()
    assert unrelated.exists()
