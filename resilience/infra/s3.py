"""One S3 region where backups live: `RegionStore`, over boto3 and its transfer manager.

Every region is bounded (settings ``RESILIENCE_S3_*``): each attempt by a connect and a read
timeout, each call by a number of attempts, and all of one command's calls to the region
together by a time budget (``RESILIENCE_S3_REGION_TIMEOUT``). Once the region did not answer (a
connection refused or timed out, no answer within the read timeout, or the budget spent), every
later call of the same command fails at once with the same reason: a hanging region costs one
call's bound, not one per call, and never holds the other region. Uploads go through boto3's
transfer manager with server-side encryption and a SHA-256 checksum that is checked again after
the upload (the stored object is read back by `head_object` size and by our own digest on
download: moto, for one, does not verify client checksums). Every error, whatever botocore or
boto3 raised, becomes a one-line :class:`StorageError` that names the region and the bucket,
never the credentials: :class:`RegionUnreachable` when the region did not answer,
:class:`ObjectMissing` when it answered that an object is not there.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from resilience.config import Settings
from resilience.errors import ConfigError, ResilienceError
from resilience.infra.progress import NO_METERS, Meters
from resilience.infra.redact import Redactor

#: Operator's region name -> S3 region id (docs/domain.md §9: a Moscow-region and an EU-region S3).
REGIONS = {"moscow": "ru-central1", "eu": "eu-central-1"}
CHUNK = 8 * 1024 * 1024
#: S3 error codes that say an object (or its bucket's key) is not there.
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class StorageError(ResilienceError):
    """A region's object store refused, failed or could not be reached."""

    exit_code = 6
    #: The error code S3 answered (None when it did not answer).
    code: str | None = None


class RegionUnreachable(StorageError):
    """The region did not answer: connection refused or timed out, no answer within the read
    timeout, or its time budget for this command spent."""


class ObjectMissing(StorageError):
    """The region answered that the object is not there."""


class _Overdue(Exception):
    """Raised inside a call (a retry about to start, a transfer's progress) once the region's
    budget for this command is spent; becomes a RegionUnreachable."""


