"""A region's S3 calls are bounded and fail in one line: against a local server that accepts and
never answers (a hanging region), a closed port (a refusing one), and botocore's and boto3's
own exceptions mapped one by one. No stack needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore import exceptions as bx
from s3transfer.exceptions import RetriesExceededError

from resilience.config import Settings
from resilience.infra.s3 import (
    ObjectMissing,
    RegionStore,
    RegionUnreachable,
    StorageError,
    regions_from_settings,
)

SECRET = "s3-secret-never-shown"
ACCESS = "AKIA-ACCESS-KEY-ID"


def store(endpoint: str, **bounds: float) -> RegionStore:
    values = {"connect_timeout": 0.5, "read_timeout": 0.5, "max_attempts": 2, **bounds}
    return RegionStore(
        "moscow",
        "ru-central1",
        endpoint,
        "backups",
        ACCESS,
        SECRET,
        connect_timeout=values["connect_timeout"],
        read_timeout=values["read_timeout"],
        max_attempts=int(values["max_attempts"]),
        budget=bounds.get("budget"),
    )


def calls(tmp_path: Path) -> dict[str, object]:
    dump = tmp_path / "dump.pgc"
    dump.write_bytes(b"x" * 1000)
    return {
        "listing": lambda s: list(s.keys("backups/")),
        "reading": lambda s: s.get_bytes("backups/x/manifest.json"),
        "writing": lambda s: s.put_bytes("backups/x/manifest.json", b"{}"),
        "uploading": lambda s: s.upload(dump, "backups/x/dump.pgc"),
        "downloading": lambda s: s.download("backups/x/dump.pgc", tmp_path / "got.pgc"),
        "deleting": lambda s: s.delete("backups/x/dump.pgc"),
        "reaching": lambda s: s.check(),
    }


@pytest.mark.parametrize(
    "call", ["listing", "reading", "writing", "uploading", "downloading", "deleting", "reaching"]
)
def test_every_call_to_a_hanging_region_ends_in_one_line_naming_it(
    hanging_endpoint: str, tmp_path: Path, call: str
) -> None:
    region = store(hanging_endpoint)
    with pytest.raises(RegionUnreachable) as info:
        calls(tmp_path)[call](region)  # type: ignore[operator]
    message = str(info.value)
    assert message.startswith(f"region moscow (backups): {call}")
    assert f"no answer from {hanging_endpoint} within 0.5 s (2 attempt(s))" in message
    assert "\n" not in message and SECRET not in message and ACCESS not in message
    assert info.value.exit_code == 6
    assert not (tmp_path / "got.pgc").exists()  # a failed download leaves nothing behind


def test_a_region_that_did_not_answer_is_not_tried_again_in_the_same_command(
    hanging_endpoint: str, tmp_path: Path
) -> None:
    region = store(hanging_endpoint)
    with pytest.raises(RegionUnreachable):
        list(region.keys())
    assert region.unreachable is not None and "no answer" in region.unreachable
    for name, call in calls(tmp_path).items():
        with pytest.raises(RegionUnreachable, match="not tried: no answer from") as info:
            call(region)  # type: ignore[operator]
        assert str(info.value).startswith(f"region moscow (backups): {name}")
    fresh = store(hanging_endpoint)  # the next command starts afresh
    assert fresh.unreachable is None


def test_the_region_budget_ends_retries_a_hanging_region_would_get(hanging_endpoint: str) -> None:
    # ten attempts of 0.5 s would be the calls' own bound; the budget of 1 s ends them first
    region = store(hanging_endpoint, max_attempts=10, budget=1.0)
    with pytest.raises(RegionUnreachable) as info:
        region.get_bytes("k")
    assert "over its bound of 1 s of S3 calls for this command" in str(info.value)
    assert "RESILIENCE_S3_REGION_TIMEOUT" in str(info.value)
    with pytest.raises(RegionUnreachable, match="not tried: over its bound"):
        region.put_bytes("k", b"")
    with pytest.raises(RegionUnreachable, match="not tried"):
        region.remaining(120, "listing base backups")


def test_a_refusing_region_fails_at_once_in_one_line(refusing_endpoint: str) -> None:
    region = store(refusing_endpoint)
    with pytest.raises(RegionUnreachable) as info:
        list(region.keys())
    assert str(info.value) == (
        f"region moscow (backups): listing failed: cannot connect to {refusing_endpoint} "
        "(EndpointConnectionError)"
    )


@pytest.mark.parametrize(
    ("exc", "cls", "reason"),
    [
        # botocore's HTTP errors carry response=None: reading it crashed once
        (bx.ReadTimeoutError(endpoint_url="http://s3"), RegionUnreachable, "no answer from"),
        (bx.ConnectTimeoutError(endpoint_url="http://s3"), RegionUnreachable, "no connection"),
        (bx.EndpointConnectionError(endpoint_url="http://s3"), RegionUnreachable, "cannot connect"),
        (
            bx.ConnectionClosedError(endpoint_url="http://s3"),
            RegionUnreachable,
            "no answer from",
        ),
        (
            RetriesExceededError(bx.ReadTimeoutError(endpoint_url="http://s3")),
            RegionUnreachable,
            "no answer from",
        ),
        (
            bx.ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject"),
            ObjectMissing,
            "failed: NoSuchKey",
        ),
        (
            bx.ClientError({"ResponseMetadata": {"HTTPStatusCode": 404}}, "HeadObject"),
            ObjectMissing,
            "failed: 404",
        ),
        (
            bx.ClientError({"Error": {"Code": "AccessDenied"}}, "PutObject"),
            StorageError,
            "failed: AccessDenied",
        ),
        (bx.NoCredentialsError(), StorageError, "no credentials"),
        (bx.NoRegionError(), StorageError, "failed: NoRegionError"),
        (
            S3UploadFailedError(
                f"Failed to upload with {SECRET}: An error occurred (NoSuchBucket)"
            ),
            StorageError,
            "S3UploadFailedError: Failed to upload with ***: An error occurred (NoSuchBucket)",
        ),
    ],
)
def test_every_botocore_and_boto3_error_becomes_one_line(
    exc: BaseException, cls: type[StorageError], reason: str
) -> None:
    error = store("http://s3")._error(exc, "listing")
    assert type(error) is cls
    message = str(error)
    assert message.startswith("region moscow (backups): listing failed: ")
    assert reason in message and SECRET not in message and "\n" not in message


def test_settings_bound_every_region() -> None:
    settings = Settings.model_validate(
        {
            "s3_endpoint_moscow": "http://a:9000",
            "s3_endpoint_eu": "http://b:9000",
            "s3_connect_timeout": 2,
            "s3_read_timeout": 7,
            "s3_max_attempts": 4,
            "s3_region_timeout": 60,
        }
    )
    stores = regions_from_settings(settings)
    assert [(s.connect_timeout, s.read_timeout, s.max_attempts, s.budget) for s in stores] == [
        (2, 7, 4, 60)
    ] * 2
    config = stores[0].client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (2, 7)
    assert config.retries["total_max_attempts"] == 4
