"""GET /v1/jobs/{id}/report: the job's report as HTML (tables, verdict, plots) and JSON.

Four small real jobs run once for the module through the API and the worker's JobRunner
(quantize auto; pruning with a sensitivity sweep and fine-tuning; a tiny search; a
distillation compared with label-only training), so the report is checked against the
details the steps really write. Jobs in other states are
made through the store's own transitions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from api.app import create_app
from api.routes.reports import negotiated_format
from core.report.html import format_size
from service.settings import Settings
from store import jobs
from store.db import transaction
from tests.api.conftest import ADMIN_TOKEN, Api, assert_problem
from tests.api.test_quantize_modes_e2e import digits_job_spec, run_job_through_api
from tests.api.test_search_e2e import TINY_SEARCH
from tests.factories import distinct_bytes

AUTO = [{"method": "quantize", "mode": "auto"}]
PRUNE = [
    {
        "method": "prune",
        "sparsity": 0.6,
        "sensitivity": {"sparsities": [0.5, 0.9]},
        "fine_tune": {"epochs": 2},
    }
]
SEARCH = [TINY_SEARCH]
DISTILL = [{"method": "distill", "epochs": 2, "compare_label_only": True}]
# no "/" (an upload keeps a name's last path component) and no '"' (the client encodes it)
HOSTILE_NAME = "<img src=x onerror=alert(1)><svg onload=alert(2)>&amp;.onnx"


@dataclass(frozen=True)
class Finished:
    api: Api
    auto: dict[str, Any]
    prune: dict[str, Any]
    search: dict[str, Any]
    distill: dict[str, Any]
    spec: dict[str, Any]  # a spec naming the uploads, for more jobs
    model_file: Path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, model_file: Path) -> Iterator[Finished]:
    folder = tmp_path_factory.mktemp("report")
    # Kombu's file-system transport keeps ./control: keep it out of the checkout.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        settings = Settings(
            data_dir=folder / "data",
            admin_api_key=ADMIN_TOKEN,
            absent_worker_policy="off",  # jobs run in-process here
            measure_warmup_runs=1,
            measure_runs=5,
        )
        app = create_app(settings)
        with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
            api = Api(client=client, settings=settings)
            spec = digits_job_spec(api, model_file, folder, AUTO)
            ran = {
                name: run_job_through_api(api, {**spec, "steps": steps})
                for name, steps in (
                    ("auto", AUTO),
                    ("prune", PRUNE),
                    ("search", SEARCH),
                    ("distill", DISTILL),
                )
            }
            assert {job["state"] for job in ran.values()} == {"succeeded"}, {
                name: job["error"] for name, job in ran.items()
            }
            yield Finished(api=api, spec=spec, model_file=model_file, **ran)


def report(api: Api, job_id: str, **params: str) -> Any:
    response = api.client.get(f"/v1/jobs/{job_id}/report", params=params)
    assert response.status_code == 200, response.text
    return response


# --- reading the HTML ------------------------------------------------------------------------


class _Tables(HTMLParser):
    """The text of every cell of the tables whose class is `css_class`, row by row."""

    def __init__(self, css_class: str) -> None:
        super().__init__()
        self.css_class = css_class
        self.depth = 0  # >0 inside a matching table
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and (self.depth or self.css_class in (dict(attrs).get("class") or "")):
            self.depth += 1
        elif self.depth and tag == "tr":
            self.rows.append([])
        elif self.depth and tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self.depth:
            self.depth -= 1
        elif self.depth and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def table_rows(html: str, css_class: str) -> list[list[str]]:
    parser = _Tables(css_class)
    parser.feed(html)
    return [row for row in parser.rows if row]


def figures(html: str) -> dict[str, str]:
    """data-plot kind -> the figure's markup."""
    found = re.findall(r'<figure class="sq-plot" data-plot="(\w+)">(.*?)</figure>', html, re.S)
    return dict(found)


