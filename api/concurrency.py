"""At most N requests inside the application at once; the rest wait on the event loop.

Every request holds one database connection from its session dependency to its end, and
sync routes and dependencies run on a bounded thread pool. When more requests hold
connections than the pool has, threads block waiting for a connection while the requests
that hold one wait for a thread to commit and release it: the service deadlocks (found by
bench/load.py with 200 concurrent clients). Admitting fewer requests than there are
connections breaks the cycle; waiting here costs no thread and no connection.

Uploads stream their bodies inside their slot (they may take minutes): at most
`max_uploads` of the slots go to them, so slow uploads cannot take every slot from the
polls and probes.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send


class ConcurrencyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_concurrent: int,
        max_uploads: int | None = None,
        is_upload: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.app = app
        self.max_concurrent = max_concurrent
        self.max_uploads = max_uploads
        self.is_upload = is_upload
        self._slots: anyio.CapacityLimiter | None = None
        self._upload_slots: anyio.CapacityLimiter | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._slots is None:  # created in the server's event loop, on first use
            self._slots = anyio.CapacityLimiter(self.max_concurrent)
            self._upload_slots = anyio.CapacityLimiter(self.max_uploads or self.max_concurrent)
        assert self._upload_slots is not None
        if self.is_upload is not None and self.is_upload(scope["method"], scope["path"]):
            # the upload's own slot first: a waiting upload holds no general slot
            async with self._upload_slots, self._slots:
                await self.app(scope, receive, send)
            return
        async with self._slots:
            await self.app(scope, receive, send)
