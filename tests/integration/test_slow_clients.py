"""Slow and concurrent clients against a real uvicorn process, over raw sockets.

Before api/admission.py, 32 connections sending `POST /v1/jobs` with `Content-Length:
1000` and 5 body bytes, without a key, took the 32 slots of api/concurrency.py while
FastAPI waited for the rest of their bodies, forever: /healthz, /readyz and /v1/account
stopped answering. And two uploads of one tenant at once each spent the same remaining
storage quota.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from scripts.demo import api_command, free_port, stop, wait_ready
from tests.api.conftest import ADMIN_TOKEN
from tests.factories import digits_npz

ROOT = Path(__file__).resolve().parents[2]
SLOW_CLIENTS = 40  # more than the 32 slots
BODY_TIMEOUT_S = 3

pytestmark = pytest.mark.timeout(240)


@contextmanager
def running_api(tmp_path: Path, **env: str) -> Iterator[str]:
    """A real API process (uvicorn) on a free port; yields its base URL."""
    environ = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SQUEEZE_DATA_DIR": str(tmp_path / "data"),
        "SQUEEZE_ADMIN_API_KEY": ADMIN_TOKEN,
        "SQUEEZE_ABSENT_WORKER_POLICY": "off",
        **env,
    }
    port = free_port()
    with (tmp_path / "api.log").open("wb") as log:
        # cwd outside the checkout: kombu's file-system transport writes ./control
        process = subprocess.Popen(
            api_command(port),
            env=environ,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def open_slow_request(port: int, path: str, headers: dict[str, str]) -> socket.socket:
    """A request that declares 1000 body bytes and sends 5, then nothing."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head += "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    connection.sendall(head.encode() + b'{"mod')
    return connection


def status_of(connection: socket.socket) -> int | None:
    """The status of the answer on `connection`, None if it was closed without one."""
    data = b""
    while b"\r\n" not in data:
        chunk = connection.recv(4096)
        if not chunk:
            return None
        data += chunk
    return int(data.split(b" ", 2)[1])


def answers_within(base_url: str, seconds: float) -> dict[str, int | str]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    statuses: dict[str, int | str] = {}
    for path in ("/healthz", "/readyz", "/v1/account"):
        try:
            answer = httpx.get(base_url + path, headers=headers, timeout=seconds)
            statuses[path] = answer.status_code
        except httpx.TimeoutException:
            statuses[path] = "timeout"
    return statuses


def port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


def test_slow_unauthenticated_bodies_are_refused_before_they_are_read(tmp_path: Path) -> None:
    with running_api(tmp_path, SQUEEZE_API_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S)) as base_url:
        port = port_of(base_url)
        connections = [open_slow_request(port, "/v1/jobs", {}) for _ in range(SLOW_CLIENTS)]
        try:
            time.sleep(0.5)
            assert answers_within(base_url, 5) == {
                "/healthz": 200,
                "/readyz": 200,
                "/v1/account": 200,
            }
            # each was answered 401 at once, its body never waited for
            started = time.monotonic()
            assert [status_of(c) for c in connections] == [401] * SLOW_CLIENTS
            assert time.monotonic() - started < BODY_TIMEOUT_S
        finally:
            for connection in connections:
                connection.close()


def test_slow_authenticated_bodies_hold_no_slot_and_time_out_with_408(tmp_path: Path) -> None:
    with running_api(tmp_path, SQUEEZE_API_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S)) as base_url:
        port = port_of(base_url)
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        connections = [open_slow_request(port, "/v1/jobs", auth) for _ in range(SLOW_CLIENTS)]
        try:
            time.sleep(0.5)
            assert answers_within(base_url, 5) == {
                "/healthz": 200,
                "/readyz": 200,
                "/v1/account": 200,
            }
            started = time.monotonic()
            statuses = [status_of(c) for c in connections]
            waited = time.monotonic() - started
        finally:
            for connection in connections:
                connection.close()
        # the admin's key is rate-limited too (burst 100): all 40 were admitted
        assert statuses == [408] * SLOW_CLIENTS
        assert waited < BODY_TIMEOUT_S + 5


def test_a_stalled_upload_times_out_and_frees_its_slot(tmp_path: Path) -> None:
    with running_api(tmp_path, SQUEEZE_API_BODY_IDLE_TIMEOUT_S="2") as base_url:
        connection = socket.create_connection(("127.0.0.1", port_of(base_url)), timeout=30)
        boundary = "squeezeboundary"
        head = (
            f"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            "Content-Length: 100000\r\n\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="d.npz"\r\n\r\nPK'
        )
        connection.sendall(head.encode())
        try:
            started = time.monotonic()
            assert status_of(connection) == 408
            assert time.monotonic() - started < 10
        finally:
            connection.close()
        assert answers_within(base_url, 5)["/v1/account"] == 200


def slow_upload(
    port: int, token: str, content: bytes, release: threading.Event
) -> Callable[[], int | None]:
    """Start an upload of `content` that sends its last bytes once `release` is set;
    returns a function giving its answer's status."""
    boundary = "squeezeboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        'filename="data.npz"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode() + content + f"\r\n--{boundary}--\r\n".encode()
    connection = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = (
        f"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    connection.sendall(head.encode() + body[:-100])
    result: list[int | None] = []

    def finish() -> None:
        release.wait(30)
        connection.sendall(body[-100:])
        result.append(status_of(connection))
        connection.close()

    thread = threading.Thread(target=finish)
    thread.start()

    def status() -> int | None:
        thread.join(60)
        return result[0] if result else None

    return status


def test_concurrent_uploads_cannot_spend_the_same_storage_quota(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two uploads of one tenant, both started when the quota held room for one, both
    finishing together: one is stored, the other refused (PostgreSQL, row lock)."""
    first = digits_npz(tmp_path / "a.npz", split="test", n=64).read_bytes()
    second = digits_npz(tmp_path / "b.npz", split="train", n=64).read_bytes()
    quota = max(len(first), len(second)) * 3 // 2
    with running_api(tmp_path, SQUEEZE_DATABASE_URL=postgres_url) as base_url:
        admin = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        )
        tenant = admin.post("/v1/tenants", json={"name": "tight", "quota_storage_bytes": quota})
        token = admin.post(f"/v1/tenants/{tenant.json()['id']}/api-keys", json={}).json()["token"]
        release = threading.Event()
        port = port_of(base_url)
        uploads = [slow_upload(port, token, content, release) for content in (first, second)]
        time.sleep(1.0)  # both are streaming: each passed the quota check at its start
        release.set()
        statuses = sorted(status() for status in uploads)

        account = httpx.get(
            f"{base_url}/v1/account", headers={"Authorization": f"Bearer {token}"}
        ).json()
    assert statuses == [201, 429]
    assert account["tenant"]["usage"]["storage_bytes"] <= quota
