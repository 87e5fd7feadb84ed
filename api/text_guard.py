"""Text no column can store is refused before a route runs: 422 `invalid_characters`.

PostgreSQL refuses NUL in text (psycopg raises on the bind) and strings with lone
surrogates cannot be encoded as UTF-8 at all, so an id, cursor or name holding them
answered 500 from the deployment profile (SQLite stored NUL happily, which hid it).
Ids, cursors and query values are service-made tokens: no control character belongs in
a path or query. JSON bodies may carry tabs and newlines in strings, never NUL or a
surrogate; keys are checked as values are.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import Request

from api.errors import InvalidCharacters

# C0 controls and DEL: nothing the service issues or names contains them.
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_JSON_TYPES = ("application/json",)
# Nesting the walk follows at most (json.loads itself stops far deeper inputs).
_MAX_DEPTH = 200


async def refuse_unstorable_text(request: Request) -> None:
    """A dependency of every route (see api.app)."""
    path = request.scope.get("path", "")
    if _CONTROL.search(path.encode("utf-8", "surrogatepass")):
        raise InvalidCharacters("the path holds a control character (NUL, ...): ids have none")
    query = request.scope.get("query_string", b"")
    if query and _CONTROL.search(unquote_to_bytes(query)):
        raise InvalidCharacters(
            "the query string holds a control character (NUL, ...): cursors and filters have none"
        )
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in _JSON_TYPES and not content_type.endswith("+json"):
        return
    body = await request.body()  # cached: the route reads the same bytes
    try:
        document = json.loads(body) if body else None
    except (ValueError, RecursionError):
        return  # the route answers the parse error itself
    where = _bad_string(document, "body", 0)
    if where is not None:
        raise InvalidCharacters(
            f"{where}: strings may not hold NUL (\\u0000) or unpaired surrogates (\\ud800)"
        )


def _unstorable(text: str) -> bool:
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _bad_string(value: Any, where: str, depth: int) -> str | None:
    """Where in the document the first unstorable string is; None when there is none."""
    if depth > _MAX_DEPTH:
        return None
    if isinstance(value, str):
        return where if _unstorable(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if _unstorable(key):
                return f"{where} (a key)"
            found = _bad_string(item, f"{where}.{key}", depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _bad_string(item, f"{where}.{index}", depth + 1)
            if found is not None:
                return found
    return None
