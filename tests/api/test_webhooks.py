"""Webhooks: a job naming a `webhook_url` has its record POSTed there when it ends, signed
with the submitting key's secret, retried with backoff, given up after N attempts.

Deliveries go to a real HTTP server on 127.0.0.1 (a thread); the worker's delivery pass
(`WebhookSender.run_once`, what every worker's parent runs periodically) is called here
directly, one pass at a time.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from api.schemas import JobOut
from service.webhook_destination import ForbiddenDestination, check_destination
from squeeze.webhooks import SIGNATURE_HEADER, WebhookVerificationError, verify_signature
from tests.api.conftest import Api, ApiFactory, assert_problem
from tests.webhook_receiver import Receiver, running_receiver
from worker.runner import JobRunner
from worker.webhooks import WebhookSender


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


@dataclass
class Tenant:
    api: Api
    admin: Api
    key_id: str
    webhook_secret: str


def new_tenant(api: Api) -> Tenant:
    """A tenant and its key, keeping the webhook secret shown at the key's creation."""
    tenant = api.client.post("/v1/tenants", json={"name": "hooked"}).json()
    issued = api.client.post(f"/v1/tenants/{tenant['id']}/api-keys", json={}).json()
    assert issued["webhook_secret"].startswith("whsec_")
    return Tenant(api.with_token(issued["token"]), api, issued["id"], issued["webhook_secret"])


def sender(api: Api) -> WebhookSender:
    services = api.client.app.state.services  # type: ignore[attr-defined]
    return WebhookSender(services.sessions, services.settings)


def submit_and_cancel(tenant: Tenant, spec: dict[str, Any]) -> str:
    """A job that ends at once (cancelled while queued): a final state to deliver."""
    response = tenant.api.submit(spec)
    assert response.status_code == 202, response.text
    job_id = str(response.json()["id"])
    assert tenant.api.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    return job_id


def events(api: Api, job_id: str, prefix: str = "webhook") -> list[dict[str, Any]]:
    items = api.client.get(f"/v1/jobs/{job_id}/events").json()["items"]
    return [event for event in items if event["kind"].startswith(prefix)]


@pytest.fixture
def hooked(
    make_api: ApiFactory, model_file: Path, dataset_file: Path
) -> tuple[Tenant, dict[str, Any]]:
    api = make_api(webhook_backoff_s=0, webhook_max_attempts=3, webhook_allow_private_hosts=True)
    tenant = new_tenant(api)
    spec = {
        "model_id": tenant.api.model_id(model_file),
        "eval_dataset_id": tenant.api.dataset_id(dataset_file),
        "steps": [{"method": "quantize", "mode": "dynamic"}],
    }
    return tenant, spec


def test_a_finished_job_posts_its_record_signed_with_the_keys_secret(
    hooked: tuple[Tenant, dict[str, Any]], receiver: Receiver, model_file: Path
) -> None:
    tenant, spec = hooked
    response = tenant.api.submit({**spec, "webhook_url": receiver.url})
    job_id = response.json()["id"]
    assert response.json()["webhook_url"] == receiver.url

    assert sender(tenant.api).run_once() == []  # still queued: nothing is due
    services = tenant.api.client.app.state.services  # type: ignore[attr-defined]
    JobRunner(services.settings, services.sessions, services.blobs).run(job_id)
    [outcome] = sender(tenant.api).run_once()

    assert outcome.delivered and outcome.status == 204
    [delivery] = receiver.received
    verify_signature(tenant.webhook_secret, delivery.body, delivery.headers[SIGNATURE_HEADER])
    assert delivery.headers["Squeeze-Event"] == "job.succeeded"
    assert delivery.headers["Content-Type"] == "application/json"
    # the body is the job's record, as GET /v1/jobs/{id} answers it
    record = tenant.api.client.get(f"/v1/jobs/{job_id}").json()
    assert JobOut.model_validate(json.loads(delivery.body)) == JobOut.model_validate(record)
    assert record["result"]["verdict"]["checks"]
    [event] = events(tenant.api, job_id)
    assert event["kind"] == "webhook_delivered"
    assert event["data"]["status"] == 204
    assert sender(tenant.api).run_once() == []  # delivered once, never again


