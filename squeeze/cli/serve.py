"""`squeeze serve`: the service on this machine in one command (the API and its workers on
the embedded default), stopped by Ctrl-C (SIGINT) or SIGTERM.

The CLI is the light client's, the service is not: the service's runner is imported only
when `serve` runs, and a client-only install (squeeze-client) is told what to install.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from squeeze.cli import exit_codes
from squeeze.cli.commands import Cli

Command = Callable[[str, str], argparse.ArgumentParser]
INSTALL_HINT = (
    "install the service: pip install 'squeeze[server]' (in a checkout: pip install "
    "'.[server]'; the squeeze-client distribution is the client alone)"
)


def register(command: Command) -> None:
    p = command(
        "serve",
        "run the service here: the API and a worker on the embedded default (SQLite, "
        "local files); Ctrl-C stops both",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("SQUEEZE_DATA_DIR", "var")),
        help="database, broker, blobs, logs and the admin key (env SQUEEZE_DATA_DIR; var)",
    )
    p.add_argument("--port", type=int, default=8000, help="the API's port (8000)")
    p.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (127.0.0.1: this machine)"
    )
    p.add_argument(
        "--workers", type=int, default=1, metavar="N", help="worker processes, one job each (1)"
    )
    p.add_argument("--log-dir", type=Path, help="the processes' logs (DATA_DIR/logs)")
    p.set_defaults(handler=serve)


STOP_TIMEOUT_S = 30


class Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def serve(cli: Cli) -> int:
    err = cli.err
    try:
        from service import runner  # the service distribution only (lazy on purpose)
    except ImportError:
        err.write(f"squeeze serve: this install has the client only; {INSTALL_HINT}\n")
        return exit_codes.ERROR
    missing = runner.missing_server_libraries()
    if missing:
        err.write(f"squeeze serve: missing {', '.join(missing)}; {INSTALL_HINT}\n")
        return exit_codes.ERROR
    args = cli.args
    if args.workers < 1:
        err.write("squeeze serve: --workers must be at least 1\n")
        return exit_codes.ERROR
    service = runner.Service(
        data_dir=Path(args.data_dir),
        port=args.port,
        host=args.host,
        workers=args.workers,
        queue=os.environ.get("SQUEEZE_QUEUE_CPU", runner.DEFAULT_QUEUE),
        log_dir=args.log_dir,
        # a worker's warm shutdown (the running job's end, its row marked stopped) takes
        # several seconds on a busy machine; SIGKILL after this
        stop_timeout_s=STOP_TIMEOUT_S,
    )
    key_made_now = not service.admin_key_file.exists()
    previous = {
        sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    say = cli.print
    try:
        say(
            f"starting the API on {service.base_url} and {args.workers} worker(s) on queue "
            f"{service.queue!r} (data in {service.data_dir}, logs in {service.log_dir})"
        )
        cli.out.flush()
        service.start()
        say(f"serving at {service.base_url} (API docs {service.base_url}/docs, "
            f"dashboard {service.base_url}/dashboard)")  # fmt: skip
        _print_admin_key(cli, service.base_url, service.admin_key_file, key_made_now)
        say("Ctrl-C stops the API and the worker(s)")
        cli.out.flush()
        while True:
            api = next((child for child in service.dead() if child.name == "api"), None)
            if api is not None:
                err.write(
                    f"squeeze serve: the API exited (code {api.process.returncode}); "
                    f"stopping. Its log ({api.log}) ends:\n{api.log_tail()}\n"
                )
                return exit_codes.ERROR
            # a worker that dies (a broker error, the OOM killer) is started again
            for line in service.revive_workers():
                err.write(f"squeeze serve: {line}\n")
            time.sleep(0.5)
    except Stop as stopped:
        say(
            f"\n{stopped}: stopping the worker(s), then the API (at most {STOP_TIMEOUT_S} s "
            "each)"
        )
        return exit_codes.OK
    except runner.ServiceError as error:
        err.write(f"squeeze serve: {error}\n")
        return exit_codes.ERROR
    finally:
        # a second Ctrl-C must not leave the children (in their own sessions) running
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        service.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        say("stopped")
        cli.out.flush()


def _print_admin_key(cli: Cli, url: str, path: Path, made_now: bool) -> None:
    """The key in full once, on the start that made it; after that, where it is."""
    if os.environ.get("SQUEEZE_ADMIN_API_KEY"):
        cli.print("admin API key: the one in SQUEEZE_ADMIN_API_KEY")
        return
    if made_now and path.exists():
        cli.print(f"admin API key (printed this once; stored in {path}):")
        cli.print(f"  {path.read_text().strip()}")
    else:
        cli.print(f"admin API key: in {path} (made on the first start)")
    cli.print(f"  export SQUEEZE_URL={url} SQUEEZE_API_KEY=$(cat {path})")
