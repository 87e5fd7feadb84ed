"""`squeeze serve` as a user runs it: one command starts the API and a worker on a fresh
data dir, prints the admin key once, runs a job the CLI submits, and Ctrl-C (SIGINT) or
SIGTERM stops both processes (issue 19)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.runner import free_port
from squeeze.cli.serve import STOP_TIMEOUT_S
from tests.conftest import DigitsFiles

ROOT = Path(__file__).resolve().parents[2]
# the workers' warm shutdown, then the API's, each at most STOP_TIMEOUT_S, and slack for
# a busy machine
STOPPED_WITHIN_S = 2 * STOP_TIMEOUT_S + 30
pytestmark = pytest.mark.slow


@dataclass
class Served:
    process: subprocess.Popen[str]
    url: str
    data_dir: Path
    lines: list[str]

    def children(self) -> list[int]:
        """The pids whose parent is `squeeze serve` (the API and the worker)."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                found.append(int(stat.parent.name))
        return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def env() -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("SQUEEZE_")}
    return {**values, "PYTHONPATH": str(ROOT)}


def start(tmp_path: Path, *extra: str) -> Served:
    port = free_port()
    data_dir = tmp_path / "data"
    process = subprocess.Popen(
        [sys.executable, "-m", "squeeze.cli", "serve", "--port", str(port),
         "--data-dir", str(data_dir), *extra],
        cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    served = Served(process, f"http://127.0.0.1:{port}", data_dir, [])
    assert process.stdout is not None
    deadline = time.monotonic() + 180
    for line in process.stdout:
        served.lines.append(line.rstrip("\n"))
        if line.startswith("Ctrl-C stops") or time.monotonic() > deadline:
            break
    assert served.lines and served.lines[-1].startswith("Ctrl-C stops"), served.lines
    return served


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    served = start(tmp_path)
    try:
        yield served
    finally:
        if served.process.poll() is None:
            served.process.kill()
            served.process.wait()
        for pid in served.children():
            os.killpg(pid, signal.SIGKILL)


def test_serve_runs_a_job_and_ctrl_c_stops_the_api_and_the_worker(
    served: Served, digits_files: DigitsFiles, tmp_path: Path
) -> None:
    ready = httpx.get(f"{served.url}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["workers"]["cpu"] == 1
    key_file = served.data_dir / "admin-api-key"
    key = key_file.read_text().strip()
    # the key in full, once, with where it is stored
    assert any(str(key_file) in line and "printed this once" in line for line in served.lines)
    assert [line.strip() for line in served.lines].count(key) == 1
    children = served.children()
    assert len(children) == 2  # uvicorn and the Celery worker

    output = tmp_path / "digits.int8.onnx"
    cli = subprocess.run(
        [sys.executable, "-m", "squeeze.cli", "--url", served.url, "--api-key", key,
         "quantize", str(digits_files.model), "--mode", "dynamic",
         "--eval", str(digits_files.evaluation), "--allow-slower", "--no-metric-guard",
         "-o", str(output)],
        cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cli.returncode in (0, 3, 4), cli.stdout + cli.stderr  # the job ran to its end
    assert "succeeded" in cli.stdout and output.stat().st_size > 0, cli.stdout

    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(timeout=STOPPED_WITHIN_S) == 0
    rest = served.process.stdout.read() if served.process.stdout else ""
    assert "SIGINT: stopping the worker(s), then the API" in rest and "stopped" in rest
    assert [pid for pid in children if alive(pid)] == []
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{served.url}/healthz", timeout=2)


def test_sigterm_stops_serve_and_a_second_start_does_not_print_the_key(tmp_path: Path) -> None:
    first = start(tmp_path)
    children = first.children()
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=STOPPED_WITHIN_S) == 0
    assert [pid for pid in children if alive(pid)] == []

    second = start(tmp_path, "--workers", "2")  # the same data dir: the key exists already
    try:
        key = (second.data_dir / "admin-api-key").read_text().strip()
        assert not any(key in line for line in second.lines)
        assert any("made on the first start" in line for line in second.lines)
        assert httpx.get(f"{second.url}/readyz", timeout=5).json()["workers"]["cpu"] == 2
        assert len(second.children()) == 3
        # a port in use: serve ends at once, saying so (readiness there is another
        # service's), and starts nothing
        port = second.url.rsplit(":", 1)[1]
        busy = subprocess.run(
            [sys.executable, "-m", "squeeze.cli", "serve", "--port", port,
             "--data-dir", str(tmp_path / "other")],
            cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert busy.returncode == 2, busy
        assert f"port {port} on 127.0.0.1 is in use" in busy.stderr, busy.stderr
        assert "--port" in busy.stderr and not (tmp_path / "other").exists()
    finally:
        second.process.send_signal(signal.SIGINT)
        assert second.process.wait(timeout=STOPPED_WITHIN_S) == 0
