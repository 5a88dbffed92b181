"""S3 regions of the stack: one bucket per backup region, created on start."""

from __future__ import annotations

import os
from collections.abc import Iterable

from resilience.drill.stack.base import S3Region
from resilience.errors import StackError

# operator's name -> S3 region id (brief §9: a Moscow-region and an EU-region store)
REGIONS = {"moscow": "ru-central1", "eu": "eu-central-1"}


def s3_environment() -> dict[str, str]:
    """Environment S3-compatible stores need: newer botocore checksums break moto and MinIO."""
    return {
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    }


def client(region: S3Region, access_key: str, secret_key: str) -> object:
    import boto3
    from botocore.config import Config

    for key, value in s3_environment().items():
        os.environ.setdefault(key, value)
    return boto3.client(
        "s3",
        endpoint_url=region.endpoint_url,
        region_name=region.region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 3, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def create_buckets(regions: Iterable[S3Region], access_key: str, secret_key: str) -> None:
    """Create each region's bucket in its region (idempotent)."""
    for region in regions:
        s3 = client(region, access_key, secret_key)
        try:
            s3.create_bucket(  # type: ignore[attr-defined]
                Bucket=region.bucket,
                CreateBucketConfiguration={"LocationConstraint": region.region},
            )
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                continue
            raise StackError(
                f"cannot create bucket {region.bucket} in {region.region} at "
                f"{region.endpoint_url}: {code or type(exc).__name__}"
            ) from None
