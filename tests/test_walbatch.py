"""The WAL pusher's batch uploader: barman-cloud-wal-archive's own code, many segments to every
region in one process, against a real S3 protocol (moto's server in this process).

Evidence is what S3 holds: every object read back, decompressed, equal to the spooled bytes,
under barman's own layout, which barman-cloud-wal-restore reads."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from resilience.backup import walbatch
from resilience.backup.barman import archives
from resilience.backup.pitr import segment_name
from resilience.backup.wal import WalSpool, push_once
from resilience.backup.walupload import batch_environment, batch_interpreter, batch_request
from resilience.config import Settings
from resilience.infra.s3 import regions_from_settings

SEG = 16 * 1024 * 1024
SECRET = "s3-secret-Wb71qq"
BARMAN_BIN = Path(sys.executable).parent  # barman-cloud is installed beside our Python


def wal(n: int) -> str:
    return segment_name(1, n, SEG)


@pytest.fixture
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    httpx.post(url + "/moto-api/reset").raise_for_status()  # moto's state is per process
    try:
        yield url
    finally:
        server.stop()


def _s3(url: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=url, aws_access_key_id="key", aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )  # fmt: skip


def _settings(tmp_path: Path, url: str, **extra: Any) -> Settings:
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    for bucket in ("wal-moscow", "wal-eu"):
        _s3(url).create_bucket(Bucket=bucket)
    return Settings.model_validate(
        {
            "s3_endpoint_moscow": url,
            "s3_bucket_moscow": "wal-moscow",
            "s3_endpoint_eu": url,
            "s3_bucket_eu": "wal-eu",
            "s3_access_key_id": "key",
            "s3_secret_access_key": SECRET,
            "wal_spool_dir": spool,
            "runs_dir": tmp_path / "runs",
            "barman_bin_dir": BARMAN_BIN,
            **extra,
        }
    )


def _held(url: str, bucket: str) -> dict[str, bytes]:
    s3 = _s3(url)
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            out[item["Key"]] = gzip.decompress(body) if item["Key"].endswith(".gz") else body
    return out


def test_the_real_barman_runs_in_one_batch_process_per_region(
    tmp_path: Path, moto_url: str
) -> None:
    settings = _settings(tmp_path, moto_url, wal_push_processes=3)
    assert batch_interpreter(settings) is not None  # barman's Python: the batch path is taken
    segments = {wal(n): os.urandom(1024) + bytes(8192) * n for n in range(1, 8)}
    for name, data in segments.items():
        (settings.wal_spool_dir / name).write_bytes(data)
    result = push_once(settings)
    assert result.errors == {} and result.gaps == {}
    assert result.pushed == {r: sorted(segments) for r in ("moscow", "eu")}
    assert result.removed == sorted(segments) and WalSpool(settings.wal_spool_dir).files() == []
    prefix = f"{settings.pitr_prefix}/{settings.pitr_server}/wals/0000000100000000/"
    for bucket in ("wal-moscow", "wal-eu"):
        held = _held(moto_url, bucket)
        assert {k.removeprefix(prefix).removesuffix(".gz"): v for k, v in held.items()} == segments


def test_a_region_refusing_one_file_fails_there_only_and_keeps_it_spooled(
    tmp_path: Path, moto_url: str
) -> None:
    settings = _settings(tmp_path, moto_url)
    _s3(moto_url).delete_bucket(Bucket="wal-eu")  # the EU bucket is gone: every upload fails
    (settings.wal_spool_dir / wal(1)).write_bytes(b"w" * 100)
    (settings.wal_spool_dir / "not-a-wal").write_bytes(b"x")  # not listed: never sent
    result = push_once(settings)
    assert result.pushed["moscow"] == [wal(1)] and result.pushed["eu"] == []
    assert "region eu" in result.errors["eu"] and "NoSuchBucket" in result.errors["eu"]
    assert SECRET not in result.errors["eu"]
    assert WalSpool(settings.wal_spool_dir).files() == [wal(1)]  # EU lacks it: kept

    _s3(moto_url).create_bucket(Bucket="wal-eu")
    again = push_once(settings)
    assert again.errors == {} and again.pushed == {"moscow": [], "eu": [wal(1)]}
    assert WalSpool(settings.wal_spool_dir).files() == []


def test_a_hanging_uploader_is_stopped_and_the_region_fails_that_pass(
    tmp_path: Path, moto_url: str
) -> None:
    bindir = tmp_path / "bin"  # a "Python" that never answers, as barman's interpreter
    bindir.mkdir()
    (bindir / "python").write_text("#!/bin/sh\nexec sleep 60\n")
    (bindir / "barman-cloud-wal-archive").write_text(f"#!{bindir / 'python'}\n")
    for script in bindir.iterdir():
        script.chmod(0o755)
    settings = _settings(tmp_path, moto_url, barman_bin_dir=bindir, wal_push_timeout=1.0)
    (settings.wal_spool_dir / wal(1)).write_bytes(b"w")
    result = push_once(settings)
    assert set(result.errors) == {"moscow", "eu"}
    assert all("no upload ended within 1 s" in e for e in result.errors.values())
    assert WalSpool(settings.wal_spool_dir).files() == [wal(1)]


def test_a_file_another_pass_removed_is_gone_not_failed(tmp_path: Path, moto_url: str) -> None:
    settings = _settings(tmp_path, moto_url)
    (settings.wal_spool_dir / wal(2)).write_bytes(b"w")
    archive = archives(settings, regions_from_settings(settings))[0]
    python = batch_interpreter(settings)
    assert python is not None
    gone, there = settings.wal_spool_dir / wal(1), settings.wal_spool_dir / wal(2)
    done = subprocess.run(
        [python, "-I", str(Path(walbatch.__file__)), walbatch.BATCH_FLAG, "2"],
        input=batch_request([(archive, [gone, there])]), capture_output=True, text=True,
        env=batch_environment(), timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    region = archive.name
    assert sorted(done.stdout.splitlines()) == [f"gone {region} {wal(1)}", f"ok {region} {wal(2)}"]


def test_a_hanging_region_fails_alone_and_the_other_region_gets_its_files(
    tmp_path: Path, moto_url: str
) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        settings = _settings(tmp_path, moto_url, wal_push_timeout=5.0).model_copy(
            update={"s3_endpoint_eu": f"http://127.0.0.1:{silent.getsockname()[1]}"}
        )
        (settings.wal_spool_dir / wal(1)).write_bytes(b"w" * 100)
        result = push_once(settings)
    assert result.pushed == {"moscow": [wal(1)], "eu": []}
    assert set(result.errors) == {"eu"} and "no upload ended within 5 s" in result.errors["eu"]
    assert WalSpool(settings.wal_spool_dir).files() == [wal(1)]  # EU lacks it: kept
    assert list(_held(moto_url, "wal-moscow").values()) == [b"w" * 100]


def test_each_file_is_compressed_once_for_every_region_that_takes_it() -> None:
    made: list[str] = []

    def maker(path: str) -> Callable[[], bytes]:
        def make() -> bytes:
            made.append(path)
            return path.encode()

        return make

    a, b, c = (("a", "gzip", 1), ("b", "gzip", 1), ("c", "gzip", 1))
    shared = walbatch.SharedBytes({"a": 2, "b": 2, "c": 1}, room=1)
    assert shared.get(a, maker("a"), use=False) == b"a"  # prepared before any region takes it
    assert shared.get(a, maker("a")) == b"a" and shared.get(a, maker("a")) == b"a"
    assert made == ["a"] and shared.entries == {}  # both regions took it: it is gone
    shared.get(b, maker("b"))
    shared.get(c, maker("c"))  # no room for two: b leaves, its second region compresses again
    assert shared.get(b, maker("b")) == b"b" and made == ["a", "b", "c", "b"]


def test_a_failed_compression_is_tried_again_by_the_region_waiting_for_it() -> None:
    shared = walbatch.SharedBytes({"a": 2}, room=4)

    def broken() -> bytes:
        raise OSError("disk")

    with pytest.raises(OSError):
        shared.get(("a", "gzip", 1), broken)
    assert shared.get(("a", "gzip", 1), lambda: b"again") == b"again"


def test_without_barmans_python_each_file_goes_by_its_own_command(
    tmp_path: Path, moto_url: str
) -> None:
    bindir = tmp_path / "bin"  # a barman-cloud-wal-archive that is no Python script
    bindir.mkdir()
    sent = tmp_path / "sent"
    sent.mkdir()
    script = bindir / "barman-cloud-wal-archive"
    # its last three arguments: the archive's URL (s3://BUCKET/prefix), server and WAL path
    script.write_text(
        "#!/bin/sh\n"
        'for a; do url="$server"; server="$wal"; wal="$a"; done\n'
        'bucket=$(echo "$url" | cut -d/ -f3)\n'
        f'cp "$wal" "{sent}/$bucket.$(basename "$wal")"\n'
    )
    script.chmod(0o755)
    settings = _settings(tmp_path, moto_url, barman_bin_dir=bindir)
    assert batch_interpreter(settings) is None
    for n in (1, 2):
        (settings.wal_spool_dir / wal(n)).write_bytes(b"w")
    result = push_once(settings)
    assert result.errors == {} and result.removed == [wal(1), wal(2)]
    assert sorted(p.name for p in sent.iterdir()) == [
        f"{bucket}.{wal(n)}" for bucket in ("wal-eu", "wal-moscow") for n in (1, 2)
    ]
