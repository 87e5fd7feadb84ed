"""The blob store's contract, run against both implementations: local files and the S3
object store (a real SeaweedFS server, started for the test session)."""

from __future__ import annotations

import hashlib
import io
import os
import time
import uuid
from pathlib import Path

import httpx
import pytest

from service.settings import Settings
from store.blobs import BlobMissing, BlobStore, BlobTooLarge, open_blob_store
from store.blobs.s3 import S3BlobStore

MIB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunks(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.fixture
def settings(tmp_path: Path, blob_backend: dict[str, object]) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        s3_multipart_threshold_bytes=5 * MIB,
        s3_multipart_part_bytes=5 * MIB,
        **blob_backend,  # type: ignore[arg-type]
    )


@pytest.fixture
def blobs(settings: Settings) -> BlobStore:
    settings.ensure_dirs()
    return open_blob_store(settings)


def staged_files(blobs: BlobStore) -> list[Path]:
    return sorted(blobs.staging_dir.iterdir())


def test_the_settings_choose_the_implementation(blobs: BlobStore, settings: Settings) -> None:
    assert blobs.kind == settings.blob_store


def test_a_stream_is_stored_under_its_sha256_with_its_size(blobs: BlobStore) -> None:
    data = os.urandom(10_000)
    stored = blobs.put(chunks(data), max_bytes=len(data))
    assert (stored.sha256, stored.size_bytes) == (sha(data), len(data))
    assert blobs.exists(sha(data))
    assert blobs.size(sha(data)) == len(data)
    assert staged_files(blobs) == []


def test_a_stream_over_the_cap_is_refused_and_leaves_nothing(blobs: BlobStore) -> None:
    data = os.urandom(5000)
    with pytest.raises(BlobTooLarge):
        blobs.put(chunks(data), max_bytes=4999)
    assert list(blobs.list()) == []
    assert staged_files(blobs) == []


def test_a_blob_reads_back_as_a_stream_and_in_chunks(blobs: BlobStore) -> None:
    data = os.urandom(3 * MIB + 17)
    blobs.put([data], max_bytes=len(data))
    with blobs.open(sha(data)) as stream:
        assert stream.read() == data
    pieces = list(blobs.iter_chunks(sha(data), chunk_bytes=MIB))
    assert b"".join(pieces) == data
    assert max(len(piece) for piece in pieces) <= MIB


def test_the_same_bytes_are_stored_once(blobs: BlobStore) -> None:
    data = b"same bytes" * 100
    blobs.put([data], max_bytes=len(data))
    blobs.put([data], max_bytes=len(data))
    assert [info.sha256 for info in blobs.list()] == [sha(data)]


def test_publishing_known_bytes_again_refreshes_their_modified_time(blobs: BlobStore) -> None:
    data = b"refreshed" * 10
    blobs.put([data], max_bytes=len(data))
    (first,) = blobs.list()
    time.sleep(1.2)  # S3's LastModified has whole seconds
    blobs.put([data], max_bytes=len(data))
    (second,) = blobs.list()
    assert second.modified_at > first.modified_at


def test_a_staged_blob_is_invisible_until_published(blobs: BlobStore) -> None:
    data = b"staged" * 50
    staged = blobs.stage_fileobj(io.BytesIO(data), max_bytes=len(data))
    assert staged.path.read_bytes() == data and not blobs.exists(staged.sha256)
    assert list(blobs.list()) == []
    blobs.publish(staged)
    assert blobs.exists(staged.sha256) and not staged.path.exists()


def test_put_file_stores_a_local_file_and_leaves_it_in_place(
    blobs: BlobStore, tmp_path: Path
) -> None:
    source = tmp_path / "result.bin"
    source.write_bytes(os.urandom(2048))
    stored = blobs.put_file(source)
    assert stored.sha256 == sha(source.read_bytes()) and source.exists()
    assert blobs.size(stored.sha256) == 2048


def test_materialise_gives_a_local_file_that_outlives_the_blob(
    blobs: BlobStore, tmp_path: Path
) -> None:
    data = os.urandom(4096)
    blobs.put([data], max_bytes=len(data))
    local = blobs.materialise(sha(data), tmp_path / "input.bin")
    assert local.read_bytes() == data
    assert blobs.delete(sha(data))
    assert local.read_bytes() == data


def test_a_deleted_blob_is_gone_and_deleting_it_again_says_so(blobs: BlobStore) -> None:
    kept, removed = b"kept" * 10, b"removed" * 10
    blobs.put([kept], max_bytes=100)
    blobs.put([removed], max_bytes=100)
    assert blobs.delete(sha(removed)) is True
    assert blobs.delete(sha(removed)) is False
    assert not blobs.exists(sha(removed))
    assert [info.sha256 for info in blobs.list()] == [sha(kept)]


