"""Request dependencies as named types: routes declare what they need, not how to get it.

The accessors are `async def` because they only read `app.state`: FastAPI runs every sync
dependency on the thread pool, and each hand-over between the event loop and a pool
thread costs a status poll time (and a wait for the GIL when an upload is being
validated; see bench/load.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.settings import Settings
from store.blobs import BlobStore
from worker.enqueue import JobQueue


@dataclass(frozen=True)
class Services:
    """What `create_app` builds once and every request shares (kept on `app.state`)."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    blobs: BlobStore
    queue: JobQueue


def get_services(request: Request) -> Services:
    services = request.app.state.services
    assert isinstance(services, Services)
    return services


async def get_settings(request: Request) -> Settings:
    return get_services(request).settings


async def get_engine(request: Request) -> Engine:
    return get_services(request).engine


async def get_session_factory(request: Request) -> sessionmaker[Session]:
    return get_services(request).sessions


async def get_blobs(request: Request) -> BlobStore:
    return get_services(request).blobs


async def get_queue(request: Request) -> JobQueue:
    return get_services(request).queue


SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]


async def get_session(sessions: SessionFactoryDep) -> AsyncIterator[Session]:
    """One transaction per request: committed when the route returns, rolled back on error.

    Opened on the event loop (a Session takes its connection on first use, in the route's
    thread) and ended in one thread-pool call: a sync generator would cost two hand-overs.
    """
    session = sessions()
    session.begin()
    try:
        yield session
    except BaseException:
        await run_in_threadpool(_end, session, commit=False)
        raise
    await run_in_threadpool(_end, session, commit=True)


def _end(session: Session, *, commit: bool) -> None:
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    finally:
        session.close()


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
# scope="function": the commit happens as the route returns, before the response is sent,
# so a client never sees a success that was not committed, and background tasks (the
# enqueue after creating a job) run after the commit.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