def _is_network(exc: BaseException) -> bool:
    """A failure of the connection, not of the request or of a local file."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    return isinstance(exc, BotoConnectionError | HTTPClientError | TimeoutError | ConnectionError)


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
    """One region: where to talk to, which bucket, with which credentials (secret), within
    which bounds. One store serves one command: the budget and the "did not answer" state are
    its own."""

    name: str  # operator's name: "moscow", "eu"
    region: str  # S3 region id: "ru-central1", "eu-central-1"
    endpoint_url: str | None
    bucket: str
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 3  # attempts per call, the first included
    budget: float | None = None  # seconds of calls this store may spend; None: unbounded
    _client: Any = field(default=None, repr=False)
    _spent: float = field(default=0.0, repr=False)
    _deadline: float | None = field(default=None, repr=False)  # of the call under way
    _unreachable: str | None = field(default=None, repr=False)  # why it did not answer

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
                    retries={"total_max_attempts": self.max_attempts, "mode": "standard"},
                    s3={"addressing_style": "path"},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
            )
            # first: a failed attempt past the budget is not retried
            self._client.meta.events.register_first("needs-retry.s3", self._retry_gate)
        return self._client

    # --- bounds --------------------------------------------------------------------------------
    @property
    def unreachable(self) -> str | None:
        """Why this region did not answer in this command (None while it answers)."""
        return self._unreachable

    def remaining(self, cap: float, what: str) -> float:
        """Seconds left of the budget, at most `cap` (RegionUnreachable when none are left or
        the region did not answer): for work done outside this client, e.g. barman-cloud."""
        self._ready(what)
        if self.budget is None:
            return cap
        return max(0.001, min(cap, self.budget - self._spent))

    def _over(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    def _retry_gate(self, caught_exception: Any = None, **_: Any) -> None:
        if caught_exception is not None and self._over():
            raise _Overdue() from None

    def _progress(self, advance: Callable[[int], None]) -> Callable[[int], None]:
        def callback(units: int) -> None:
            advance(units)
            if self._over():
                raise _Overdue()

        return callback

    def _ready(self, what: str) -> None:
        if self._unreachable is not None:
            raise RegionUnreachable(f"{self._where()}: {what} not tried: {self._unreachable}")
        if self.budget is not None and self._spent >= self.budget:
            self._unreachable = self._overdue_reason()
            raise RegionUnreachable(f"{self._where()}: {what} not tried: {self._unreachable}")

    def _overdue_reason(self) -> str:
        return (
            f"over its bound of {self.budget:g} s of S3 calls for this command "
            "(RESILIENCE_S3_REGION_TIMEOUT)"
        )

    @contextlib.contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """One call to the region, bounded by what is left of the budget; every exception
        but our own becomes a one-line StorageError."""
        self._ready(what)
        began = time.monotonic()
        if self.budget is not None:
            self._deadline = began + self.budget - self._spent
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:
            raise self._error(exc, what) from None
        finally:
            self._spent += time.monotonic() - began
            self._deadline = None

    # --- errors --------------------------------------------------------------------------------
    def _where(self) -> str:
        return f"region {self.name} ({self.bucket})"

    def _error(self, exc: BaseException, what: str) -> StorageError:
        """The one-line error of a failed call: unreachable, missing, or refused (the code
        S3 answered); nothing of the credentials."""
        from botocore import exceptions as bx

        if isinstance(exc, _Overdue):
            self._unreachable = self._overdue_reason()
            return RegionUnreachable(f"{self._where()}: {what} failed: {self._unreachable}")
        cause = getattr(exc, "last_exception", None)  # s3transfer's RetriesExceededError
        if isinstance(cause, BaseException):
            exc = cause
        unreachable = None
        if isinstance(exc, bx.ConnectTimeoutError):
            unreachable = f"no connection to {self.endpoint_url} within {self.connect_timeout:g} s"
        elif isinstance(exc, bx.ReadTimeoutError):
            unreachable = (
                f"no answer from {self.endpoint_url} within {self.read_timeout:g} s "
                f"({self.max_attempts} attempt(s))"
            )
        elif isinstance(exc, bx.ConnectionError):  # refused, unresolvable, proxy
            unreachable = f"cannot connect to {self.endpoint_url} ({type(exc).__name__})"
        elif _is_network(exc):  # closed mid-answer, a socket's own timeout
            unreachable = f"no answer from {self.endpoint_url} ({type(exc).__name__})"
        if unreachable is not None:
            self._unreachable = unreachable
            return RegionUnreachable(f"{self._where()}: {what} failed: {unreachable}")
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            code = str(error.get("Code") or status or type(exc).__name__)
            cls = ObjectMissing if code in _MISSING_CODES else StorageError
            error = cls(f"{self._where()}: {what} failed: {code}")
            error.code = code
            return error
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            return StorageError(
                f"{self._where()}: {what} failed: no credentials (set "
                "RESILIENCE_S3_ACCESS_KEY_ID and RESILIENCE_S3_SECRET_ACCESS_KEY)"
            )
        text = " ".join(str(exc).split())[:200]
        text = Redactor([self.access_key_id, self.secret_access_key]).text(text)
        return StorageError(
            f"{self._where()}: {what} failed: {type(exc).__name__}" + (f": {text}" if text else "")
        )

    # --- buckets -------------------------------------------------------------------------------
    def ensure_bucket(self) -> None:
        """Create the bucket in its region when missing (idempotent)."""
        try:
            with self._call(f"creating bucket at {self.endpoint_url}"):
                self.client.create_bucket(
                    Bucket=self.bucket,
                    CreateBucketConfiguration={"LocationConstraint": self.region},
                )
        except StorageError as exc:
            if exc.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            raise

    def check(self) -> None:
        """The bucket answers with these credentials (StorageError otherwise)."""
        with self._call("reaching the bucket"):
            self.client.head_bucket(Bucket=self.bucket)

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
            with self._call(f"uploading {key}"):
                self.client.upload_file(
                    str(path),
                    self.bucket,
                    key,
                    ExtraArgs={
                        "ServerSideEncryption": "AES256",
                        "Metadata": {"sha256": digest},
                    },
                    Config=TransferConfig(
                        multipart_threshold=64 * 1024 * 1024,
                        use_threads=True,
                        num_download_attempts=self.max_attempts,
                    ),
                    Callback=self._progress(meter.advance),
                )
                head = self.client.head_object(Bucket=self.bucket, Key=key)
        finally:
            meter.close()
        if int(head.get("ContentLength", -1)) != size:
            raise StorageError(
                f"region {self.name}: {key} stored with {head.get('ContentLength')} bytes, "
                f"{size} were sent"
            )
        return {"key": key, "size": size, "sha256": digest}

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._call(f"writing {key}"):
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ServerSideEncryption="AES256"
            )

    def get_bytes(self, key: str) -> bytes:
        with self._call(f"reading {key}"):
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def download(self, key: str, path: Path, *, meters: Meters = NO_METERS) -> str:
        """Download to `path` (removed again on any failure); returns its SHA-256. ``meters``
        shows the bytes received."""
        from boto3.s3.transfer import TransferConfig

        meter = meters.start(f"download from {self.name}", None, "bytes")
        try:
            with self._call(f"downloading {key}"):
                try:
                    self.client.download_file(
                        self.bucket,
                        key,
                        str(path),
                        Callback=self._progress(meter.advance),
                        Config=TransferConfig(num_download_attempts=self.max_attempts),
                    )
                except OSError as exc:
                    if _is_network(exc):
                        raise  # botocore's timeouts are OSErrors too
                    raise StorageError(
                        f"region {self.name}: cannot write {key} to {path.parent}: "
                        f"{exc.strerror or type(exc).__name__}"
                    ) from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            meter.close()
        return sha256_file(path)

    def _list(self, prefix: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        with self._call("listing"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                items += page.get("Contents", [])
        return items

    def keys(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(key, size) of every object under `prefix`."""
        for item in self._list(prefix):
            yield str(item["Key"]), int(item["Size"])

    def objects(self, prefix: str = "") -> Iterator[tuple[str, int, datetime]]:
        """(key, size, last modified) of every object under `prefix`."""
        for item in self._list(prefix):
            yield str(item["Key"]), int(item["Size"]), item["LastModified"]

    def delete(self, key: str) -> None:
        with self._call(f"deleting {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=key)


def regions_from_settings(settings: Settings) -> list[RegionStore]:
    """The configured backup regions (both, when both endpoints or buckets are set), each
    bounded by the settings' timeouts, attempts and budget; fresh stores for each command."""

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
                connect_timeout=settings.s3_connect_timeout,
                read_timeout=settings.s3_read_timeout,
                max_attempts=settings.s3_max_attempts,
                budget=settings.s3_region_timeout,
            )
        )
    if not stores:
        raise ConfigError(
            "no backup region configured: set RESILIENCE_S3_ENDPOINT_MOSCOW and/or "
            "RESILIENCE_S3_ENDPOINT_EU (and the S3 credentials)"
        )
    return stores
