"""A running attempt's memory goes to the job's log as it nears the limit, once per share
crossed: what the reaper reads should the pool process itself be killed."""

from __future__ import annotations

from store import jobs
from store.db import transaction
from tests.worker.conftest import StoreFactory
from worker.runner import MemoryRecorder


def test_each_share_of_the_limit_is_recorded_once_as_the_growth_crosses_it(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    job_id = store.submit()
    with transaction(store.sessions) as session:
        attempt = jobs.claim(session, job_id, worker="w:1", lease_s=60)
    assert attempt == 1
    record = MemoryRecorder(store.sessions, job_id, attempt, limit_bytes=1000)

    for growth in (100, 400, 520, 560, 700, 760, 800, 905, 930):
        record(peak_rss_bytes=growth + 50, growth_bytes=growth)

    samples = [event.data for event in store.events(job_id) if event.kind == "memory"]
    assert [sample["growth_bytes"] for sample in samples] == [520, 760, 905]
    assert samples[-1] == {"peak_rss_bytes": 955, "growth_bytes": 905, "limit_bytes": 1000}
    with transaction(store.sessions) as session:
        assert jobs.lost_for_memory(jobs.last_memory_sample(session, job_id, attempt))


def test_without_a_limit_nothing_is_recorded(make_store: StoreFactory) -> None:
    store = make_store()
    job_id = store.submit()
    with transaction(store.sessions) as session:
        attempt = jobs.claim(session, job_id, worker="w:1", lease_s=60)
    assert attempt is not None
    MemoryRecorder(store.sessions, job_id, attempt, limit_bytes=None)(10**9, 10**9)
    assert [event for event in store.events(job_id) if event.kind == "memory"] == []
