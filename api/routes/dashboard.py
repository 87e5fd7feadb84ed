"""The dashboard's static files at /dashboard/ (public: the page holds no data; every
figure it shows comes from authenticated /v1 calls made in the browser)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

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
