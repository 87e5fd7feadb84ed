"""A worker's cache of fetched blobs: one fetch per blob, checked bytes, bounded size with
the least recently used evicted, and files handed out that eviction cannot take away."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import BinaryIO

import pytest

from store.blobs import BlobCache, BlobCorrupt


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Origin:
    """What the cache fetches from, counting fetches (the real store's fetch is a stream
    of its object; here the bytes are known)."""

    def __init__(self, *payloads: bytes) -> None:
        self.payloads = {sha(data): data for data in payloads}
        self.fetches: list[str] = []

    def fetch(self, sha256: str, *, serve: bytes | None = None) -> object:
        def write(out: BinaryIO) -> None:
            self.fetches.append(sha256)
            out.write(self.payloads[sha256] if serve is None else serve)

        return write


@pytest.fixture
def clock() -> itertools.count[int]:
    return itertools.count(1_000_000)


def cache_of(tmp_path: Path, max_bytes: int, clock: itertools.count[int]) -> BlobCache:
    return BlobCache(tmp_path / "cache", max_bytes, clock=lambda: float(next(clock)))


def get(cache: BlobCache, origin: Origin, data: bytes, target: Path) -> Path:
    return cache.materialise(sha(data), target, origin.fetch(sha(data)))  # type: ignore[arg-type]


def test_a_blob_is_fetched_once_and_then_served_from_the_cache(
    tmp_path: Path, clock: itertools.count[int]
) -> None:
    data = b"x" * 100
    origin = Origin(data)
    cache = cache_of(tmp_path, 10_000, clock)
    assert get(cache, origin, data, tmp_path / "a").read_bytes() == data
    assert get(cache, origin, data, tmp_path / "b").read_bytes() == data
    assert origin.fetches == [sha(data)]


def test_bytes_that_do_not_match_their_sha256_never_enter_the_cache(
    tmp_path: Path, clock: itertools.count[int]
) -> None:
    data = b"the real bytes"
    origin = Origin(data)
    cache = cache_of(tmp_path, 10_000, clock)
    with pytest.raises(BlobCorrupt):
        cache.materialise(sha(data), tmp_path / "a", origin.fetch(sha(data), serve=b"tampered"))  # type: ignore[arg-type]
    assert not cache.cached(sha(data)) and not (tmp_path / "a").exists()
    assert cache.stats().files == 0


def test_the_least_recently_used_blob_is_evicted_past_the_size_limit(
    tmp_path: Path, clock: itertools.count[int]
) -> None:
    a, b, c = b"a" * 100, b"b" * 100, b"c" * 100
    origin = Origin(a, b, c)
    cache = cache_of(tmp_path, 250, clock)
    get(cache, origin, a, tmp_path / "a1")
    get(cache, origin, b, tmp_path / "b1")
    get(cache, origin, a, tmp_path / "a2")  # a is now more recent than b
    get(cache, origin, c, tmp_path / "c1")
    assert (cache.cached(sha(a)), cache.cached(sha(b)), cache.cached(sha(c))) == (
        True,
        False,
        True,
    )
    assert cache.stats().size_bytes == 200


def test_a_file_handed_out_survives_its_eviction(
    tmp_path: Path, clock: itertools.count[int]
) -> None:
    a, b = b"a" * 100, b"b" * 100
    origin = Origin(a, b)
    cache = cache_of(tmp_path, 150, clock)
    handed_out = get(cache, origin, a, tmp_path / "job-input")
    get(cache, origin, b, tmp_path / "other")
    assert not cache.cached(sha(a))
    assert handed_out.read_bytes() == a


def test_a_blob_larger_than_the_cache_is_still_handed_out(
    tmp_path: Path, clock: itertools.count[int]
) -> None:
    big = b"z" * 1000
    origin = Origin(big)
    cache = cache_of(tmp_path, 10, clock)
    assert get(cache, origin, big, tmp_path / "big").read_bytes() == big
