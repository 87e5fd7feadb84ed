"""Every log line written while the API handles a job's route names the job."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from service.logs import log_context

JOB_PATH = re.compile(r"^/v1/jobs/(?P<job_id>[^/]+)")


class JobLogContextMiddleware:
    """Sets the log context's job id from `/v1/jobs/{job_id}...` for the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = JOB_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        with log_context(job_id=match["job_id"][:64]):
            await self.app(scope, receive, send)