def expected_row(label: str, metrics: dict[str, Any], original: dict[str, Any]) -> list[str]:
    latency = {entry["batch_size"]: entry for entry in metrics["latency"]}
    return [
        label,
        format_size(metrics["size_bytes"]),
        f"{metrics['size_bytes'] / original['size_bytes']:.3f}",
        f"{metrics['parameters']:,}",
        f"{latency[1]['median_ms']:.3f}",
        f"{latency[1]['p95_ms']:.3f}",
        f"{latency[8]['median_ms']:.3f}",
        f"{latency[8]['p95_ms']:.3f}",
        f"{metrics['metric_value']:.4f}",
        f"{metrics['metric_change']:+.4f}",
    ]


# --- finished jobs ---------------------------------------------------------------------------


def test_the_html_report_has_the_before_and_after_table(finished: Finished) -> None:
    job = finished.auto
    result = job["result"]
    response = report(finished.api, job["id"])
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    rows = table_rows(response.text, "sq-comparison")
    assert rows[0][:2] == ["model", "size"]
    assert "latency, batch 8 (ms)" in rows[0]
    assert rows[2:] == [
        expected_row("original", result["original"], result["original"]),
        expected_row(
            "after step 1: quantize (auto)", result["steps"][0]["metrics"], result["original"]
        ),
        expected_row("final", result["final"], result["original"]),
    ]


def test_the_html_report_has_the_verdict_per_target(finished: Finished) -> None:
    verdict = finished.auto["result"]["verdict"]
    rows = table_rows(report(finished.api, finished.auto["id"]).text, "sq-verdict")
    assert rows[1:] == [
        [
            c["target"],
            "" if c["batch_size"] is None else str(c["batch_size"]),
            f"{c['limit']:.4f}",
            f"{c['measured']:.4f}",
            "met" if c["met"] else "missed",
        ]
        for c in verdict["checks"]
    ]


def test_the_html_report_names_the_outcome_and_the_held_out_rows(finished: Finished) -> None:
    result = finished.auto["result"]
    html = report(finished.api, finished.auto["id"]).text
    outcome = result["verdict"]["outcome"]
    assert f'data-field="outcome">{outcome.replace("_", " ")}</span>' in html
    assert str(escape(result["verdict"]["outcome_reason"])) in html  # as Jinja escapes it
    held_out = result["evaluation"]["held_out_rows"]
    assert f"measured on {held_out} held-out eval rows" in html


def test_a_quantize_auto_report_plots_every_measured_candidate(finished: Finished) -> None:
    details = finished.auto["result"]["steps"][0]["details"]
    html = report(finished.api, finished.auto["id"]).text
    plots = figures(html)
    assert list(plots) == ["candidates"]
    svg = plots["candidates"]
    assert svg.count("<svg") == 1 and "</svg>" in svg
    assert "<path" in svg  # drawn, not an empty frame
    measured = [row for row in details["candidates"] if row["status"] == "measured"]
    listed = table_rows(html, "sq-candidates")[1:]
    assert [row[1] for row in listed] == [row["name"] for row in measured]
    chosen = [row[1] for row in listed if row[-1] == "chosen"]
    assert chosen == [details["chosen"]]


def test_a_prune_report_plots_sparsity_sensitivity_and_training(finished: Finished) -> None:
    details = finished.prune["result"]["steps"][0]["details"]
    html = report(finished.api, finished.prune["id"]).text
    plots = figures(html)
    assert list(plots) == ["layer_sparsity", "layer_sensitivity", "training"]
    assert all("<svg" in svg and "<path" in svg for svg in plots.values())
    assert f"{details['overall_sparsity']:.4g}" in html
    assert "ONNX Runtime gains no speed from unstructured sparsity" in html


