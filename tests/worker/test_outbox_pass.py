"""The workers' outbox pass sends what the API could not (its broker was down), with no
API running; a job that ended before its message left is not sent."""

from __future__ import annotations

from store import jobs, outbox
from store.db import transaction
from tests.worker.conftest import StoreFactory
from worker.enqueue import JobQueue
from worker.reaper import drain_outbox


def test_the_worker_pass_sends_held_back_messages_on_the_embedded_broker(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    waiting, cancelled = store.submit(), store.submit()
    with transaction(store.sessions) as session:
        jobs.request_cancel(session, cancelled, tenant_id=None)
        assert outbox.backlog(session).pending == 2
    queue = JobQueue(store.settings)
    assert drain_outbox(store.sessions, queue) == [waiting]
    messages = sorted(store.settings.broker_dir.glob(f"*.{store.settings.queue_cpu}.msg"))
    assert len(messages) == 1 and waiting in messages[0].read_text()
    with transaction(store.sessions) as session:
        assert outbox.backlog(session).pending == 0
    assert store.job(waiting).enqueued_at is not None
