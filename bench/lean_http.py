"""A minimal HTTP/1.1 keep-alive GET client on asyncio streams, for the load benchmark.

Why not httpx: with 200 `httpx.AsyncClient`s polling once a second in one process, the
load generator itself became the bottleneck (measured against the same server: httpx p50
22 ms, p99 3.4 s; this client p50 1.3 ms, p99 4.0 ms; the server spends 1 ms of CPU per
poll either way). Load tools such as wrk and hey use lean clients for the same reason: a
benchmark of the server must not time the client's own overhead.

Only what status polls need: GET, one connection per client, responses with
Content-Length (what uvicorn sends for JSON bodies). Anything else is an error, not
silently misparsed.
"""

from __future__ import annotations

import asyncio


class LeanHttpError(Exception):
    """The server answered with something this client does not parse."""


class LeanHttpClient:
    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self._header_lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> LeanHttpClient:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._writer is not None:
            self._writer.close()

    async def get(self, path: str) -> tuple[int, bytes]:
        """One GET on the open connection: (status, body)."""
        assert self._reader is not None and self._writer is not None, "use `async with`"
        self._writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"{self._header_lines}\r\n".encode("latin-1")
        )
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(status_line.split(" ", 2)[1])
        except (IndexError, ValueError) as error:
            raise LeanHttpError(f"bad status line {status_line!r}") from error
        headers = dict(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in header_lines if line)
        )
        if "content-length" not in headers:
            raise LeanHttpError(f"no Content-Length in the response to {path} ({status})")
        body = await self._reader.readexactly(int(headers["content-length"]))
        return status, body
