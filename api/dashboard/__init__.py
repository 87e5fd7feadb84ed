"""The web dashboard: static HTML, JavaScript and CSS served by the API (no build step).

The page holds no data: it calls the public /v1 API from the browser with the API key the
user pastes (kept in sessionStorage, or localStorage when asked to remember it).
"""

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
