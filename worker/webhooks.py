"""Webhook delivery: a periodic pass in the worker's parent process, never in a job.

Each pass makes the deliveries of newly final jobs due, claims the due ones, POSTs each
job's record signed with the submitting key's secret (`squeeze.webhooks`), and records
every attempt in the delivery row and as a job event. A failed attempt (no answer, or
a status outside 2xx) is retried with exponential backoff until
`webhook_max_attempts`; then the delivery is given up, with an event saying so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy.orm import Session, sessionmaker

from service.logs import log_context
from service.settings import Settings
from service.webhook_destination import (
    Destination,
    ForbiddenDestination,
    Resolver,
    resolve_destination,
    system_resolver,
)
from squeeze.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, signature_header
from store import webhooks
from store.db import transaction
from store.tables import utcnow
from worker.job_record import job_record_bytes

log = logging.getLogger(__name__)

USER_AGENT = "squeeze-webhooks/1"
# deliveries one pass sends at most; the rest wait for the next pass
PASS_LIMIT = 20
# how much of a response body an attempt's record keeps
ERROR_EXCERPT_CHARS = 200


@dataclass(frozen=True)
class Outcome:
    delivery_id: int
    job_id: str
    attempt: int
    delivered: bool
    status: int | None
    error: str | None
    gave_up: bool


def backoff_s(settings: Settings, failed_attempts: int) -> float:
    """Seconds before the attempt after `failed_attempts` failures: doubling, capped."""
    delay = settings.webhook_backoff_s * 2 ** max(failed_attempts - 1, 0)
    return float(min(delay, settings.webhook_backoff_max_s))


class WebhookSender:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        http: httpx.Client | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        # the one lookup of a delivery's host (tests give one that answers as they need)
        self.resolver = resolver
        # redirects are not followed: a delivery goes to the URL the job named
        self.http = http or httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False)

    def run_once(self) -> list[Outcome]:
        """One pass; returns what each attempt made of its delivery."""
        now = utcnow()
        with transaction(self.sessions) as session:
            webhooks.activate_finished(session, now=now)
            # held for longer than one attempt may take, so no other pass sends it meanwhile
            claimed = webhooks.claim_due(
                session, now=now, hold_s=self.settings.webhook_timeout_s + 30, limit=PASS_LIMIT
            )
        return [self.deliver(delivery_id) for delivery_id in claimed]

    def deliver(self, delivery_id: int) -> Outcome:
        with transaction(self.sessions) as session:
            delivery = webhooks.load(session, delivery_id)
            body = job_record_bytes(delivery.job)
        with log_context(job_id=delivery.job.id):
            status, error = self._post(delivery, body)
            return self._record(delivery, status, error)

    def _post(self, delivery: webhooks.Delivery, body: bytes) -> tuple[int | None, str | None]:
        if delivery.secret is None:
            return None, "the job has no API key to sign with"
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: signature_header(delivery.secret, body),
            EVENT_HEADER: f"job.{delivery.job.state}",
            DELIVERY_HEADER: str(delivery.id),
        }
        try:
            destination = resolve_destination(
                delivery.url,
                resolver=self.resolver,
                allow_private=self.settings.webhook_allow_private_hosts,
            )
        except (ForbiddenDestination, OSError) as refused:
            return None, str(refused)[:ERROR_EXCERPT_CHARS]
        try:
            response = self._post_to_checked(destination, body, headers)
        except httpx.HTTPError as error:
            return None, f"{type(error).__name__}: {error}"[:ERROR_EXCERPT_CHARS]
        if 200 <= response.status_code < 300:
            return response.status_code, None
        excerpt = response.text[:ERROR_EXCERPT_CHARS].strip()
        return response.status_code, f"HTTP {response.status_code}" + (
            f": {excerpt}" if excerpt else ""
        )

    def _post_to_checked(
        self, destination: Destination, body: bytes, headers: dict[str, str]
    ) -> httpx.Response:
        """POST to the addresses that were checked, in order (the next one when one
        refuses the connection, as a plain connect would), never to a second lookup's
        answer; the name goes in the Host header and, for https, as the TLS server name
        that the certificate is checked against."""
        headers = {**headers, "Host": destination.netloc}
        extensions = {"sni_hostname": destination.host} if destination.uses_tls else {}
        for address in destination.addresses[:-1]:
            try:
                return self.http.post(
                    destination.url_for(address),
                    content=body,
                    headers=headers,
                    extensions=extensions,
                )
            except httpx.ConnectError:
                continue
        return self.http.post(
            destination.url_for(destination.addresses[-1]),
            content=body,
            headers=headers,
            extensions=extensions,
        )

    def _record(
        self, delivery: webhooks.Delivery, status: int | None, error: str | None
    ) -> Outcome:
        now = utcnow()
        attempt, limit = delivery.attempt, self.settings.webhook_max_attempts
        data: dict[str, object] = {
            "url": delivery.url,
            "attempt": attempt,
            "max_attempts": limit,
            "status": status,
        }
        retry_at: datetime | None = None
        gave_up = False
        if error is None:
            kind, message = "webhook_delivered", f"webhook delivered (attempt {attempt})"
        elif attempt < limit and delivery.secret is not None:
            wait_s = backoff_s(self.settings, attempt)
            retry_at = now + timedelta(seconds=wait_s)
            kind = "webhook_retrying"
            message = f"webhook attempt {attempt} of {limit} failed: {error}; retry in {wait_s:g} s"
            data.update(error=error, retry_in_s=wait_s)
        else:
            gave_up = True
            kind = "webhook_failed"
            message = f"webhook given up after {attempt} attempts: {error}"
            data.update(error=error)
        with transaction(self.sessions) as session:
            webhooks.record_attempt(
                session,
                delivery,
                now=now,
                status=status,
                error=error,
                retry_at=retry_at,
                event_kind=kind,
                event_message=message,
                event_data=data,
            )
        log.log(logging.WARNING if error else logging.INFO, "%s", message)
        return Outcome(delivery.id, delivery.job.id, attempt, error is None, status, error, gave_up)

    def close(self) -> None:
        self.http.close()
