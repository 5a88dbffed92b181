"""S3 regions of the stack: one bucket per backup region, created on start (through the
library's `RegionStore`, the one home of the boto3 client)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from resilience.drill.stack.base import S3Region
from resilience.errors import StackError
from resilience.infra.s3 import REGIONS, RegionStore, StorageError, s3_environment

__all__ = ["REGIONS", "client", "create_buckets", "s3_environment", "store"]


def store(region: S3Region, access_key: str, secret_key: str) -> RegionStore:
    return RegionStore(
        region.name, region.region, region.endpoint_url, region.bucket, access_key, secret_key
    )


def client(region: S3Region, access_key: str, secret_key: str) -> Any:
    return store(region, access_key, secret_key).client


def create_buckets(regions: Iterable[S3Region], access_key: str, secret_key: str) -> None:
    """Create each region's bucket in its region (idempotent)."""
    for region in regions:
        try:
            store(region, access_key, secret_key).ensure_bucket()
        except StorageError as exc:
            raise StackError(str(exc)) from None