def test_a_search_report_plots_its_trials_and_front(finished: Finished) -> None:
    details = finished.search["result"]["steps"][0]["details"]
    body = report(finished.api, finished.search["id"], format="json").json()
    [plot] = body["steps"][0]["plots"]
    assert plot["kind"] == "pareto" and plot["costs"] == ["latency_ms", "parameters"]
    complete = [t for t in details["trials"] if t["state"] == "complete"]
    assert [t["number"] for t in plot["trials"]] == [t["number"] for t in complete]
    assert {t["number"] for t in plot["trials"] if t["on_front"]} == set(details["front"])
    assert [t["number"] for t in plot["trials"] if t["chosen"]] == [details["chosen"]["trial"]]
    assert "<svg" in figures(report(finished.api, finished.search["id"]).text)["pareto"]


def test_a_distill_report_plots_the_distilled_and_label_only_training(finished: Finished) -> None:
    details = finished.distill["result"]["steps"][0]["details"]
    body = report(finished.api, finished.distill["id"], format="json").json()
    [plot] = body["steps"][0]["plots"]
    assert plot["kind"] == "training" and plot["best_epoch"] == details["best_epoch"]
    assert [(s["label"], s["epochs"]) for s in plot["series"]] == [
        ("distilled", [e["epoch"] for e in details["epochs"]]),
        ("labels only", [e["epoch"] for e in details["label_only"]["epochs"]]),
    ]
    assert "<svg" in figures(report(finished.api, finished.distill["id"]).text)["training"]


def test_the_json_report_carries_the_numbers_and_the_plot_data(finished: Finished) -> None:
    job = finished.prune
    body = report(finished.api, job["id"], format="json").json()
    assert body["complete"] is True
    assert body["job"]["id"] == job["id"] and body["job"]["state"] == "succeeded"
    assert [row["role"] for row in body["comparison"]] == ["original", "step", "final"]
    assert body["comparison"][0]["size_bytes"] == job["result"]["original"]["size_bytes"]
    assert body["verdict"]["targets_met"] == job["result"]["verdict"]["targets_met"]
    [step] = body["steps"]
    by_kind = {plot["kind"]: plot for plot in step["plots"]}
    details = job["result"]["steps"][0]["details"]
    assert [bar["layer"] for bar in by_kind["layer_sparsity"]["layers"]] == [
        row["layer"] for row in details["layers"]
    ]
    assert {curve["label"] for curve in by_kind["layer_sensitivity"]["curves"]} == set(
        details["sensitivity"]["curves"]
    )
    assert by_kind["training"]["series"][0]["epochs"] == [1, 2]


@pytest.mark.parametrize(
    ("accept", "kind"),
    [
        ("application/json", "application/json"),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "text/html"),
        ("*/*", "text/html"),
    ],
)
def test_the_accept_header_chooses_the_format(finished: Finished, accept: str, kind: str) -> None:
    response = finished.api.client.get(
        f"/v1/jobs/{finished.auto['id']}/report", headers={"Accept": accept}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(kind)
    assert "Accept" in response.headers["vary"]


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "html"),
        ("application/json;q=0.5, text/html", "html"),
        ("text/html;q=0.4, application/json", "json"),
        ("application/json, */*;q=0.1", "json"),
        ("application/json, text/html", "html"),  # a tie: HTML
        ("application/*", "json"),
        ("application/json;q=0", "html"),
    ],
)
def test_negotiation_prefers_html_unless_json_ranks_higher(
    accept: str | None, expected: str
) -> None:
    assert negotiated_format(accept) == expected


def test_the_worker_publishes_the_report_page_with_the_job(finished: Finished) -> None:
    job_id = finished.auto["id"]
    artifacts = finished.api.client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
    page = next(a for a in artifacts if a["name"] == "report.html")
    assert page["media_type"].startswith("text/html")
    html = finished.api.client.get(page["url"]).text
    assert job_id in html and 'data-plot="candidates"' in html
    assert {"report.json", "manifest.json", "model.onnx"} <= {a["name"] for a in artifacts}


# --- who may read it -------------------------------------------------------------------------


def test_another_tenant_gets_404(finished: Finished) -> None:
    other = finished.api.tenant("report-other")
    response = other.client.get(f"/v1/jobs/{finished.auto['id']}/report")
    assert_problem(response, 404, "not_found")
    assert finished.auto["id"] not in other.client.get("/v1/jobs").text


