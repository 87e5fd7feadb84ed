"""The embedded default under `python -m service.supervisor`: real uvicorn and a real
Celery worker on SQLite and the file-system broker. Bursts of concurrent submissions all
finish; a killed worker is started again, and `/readyz` answers 503 while none is alive."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.settings import Settings
from tests.api.conftest import ADMIN_TOKEN
from tests.conftest import DigitsFiles
from tests.services import ROOT, fast_test_settings, free_port, settings_env, wait_for

FINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Supervised:
    settings: Settings
    base_url: str
    process: subprocess.Popen[bytes]
    client: httpx.Client

    def state(self) -> dict[str, Any]:
        path = self.settings.data_dir / "supervisor.json"
        try:
            state: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return state

    def worker(self) -> dict[str, Any]:
        worker: dict[str, Any] = self.state().get("programs", {}).get("worker", {})
        return worker

    def ready(self) -> httpx.Response:
        return self.client.get("/readyz")

    def worker_live(self) -> bool:
        assert self.process.poll() is None, f"the supervisor exited:\n{self.logs()}"
        try:
            answer = self.ready()
        except httpx.HTTPError:
            return False
        return answer.status_code == 200 and answer.json()["workers"].get(
            self.settings.queue_cpu, 0
        ) > 0

    def logs(self) -> str:
        folder = self.settings.data_dir
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in [folder / "supervisor.out", *sorted(folder.glob("logs/*.log"))]
            if path.exists()
        )

    def upload(self, route: str, path: Path) -> str:
        with path.open("rb") as handle:
            answer = self.client.post(route, files={"file": (path.name, handle)})
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    def submit(self, spec: dict[str, Any]) -> str:
        answer = self.client.post("/v1/jobs", json=spec)
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    def wait_final(self, job_ids: list[str], timeout_s: float) -> dict[str, str]:
        states: dict[str, str] = {}

        def all_final() -> bool:
            for job_id in job_ids:
                if states.get(job_id) not in FINAL:
                    states[job_id] = self.client.get(f"/v1/jobs/{job_id}").json()["state"]
            return all(state in FINAL for state in states.values())

        wait_for(all_final, timeout_s, 1.0)
        return states


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervised]:
    data_dir = tmp_path_factory.mktemp("supervised")
    settings = fast_test_settings(
        data_dir,
        admin_api_key=ADMIN_TOKEN,
        worker_heartbeat_s=1.0,
        worker_dead_after_s=4.0,
        quota_concurrent_jobs=100,  # the bursts queue more than the default 8
    )
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
    env.pop("SQUEEZE_READY_REQUIRES_WORKERS_FOR")  # the supervisor sets it for its API
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "service.supervisor", "--port", str(port),
         "--backoff-initial-s", "4"],
        env=env, cwd=ROOT, start_new_session=True,
        stdout=(data_dir / "supervisor.out").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    client = httpx.Client(
        base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    running = Supervised(settings, base_url, process, client)
    try:
        assert wait_for(running.worker_live, 240, 1.0), running.logs()
        yield running
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        client.close()


@pytest.fixture(scope="module")
def digits_spec(supervised: Supervised, digits_files: DigitsFiles) -> dict[str, Any]:
    return {
        "model_id": supervised.upload("/v1/models", digits_files.model),
        "eval_dataset_id": supervised.upload("/v1/datasets", digits_files.evaluation),
        "steps": [{"method": "quantize", "mode": "dynamic"}],
        "batch_size": 16,
    }


def test_bursts_of_concurrent_submissions_on_the_embedded_default_all_finish(
    supervised: Supervised, digits_spec: dict[str, Any]
) -> None:
    job_ids: list[str] = []
    with ThreadPoolExecutor(max_workers=6) as pool:
        for _ in range(3):  # three bursts, each while the worker polls its folder
            job_ids += list(pool.map(lambda _: supervised.submit(digits_spec), range(6)))
            time.sleep(1.0)
    states = supervised.wait_final(job_ids, timeout_s=600)
    assert sorted(states.values()) == ["succeeded"] * len(job_ids), supervised.logs()
    assert supervised.worker()["starts"] == 1  # the worker never died
    assert not (supervised.settings.broker_dir / "corrupt").exists()


def test_a_killed_worker_is_restarted_and_readiness_says_when_none_is_alive(
    supervised: Supervised, digits_spec: dict[str, Any]
) -> None:
    before = supervised.worker()
    assert before["running"] and before["pid"]
    os.killpg(before["pid"], signal.SIGKILL)  # the main process and its pool

    # its beats stop: within worker_dead_after_s /readyz names the queue it served
    queue = supervised.settings.queue_cpu
    assert wait_for(lambda: supervised.ready().status_code == 503, 30, 0.3), supervised.logs()
    problem = supervised.ready().json()
    if problem.get("code") == "not_ready":  # unless the restart already registered
        assert problem["checks"][f"workers:{queue}"].startswith("failed: no live worker")

    restarted = wait_for(
        lambda: supervised.worker().get("starts") == before["starts"] + 1, 60, 0.5
    )
    assert restarted, supervised.logs()
    after = supervised.worker()
    assert after["pid"] != before["pid"] and after["last_exit_code"] == -signal.SIGKILL
    assert wait_for(supervised.worker_live, 240, 1.0), supervised.logs()

    job_id = supervised.submit(digits_spec)
    assert supervised.wait_final([job_id], timeout_s=300) == {job_id: "succeeded"}
