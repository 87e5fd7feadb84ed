"""The job's report as an HTML artifact (`report.html`), rendered when the job succeeds.

The same page `GET /v1/jobs/{id}/report` serves, kept with the job's files so it can be
downloaded and archived. The report is a view of the result: should rendering it fail,
the job still succeeds (the API renders the page on request from the stored result).
"""

from __future__ import annotations

import logging

from core.report import JobRecord, build_report, render_html
from core.results import PipelineResult
from core.spec import JobSpec

log = logging.getLogger(__name__)


def report_html(
    job_id: str, spec: JobSpec, result: PipelineResult, model_filename: str | None
) -> str | None:
    """The succeeded job's report page, or None (logged) when it could not be rendered."""
    record = JobRecord(
        id=job_id,
        state="succeeded",
        progress=1.0,
        spec=spec,
        result=result,
        model_filename=model_filename,
    )
    try:
        return render_html(build_report(record))
    except Exception:  # a view of the result must not fail the job that produced it
        log.exception("job %s: the report page could not be rendered", job_id)
        return None