def test_a_missing_blob_raises_blob_missing(blobs: BlobStore, tmp_path: Path) -> None:
    missing = sha(b"never stored")
    assert not blobs.exists(missing)
    with pytest.raises(BlobMissing):
        blobs.size(missing)
    with pytest.raises(BlobMissing):
        blobs.open(missing)
    with pytest.raises(BlobMissing):
        blobs.materialise(missing, tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_list_names_every_blob_with_its_size(blobs: BlobStore) -> None:
    payloads = [os.urandom(n) for n in (1, 100, 10_000)]
    for data in payloads:
        blobs.put([data], max_bytes=len(data))
    listed = {info.sha256: info.size_bytes for info in blobs.list()}
    assert listed == {sha(data): len(data) for data in payloads}


def test_a_large_file_is_stored_intact(blobs: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "large.bin"
    source.write_bytes(os.urandom(12 * MIB + 5))  # past the 5 MiB multipart threshold
    stored = blobs.put_file(source)
    local = blobs.materialise(stored.sha256, tmp_path / "back.bin")
    assert sha(local.read_bytes()) == stored.sha256 == sha(source.read_bytes())


def test_names_that_are_not_sha256_digests_are_refused(blobs: BlobStore) -> None:
    for name in ("../etc/passwd", "A" * 64, "0" * 63):
        with pytest.raises(ValueError):
            blobs.exists(name)


def test_the_store_answers_its_readiness_check(blobs: BlobStore) -> None:
    blobs.check()


def test_a_presigned_url_downloads_without_a_key_where_the_store_has_them(
    blobs: BlobStore,
) -> None:
    data = os.urandom(1000)
    blobs.put([data], max_bytes=len(data))
    url = blobs.presigned_url(
        sha(data), filename="model.onnx", media_type="application/octet-stream", expires_s=60
    )
    if blobs.kind == "local":
        assert url is None
        return
    assert url is not None
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == data
    assert 'filename="model.onnx"' in response.headers["content-disposition"]


# --- what only the object store does ---------------------------------------------------------


@pytest.fixture
def s3_blobs(tmp_path: Path, object_store: object) -> S3BlobStore:
    from tests.services import ObjectStore

    assert isinstance(object_store, ObjectStore)
    settings = Settings(
        data_dir=tmp_path / "data",
        s3_multipart_threshold_bytes=5 * MIB,
        s3_multipart_part_bytes=5 * MIB,
        **object_store.settings_overrides(),  # type: ignore[arg-type]
    )
    store = open_blob_store(settings)
    assert isinstance(store, S3BlobStore)
    return store


def test_large_files_go_to_the_object_store_in_parts(s3_blobs: S3BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "large.bin"
    source.write_bytes(os.urandom(12 * MIB))
    stored = s3_blobs.put_file(source)
    head = s3_blobs.client.head_object(Bucket=s3_blobs.bucket, Key=s3_blobs.key(stored.sha256))
    assert head["ETag"].strip('"').endswith("-3")  # three parts of at most 5 MiB


def test_objects_are_keyed_by_prefix_and_sha256(s3_blobs: S3BlobStore) -> None:
    data = b"keyed"
    s3_blobs.put([data], max_bytes=10)
    listed = s3_blobs.client.list_objects_v2(Bucket=s3_blobs.bucket, Prefix=s3_blobs.prefix)
    assert [item["Key"] for item in listed["Contents"]] == [f"{s3_blobs.prefix}{sha(data)}"]


def test_a_worker_fetches_a_blob_once_then_reads_its_cache(
    s3_blobs: S3BlobStore, tmp_path: Path
) -> None:
    data = os.urandom(50_000)
    s3_blobs.put([data], max_bytes=len(data))
    s3_blobs.materialise(sha(data), tmp_path / "first")
    # gone from the store, still served from the cache: the second call did not fetch
    s3_blobs.client.delete_object(Bucket=s3_blobs.bucket, Key=s3_blobs.key(sha(data)))
    assert s3_blobs.materialise(sha(data), tmp_path / "second").read_bytes() == data
    assert s3_blobs.cache.stats().files == 1


def test_wrong_credentials_fail_the_readiness_check(
    tmp_path: Path, object_store: object
) -> None:
    from tests.services import ObjectStore

    assert isinstance(object_store, ObjectStore)
    overrides = object_store.settings_overrides()
    store = open_blob_store(Settings(data_dir=tmp_path, **overrides))  # type: ignore[arg-type]
    wrong = Settings(
        data_dir=tmp_path,
        **{**overrides, "s3_secret_access_key": uuid.uuid4().hex, "s3_create_bucket": False},  # type: ignore[arg-type]
    )
    with pytest.raises(Exception, match=r"SignatureDoesNotMatch|403|Forbidden"):
        open_blob_store(wrong).check()
    store.check()