def test_a_signature_does_not_verify_with_another_secret_or_another_body(
    hooked: tuple[Tenant, dict[str, Any]], receiver: Receiver
) -> None:
    tenant, spec = hooked
    submit_and_cancel(tenant, {**spec, "webhook_url": receiver.url})
    sender(tenant.api).run_once()
    [delivery] = receiver.received
    header = delivery.headers[SIGNATURE_HEADER]
    assert delivery.headers["Squeeze-Event"] == "job.cancelled"
    with pytest.raises(WebhookVerificationError, match="does not match"):
        verify_signature("whsec_another", delivery.body, header)
    with pytest.raises(WebhookVerificationError, match="does not match"):
        verify_signature(tenant.webhook_secret, delivery.body + b" ", header)
    # a delivery captured and replayed later is refused by its timestamp
    timestamp = verify_signature(tenant.webhook_secret, delivery.body, header)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_signature(tenant.webhook_secret, delivery.body, header, now=timestamp + 301)


def test_a_failing_receiver_is_retried_until_it_accepts(
    hooked: tuple[Tenant, dict[str, Any]], receiver: Receiver
) -> None:
    tenant, spec = hooked
    receiver.statuses = [500, 503, 200]
    job_id = submit_and_cancel(tenant, {**spec, "webhook_url": receiver.url})

    outcomes = [outcome for _ in range(4) for outcome in sender(tenant.api).run_once()]

    assert [(o.attempt, o.status, o.delivered) for o in outcomes] == [
        (1, 500, False),
        (2, 503, False),
        (3, 200, True),
    ]
    assert len(receiver.received) == 3
    kinds = [event["kind"] for event in events(tenant.api, job_id)]
    assert kinds == ["webhook_retrying", "webhook_retrying", "webhook_delivered"]


def test_a_receiver_that_never_accepts_is_given_up_after_the_last_attempt(
    hooked: tuple[Tenant, dict[str, Any]], receiver: Receiver
) -> None:
    tenant, spec = hooked
    receiver.statuses = [500]
    job_id = submit_and_cancel(tenant, {**spec, "webhook_url": receiver.url})

    outcomes = [outcome for _ in range(5) for outcome in sender(tenant.api).run_once()]

    assert [o.attempt for o in outcomes] == [1, 2, 3]  # webhook_max_attempts=3
    assert outcomes[-1].gave_up
    assert len(receiver.received) == 3
    logged = events(tenant.api, job_id)
    assert [event["kind"] for event in logged] == [
        "webhook_retrying",
        "webhook_retrying",
        "webhook_failed",
    ]
    assert "given up after 3 attempts" in logged[-1]["message"]
    assert logged[0]["data"]["error"].startswith("HTTP 500")


def test_an_unreachable_receiver_counts_as_a_failed_attempt(
    hooked: tuple[Tenant, dict[str, Any]], receiver: Receiver
) -> None:
    tenant, spec = hooked
    closed_port_url = "http://127.0.0.1:9/hook"  # discard port: nothing listens
    job_id = submit_and_cancel(tenant, {**spec, "webhook_url": closed_port_url})
    [outcome] = sender(tenant.api).run_once()
    assert not outcome.delivered and outcome.status is None
    assert "ConnectError" in (outcome.error or "")
    assert events(tenant.api, job_id)[0]["kind"] == "webhook_retrying"


def test_retries_wait_for_the_backoff(
    make_api: ApiFactory, model_file: Path, dataset_file: Path, receiver: Receiver
) -> None:
    api = make_api(webhook_backoff_s=3600, webhook_allow_private_hosts=True)
    tenant = new_tenant(api)
    receiver.statuses = [500, 200]
    spec = {
        "model_id": tenant.api.model_id(model_file),
        "eval_dataset_id": tenant.api.dataset_id(dataset_file),
        "steps": [{"method": "quantize", "mode": "dynamic"}],
        "webhook_url": receiver.url,
    }
    job_id = submit_and_cancel(tenant, spec)
    assert len(sender(api).run_once()) == 1
    assert sender(api).run_once() == []  # the retry is due in an hour, not now
    assert events(tenant.api, job_id)[0]["data"]["retry_in_s"] == 3600


def test_a_rotated_secret_signs_the_deliveries_from_then_on(
    hooked: tuple[Tenant, dict[str, Any]], receiver: Receiver
) -> None:
    tenant, spec = hooked
    rotated = tenant.api.client.post(f"/v1/api-keys/{tenant.key_id}/webhook-secret")
    assert rotated.status_code == 201, rotated.text
    secret = rotated.json()["webhook_secret"]
    assert secret != tenant.webhook_secret
    submit_and_cancel(tenant, {**spec, "webhook_url": receiver.url})
    sender(tenant.api).run_once()
    [delivery] = receiver.received
    verify_signature(secret, delivery.body, delivery.headers[SIGNATURE_HEADER])


