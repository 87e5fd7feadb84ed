"""`squeeze serve` keeps its workers alive: one that exits is started again, after the
supervisor's backoff (issue 18: a dead embedded worker left jobs queued for ever)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from service.backoff import Backoff
from service.runner import Service

DIES_AT_ONCE = [sys.executable, "-c", "import sys; sys.exit(3)"]


def wait_dead(service: Service) -> None:
    deadline = time.monotonic() + 30
    while not service.dead():
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.05)


def test_a_dead_worker_is_started_again_after_a_growing_backoff(tmp_path: Path) -> None:
    service = Service(data_dir=tmp_path, port=1, backoff=Backoff(initial_s=1.0, max_s=8.0))
    (tmp_path / "logs").mkdir()
    first = service._spawn("worker-1", DIES_AT_ONCE)
    wait_dead(service)
    now = time.monotonic()

    said = service.revive_workers(now)
    assert len(said) == 1
    assert said[0].startswith("worker-1 exited (code 3); starting it again in 1 s")
    assert service.revive_workers(now + 0.5) == []  # not due yet
    assert service.revive_workers(now + 1.1) == ["worker-1 started again"]
    second = next(child for child in service.children if child.name == "worker-1")
    assert second.process.pid != first.process.pid

    wait_dead(service)  # it died soon after its start again: the wait doubles
    later = time.monotonic()
    assert "starting it again in 2 s" in service.revive_workers(later)[0]
    service.stop()


def test_the_api_is_left_to_the_caller(tmp_path: Path) -> None:
    service = Service(data_dir=tmp_path, port=1)
    (tmp_path / "logs").mkdir()
    service._spawn("api", DIES_AT_ONCE)
    wait_dead(service)
    assert service.revive_workers() == []
    assert [child.name for child in service.dead()] == ["api"]
