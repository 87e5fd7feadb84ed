"""The engine's child process: killed at once on a stop, past the time limit or past
its memory allowance, and a child the system kills counts as out of memory; forked by a
fork server that is reused, replaced when it dies, and passes nothing of this process on
(a fresh interpreter per job where asked, or where no server can start)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest

from core.context import MeasureSettings
from core.errors import JobCancelled
from tests.conftest import DigitsFiles
from tests.factories import endless_loop_onnx, memory_hog_onnx
from tests.services import wait_for
from worker import engine_server
from worker.engine_process import (
    EngineRequest,
    MemoryLimitExceeded,
    TimeLimitExceeded,
    run_engine,
)


def request_for(
    model: Path, digits: DigitsFiles, work_dir: Path, **fields: object
) -> EngineRequest:
    return EngineRequest(
        kind="pipeline",
        work_dir=work_dir,
        model_path=model,
        dataset_paths={"eval": digits.evaluation},
        spec={
            "model_id": "model",
            "eval_dataset_id": "eval",
            "steps": [{"method": "quantize", "mode": "dynamic"}],
            "batch_size": 8,
        },
        device="cpu",
        seed=0,
        measure=MeasureSettings(threads=1, warmup_runs=1, runs=3),
        **fields,  # type: ignore[arg-type]
    )


def engine_children() -> list[psutil.Process]:
    """The engine processes this test process started: forked by its fork server, or
    fresh interpreters (a reaped one is gone; an unreaped one still counts)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.name() == engine_server.CHILD_NAME.decode():
                found.append(process)
            elif process.status() == psutil.STATUS_ZOMBIE:
                if process.ppid() == os.getpid():  # a fresh one, not waited for yet
                    found.append(process)
            elif "worker.engine_process" in " ".join(process.cmdline()):
                found.append(process)
    return found


both_ways = pytest.mark.parametrize("fork_server", [True, False], ids=["forked", "fresh"])


def no_progress(progress: float, message: str, data: dict[str, object]) -> None:
    return None


@both_ways
def test_a_stop_kills_an_engine_stuck_in_native_code_at_once(
    digits_files: DigitsFiles, tmp_path: Path, fork_server: bool
) -> None:
    model = endless_loop_onnx(tmp_path / "loop.onnx")
    stop = threading.Event()
    threading.Timer(3.0, stop.set).start()
    with pytest.raises(JobCancelled):
        run_engine(
            request_for(model, digits_files, tmp_path / "work"),
            on_progress=no_progress,
            should_stop=stop.is_set,
            time_limit_s=None,
            fork_server=fork_server,
        )
    stopped_after = time.monotonic()
    assert stop.is_set()
    assert wait_for(lambda: not engine_children(), timeout_s=5, interval_s=0.05)
    assert time.monotonic() - stopped_after < 5


@both_ways
def test_an_engine_past_its_time_limit_is_killed(
    digits_files: DigitsFiles, tmp_path: Path, fork_server: bool
) -> None:
    model = endless_loop_onnx(tmp_path / "loop.onnx")
    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded, match="2 s"):
        run_engine(
            request_for(model, digits_files, tmp_path / "work"),
            on_progress=no_progress,
            should_stop=lambda: False,
            time_limit_s=2,
            fork_server=fork_server,
        )
    assert time.monotonic() - started < 30


def test_an_engine_growing_past_its_allowance_is_killed_with_its_peak(
    digits_files: DigitsFiles, tmp_path: Path
) -> None:
    # 400 MB per run; no RLIMIT in the child here: the parent's watch of its resident set
    # is what stops it.
    model = memory_hog_onnx(tmp_path / "hog.onnx", floats=100_000_000)
    limit = 64 * 1024 * 1024
    with pytest.raises(MemoryLimitExceeded) as raised:
        run_engine(
            request_for(model, digits_files, tmp_path / "work"),
            on_progress=no_progress,
            should_stop=lambda: False,
            time_limit_s=120,
            memory_limit_bytes=limit,
        )
    assert raised.value.peak_rss_bytes is not None and raised.value.peak_rss_bytes > limit
    assert raised.value.record()["limit_bytes"] == limit
    assert "peak resident memory" in raised.value.message


@both_ways
def test_an_engine_the_system_kills_counts_as_out_of_memory(
    digits_files: DigitsFiles, tmp_path: Path, fork_server: bool
) -> None:
    """The kernel's OOM killer sends SIGKILL: the parent did not, so it reads as memory."""
    model = endless_loop_onnx(tmp_path / "loop.onnx")

    def kill_like_the_kernel() -> None:
        wait_for(lambda: bool(engine_children()), timeout_s=60, interval_s=0.05)
        time.sleep(1.0)
        for child in engine_children():
            os.kill(child.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_like_the_kernel)
    killer.start()
    try:
        with pytest.raises(MemoryLimitExceeded, match="killed by the system") as raised:
            run_engine(
                request_for(model, digits_files, tmp_path / "work"),
                on_progress=no_progress,
                should_stop=lambda: False,
                time_limit_s=120,
                fork_server=fork_server,
            )
    finally:
        killer.join()
    assert raised.value.peak_rss_bytes is not None and raised.value.peak_rss_bytes > 0


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def descriptor_targets(pid: int) -> set[str]:
    targets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            targets.add(os.readlink(fd))
    return targets


