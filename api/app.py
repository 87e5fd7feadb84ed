"""The FastAPI application: `uvicorn api.app:create_app --factory`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi import Depends, FastAPI

from api import outbox_sender
from api.admission import (
    AuthGateMiddleware,
    BodyBufferMiddleware,
    RateLimitMiddleware,
    buckets_for,
)
from api.auth import KeyCache, bootstrap_admin_key
from api.concurrency import ConcurrencyLimitMiddleware
from api.deps import Services
from api.limits import BodyLimits, BodySizeLimitMiddleware
from api.log_context import JobLogContextMiddleware
from api.metrics import ServiceMetrics
from api.openapi import install_openapi, operation_id
from api.problems import install_problem_handlers
from api.routes import (
    batches,
    dashboard,
    datasets,
    health,
    jobs,
    metrics,
    models,
    reports,
    tenants,
    webhooks,
    workers,
)
from api.text_guard import refuse_unstorable_text
from service.logs import configure_logging
from service.settings import Settings, get_settings
from store.blobs import open_blob_store
from store.db import make_engine, make_sessionmaker
from store.migrate import upgrade_to_head
from worker.enqueue import JobQueue

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def package_version() -> str:
    """The installed distribution's version, else the source tree's pyproject.toml."""
    try:
        return version("squeeze")
    except PackageNotFoundError:
        pass
    try:
        return str(tomllib.loads(PYPROJECT.read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "0+unknown"


@functools.cache
def freeze_startup_objects() -> None:
    """Exclude every object alive at start-up (the imported libraries' ~150k objects)
    from the garbage collector's full collections, once per process. Each full
    collection walked them all while no request could run: 80-120 ms stalls under load,
    most of the status polls' p99 (bench/load.py: polls next to uploads went from p99
    85 ms, max 206 ms, to p99 11 ms, max 27 ms)."""
    gc.freeze()


def create_app(settings: Settings | None = None, queue: JobQueue | None = None) -> FastAPI:
    """Build the API on `settings` (default: from the environment).

    Prepares the data dir and upgrades the database schema to the newest migration before
    the first request, so a fresh deployment needs no separate setup step.
    """
    settings = settings or get_settings()
    configure_logging(settings.log_format)
    settings.ensure_dirs()
    upgrade_to_head(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    services = Services(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        blobs=open_blob_store(settings),
        queue=queue or JobQueue(settings),
    )
    bootstrap_admin_key(services.sessions, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        freeze_startup_objects()
        sender = asyncio.create_task(
            outbox_sender.drain_forever(
                services.sessions, services.queue, settings.outbox_interval_s
            )
        )
        yield
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        engine.dispose()

    app = FastAPI(
        title="squeeze",
        version=package_version(),
        summary="Neural-network compression as a service",
        docs_url="/docs",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        # Before any route's own dependencies (auth included): text no column can store
        # never reaches a query.
        dependencies=[Depends(refuse_unstorable_text)],
    )
    app.state.services = services
    app.state.metrics = ServiceMetrics(services.sessions, services.queue, settings)
    install_problem_handlers(app)
    install_openapi(app)
    # Starlette runs the last added outermost: a request meets them bottom to top, so it
    # is authenticated, rate-limited and (unless it uploads) has its body in full before
    # it takes a slot (api/admission.py).
    limits = BodyLimits.from_settings(settings)
    app.state.key_cache = KeyCache()
    app.add_middleware(
        BodySizeLimitMiddleware, limits=limits, idle_timeout_s=settings.api_body_idle_timeout_s
    )
    app.add_middleware(
        ConcurrencyLimitMiddleware,
        max_concurrent=settings.api_max_concurrent_requests,
        max_uploads=settings.api_max_concurrent_uploads,
        is_upload=limits.is_streamed,
    )
    app.add_middleware(BodyBufferMiddleware, limits=limits, timeout_s=settings.api_body_timeout_s)
    app.add_middleware(
        RateLimitMiddleware,
        buckets=(
            buckets_for(
                settings.resolved_rate_limit_redis_url,
                settings.rate_limit_per_s,
                settings.rate_limit_burst,
            )
            if settings.rate_limit_per_s > 0
            else None
        ),
        rate_per_s=settings.rate_limit_per_s,
        burst=settings.rate_limit_burst,
    )
    app.add_middleware(AuthGateMiddleware, sessions=services.sessions, cache=app.state.key_cache)
    app.add_middleware(JobLogContextMiddleware)
    routers = (
        health.router,
        tenants.router,
        models.router,
        datasets.router,
        jobs.router,
        batches.router,
        webhooks.router,
        workers.router,
        metrics.router,
        reports.router,
        dashboard.router,
    )
    for router in routers:
        app.include_router(router)
    return app
