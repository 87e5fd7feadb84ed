"""`squeeze serve` stops its workers together: N workers that are slow to go take one
timeout, not N of them (a second serve with 2 workers once took over 60 s to stop)."""

from __future__ import annotations

import subprocess
import sys
import time

from service.runner import stop_together

IGNORES_SIGTERM = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', "
    "flush=True); time.sleep(60)",
]
EXITS_ON_SIGTERM = [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"]


def started(command: list[str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, start_new_session=True)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    return process


def test_stubborn_children_are_killed_after_one_shared_timeout() -> None:
    children = [started(IGNORES_SIGTERM) for _ in range(3)]

    began = time.monotonic()
    stop_together(children, timeout_s=2)
    took = time.monotonic() - began

    assert all(child.returncode == -9 for child in children)  # SIGKILL after the timeout
    assert 2 <= took < 5  # one timeout for all three, not three in a row (6 s)


def test_children_that_obey_sigterm_end_without_waiting_for_the_timeout() -> None:
    children = [started(EXITS_ON_SIGTERM) for _ in range(2)]
    exited = started(EXITS_ON_SIGTERM)
    exited.kill()
    exited.wait()

    began = time.monotonic()
    stop_together([*children, exited], timeout_s=30)

    assert time.monotonic() - began < 10
    assert all(child.returncode == -15 for child in children)
