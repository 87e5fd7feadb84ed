"""The dashboard's static files at /dashboard/ (public: the page holds no data; every
figure it shows comes from authenticated /v1 calls made in the browser), and the
service's front page at / pointing to it and to the API docs."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from api.dashboard import STATIC_DIR
from store.catalog import NotFound

router = APIRouter(tags=["dashboard"], include_in_schema=False)

# name -> media type: only these files are served (no path from the request reaches the disk)
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Scripts and styles from this origin only; the report's inline styles and SVG need
# 'unsafe-inline' styles and nothing else.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


# A person opening the service's address finds where to go; no data, no script.
FRONT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>squeeze</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font: 15px/1.5 system-ui, sans-serif; max-width: 40em; margin: 3em auto">
<h1>squeeze</h1>
<p>Neural-network compression as a service.</p>
<ul>
<li><a href="dashboard/">Dashboard</a>: your jobs, their reports, two jobs side by side
(it asks for your API key)</li>
<li><a href="docs">API docs</a> (interactive) and <a href="openapi.json">the OpenAPI
schema</a></li>
<li><a href="readyz">Readiness</a>: whether the service can take jobs</li>
</ul>
<p>From a terminal: <code>squeeze --help</code> (the command line and Python client).</p>
</body></html>
"""


@router.get("/", response_class=HTMLResponse)
def front_page() -> HTMLResponse:
    return HTMLResponse(FRONT_PAGE, headers=HEADERS)


@router.get("/dashboard")
def dashboard_redirect() -> RedirectResponse:
    return RedirectResponse("dashboard/", status_code=308)


@router.get("/dashboard/")
def dashboard_page() -> FileResponse:
    return dashboard_file("index.html")


@router.get("/dashboard/{name}")
def dashboard_file(name: str) -> FileResponse:
    if name not in FILES:
        raise NotFound("dashboard file", name)
    return FileResponse(STATIC_DIR / name, media_type=FILES[name], headers=HEADERS)
