"""One S3 region where backups live: `RegionStore`, over boto3 and its transfer manager.

Every call has connect and read timeouts and bounded retries, so a hanging region fails in
seconds instead of blocking the others. Uploads go through boto3's transfer manager with
server-side encryption and a SHA-256 checksum that is checked again after the upload (the
stored object is read back by `head_object` size and by our own digest on download: moto, for
one, does not verify client checksums). Errors become one-line :class:`StorageError`\\ s that
name the region, never the credentials.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from resilience.config import Settings
from resilience.errors import ConfigError, ResilienceError
from resilience.infra.progress import NO_METERS, Meters

#: Operator's region name -> S3 region id (brief §9: a Moscow-region and an EU-region store).
REGIONS = {"moscow": "ru-central1", "eu": "eu-central-1"}
CHUNK = 8 * 1024 * 1024


class StorageError(ResilienceError):
    """A region's object store refused, failed or could not be reached."""

    exit_code = 6


def s3_environment() -> dict[str, str]:
    """Environment S3-compatible stores need: newer botocore checksums break moto and MinIO."""
    return {
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class RegionStore:
    """One region: where to talk to, which bucket, with which credentials (secret)."""

    name: str  # operator's name: "moscow", "eu"
    region: str  # S3 region id: "ru-central1", "eu-central-1"
    endpoint_url: str | None
    bucket: str
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 3
    _client: Any = field(default=None, repr=False)

    # --- the client ----------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            for key, value in s3_environment().items():
                os.environ.setdefault(key, value)
            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                aws_access_key_id=self.access_key_id,
                aws_secret_access_key=self.secret_access_key,
                config=Config(
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                    retries={"max_attempts": self.max_attempts, "mode": "standard"},
                    s3={"addressing_style": "path"},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
            )
        return self._client

    def _error(self, exc: BaseException, what: str) -> StorageError:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code") if exc else None
        reason = code or type(exc).__name__
        return StorageError(f"region {self.name} ({self.bucket}): {what} failed: {reason}")

    # --- buckets -------------------------------------------------------------------------------
    def ensure_bucket(self) -> None:
        """Create the bucket in its region when missing (idempotent)."""
        try:
            self.client.create_bucket(
                Bucket=self.bucket,
                CreateBucketConfiguration={"LocationConstraint": self.region},
            )
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            raise self._error(exc, f"creating bucket at {self.endpoint_url}") from None

    def check(self) -> None:
        """The bucket answers with these credentials (StorageError otherwise)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise self._error(exc, "reaching the bucket") from None

    # --- objects -------------------------------------------------------------------------------
    def upload(
        self, path: Path, key: str, *, sha256: str | None = None, meters: Meters = NO_METERS
    ) -> dict[str, Any]:
        """Upload a file (transfer manager, SSE, SHA-256 checksum); checks the stored size.
        ``meters`` shows the bytes sent (the transfer manager's callback)."""
        from boto3.s3.transfer import TransferConfig

        size = path.stat().st_size
        digest = sha256 or sha256_file(path)
        meter = meters.start(f"upload to {self.name}", size, "bytes")
        try:
            self.client.upload_file(
                str(path),
                self.bucket,
                key,
                ExtraArgs={
                    "ServerSideEncryption": "AES256",
                    "Metadata": {"sha256": digest},
                },
                Config=TransferConfig(multipart_threshold=64 * 1024 * 1024, use_threads=True),
                Callback=meter.advance,
            )
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise self._error(exc, f"uploading {key}") from None
        finally:
            meter.close()
        if int(head.get("ContentLength", -1)) != size:
            raise StorageError(
                f"region {self.name}: {key} stored with {head.get('ContentLength')} bytes, "
                f"{size} were sent"
            )
        return {"key": key, "size": size, "sha256": digest}

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ServerSideEncryption="AES256"
            )
        except Exception as exc:
            raise self._error(exc, f"writing {key}") from None

    def get_bytes(self, key: str) -> bytes:
        try:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise self._error(exc, f"reading {key}") from None
        return body

    def download(self, key: str, path: Path, *, meters: Meters = NO_METERS) -> str:
        """Download to `path` (removed again on any failure); returns its SHA-256. ``meters``
        shows the bytes received."""
        meter = meters.start(f"download from {self.name}", None, "bytes")
        try:
            self.client.download_file(self.bucket, key, str(path), Callback=meter.advance)
        except Exception as exc:
            meter.close()
            path.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise StorageError(
                    f"region {self.name}: cannot write {key} to {path.parent}: {exc.strerror}"
                ) from None
            raise self._error(exc, f"downloading {key}") from None
        meter.close()
        return sha256_file(path)

    def keys(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(key, size) of every object under `prefix`."""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield str(item["Key"]), int(item["Size"])
        except Exception as exc:
            raise self._error(exc, "listing") from None

    def objects(self, prefix: str = "") -> Iterator[tuple[str, int, datetime]]:
        """(key, size, last modified) of every object under `prefix`."""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield str(item["Key"]), int(item["Size"]), item["LastModified"]
        except Exception as exc:
            raise self._error(exc, "listing") from None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise self._error(exc, f"deleting {key}") from None


def regions_from_settings(settings: Settings) -> list[RegionStore]:
    """The configured backup regions (both, when both endpoints or buckets are set)."""

    def secret(value: Any) -> str | None:
        return value.get_secret_value() if value is not None else None

    stores = []
    for name, endpoint, bucket in (
        ("moscow", settings.s3_endpoint_moscow, settings.s3_bucket_moscow),
        ("eu", settings.s3_endpoint_eu, settings.s3_bucket_eu),
    ):
        if endpoint is None:
            continue
        stores.append(
            RegionStore(
                name,
                REGIONS[name],
                endpoint,
                bucket,
                secret(settings.s3_access_key_id),
                secret(settings.s3_secret_access_key),
            )
        )
    if not stores:
        raise ConfigError(
            "no backup region configured: set RESILIENCE_S3_ENDPOINT_MOSCOW and/or "
            "RESILIENCE_S3_ENDPOINT_EU (and the S3 credentials)"
        )
    return stores
