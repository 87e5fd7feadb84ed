"""At most N requests are inside the application at once; the rest wait their turn."""

from __future__ import annotations

import anyio
from starlette.types import Receive, Scope, Send

from api.concurrency import ConcurrencyLimitMiddleware


def test_no_more_than_the_limit_run_at_once_and_every_request_is_answered() -> None:
    inside = 0
    most_inside = 0
    answered = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal inside, most_inside
        inside += 1
        most_inside = max(most_inside, inside)
        await anyio.sleep(0.01)
        inside -= 1

    limited = ConcurrencyLimitMiddleware(app, max_concurrent=3)

    async def request() -> None:
        nonlocal answered
        await limited({"type": "http"}, _receive, _send)
        answered += 1

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(request)

    anyio.run(main)
    assert most_inside == 3
    assert answered == 20


async def _receive() -> dict[str, object]:
    return {"type": "http.request"}


async def _send(message: object) -> None:
    return None
