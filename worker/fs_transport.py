"""The embedded broker: kombu's file-system transport, made safe for a producer and a
consumer working at the same moment.

kombu's own transport creates a message file and then writes into it; a consumer that
lists the folder in between reads an empty or half-written file, and its JSON error is
unrecoverable: the Celery worker's main process exits (kombu #1551; seen here when a job
was submitted while the worker polled). Here a message is written under a name no
consumer looks for and renamed into place (`os.replace`, atomic within a folder), so a
consumer only ever sees whole messages. The exchange table is written the same way. A
file that still does not parse (left by an older producer, or a damaged disk) is moved
aside into `corrupt/` and logged instead of killing the worker.

Celery loads this class by name (`broker_transport`, worker.celery_app), in the API and
in the workers alike.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)

# what a message file is named while it is written (no consumer matches it)
PARTIAL_SUFFIX = ".partial"


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
    with open(partial, "wb", buffering=0) as handle:
        handle.write(data)
    os.replace(partial, path)


class Channel(filesystem.Channel):  # type: ignore[misc]
    """Atomic message and exchange files; unreadable messages set aside, not fatal."""

    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        path = Path(self.data_folder_out) / name
        try:
            write_atomically(path, str_to_bytes(dumps(payload)))
        except OSError as exc:
            raise ChannelError(f"Cannot add file {str(path)!r} to directory") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        wanted = f"{queue}.msg"
        for filename in sorted(os.listdir(self.data_folder_in)):
            # partial files start with "." and end in PARTIAL_SUFFIX: never this queue's
            if filename.partition(".")[2] != wanted:
                continue
            processed = self.processed_folder if self.store_processed else tempfile.gettempdir()
            try:
                # the move is the claim: of two consumers, one gets the file
                shutil.move(os.path.join(self.data_folder_in, filename), processed)
            except OSError:
                continue
            taken = os.path.join(processed, filename)
            try:
                with open(taken, "rb") as handle:
                    payload = handle.read()
            except OSError as exc:
                raise ChannelError(f"Cannot read file {taken!r} from queue.") from exc
            try:
                message = loads(bytes_to_str(payload))
            except ValueError:
                self._set_aside(taken, filename)
                continue
            if not self.store_processed:
                os.remove(taken)
            return message
        raise filesystem.Empty()

    def _set_aside(self, taken: str, filename: str) -> None:
        corrupt = Path(self.data_folder_in) / "corrupt"
        corrupt.mkdir(exist_ok=True)
        shutil.move(taken, corrupt / filename)
        log.error(
            "broker: message file %s is not valid JSON; moved to %s (the job it carried, "
            "if any, is sent again by the reaper)",
            filename,
            corrupt,
        )

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        file = self._exchange_file(exchange)
        self.control_folder.mkdir(exist_ok=True)
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        # bindings only grow; of two processes binding at once the last rename wins, and
        # every process binds its own queues again whenever it connects
        queues = self.get_table(exchange)
        if entry in queues:
            return
        queues.insert(0, entry)
        try:
            write_atomically(file, str_to_bytes(dumps([list(q) for q in queues])))
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc

    def get_table(self, exchange: str) -> list[Any]:
        file = self._exchange_file(exchange)
        try:
            table = json.loads(file.read_text())
        except FileNotFoundError:
            return []
        except ValueError:  # written by kombu's own non-atomic code: read it as empty
            log.warning("broker: exchange table %s is not valid JSON; rebinding", file)
            return []
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc
        return [filesystem.exchange_queue_t(*entry) for entry in table]


class Transport(filesystem.Transport):  # type: ignore[misc]
    Channel = Channel
