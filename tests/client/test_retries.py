"""Retries and polling, against a fake transport: what is retried, how long the client
waits, and what it never repeats."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from squeeze.client import Client, RetryPolicy, SqueezeError, WaitTimeout
from squeeze.client.errors import SqueezeConnectionError

POLICY = RetryPolicy(max_attempts=4, backoff_s=1.0, max_backoff_s=3.0, jitter=0.0)


class Fake:
    """A client on a scripted transport; records requests and the waits asked for."""

    def __init__(self, *answers: httpx.Response | Exception, policy: RetryPolicy = POLICY):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []
        self.client = Client(
            "http://squeeze.test",
            api_key="sqz_key",
            transport=httpx.MockTransport(self.handle),
            retry_policy=policy,
            sleep=self.sleeps.append,
        )

    def handle(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def problem(status: int, code: str, **headers: str) -> httpx.Response:
    body = {"type": f"urn:squeeze:problem:{code}", "title": code, "status": status,
            "detail": f"{code} happened", "code": code}  # fmt: skip
    return httpx.Response(status, json=body, headers=headers)


def job(state: str, progress: float = 0.0, step: str | None = None) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "id": "job_1",
            "state": state,
            "progress": progress,
            "current_step": step,
            "created_at": "2026-11-29T10:00:00Z",
            "spec": {"model_id": "mdl_1"},
        },
    )


def test_a_503_is_retried_with_exponential_backoff() -> None:
    fake = Fake(problem(503, "not_ready"), problem(503, "not_ready"), job("queued"))
    assert fake.client.get_job("job_1").state == "queued"
    assert fake.sleeps == [1.0, 2.0]
    assert all(r.headers["Authorization"] == "Bearer sqz_key" for r in fake.requests)


def test_a_429_waits_what_retry_after_says() -> None:
    fake = Fake(problem(429, "quota_exceeded", **{"Retry-After": "7"}), job("queued"))
    fake.client.get_job("job_1")
    assert fake.sleeps == [7.0]


def test_a_retry_after_beyond_the_limit_is_raised_at_once() -> None:
    fake = Fake(problem(429, "quota_exceeded", **{"Retry-After": "3600"}))
    with pytest.raises(SqueezeError) as raised:
        fake.client.get_job("job_1")
    assert (raised.value.status, raised.value.code) == (429, "quota_exceeded")
    assert raised.value.retry_after_s == 3600
    assert fake.sleeps == []


def test_the_last_error_is_raised_when_attempts_run_out() -> None:
    fake = Fake(problem(502, "bad_gateway"))
    with pytest.raises(SqueezeError) as raised:
        fake.client.get_job("job_1")
    assert raised.value.status == 502
    assert len(fake.requests) == 4 and fake.sleeps == [1.0, 2.0, 3.0]


def test_connection_errors_are_retried_then_raised() -> None:
    refused = httpx.ConnectError("connection refused")
    fake = Fake(refused, job("running"))
    assert fake.client.get_job("job_1").state == "running"
    with pytest.raises(SqueezeConnectionError) as raised:
        Fake(refused).client.get_job("job_1")
    assert raised.value.code == "connection_error" and raised.value.status == 0


def test_a_4xx_is_never_retried() -> None:
    fake = Fake(problem(404, "not_found"), job("queued"))
    with pytest.raises(SqueezeError):
        fake.client.get_job("job_1")
    assert len(fake.requests) == 1


def test_an_upload_is_not_repeated_after_a_500_but_is_after_a_503(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x" * 200_000)
    fake = Fake(problem(500, "internal_error"), problem(503, "not_ready"))
    with pytest.raises(SqueezeError):
        fake.client.upload_model(model, reuse=False)  # no sha256 look-up first
    assert len(fake.requests) == 1  # the service may have stored it: not sent twice

    stored = {"id": "mdl_1", "filename": "m.onnx", "sha256": "0" * 64, "size_bytes": 200_000,
              "created_at": "2026-11-29T10:00:00Z", "info": {}}  # fmt: skip
    seen: list[int] = []
    fake = Fake(problem(503, "not_ready"), httpx.Response(201, json=stored))
    fake.client.upload_model(model, progress=lambda done, _: seen.append(done), reuse=False)
    assert len(fake.requests) == 2
    assert fake.requests[1].content.count(b"x" * 200_000) == 1  # the whole file, again
    assert seen.count(200_000) == 2 and min(seen) < 200_000  # progress restarted


def test_a_job_submission_carries_an_idempotency_key_and_is_retried() -> None:
    fake = Fake(httpx.ReadTimeout("slow"), problem(500, "internal_error"), job("queued"))
    fake.client.submit_job({"model_id": "mdl_1"}, webhook_url="https://example.com/hook")
    keys = {request.headers["Idempotency-Key"] for request in fake.requests}
    assert len(fake.requests) == 3 and len(keys) == 1  # one key: the service makes one job
    assert json.loads(fake.requests[0].content)["webhook_url"] == "https://example.com/hook"


def test_wait_polls_until_final_and_slows_down_while_nothing_changes() -> None:
    fake = Fake(
        job("queued"),
        job("running", 0.2, "1: quantize"),
        job("running", 0.2, "1: quantize"),
        job("running", 0.2, "1: quantize"),
        job("succeeded", 1.0),
    )
    updates: list[str] = []
    final = fake.client.wait(
        "job_1", poll_s=1.0, max_poll_s=2.0, on_update=lambda j: updates.append(j.state)
    )
    assert final.state == "succeeded" and final.is_final
    assert updates == ["queued", "running", "running", "running", "succeeded"]
    assert fake.sleeps == [1.0, 1.0, 1.5, 2.0]


def test_wait_gives_up_after_its_timeout() -> None:
    fake = Fake(job("running", 0.5))
    with pytest.raises(WaitTimeout) as raised:
        fake.client.wait("job_1", timeout_s=0.0)
    assert raised.value.code == "timeout"


def test_a_non_problem_error_body_still_raises_a_squeeze_error() -> None:
    fake = Fake(httpx.Response(418, text="teapot"))
    with pytest.raises(SqueezeError) as raised:
        fake.client.get_job("job_1")
    assert (raised.value.status, raised.value.code, raised.value.detail) == (
        418,
        "http_418",
        "teapot",
    )


def test_the_url_and_key_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUEEZE_URL", "http://env.test:1234/")
    monkeypatch.setenv("SQUEEZE_API_KEY", "sqz_env")
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "ok"})

    client = Client(transport=httpx.MockTransport(handle))
    assert client.health() == {"status": "ok"}
    assert str(seen[0].url) == "http://env.test:1234/healthz"
    assert seen[0].headers["Authorization"] == "Bearer sqz_env"
