"""The dashboard end to end in headless Chromium: the page loads from the API, takes the
key from the URL fragment, reads jobs through the public API, and shows the finished
job's report with its plots, which must really be drawn on screen.

SQUEEZE_DASHBOARD_SCREENSHOTS=<folder> keeps the screenshots there (the README's come
from this test: `SQUEEZE_DASHBOARD_SCREENSHOTS=docs make pytest
PYTEST_ARGS=tests/dashboard`).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageStat

from tests.dashboard.conftest import Browser, Served

# matplotlib's tab:blue (the plots' points and bars) and tab:red (the chosen candidate's
# ring); the dashboard's own styles use neither, so pixels of these colours are plots
PLOT_BLUE = (31, 119, 180)
CHOSEN_RED = (214, 39, 40)


def colour_pixels(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    """How many pixels lie within `tolerance` of `colour` on every channel."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int((np.abs(pixels - np.array(colour)) <= tolerance).all(axis=-1).sum())


def keep(path: Path, name: str) -> None:
    folder = os.environ.get("SQUEEZE_DASHBOARD_SCREENSHOTS")
    if folder:
        shutil.copyfile(path, Path(folder) / name)


def test_the_dashboard_page_is_public_and_holds_no_data(served: Served) -> None:
    response = httpx.get(f"{served.base_url}/dashboard/")
    assert response.status_code == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert served.finished_job["id"] not in response.text
    # only the three files are served: no name from the request reaches the disk
    assert httpx.get(f"{served.base_url}/dashboard/%2e%2e%2f__init__.py").status_code == 404
    assert httpx.get(f"{served.base_url}/dashboard/app.js").status_code == 200
    assert httpx.get(f"{served.base_url}/v1/jobs").status_code == 401


def test_without_a_key_the_page_asks_for_one(served: Served, browser: Browser) -> None:
    dom = browser.dump_dom(f"{served.base_url}/dashboard/")
    assert 'class="keyform"' in dom
    assert served.finished_job["id"] not in dom


def test_the_job_list_shows_each_job_with_its_state_and_changes(
    served: Served, browser: Browser, tmp_path: Path
) -> None:
    dom = browser.dump_dom(served.dashboard())
    finished, queued = served.finished_job, served.queued_job
    rows = dict(re.findall(r'<tr data-job-id="([^"]+)">(.*?)</tr>', dom, re.S))
    assert set(rows) == {finished["id"], queued["id"]}
    assert 'data-state="succeeded"' in rows[finished["id"]]
    assert 'data-state="queued"' in rows[queued["id"]]
    verdict = finished["result"]["verdict"]
    assert f"{verdict['size_ratio']:.3f}x" in rows[finished["id"]]
    assert f"{verdict['latency_ratio']:.3f}x" in rows[finished["id"]]
    assert "quantize (auto)" in rows[finished["id"]]
    # the outcome in words, with its reason on hover; none yet for the queued job
    assert f'data-outcome="{finished["outcome"]}"' in rows[finished["id"]]
    assert "data-outcome" not in rows[queued["id"]]
    assert served.admin_key not in dom  # the key left the URL and is never shown
    keep(browser.screenshot(served.dashboard(), tmp_path / "jobs.png"), "dashboard-jobs.png")


def test_the_job_list_filters_by_outcome(served: Served, browser: Browser) -> None:
    finished = served.finished_job
    outcome = finished["outcome"]
    other = "unchanged" if outcome != "unchanged" else "improved"
    shown = browser.dump_dom(served.dashboard(f"?outcome={outcome}"))
    assert f'data-job-id="{finished["id"]}"' in shown
    assert f'data-job-id="{served.queued_job["id"]}"' not in shown  # not final: no outcome
    hidden = browser.dump_dom(served.dashboard(f"?outcome={other}"))
    assert f'data-job-id="{finished["id"]}"' not in hidden


def test_the_job_page_shows_the_report_with_its_plots(served: Served, browser: Browser) -> None:
    job = served.finished_job
    dom = browser.dump_dom(served.dashboard(f"?job={job['id']}"))
    assert f'<code id="job-id">{job["id"]}</code>' in dom
    assert re.search(r'id="job-status"[^>]*data-state="succeeded"', dom)
    assert '<article class="sq-report"' in dom  # the report, moved into the page
    figure = re.search(r'<figure class="sq-plot" data-plot="candidates">(.*?)</figure>', dom, re.S)
    assert figure is not None and "<svg" in figure.group(1) and "<path" in figure.group(1)
    assert "Before and after" in dom and 'data-section="verdict"' in dom
    assert "model.onnx" in dom and "report.html" in dom  # the artifacts to download
    assert "finished" in dom and "measured the original model" in dom  # the events


