"""A worker's local cache of blobs fetched from a remote store, keyed by sha256.

Files live at `<root>/<sha[:2]>/<sha>`; a file's mtime is its last use, and once the
cache holds more than `max_bytes` the least recently used files are removed. Callers get
a hard link (or a copy) of the cached file, never the cached file itself: evicting an
entry cannot pull a file from under a running job. Every download is hashed and must
match its sha256 before it enters the cache.

Several processes of one worker host share the cache: a lock file per sha256 makes one
of them download while the others wait, and one lock for the whole cache covers linking
and eviction (both short). Lock files are kept (a few bytes per blob ever fetched): one
removed while another process waits on it would let two processes hold "the lock".
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from store.blobs.base import BlobCorrupt, check_sha256

log = logging.getLogger(__name__)

# writes the blob's bytes into the open file (raises BlobMissing when there is none)
Fetch = Callable[[BinaryIO], None]


@dataclass(frozen=True)
class CacheStats:
    files: int
    size_bytes: int


class BlobCache:
    def __init__(
        self, root: Path, max_bytes: int, *, clock: Callable[[], float] = time.time
    ) -> None:
        """`clock` stamps each use (file timestamps are too coarse for tests to order)."""
        self.root = root
        self.max_bytes = max_bytes
        self._clock = clock
        self._locks = root / ".locks"
        self._locks.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256

    def materialise(self, sha256: str, destination: Path, fetch: Fetch) -> Path:
        """`destination` holds the blob: from the cache, or fetched into it first."""
        cached = self.path(sha256)
        for _ in range(3):  # evicted between download and link by another process: again
            with self._lock(sha256):
                if not cached.exists():
                    self._download(sha256, cached, fetch)
            with self._lock("cache"):
                try:
                    now = self._clock()
                    os.utime(cached, (now, now))  # last use: the LRU order
                    _link_or_copy(cached, destination)
                except FileNotFoundError:
                    continue
                self._evict(keep=cached)
            return destination
        raise RuntimeError(f"blob {sha256} kept being evicted from the cache")

    def stats(self) -> CacheStats:
        entries = list(self._entries())
        return CacheStats(len(entries), sum(size for _, size, _ in entries))

    def cached(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def _download(self, sha256: str, cached: Path, fetch: Fetch) -> None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{cached.name}.{uuid.uuid4().hex}.part")
        try:
            with partial.open("wb") as out:
                writer = _HashingWriter(out)
                fetch(writer)  # type: ignore[arg-type]
            actual = writer.digest.hexdigest()
            if actual != sha256:
                raise BlobCorrupt(sha256, actual)
            os.replace(partial, cached)
        finally:
            partial.unlink(missing_ok=True)
        log.info("blob cache: fetched %s (%d bytes)", sha256, cached.stat().st_size)

    def _entries(self) -> Iterator[tuple[Path, int, float]]:
        for folder in self.root.iterdir():
            if not folder.is_dir() or folder == self._locks:
                continue
            for path in folder.iterdir():
                if path.name.endswith(".part"):
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                yield path, stat.st_size, stat.st_mtime

    def _evict(self, keep: Path) -> None:
        entries = sorted(self._entries(), key=lambda entry: entry[2])
        total = sum(size for _, size, _ in entries)
        for path, size, _ in entries:
            if total <= self.max_bytes:
                return
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= size
            log.info("blob cache: evicted %s (%d bytes)", path.name, size)

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        with (self._locks / f"{name}.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class _HashingWriter:
    """The file a fetcher fills (only `write`), hashing what goes through."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self._out.write(data)


def _link_or_copy(source: Path, destination: Path) -> None:
    try:
        os.link(source, destination)
    except FileNotFoundError:
        raise
    except OSError:
        shutil.copyfile(source, destination)
