"""A job's report: one self-contained HTML page for people, the same numbers as JSON."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from api import report_service
from api.auth import CallerDep
from api.deps import SessionDep
from api.routes.docs import problems
from core.report import Report, build_report, render_html

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=problems(401))

JobId = Annotated[str, Path(min_length=1, max_length=64)]
ReportFormat = Literal["html", "json"]
# The page runs no script and loads nothing: its styles and SVG plots are inline.
HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src data:; frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Vary": "Accept",
}


@router.get(
    "/{job_id}/report",
    response_model=Report,
    responses={
        200: {
            "description": "the report as HTML (default) or JSON",
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
        **problems(404),
    },
)
def get_job_report(
    job_id: JobId,
    request: Request,
    caller: CallerDep,
    session: SessionDep,
    report_format: Annotated[
        ReportFormat | None,
        Query(
            alias="format",
            description="html or json; without it, the Accept header decides (HTML "
            "unless application/json ranks higher)",
        ),
    ] = None,
) -> Response:
    """The job's report: before/after table, verdict, per-step facts and plots. A job
    still running shows what was measured so far; a failed one, its error."""
    record = report_service.load_record(session, job_id, tenant_id=caller.tenant_id)
    report = build_report(record)
    if (report_format or negotiated_format(request.headers.get("accept"))) == "json":
        return JSONResponse(report.model_dump(mode="json"), headers={"Vary": "Accept"})
    return HTMLResponse(render_html(report), headers=HTML_HEADERS)


def negotiated_format(accept: str | None) -> ReportFormat:
    """JSON when the Accept header ranks application/json above text/html, else HTML
    (a browser's header, curl's `*/*`, or none)."""
    quality = {
        media: _quality(accept or "*/*", media) for media in ("text/html", "application/json")
    }
    return "json" if quality["application/json"] > quality["text/html"] else "html"


def _quality(accept: str, media: str) -> float:
    """The q of the most specific range in `accept` that matches `media` (0: none)."""
    best: tuple[int, float] = (-1, 0.0)
    kind = media.split("/")[0]
    for part in accept.split(","):
        range_, *params = (item.strip() for item in part.split(";"))
        specificity = {media: 2, f"{kind}/*": 1, "*/*": 0}.get(range_.lower())
        if specificity is None or specificity < best[0]:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best = (specificity, q)
    return best[1]
