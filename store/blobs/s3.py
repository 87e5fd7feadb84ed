"""Blobs in an S3-compatible object store (AWS S3, SeaweedFS, MinIO...): key
`<prefix><sha256>` in one bucket.

Writers stage locally first (the API validates an upload before storing it), then upload
the file, in parts of `part_bytes` from `multipart_threshold_bytes` on. Readers on a
worker go through a local `BlobCache`. Publishing bytes that are already stored copies
the object onto itself with fresh metadata: that renews its LastModified, which
retention's grace period reads, without sending the bytes again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from service.settings import Settings
from store.blobs.base import (
    CHUNK_BYTES,
    BlobInfo,
    BlobMissing,
    BlobStore,
    StagedBlob,
    check_sha256,
)
from store.blobs.cache import BlobCache

MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})


def make_client(settings: Settings, endpoint_url: str) -> Any:
    secret = settings.s3_secret_access_key
    config = Config(
        region_name=settings.s3_region,
        signature_version="s3v4",
        # A custom endpoint has no per-bucket DNS names: bucket in the path.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=120,
        # the API serves up to 40 requests at once from its thread pool
        max_pool_connections=40,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url or None,
        aws_access_key_id=settings.s3_access_key_id or None,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        config=config,
    )


def _missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in MISSING_CODES


class S3BlobStore(BlobStore):
    kind = "s3"

    def __init__(
        self,
        *,
        client: Any,
        bucket: str,
        prefix: str,
        staging_dir: Path,
        cache: BlobCache,
        multipart_threshold_bytes: int,
        part_bytes: int,
        presign_client: Any | None = None,
    ) -> None:
        super().__init__(staging_dir)
        self.client = client
        self.presign_client = presign_client or client
        self.bucket = bucket
        self.prefix = prefix
        self.cache = cache
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold_bytes,
            multipart_chunksize=part_bytes,
            max_concurrency=4,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        client = make_client(settings, settings.s3_endpoint_url)
        public = settings.s3_public_endpoint_url
        store = cls(
            client=client,
            presign_client=make_client(settings, public) if public else None,
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            staging_dir=settings.blob_staging_dir,
            cache=BlobCache(settings.blob_cache_dir, settings.blob_cache_max_bytes),
            multipart_threshold_bytes=settings.s3_multipart_threshold_bytes,
            part_bytes=settings.s3_multipart_part_bytes,
        )
        if settings.s3_create_bucket:
            store.ensure_bucket()
        return store

    def key(self, sha256: str) -> str:
        return self.prefix + check_sha256(sha256)

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            if not _missing(error):
                raise
            self.client.create_bucket(Bucket=self.bucket)

    # --- writing --------------------------------------------------------------------------

    def publish(self, staged: StagedBlob) -> None:
        try:
            self._store_file(staged.path, staged.sha256)
        finally:
            staged.path.unlink(missing_ok=True)

    def put_file(self, source: Path) -> StagedBlob:
        # No staging copy: the file is hashed where it is, then sent from there.
        digest = hashlib.sha256()
        with source.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
        stored = StagedBlob(source, digest.hexdigest(), source.stat().st_size)
        self._store_file(source, stored.sha256)
        return stored

    def _store_file(self, path: Path, sha256: str) -> None:
        key = self.key(sha256)
        metadata = {"sha256": sha256}
        if self.exists(sha256):
            self.client.copy_object(
                Bucket=self.bucket,
                Key=key,
                CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE",
                Metadata=metadata,
            )
            return
        self.client.upload_file(
            str(path), self.bucket, key, ExtraArgs={"Metadata": metadata}, Config=self.transfer
        )

    # --- reading --------------------------------------------------------------------------

    def _head(self, sha256: str) -> dict[str, Any] | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as error:
            if _missing(error):
                return None
            raise
        return cast(dict[str, Any], head)

    def exists(self, sha256: str) -> bool:
        return self._head(sha256) is not None

    def size(self, sha256: str) -> int:
        head = self._head(sha256)
        if head is None:
            raise BlobMissing(sha256)
        return int(head["ContentLength"])

    def open(self, sha256: str) -> BinaryIO:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as error:
            if _missing(error):
                raise BlobMissing(sha256) from None
            raise
        return cast(BinaryIO, answer["Body"])

    def iter_chunks(self, sha256: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        body = self.open(sha256)
        try:
            yield from body.iter_chunks(chunk_bytes)  # type: ignore[attr-defined]
        finally:
            body.close()

    def materialise(self, sha256: str, destination: Path) -> Path:
        def fetch(out: BinaryIO) -> None:
            for chunk in self.iter_chunks(sha256):
                out.write(chunk)

        return self.cache.materialise(sha256, destination, fetch)

    def presigned_url(
        self, sha256: str, *, filename: str, media_type: str, expires_s: int
    ) -> str | None:
        url = self.presign_client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.key(sha256),
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
                "ResponseContentType": media_type,
            },
            ExpiresIn=expires_s,
        )
        return str(url)

    # --- lifecycle ------------------------------------------------------------------------

    def delete(self, sha256: str) -> bool:
        if not self.exists(sha256):
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self.key(sha256))
        return True

    def list(self) -> Iterator[BlobInfo]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        for page in pages:
            for item in page.get("Contents", []):
                name = str(item["Key"])[len(self.prefix) :]
                try:
                    check_sha256(name)
                except ValueError:  # not ours (a prefix shared with something else)
                    continue
                yield BlobInfo(name, int(item["Size"]), item["LastModified"])

    def check(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)