def test_one_fork_server_forks_every_engine_and_nothing_of_this_process_reaches_them(
    digits_files: DigitsFiles, tmp_path: Path
) -> None:
    # a connection of this process (as a pool process holds its database's)
    ours, _theirs = socket.socketpair()
    our_socket = os.readlink(f"/proc/self/fd/{ours.fileno()}")
    seen: list[tuple[int, int, set[str]]] = []  # engine pid, its parent, what it holds open

    def look(progress: float, message: str, data: dict[str, object]) -> None:
        for engine in engine_children():
            with contextlib.suppress(psutil.NoSuchProcess):
                seen.append((engine.pid, engine.ppid(), descriptor_targets(engine.pid)))

    def job(name: str) -> None:
        run_engine(
            request_for(digits_files.model, digits_files, tmp_path / name),
            on_progress=look,
            should_stop=lambda: False,
            time_limit_s=300,
        )

    job("first")
    server = engine_server.current_server_pid()
    assert server is not None
    descriptors = open_descriptors()
    job("second")
    assert engine_server.current_server_pid() == server  # reused, not started again
    engines = {pid for pid, _, _ in seen}
    assert len(engines) == 2 and {parent for _, parent, _ in seen} == {server}
    assert all(our_socket not in held for _, _, held in seen)
    assert open_descriptors() == descriptors  # a job leaves no pipe or socket behind
    assert wait_for(lambda: not psutil.Process(server).children(), timeout_s=5)  # reaped
    ours.close()
    _theirs.close()


def test_a_killed_fork_server_is_replaced(digits_files: DigitsFiles, tmp_path: Path) -> None:
    run_engine(
        request_for(digits_files.model, digits_files, tmp_path / "first"),
        on_progress=no_progress,
        should_stop=lambda: False,
        time_limit_s=300,
    )
    killed = engine_server.current_server_pid()
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    assert wait_for(lambda: engine_server.current_server_pid() is None, timeout_s=10)
    payload = run_engine(
        request_for(digits_files.model, digits_files, tmp_path / "second"),
        on_progress=no_progress,
        should_stop=lambda: False,
        time_limit_s=300,
    )
    assert "result" in payload
    replacement = engine_server.current_server_pid()
    assert replacement is not None and replacement != killed


def test_a_stop_ends_a_forked_engine_within_a_poll_interval(
    digits_files: DigitsFiles, tmp_path: Path
) -> None:
    model = endless_loop_onnx(tmp_path / "loop.onnx")
    stop = threading.Event()
    stopped_at: list[float] = []
    engine: list[int] = []

    def stop_once_it_runs() -> None:
        wait_for(lambda: bool(engine_children()), timeout_s=120, interval_s=0.05)
        engine.extend(child.pid for child in engine_children())
        time.sleep(0.5)
        stopped_at.append(time.monotonic())
        stop.set()

    stopper = threading.Thread(target=stop_once_it_runs)
    stopper.start()
    try:
        with pytest.raises(JobCancelled):
            run_engine(
                request_for(model, digits_files, tmp_path / "work"),
                on_progress=no_progress,
                should_stop=stop.is_set,
                time_limit_s=None,
                poll_interval_s=0.1,
            )
        raised_after = time.monotonic() - stopped_at[0]
    finally:
        stopper.join()
    # a poll interval, the kill and the server's report of it, on a busy machine
    assert raised_after < 1.0
    assert len(engine) == 1 and not psutil.pid_exists(engine[0])  # killed and reaped


def test_without_a_server_that_can_start_engines_are_fresh_interpreters(
    digits_files: DigitsFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_server, "_servers", {})
    monkeypatch.setattr(engine_server, "_broken_in", set())
    monkeypatch.setattr(engine_server, "SERVER_MODULE", "worker.no_such_module")
    payload = run_engine(
        request_for(digits_files.model, digits_files, tmp_path / "work"),
        on_progress=no_progress,
        should_stop=lambda: False,
        time_limit_s=300,
    )
    assert "result" in payload
    assert engine_server.current_server_pid() is None
    assert os.getpid() in engine_server._broken_in  # the next jobs do not try again


def test_a_fork_server_started_with_another_environment_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = engine_server.EngineServer(os.environ.get("PYTHONPATH", ""))
    try:
        assert server.usable()
        monkeypatch.setenv("PYTEST_CURRENT_TEST", "another test")  # changes on its own
        assert server.usable()
        monkeypatch.setenv("OMP_NUM_THREADS", "7")  # read by libraries as they load
        assert not server.usable()
    finally:
        server.kill()
