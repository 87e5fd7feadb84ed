"""The report as one self-contained HTML page: tables, facts and inline SVG plots, with
its stylesheet inline and no script, font or image fetched from anywhere.

Jinja2 escapes every value (file names, node names and messages come from users); only
the SVG that `core.report.plots` draws is inserted as markup.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from core.report.model import Report
from core.report.plots import render_svg

TEMPLATES = Path(__file__).resolve().parent / "templates"
KIB = 1024


def render_html(report: Report) -> str:
    """The report's HTML page, every plot drawn."""
    steps = [
        (section, [(plot, Markup(render_svg(plot))) for plot in section.plots])
        for section in report.steps
    ]
    return (
        _environment()
        .get_template("report.html.j2")
        .render(report=report, job=report.job, error=report.error, steps=steps)
    )


@cache
def _environment() -> Environment:
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        size=format_size,
        ratio=lambda value: f"{value:.3f}",
        ms=lambda value: f"{value:.3f}",
        metric=lambda value: f"{value:.4f}",
        change=lambda value: f"{value:+.4f}",
        percent=lambda value: f"{value:.0%}",
        seconds=format_seconds,
        when=lambda value: (
            value.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(value, datetime) else str(value)
        ),
    )
    return environment


def format_size(size_bytes: int) -> str:
    if size_bytes < KIB:
        return f"{size_bytes} B"
    if size_bytes < KIB * KIB:
        return f"{size_bytes / KIB:.1f} KiB"
    if size_bytes < KIB**3:
        return f"{size_bytes / KIB / KIB:.1f} MiB"
    return f"{size_bytes / KIB**3:.2f} GiB"


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"
