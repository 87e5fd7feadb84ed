"""The API as a real uvicorn process on a temporary data dir, a finished job in it, and
headless Chromium (Debian's `chromium`) to look at the dashboard the way a person would.

The job runs in this process through the worker's JobRunner on the same data dir (the
embedded profile: the API's SQLite file and blob folder), so no Celery worker is needed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.settings import Settings
from store.blobs import open_blob_store
from store.db import make_engine, make_sessionmaker
from tests.api.conftest import ADMIN_TOKEN
from tests.conftest import DigitsFiles
from tests.services import ROOT, free_port, wait_for
from worker.runner import JobRunner

WINDOW = (1280, 1800)
# Virtual time lets the page's fetches and timers finish before the DOM is dumped or the
# screenshot taken; network fetches pause it, so the page sees real API answers.
VIRTUAL_TIME_BUDGET_MS = 20_000


@dataclass(frozen=True)
class Browser:
    """Headless Chromium, one fresh profile per call."""

    executable: str
    profiles: Path

    def run(self, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
        profile = self.profiles / f"profile-{time.monotonic_ns()}"
        command = [
            self.executable,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
            *extra,
            url,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)

    def dump_dom(self, url: str) -> str:
        """The page's DOM after its scripts ran (what a person would see, as HTML)."""
        return self.run(url, "--dump-dom").stdout

    def screenshot(self, url: str, path: Path) -> Path:
        self.run(url, f"--screenshot={path}")
        assert path.exists(), f"chromium wrote no screenshot to {path}"
        return path


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Browser:
    """Chromium, or a skip where it is not installed (`scripts/system-packages.sh`
    installs it); under .ci/run (SQUEEZE_REQUIRE_SERVICES=1) a missing one fails."""
    executable = shutil.which("chromium")
    if executable is None:
        message = "chromium is not installed (scripts/system-packages.sh installs it)"
        if os.environ.get("SQUEEZE_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return Browser(executable, tmp_path_factory.mktemp("chromium"))


@dataclass(frozen=True)
class Served:
    base_url: str
    admin_key: str
    finished_job: dict[str, Any]
    queued_job: dict[str, Any]

    def dashboard(self, query: str = "") -> str:
        """The dashboard's URL with the key in the fragment, as the page supports."""
        return f"{self.base_url}/dashboard/{query}#key={self.admin_key}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, digits_files: DigitsFiles) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("dashboard")
    settings = Settings(data_dir=folder / "data", measure_warmup_runs=1, measure_runs=5)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = folder / "api.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SQUEEZE_DATA_DIR": str(settings.data_dir),
        "SQUEEZE_ADMIN_API_KEY": ADMIN_TOKEN,
        "SQUEEZE_ABSENT_WORKER_POLICY": "off",  # jobs run in-process here
    }
    with log_path.open("wb") as log:
        # cwd outside the checkout: kombu's file-system transport writes ./control
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        client = httpx.Client(
            base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        ready = wait_for(lambda: _ready(client, process), timeout_s=60, interval_s=0.3)
        assert ready, f"the API did not start:\n{log_path.read_text(errors='replace')}"
        spec = {
            "model_id": _upload(client, "/v1/models", digits_files.model),
            "eval_dataset_id": _upload(client, "/v1/datasets", digits_files.evaluation),
            "calibration_dataset_id": _upload(client, "/v1/datasets", digits_files.calibration),
            "steps": [{"method": "quantize", "mode": "auto"}],
            "batch_size": 8,
        }
        finished_id = _submit(client, spec)
        engine = make_engine(settings.resolved_database_url)
        try:
            runner = JobRunner(settings, make_sessionmaker(engine), open_blob_store(settings))
            assert runner.run(finished_id) == "succeeded"
        finally:
            engine.dispose()
        queued_id = _submit(client, {**spec, "steps": [{"method": "quantize", "mode": "static"}]})
        yield Served(
            base_url=base_url,
            admin_key=ADMIN_TOKEN,
            finished_job=client.get(f"/v1/jobs/{finished_id}").json(),
            queued_job=client.get(f"/v1/jobs/{queued_id}").json(),
        )
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _ready(client: httpx.Client, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, "the API exited during start-up"
    try:
        return client.get("/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _upload(client: httpx.Client, route: str, path: Path) -> str:
    with path.open("rb") as handle:
        response = client.post(route, files={"file": (path.name, handle)})
    assert response.status_code in (200, 201), response.text  # 200: reused
    return str(response.json()["id"])


def _submit(client: httpx.Client, spec: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])
