"""`squeeze models`, `squeeze datasets` and `squeeze delete`: what a tenant stored, and
removing it (a module of its own, registered by `parser.build_parser`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from squeeze.cli import exit_codes, render
from squeeze.cli.commands import Cli
from squeeze.client.models import Upload

Command = Callable[[str, str], argparse.ArgumentParser]
ID_KINDS = {"mdl_": "model", "ds_": "dataset", "job_": "job"}


def register(command: Command) -> None:
    """Add the commands to the parser; `command(name, help)` makes a sub-parser."""
    for name, kind in (("models", "model"), ("datasets", "dataset")):
        p = command(name, f"list your {kind}s, newest first")
        p.add_argument("--name", help="file names containing this (any case)")
        p.add_argument(
            "--since", type=parse_date, metavar="DATE", help="created at or after (2026-12-01)"
        )
        p.add_argument("--until", type=parse_date, metavar="DATE", help="created before")
        p.add_argument("--limit", type=int, default=20, help="at most this many (20)")
        p.add_argument("--all", action="store_true", help="every one, however many")
        p.set_defaults(handler=list_models if kind == "model" else list_datasets)

    p = command("delete", "delete models (mdl_...), datasets (ds_...) or finished jobs (job_...)")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(handler=delete)


def parse_date(value: str) -> datetime:
    """An ISO 8601 date or time; without a zone it is UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as error:
        message = f"{value!r}: not a date (2026-12-01, or ISO 8601)"
        raise argparse.ArgumentTypeError(message) from error
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def list_models(cli: Cli) -> int:
    return _list(cli, cli.client.list_models)


def list_datasets(cli: Cli) -> int:
    return _list(cli, cli.client.list_datasets)


def _list(cli: Cli, lister: Callable[..., Any]) -> int:
    """Pages of `lister` (the client's list_models or list_datasets) until --limit, or
    to the end with --all."""
    args = cli.args
    limit = None if args.all else args.limit

    def every() -> Iterator[Upload]:
        cursor: str | None = None
        while True:
            page = lister(
                name=args.name,
                created_after=args.since,
                created_before=args.until,
                limit=100 if limit is None else min(limit, 100),
                cursor=cursor,
            )
            yield from page.items
            cursor = page.next_cursor
            if cursor is None:
                return

    return _print_uploads(cli, list(every() if limit is None else islice(every(), limit)))


def _print_uploads(cli: Cli, uploads: list[Upload]) -> int:
    if cli.json:
        cli.print_json(list(uploads))
        return exit_codes.OK
    rows = [
        [u.id, u.filename, render.size(u.size_bytes), render.when(u.created_at), u.sha256[:12]]
        for u in uploads
    ]
    cli.print(render.table(["id", "file", "size", "created", "sha256"], rows))
    return exit_codes.OK


def delete(cli: Cli) -> int:
    """Deletes each id in turn; stops at the first the service refuses (a job still
    running, an input still in use), which it explains."""
    deleted = []
    for item_id in cli.args.ids:
        kind = next((k for prefix, k in ID_KINDS.items() if item_id.startswith(prefix)), None)
        if kind is None:
            cli.err.write(f"squeeze: {item_id}: not a model, dataset or job id\n")
            return exit_codes.ERROR
        if kind == "model":
            cli.client.delete_model(item_id)
        elif kind == "dataset":
            cli.client.delete_dataset(item_id)
        else:
            cli.client.delete_job(item_id)
        deleted.append({"id": item_id, "kind": kind})
        if not cli.json:
            cli.print(f"deleted {kind} {item_id}")
    if cli.json:
        cli.print_json({"deleted": deleted})
    return exit_codes.OK
