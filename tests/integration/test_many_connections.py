"""Hundreds of clients at once get answers, on a real uvicorn process.

Before api/concurrency.py, 200 simultaneous first requests deadlocked the API: each held
a database connection from its session while waiting for a thread of the 40-thread pool,
and the threads waited for a connection; every request timed out (found by bench/load.py).
A fresh server has an empty API-key cache, so every one of these requests authenticates
through the database: the case that deadlocked.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.lean_http import LeanHttpClient
from scripts.demo import api_command, free_port, stop, wait_ready
from tests.api.conftest import ADMIN_TOKEN

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 200
# Far above the ~1 s 200 requests take on 2 busy cores; the deadlock never answered.
ANSWER_WITHIN_S = 30.0

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=["embedded", "postgres"])
def api_port(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[int]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SQUEEZE_DATA_DIR": str(tmp_path / "data"),
        "SQUEEZE_ADMIN_API_KEY": ADMIN_TOKEN,
    }
    if request.param == "postgres":
        env["SQUEEZE_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    port = free_port()
    with (tmp_path / "api.log").open("wb") as log:
        # cwd outside the checkout: kombu's file-system transport writes ./control
        process = subprocess.Popen(
            api_command(port),
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        yield port
    finally:
        stop(process)


async def first_requests(port: int, clients: int) -> list[int | str]:
    """`clients` connections opened together, each sending one authenticated request."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def one() -> int | str:
        try:
            async with LeanHttpClient("127.0.0.1", port, headers) as client:
                status, _ = await client.get("/v1/account")
                return status
        except (OSError, asyncio.IncompleteReadError) as error:
            return type(error).__name__

    return list(
        await asyncio.wait_for(
            asyncio.gather(*(one() for _ in range(clients))), timeout=ANSWER_WITHIN_S
        )
    )


def test_200_simultaneous_first_requests_are_all_answered(api_port: int) -> None:
    started = time.monotonic()

    try:
        statuses = asyncio.run(first_requests(api_port, CLIENTS))
    except TimeoutError:
        pytest.fail(f"{CLIENTS} simultaneous requests not all answered in {ANSWER_WITHIN_S} s")

    assert statuses == [200] * CLIENTS, {str(s): statuses.count(s) for s in set(statuses)}
    assert time.monotonic() - started < ANSWER_WITHIN_S
