"""The request-body cap: declared or counted, every oversized body is a 413 that leaves
nothing behind."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from api.limits import MULTIPART_ALLOWANCE_BYTES, BodyLimits, BodySizeLimitMiddleware
from tests.api.conftest import ADMIN_TOKEN, Api, ApiFactory, assert_problem

CAP_BYTES = 100_000
BOUNDARY = "squeeze-test-boundary"
MULTIPART_HEADERS = {
    "content-type": f"multipart/form-data; boundary={BOUNDARY}",
    "authorization": f"Bearer {ADMIN_TOKEN}",
}
NOTHING = {"models": 0, "datasets": 0, "jobs": 0, "job_events": 0}


def multipart_chunks(size_bytes: int, chunk_bytes: int = 16 * 1024) -> Iterator[bytes]:
    """A `file` part of `size_bytes` zeros, framed as multipart, in chunks."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="m.onnx"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    sent = 0
    while sent < size_bytes:
        chunk = b"\0" * min(chunk_bytes, size_bytes - sent)
        sent += len(chunk)
        yield chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.fixture
def capped_api(make_api: ApiFactory) -> Api:
    return make_api(max_model_bytes=CAP_BYTES, max_dataset_bytes=CAP_BYTES)


def test_upload_declaring_too_large_a_content_length_is_refused_up_front(
    capped_api: Api, model_file: Path
) -> None:
    assert model_file.stat().st_size > CAP_BYTES + MULTIPART_ALLOWANCE_BYTES

    response = capped_api.upload_model(model_file)

    assert_problem(response, 413, "payload_too_large")
    assert capped_api.snapshot() == ([], NOTHING)


def test_chunked_upload_without_content_length_is_cut_off_at_the_cap(capped_api: Api) -> None:
    request = capped_api.client.build_request(
        "POST", "/v1/models", content=multipart_chunks(2 * CAP_BYTES), headers=MULTIPART_HEADERS
    )
    assert "content-length" not in request.headers

    response = capped_api.client.send(request)

    assert_problem(response, 413, "payload_too_large")
    assert capped_api.snapshot() == ([], NOTHING)


def test_dataset_upload_over_the_cap_is_refused(capped_api: Api) -> None:
    response = capped_api.client.post(
        "/v1/datasets", content=multipart_chunks(2 * CAP_BYTES), headers=MULTIPART_HEADERS
    )

    assert_problem(response, 413, "payload_too_large")
    assert capped_api.snapshot() == ([], NOTHING)


def test_file_over_the_cap_within_the_multipart_allowance_is_refused(capped_api: Api) -> None:
    """The middleware leaves room for multipart framing; the file itself is capped exactly."""
    response = capped_api.client.post(
        "/v1/models", content=multipart_chunks(CAP_BYTES + 1), headers=MULTIPART_HEADERS
    )

    assert_problem(response, 413, "payload_too_large")
    assert capped_api.snapshot() == ([], NOTHING)


def test_json_bodies_are_capped_at_one_mebibyte(api: Api) -> None:
    response = api.client.post(
        "/v1/jobs",
        content=b'{"model_id": "' + b"x" * (1024 * 1024) + b'"}',
        headers={"content-type": "application/json"},
    )

    assert_problem(response, 413, "payload_too_large")


def test_json_body_streamed_without_content_length_is_capped(api: Api) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"model_id": "'
        for _ in range(80):
            yield b"x" * 16 * 1024
        yield b'"}'

    response = api.client.post(
        "/v1/jobs", content=body(), headers={"content-type": "application/json"}
    )

    assert_problem(response, 413, "payload_too_large")
    assert api.row_counts()["jobs"] == 0


def test_upload_streamed_over_the_cap_stops_reading_and_removes_its_staging_file(
    capped_api: Api,
) -> None:
    """Through a transport that delivers the body chunk by chunk, as a server does."""
    delivered: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for chunk in multipart_chunks(10 * CAP_BYTES, chunk_bytes=8 * 1024):
            delivered.append(len(chunk))
            yield chunk

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=capped_api.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.post("/v1/models", content=body(), headers=MULTIPART_HEADERS)

    response = anyio.run(post)

    assert_problem(response, 413, "payload_too_large")
    assert sum(delivered) <= CAP_BYTES + MULTIPART_ALLOWANCE_BYTES + 8 * 1024
    assert capped_api.snapshot() == ([], NOTHING)


def test_streamed_upload_under_the_cap_is_stored(api: Api, model_file: Path) -> None:
    content = model_file.read_bytes()

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            'filename="digits.onnx"\r\n\r\n'
        ).encode()
        for start in range(0, len(content), 4096):
            yield content[start : start + 4096]
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=api.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.post("/v1/models", content=body(), headers=MULTIPART_HEADERS)

    response = anyio.run(post)

    assert response.status_code == 201, response.text
    assert response.json()["size_bytes"] == len(content)


# --- the middleware on its own ---------------------------------------------------------------


async def drain_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, then answers 200: the middleware must stop it first."""
    while (await receive()).get("more_body", False):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"read it all"})


def run_middleware(
    chunks: list[bytes], headers: list[tuple[bytes, bytes]]
) -> tuple[list[Message], list[bytes]]:
    """Sends `chunks` as the body; returns what was answered and the chunks never read."""
    middleware = BodySizeLimitMiddleware(drain_app, BodyLimits(default_bytes=10))
    unread = list(chunks)
    sent: list[Message] = []

    async def receive() -> Message:
        body = unread.pop(0) if unread else b""
        return {"type": "http.request", "body": body, "more_body": bool(unread)}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/anything", "headers": headers}
    anyio.run(middleware, scope, receive, send)
    return sent, unread


def test_middleware_answers_413_as_soon_as_counted_bytes_pass_the_limit() -> None:
    sent, unread = run_middleware([b"12345", b"67890", b"X", b"never read"], headers=[])

    assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 413
    assert b"payload_too_large" in sent[1]["body"]
    assert unread == [b"never read"]


def test_middleware_lets_a_body_at_the_limit_through() -> None:
    sent, _ = run_middleware([b"12345", b"67890"], headers=[])

    assert sent[0]["status"] == 200


def test_middleware_refuses_a_declared_length_without_reading() -> None:
    sent, unread = run_middleware([b"1"], headers=[(b"content-length", b"11")])

    assert sent[0]["status"] == 413
    assert unread == [b"1"]


def test_body_limits_are_per_route() -> None:
    limits = BodyLimits(default_bytes=1, by_route={("POST", "/v1/models"): 100})

    assert limits.limit_for("post", "/v1/models/") == 100
    assert limits.limit_for("GET", "/v1/models") == 1
    assert limits.limit_for("POST", "/v1/jobs") == 1