def test_an_anonymous_caller_gets_401(finished: Finished) -> None:
    response = finished.api.with_token(None).client.get(f"/v1/jobs/{finished.auto['id']}/report")
    assert_problem(response, 401, "unauthenticated")


def test_an_unknown_job_is_404(finished: Finished) -> None:
    assert_problem(finished.api.client.get("/v1/jobs/job_nope/report"), 404, "not_found")


# --- jobs without a result -------------------------------------------------------------------


def submit(finished: Finished, **overrides: Any) -> str:
    response = finished.api.submit({**finished.spec, **overrides})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def store_sessions(finished: Finished) -> Any:
    return finished.api.client.app.state.services.sessions  # type: ignore[attr-defined]


def test_a_hostile_model_filename_is_escaped(finished: Finished) -> None:
    # other bytes: the same ones would be reused as the earlier record, under its name
    content = distinct_bytes(finished.model_file, "hostile")
    uploaded = finished.api.upload("/v1/models", content, HOSTILE_NAME)
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["filename"] == HOSTILE_NAME  # stored as given: escaping is ours
    html = report(finished.api, submit(finished, model_id=uploaded.json()["id"])).text
    assert str(escape(HOSTILE_NAME)) in html
    assert "<img" not in html and "<svg onload" not in html


def test_a_queued_job_report_says_nothing_was_measured(finished: Finished) -> None:
    job_id = submit(finished)
    html = report(finished.api, job_id).text
    assert "the job is queued: nothing has been measured yet" in html
    assert table_rows(html, "sq-comparison") == []
    body = report(finished.api, job_id, format="json").json()
    assert body["complete"] is False and body["comparison"] == [] and body["verdict"] is None


def test_a_running_job_report_shows_its_progress_and_finished_steps(finished: Finished) -> None:
    """The latest attempt's progress events (copied from the finished auto job's) give
    the original's metrics and the finished step; the final row waits for the result."""
    job_id = submit(finished, steps=AUTO)
    done = finished.api.client.get(f"/v1/jobs/{finished.auto['id']}/events?limit=1000").json()
    step_done = next(e for e in done["items"] if e["message"].endswith(": done"))
    original = next(e for e in done["items"] if e["message"] == "measured the original model")
    with transaction(store_sessions(finished)) as session:
        attempt = jobs.claim(session, job_id, worker="test", lease_s=60)
        assert attempt == 1
        for event in (original, step_done):
            data = {k: v for k, v in event["data"].items() if k != "progress"}
            assert jobs.record_progress(
                session,
                job_id,
                attempt,
                progress=0.9,
                current_step="1: quantize",
                message=event["message"],
                data=data,
            )
    html = report(finished.api, job_id).text
    assert 'data-state="running"' in html
    assert '<progress max="1" value="0.9">' in html
    assert "1 of 1 steps finished" in html
    labels = [row[0] for row in table_rows(html, "sq-comparison")[2:]]
    assert labels == ["original", "after step 1: quantize (auto)"]
    assert list(figures(html)) == ["candidates"]
    assert 'data-section="verdict"' not in html


def test_a_failed_job_report_shows_the_error_escaped(finished: Finished) -> None:
    job_id = submit(finished)
    with transaction(store_sessions(finished)) as session:
        attempt = jobs.claim(session, job_id, worker="test", lease_s=60)
        assert attempt is not None
        assert jobs.finish(
            session,
            job_id,
            attempt,
            state="failed",
            error_code="step_failed",
            error_message="quantize failed on node <b onmouseover=alert(1)>x</b>",
        )
    html = report(finished.api, job_id).text
    error = re.search(r'<section class="sq-error" data-section="error">(.*?)</section>', html, re.S)
    assert error is not None
    assert "<code>step_failed</code>" in error.group(1)
    assert "&lt;b onmouseover=alert(1)&gt;x&lt;/b&gt;" in error.group(1)
    assert "<b " not in html
    assert "the job ended failed without a result" in html
