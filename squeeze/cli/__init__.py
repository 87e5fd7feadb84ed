"""The `squeeze` command: `squeeze --help`, or `python -m squeeze.cli`."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from squeeze.cli import exit_codes
from squeeze.cli.commands import Cli
from squeeze.cli.files import LocalFileError
from squeeze.cli.messages import explain
from squeeze.cli.parser import build_parser
from squeeze.cli.specs import SpecError
from squeeze.client import Client
from squeeze.client.errors import SqueezeError


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run one command; returns its exit code (see `exit_codes`)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2), already printed
        return stop.code if isinstance(stop.code, int) else exit_codes.ERROR
    with Client(args.url, args.api_key, timeout_s=args.timeout) as client:
        cli = Cli(args=args, client=client, out=out, err=err)
        try:
            code: int = args.handler(cli)
            return code
        except SqueezeError as error:
            err.write(explain(error, args, argv) + "\n")
            return exit_codes.ERROR
        except (SpecError, LocalFileError, OSError) as error:
            err.write(f"squeeze: {error}\n")
            return exit_codes.ERROR
        except KeyboardInterrupt:
            err.write("\nsqueeze: interrupted; a submitted job goes on (squeeze status ID)\n")
            return exit_codes.INTERRUPTED


def run() -> None:
    """The console script's entry point."""
    raise SystemExit(main())