def test_another_tenant_cannot_rotate_a_keys_secret(
    hooked: tuple[Tenant, dict[str, Any]],
) -> None:
    tenant, _ = hooked
    other = tenant.admin.tenant("other")
    response = other.client.post(f"/v1/api-keys/{tenant.key_id}/webhook-secret")
    assert_problem(response, 404, "not_found")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "example.com/hook",
        "http://",
        "http://user:pass@example.com/hook",
        "http://example.com/a b",
        "http://example.com:99999/hook",
    ],
)
def test_a_webhook_url_must_be_http_or_https(
    hooked: tuple[Tenant, dict[str, Any]], url: str
) -> None:
    tenant, spec = hooked
    body = assert_problem(tenant.api.submit({**spec, "webhook_url": url}), 422, "invalid_request")
    assert body["errors"][0]["loc"][-1] == "webhook_url"


def test_a_job_without_a_webhook_sends_nothing(
    hooked: tuple[Tenant, dict[str, Any]], receiver: Receiver
) -> None:
    tenant, spec = hooked
    job_id = submit_and_cancel(tenant, spec)
    assert sender(tenant.api).run_once() == []
    assert receiver.received == []
    assert tenant.api.client.get(f"/v1/jobs/{job_id}").json()["webhook_url"] is None


def test_the_same_idempotency_key_with_another_webhook_url_is_a_conflict(
    hooked: tuple[Tenant, dict[str, Any]], receiver: Receiver
) -> None:
    tenant, spec = hooked
    first = tenant.api.submit({**spec, "webhook_url": receiver.url}, key="run-1")
    assert first.status_code == 202
    replay = tenant.api.submit({**spec, "webhook_url": receiver.url}, key="run-1")
    assert replay.json()["id"] == first.json()["id"]
    other = tenant.api.submit({**spec, "webhook_url": receiver.url + "/other"}, key="run-1")
    assert_problem(other, 409, "idempotency_conflict")


def test_a_webhook_to_the_services_own_network_is_refused_at_submission(
    make_api: ApiFactory, model_file: Path, dataset_file: Path, receiver: Receiver
) -> None:
    """Server-side request forgery: a webhook_url on loopback, link-local (cloud
    metadata) or private addresses is a 422 naming the field, for jobs and batches, and
    nothing is stored (it used to be accepted, then failed 8 delivery attempts)."""
    api = make_api(webhook_backoff_s=0, webhook_max_attempts=1)
    tenant = new_tenant(api)
    model_id = tenant.api.model_id(model_file)
    spec = {
        "model_id": model_id,
        "eval_dataset_id": tenant.api.dataset_id(dataset_file),
        "steps": [{"method": "quantize", "mode": "dynamic"}],
    }
    for url in (receiver.url, "http://169.254.169.254/latest/meta-data", "http://[::1]:8080/"):
        body = assert_problem(
            tenant.api.submit({**spec, "webhook_url": url}), 422, "webhook_destination_forbidden"
        )
        assert body["field"] == "webhook_url" and body["detail"].startswith("webhook_url: ")
        assert body["errors"][0]["loc"] == ["body", "webhook_url"]
    batch = {
        "model_ids": [model_id],
        "spec": {k: v for k, v in spec.items() if k != "model_id"},
        "webhook_url": "http://10.0.0.7/hook",
    }
    assert_problem(
        tenant.api.client.post("/v1/batches", json=batch), 422, "webhook_destination_forbidden"
    )
    assert tenant.api.client.get("/v1/jobs").json()["items"] == []
    assert receiver.received == []


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/x", "http://169.254.169.254/latest", "http://10.1.2.3/", "http://[::1]/"],
)
def test_private_destinations_are_recognised(url: str) -> None:
    with pytest.raises(ForbiddenDestination):
        check_destination(url)


def test_a_public_address_is_allowed() -> None:
    check_destination("http://93.184.215.14/hook")  # a literal: no DNS needed


@pytest.mark.parametrize(
    "url",
    [
        "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
        "http://[::ffff:a9fe:a9fe]/",  # IPv4-mapped metadata address
        "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
        "http://[64:ff9b:1::a00:7]/",  # local-use NAT64 of 10.0.0.7
        "http://[2002:7f00:1::1]/",  # 6to4 of 127.0.0.1
        "http://[2002:a9fe:a9fe::1]/",  # 6to4 of 169.254.169.254
    ],
)
def test_ipv6_addresses_that_lead_to_private_ipv4_are_refused(url: str) -> None:
    with pytest.raises(ForbiddenDestination):
        check_destination(url)