def test_the_plots_are_drawn_on_screen(served: Served, browser: Browser, tmp_path: Path) -> None:
    job = served.finished_job
    path = browser.screenshot(served.dashboard(f"?job={job['id']}"), tmp_path / "job.png")
    keep(path, "dashboard-job.png")
    with Image.open(path) as image:
        assert image.size == (1280, 1800)
        assert max(ImageStat.Stat(image.convert("L")).stddev) > 20  # not a blank page
        assert colour_pixels(image, PLOT_BLUE) > 150  # the candidates' points and legend
        assert colour_pixels(image, CHOSEN_RED) > 40  # the chosen candidate's ring


def test_a_queued_job_page_keeps_polling_and_says_nothing_was_measured(
    served: Served, browser: Browser
) -> None:
    job = served.queued_job
    dom = browser.dump_dom(served.dashboard(f"?job={job['id']}"))
    assert re.search(r'id="job-status"[^>]*data-state="queued"', dom)
    assert ">Cancel</button>" in dom  # a job still active can be cancelled from the page
    assert "the job is queued: nothing has been measured yet" in dom
    assert 'data-plot="' not in dom


def model_filename(served: Served, model_id: str) -> str:
    response = httpx.get(
        f"{served.base_url}/v1/models/{model_id}",
        headers={"Authorization": f"Bearer {served.admin_key}"},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["filename"])


def test_the_job_list_names_each_job_s_model(served: Served, browser: Browser) -> None:
    dom = browser.dump_dom(served.dashboard())
    finished = served.finished_job
    model_id = finished["spec"]["model_id"]
    rows = dict(re.findall(r'<tr data-job-id="([^"]+)">(.*?)</tr>', dom, re.S))
    name = model_filename(served, model_id)
    cell = f'<span class="model" data-model-id="{model_id}" title="{model_id}">{name}</span>'
    assert cell in rows[finished["id"]] and cell in rows[served.queued_job["id"]]
    # the compare button waits for two ticked jobs
    assert re.search(r'<button type="button" id="compare" disabled="">Compare 2 jobs</button>', dom)
    assert rows[finished["id"]].count('type="checkbox"') == 1


def test_the_job_list_filters_by_state_and_method(served: Served, browser: Browser) -> None:
    finished, queued = served.finished_job["id"], served.queued_job["id"]
    succeeded = browser.dump_dom(served.dashboard("?state=succeeded"))
    assert f'data-job-id="{finished}"' in succeeded and f'data-job-id="{queued}"' not in succeeded
    quantize = browser.dump_dom(served.dashboard("?method=quantize"))
    assert f'data-job-id="{finished}"' in quantize and f'data-job-id="{queued}"' in quantize
    assert '<option value="quantize" selected="">quantize</option>' in quantize
    prune = browser.dump_dom(served.dashboard("?method=prune"))
    assert "data-job-id" not in prune and "no jobs yet" in prune


def test_two_jobs_are_compared_side_by_side(
    served: Served, browser: Browser, tmp_path: Path
) -> None:
    finished, queued = served.finished_job, served.queued_job
    url = served.dashboard(f"?compare={finished['id']},{queued['id']}")
    dom = browser.dump_dom(url)
    table = re.search(r'<table class="jobs compare" id="comparison">(.*?)</table>', dom, re.S)
    assert table is not None
    rows = {
        key: dict(re.findall(r'<td data-job-id="([^"]+)">(.*?)</td>', body, re.S))
        for key, body in re.findall(r'<tr data-row="([^"]+)">(.*?)</tr>', table.group(1), re.S)
    }
    assert list(rows) == [
        "job", "model", "steps", "state", "outcome", "targets_met", "size_ratio",
        "latency_ratio", "metric_change", "metric", "size", "latency", "checks",
    ]  # fmt: skip
    verdict = finished["result"]["verdict"]
    assert rows["size_ratio"][finished["id"]] == f"{verdict['size_ratio']:.3f}x"
    assert rows["size_ratio"][queued["id"]] == "\u2013"  # nothing measured yet
    assert rows["steps"][finished["id"]] == "quantize (auto)"
    assert rows["steps"][queued["id"]] == "quantize (static)"
    assert 'data-state="queued"' in rows["state"][queued["id"]]
    assert finished["outcome"] in rows["outcome"][finished["id"]]
    assert rows["targets_met"][finished["id"]] in ("yes", "NO")
    name = model_filename(served, finished["spec"]["model_id"])
    assert name in rows["model"][finished["id"]] and name in rows["model"][queued["id"]]
    assert "at batch 8" in rows["latency"][finished["id"]]
    assert "missed" in rows["checks"][finished["id"]] or "met" in rows["checks"][finished["id"]]
    keep(browser.screenshot(url, tmp_path / "compare.png"), "dashboard-compare.png")


def test_the_front_page_points_to_the_dashboard_and_the_docs(served: Served) -> None:
    response = httpx.get(f"{served.base_url}/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<a href="dashboard/">Dashboard</a>' in response.text
    assert '<a href="docs">API docs</a>' in response.text
    assert httpx.get(f"{served.base_url}/docs").status_code == 200
