"""Per-job limits on the worker: a memory ceiling that fails the job and not the worker,
and a shutdown that hands the running job back to the queue."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

from store.db import transaction
from store.tables import JobRow
from tests.services import wait_for
from tests.worker.conftest import StoreFactory
from worker.limits import SHUTDOWN, is_allocation_failure
from worker.runner import JobRunner


def test_allocations_past_the_ceiling_fail_inside_the_block_and_work_after_it() -> None:
    script = textwrap.dedent(
        """
        from worker.limits import memory_ceiling
        try:
            with memory_ceiling(50 * 1024 * 1024):
                bytearray(200 * 1024 * 1024)
        except MemoryError:
            print("refused")
        bytearray(200 * 1024 * 1024)
        print("allowed after")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["refused", "allowed", "after"]


def test_native_allocation_errors_are_recognised_through_their_causes() -> None:
    assert is_allocation_failure(MemoryError())
    assert is_allocation_failure(RuntimeError("onnxruntime: Failed to allocate memory"))
    wrapped = ValueError("step failed")
    wrapped.__cause__ = RuntimeError("std::bad_alloc")
    assert is_allocation_failure(wrapped)
    assert not is_allocation_failure(ValueError("shape mismatch"))


def test_a_job_over_its_memory_limit_fails_with_a_clear_code_and_the_process_lives_on(
    make_store: StoreFactory,
) -> None:
    """Run in a child process: the ceiling applies to the whole process it is set in."""
    store = make_store()
    hungry = store.submit(max_memory_bytes=1024 * 1024)
    normal = store.submit()
    script = textwrap.dedent(
        f"""
        from service.settings import Settings
        from store.blobs import open_blob_store
        from store.db import make_engine, make_sessionmaker
        from worker.runner import JobRunner
        settings = Settings()
        runner = JobRunner(
            settings,
            make_sessionmaker(make_engine(settings.resolved_database_url)),
            open_blob_store(settings),
        )
        print(runner.run({hungry!r}), runner.run({normal!r}))
        """
    )
    from tests.services import settings_env

    env = {**__import__("os").environ, **settings_env(store.settings)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["failed", "succeeded"], result.stderr[-3000:]
    failed = store.job(hungry)
    assert failed.error_code == "memory_limit_exceeded", failed.error_message
    assert "1048576 bytes" in failed.error_message


def test_a_job_whose_worker_shuts_down_goes_back_to_the_queue_and_runs_again(
    make_store: StoreFactory,
) -> None:
    store = make_store(measure_runs=300)
    job_id = store.submit(batch_size=64)

    def shut_down_once_running() -> None:
        wait_for(lambda: store.job(job_id).state == "running", timeout_s=60, interval_s=0.05)
        SHUTDOWN.set()

    trigger = threading.Thread(target=shut_down_once_running)
    trigger.start()
    try:
        outcome = JobRunner(store.settings, store.sessions, store.blobs).run(job_id)
    finally:
        trigger.join()
        SHUTDOWN.clear()

    assert outcome == "released"
    job = store.job(job_id)
    assert (job.state, job.worker, job.lease_expires_at) == ("queued", None, None)
    assert store.events(job_id)[-1].kind == "released"
    assert JobRunner(store.settings, store.sessions, store.blobs).run(job_id) == "succeeded"
    with transaction(store.sessions) as session:
        row = session.get(JobRow, job_id)
        assert row is not None and row.attempt == 2
