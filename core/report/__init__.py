"""A job's report: built from the job's record (`build`), drawn (`plots`) and rendered
as one self-contained HTML page (`html`); the `Report` model is also its JSON form."""

from core.report.build import build_report
from core.report.html import render_html
from core.report.model import JobRecord, ProgressEvent, Report

__all__ = ["JobRecord", "ProgressEvent", "Report", "build_report", "render_html"]