def test_ipv6_translations_of_public_ipv4_are_allowed() -> None:
    check_destination("http://[64:ff9b::5db8:d70e]/hook")  # NAT64 of 93.184.215.14
    check_destination("http://[2002:5db8:d70e::1]/hook")  # 6to4 of the same


class FakeDns:
    """A name server for one name whose answers change between lookups (zero TTL):
    each lookup of `name` gets the next answer; any other host is resolved as usual."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.name = name
        self.answers: list[str] = []
        self.lookups = 0
        real = socket.getaddrinfo

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host != self.name:
                return real(host, port, *args, **kwargs)
            self.lookups += 1
            address = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            return real(address, port, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@dataclass
class Sent:
    url: httpx.URL
    headers: httpx.Headers
    extensions: dict[str, Any]


class LoopbackOnlyNetwork(httpx.HTTPTransport):
    """The test's network: a real transport that reaches loopback only. A request to a
    literal address elsewhere is recorded and fails to connect (nothing leaves the
    machine); names are resolved by the connection, as without pinning."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[Sent] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(Sent(request.url, request.headers, dict(request.extensions)))
        try:
            outside = not ipaddress.ip_address(request.url.host).is_loopback
        except ValueError:
            outside = False
        if outside:
            raise httpx.ConnectError("the test network reaches loopback only", request=request)
        return super().handle_request(request)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_rebinding_name_is_posted_to_the_address_that_was_checked(
    make_api: ApiFactory,
    model_file: Path,
    dataset_file: Path,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    scheme: str,
) -> None:
    """DNS rebinding: the name answers a public address to the check and 127.0.0.1 to
    any later lookup. The delivery connects to the checked (public) address, with the
    name in the Host header and as the TLS server name; the service listening on
    127.0.0.1 receives nothing."""
    api = make_api(webhook_backoff_s=0, webhook_max_attempts=1, webhook_timeout_s=2)
    tenant = new_tenant(api)
    dns = FakeDns(monkeypatch, "rebind.squeeze.test")
    port = urlsplit(receiver.url).port
    url = f"{scheme}://rebind.squeeze.test:{port}/hooks/squeeze"
    dns.answers = ["93.184.215.14"]
    job_id = submit_and_cancel(
        tenant,
        {
            "model_id": tenant.api.model_id(model_file),
            "eval_dataset_id": tenant.api.dataset_id(dataset_file),
            "steps": [{"method": "quantize", "mode": "dynamic"}],
            "webhook_url": url,
        },
    )
    dns.answers, dns.lookups = ["93.184.215.14", "127.0.0.1"], 0
    network = LoopbackOnlyNetwork()
    services = api.client.app.state.services  # type: ignore[attr-defined]
    http = httpx.Client(transport=network)
    hooks = WebhookSender(services.sessions, services.settings, http=http)

    [outcome] = hooks.run_once()

    assert receiver.received == []  # nothing reached the service on 127.0.0.1
    assert dns.lookups == 1
    [sent] = network.sent
    assert sent.url.host == "93.184.215.14" and sent.url.port == port
    assert sent.headers["host"] == f"rebind.squeeze.test:{port}"
    if scheme == "https":
        assert sent.extensions["sni_hostname"] == "rebind.squeeze.test"
    assert not outcome.delivered and "ConnectError" in (outcome.error or "")
    assert events(tenant.api, job_id)[0]["kind"] == "webhook_failed"


def test_a_name_that_resolves_privately_at_delivery_is_never_posted(
    make_api: ApiFactory,
    model_file: Path,
    dataset_file: Path,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name that did not resolve at submission (accepted: its receiver may come later)
    and resolves to loopback at delivery is refused then, without a connection."""
    api = make_api(webhook_backoff_s=0, webhook_max_attempts=1)
    tenant = new_tenant(api)
    port = urlsplit(receiver.url).port
    job_id = submit_and_cancel(
        tenant,
        {
            "model_id": tenant.api.model_id(model_file),
            "eval_dataset_id": tenant.api.dataset_id(dataset_file),
            "steps": [{"method": "quantize", "mode": "dynamic"}],
            "webhook_url": f"http://later.squeeze.invalid:{port}/hooks/squeeze",
        },
    )
    FakeDns(monkeypatch, "later.squeeze.invalid").answers = ["127.0.0.1"]

    [outcome] = sender(tenant.api).run_once()

    assert not outcome.delivered and receiver.received == []
    [event] = events(tenant.api, job_id)
    assert event["kind"] == "webhook_failed"
    assert "not a public address" in event["data"]["error"]
