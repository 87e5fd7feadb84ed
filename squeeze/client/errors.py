"""Errors the client raises: the service's problem (status, code, detail), or no answer."""

from __future__ import annotations

from typing import Any


class SqueezeError(Exception):
    """An error answer of the service (`application/problem+json`), or a client-side
    failure with a code of its own (`connection_error`, `timeout`, `checksum_mismatch`).

    `status` is the HTTP status (0 when there was no answer), `code` the stable code to
    act on, `detail` the human explanation, `problem` the whole body when there was one.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        problem: dict[str, Any] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{code} ({status}): {detail}" if status else f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.problem = problem or {}
        self.retry_after_s = retry_after_s


class SqueezeConnectionError(SqueezeError):
    """The service could not be reached (after the retries)."""

    def __init__(self, detail: str) -> None:
        super().__init__(0, "connection_error", detail)


class WaitTimeout(SqueezeError):
    """`wait` gave up before the job (or batch) ended."""

    def __init__(self, detail: str) -> None:
        super().__init__(0, "timeout", detail)
