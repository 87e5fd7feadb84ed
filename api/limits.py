"""A cap on request bodies, enforced at the ASGI level before any route reads them.

Starlette and FastAPI read whatever a client sends. This middleware answers 413 at once
when Content-Length declares too much, and otherwise counts the bytes as they arrive
(chunked uploads carry no Content-Length), failing the read that crosses the limit. The
route's staging file is removed by the exception that read raises, so nothing
half-written stays behind; the middleware then replaces whatever the app answered with
the 413 problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, BodyTimeout, PayloadTooLarge
from api.problems import response_for
from service.settings import Settings

DEFAULT_LIMIT_BYTES = 1024 * 1024
# Room for the multipart framing around an uploaded file (boundaries, part headers).
MULTIPART_ALLOWANCE_BYTES = 64 * 1024


@dataclass(frozen=True)
class BodyLimits:
    """Body size limits per (method, path); every other request gets `default_bytes`."""

    default_bytes: int = DEFAULT_LIMIT_BYTES
    by_route: dict[tuple[str, str], int] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyLimits:
        return cls(
            by_route={
                ("POST", "/v1/models"): settings.max_model_bytes + MULTIPART_ALLOWANCE_BYTES,
                ("POST", "/v1/datasets"): settings.max_dataset_bytes + MULTIPART_ALLOWANCE_BYTES,
            }
        )

    def is_streamed(self, method: str, path: str) -> bool:
        """Routes with their own limit are the uploads: their bodies are streamed to
        storage as they arrive, never held in memory."""
        return (method.upper(), path.rstrip("/") or "/") in self.by_route

    def limit_for(self, method: str, path: str) -> int:
        route = (method.upper(), path.rstrip("/") or "/")
        return self.by_route.get(route, self.default_bytes)


class BodySizeLimitMiddleware:
    """Also fails a read that waits over `idle_timeout_s` for the client's next bytes
    (408): an upload streams inside one of the API's slots, and a stalled client must
    not keep it."""

    def __init__(
        self, app: ASGIApp, limits: BodyLimits, idle_timeout_s: float | None = None
    ) -> None:
        self.app = app
        self.limits = limits
        self.idle_timeout_s = idle_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.limit_for(scope["method"], scope["path"])
        declared = content_length(scope)
        if declared is not None and declared > limit:
            await response_for(PayloadTooLarge(limit))(scope, receive, send)
            return

        received = 0
        refusal: ApiError | None = None
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, refusal
            if self.idle_timeout_s is None:
                message = await receive()
            else:
                try:
                    with anyio.fail_after(self.idle_timeout_s):
                        message = await receive()
                except TimeoutError:
                    refusal = BodyTimeout(self.idle_timeout_s, idle=True)
                    raise refusal from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refusal = PayloadTooLarge(limit)
                    raise refusal
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if refusal is not None and not response_started:
                return  # whatever the app made of the failed read, the answer is the refusal
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if refusal is None or response_started:
                raise
        if refusal is not None and not response_started:
            await response_for(refusal)(scope, receive, send)


def content_length(scope: Scope) -> int | None:
    """The declared body size, or None when absent or unreadable (then bytes are counted)."""
    values = [value for name, value in scope.get("headers", ()) if name == b"content-length"]
    if len(values) != 1:
        return None
    try:
        length = int(values[0])
    except ValueError:
        return None
    return length if length >= 0 else None
