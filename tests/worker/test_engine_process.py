"""The engine's child process: killed at once on a stop, past the time limit or past
its memory allowance, and a child the system kills counts as out of memory."""

from __future__ import annotations

import os
import signal
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
    """The engine processes this test process started."""
    return [
        child
        for child in psutil.Process().children()
        if "worker.engine_process" in " ".join(child.cmdline())
    ]


def no_progress(progress: float, message: str, data: dict[str, object]) -> None:
    return None


def test_a_stop_kills_an_engine_stuck_in_native_code_at_once(
    digits_files: DigitsFiles, tmp_path: Path
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
        )
    stopped_after = time.monotonic()
    assert stop.is_set()
    assert wait_for(lambda: not engine_children(), timeout_s=5, interval_s=0.05)
    assert time.monotonic() - stopped_after < 5


def test_an_engine_past_its_time_limit_is_killed(digits_files: DigitsFiles, tmp_path: Path) -> None:
    model = endless_loop_onnx(tmp_path / "loop.onnx")
    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded, match="2 s"):
        run_engine(
            request_for(model, digits_files, tmp_path / "work"),
            on_progress=no_progress,
            should_stop=lambda: False,
            time_limit_s=2,
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


def test_an_engine_the_system_kills_counts_as_out_of_memory(
    digits_files: DigitsFiles, tmp_path: Path
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
            )
    finally:
        killer.join()
    assert raised.value.peak_rss_bytes is not None and raised.value.peak_rss_bytes > 0
