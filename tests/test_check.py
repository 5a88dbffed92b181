"""`check` against the embedded stack: what works is OK, and each part broken on its own (a wrong
S3 secret, a region that never answers, a wrong Sentry key, a missing fallback tag, the PM2 app
stopped, a role without SELECT) is named and exits 2."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr
from task_runner import run_task

from resilience.check import CHECK_TIMEOUT, CheckReport, run_checks
from resilience.config import DrillSettings, Settings, settings_as_env
from resilience.drill.stack import Stack
from resilience.drill.standin.deploy import backup_settings as backup_settings_for
from resilience.infra.pm2 import Pm2, find_pm2
from resilience.infra.processes import accepts_connections, free_port
from resilience.infra.s3 import RegionStore, s3_environment
from resilience.infra.waiting import wait_until
from tasks import check as check_tasks

pytestmark = pytest.mark.stack


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        },
    )


@pytest.fixture
def pm2(stack: Stack, settings: DrillSettings) -> Pm2:
    return Pm2(find_pm2(settings.tools_dir), home=Path(stack.endpoints.pm2_home))


@pytest.fixture
def app(pm2: Pm2) -> Iterator[str]:
    """A PM2 app online under the stack's PM2 (the service's stand-in for these checks)."""
    name = f"check-{uuid.uuid4().hex[:8]}"
    pm2.run("start", "/bin/sleep", "--name", name, "--interpreter", "none", "--", "3600")
    yield name
    with contextlib.suppress(Exception):
        pm2.delete(name)


@pytest.fixture
def ready(stack: Stack, tmp_path: Path, app: str, pm2: Pm2) -> Settings:
    """The operator's settings of a ready host on this stack: both regions, the alert
    receivers, a service work tree with its fallback tag, its PM2 app online."""
    ep = stack.endpoints
    repo = tmp_path / "service"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "index.js").write_text("// the service\n")
    _git(repo, "add", "index.js")
    _git(repo, "commit", "-q", "-m", "service")
    _git(repo, "tag", "emergency-file-fallback-v1")
    base = Settings.model_validate(
        {
            "sentry_dsn": ep.sentry_dsn,
            "telegram_api_url": ep.telegram_api_url,
            "telegram_bot_token": ep.telegram_bot_token,
            "telegram_chat_id": ep.telegram_chat_id,
            "pm2_home": ep.pm2_home,
            "pm2_app": app,
            "service_dir": repo,
            "fallback_tag": "emergency-file-fallback-v1",
            "snapshot_dir": tmp_path / "snapshots",
            "auth_dir": tmp_path / "auth",
        }
    )
    settings = backup_settings_for(stack, base, tmp_path)
    return settings.model_copy(update={"pm2_bin": pm2.binary.absolute()})


def _finding(report: CheckReport, name: str) -> dict[str, Any]:
    found = [f.to_dict() for f in report.findings if f.name == name]
    assert found, [f.name for f in report.findings]
    return found[0]


def test_check_on_a_ready_host_fails_nothing_and_names_both_regions(
    ready: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    code, out, err = run_task(
        check_tasks.check, settings_as_env(ready), tmp_path, monkeypatch, capsys, json=True
    )
    doc = json.loads(out)
    statuses = {f["name"]: f["status"] for f in doc["findings"]}
    assert [f for f in doc["findings"] if f["status"] == "fail"] == [], doc
    for name in ("settings", "service-db", "restore-db", "pg-dump", "disk", "sentry"):
        assert statuses[name] == "ok", (name, doc)
    for name in ("telegram", "s3-moscow", "s3-eu", "pm2-app", "fallback-tag", "work-tree"):
        assert statuses[name] == "ok", (name, doc)
    assert statuses["backups-moscow"] == "warn"  # fresh buckets: no backup yet, says so
    assert code == doc["exit_code"] == 1
    assert "Traceback" not in err


def test_check_human_output_is_a_table_of_ok_warn_fail(
    ready: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    env = {**settings_as_env(ready), "RESILIENCE_FALLBACK_TAG": "no-such-tag"}
    code, out, _ = run_task(check_tasks.check, env, tmp_path, monkeypatch, capsys)
    assert code == 2
    assert "FAIL" in out and "OK" in out and "fallback-tag" in out
    assert "no-such-tag" in out


def test_a_missing_fallback_tag_fails(ready: Settings) -> None:
    report = run_checks(ready.model_copy(update={"fallback_tag": "emergency-v9"}))
    finding = _finding(report, "fallback-tag")
    assert finding["status"] == "fail"
    assert "emergency-v9 missing" in finding["found"]
    assert report.exit_code == 2


def test_a_wrong_sentry_key_fails(ready: Settings) -> None:
    dsn = ready.sentry_dsn.get_secret_value()  # type: ignore[union-attr]
    key = dsn.split("//", 1)[1].split("@", 1)[0]
    wrong = dsn.replace(key, "0" * 32)
    report = run_checks(ready.model_copy(update={"sentry_dsn": SecretStr(wrong)}))
    finding = _finding(report, "sentry")
    assert finding["status"] == "fail"
    assert "refused the DSN's key (HTTP 401)" in finding["found"]
    assert "0" * 32 not in json.dumps(report.to_dict())
    assert report.exit_code == 2


def test_the_pm2_app_stopped_fails(ready: Settings, pm2: Pm2, app: str) -> None:
    pm2.stop(app)
    report = run_checks(ready)
    finding = _finding(report, "pm2-app")
    assert finding["status"] == "fail"
    assert f"{app} is stopped" in finding["found"]
    assert finding["fix"] == f"pm2 start {app}"
    assert report.exit_code == 2


def test_a_role_without_select_fails(ready: Settings, stack: Stack) -> None:
    role = f"nosel_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    with psycopg.connect(stack.endpoints.admin_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        admin.execute(f"GRANT INSERT, UPDATE, DELETE ON whatsapp_auth, whatsapp_keys TO {role}")
    try:
        dsn = psycopg.conninfo.make_conninfo(
            stack.endpoints.admin_dsn, user=role, password=password
        )
        report = run_checks(ready.model_copy(update={"service_dsn": SecretStr(dsn)}))
        finding = _finding(report, "service-db")
        assert finding["status"] == "fail"
        assert "lacks SELECT on whatsapp_auth, SELECT on whatsapp_keys" in finding["found"]
        assert finding["fix"].startswith("GRANT SELECT")
        assert password not in json.dumps(report.to_dict())
        assert report.exit_code == 2
    finally:
        with psycopg.connect(stack.endpoints.admin_dsn, autocommit=True) as admin:
            admin.execute(f"REVOKE ALL ON whatsapp_auth, whatsapp_keys FROM {role}")
            admin.execute(f"DROP ROLE {role}")


def test_a_region_that_never_answers_fails_within_the_bound(
    ready: Settings, hanging_endpoint: str
) -> None:
    report = run_checks(ready.model_copy(update={"s3_endpoint_eu": hanging_endpoint}))
    eu, moscow = _finding(report, "s3-eu"), _finding(report, "s3-moscow")
    assert eu["status"] == "fail" and "no answer" in eu["found"]
    assert moscow["status"] == "ok"
    assert report.exit_code == 2
    assert report.duration_s < CHECK_TIMEOUT + 10


@pytest.fixture
def authenticating_s3(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A moto S3 server that checks credentials (moto's INITIAL_NO_AUTH_ACTION_COUNT: the
    first three calls create a user, its policy and its key; every later call is signed-checked):
    (endpoint, access key id, secret)."""
    port = free_port()
    log = (tmp_path / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **s3_environment(), "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_until(lambda: accepts_connections(port), 60, "moto with authentication")
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="backups")
        iam.put_user_policy(
            UserName="backups",
            PolicyName="s3",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="backups")["AccessKey"]
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_a_wrong_s3_secret_fails(ready: Settings, authenticating_s3: tuple[str, str, str]) -> None:
    endpoint, key_id, secret = authenticating_s3
    RegionStore("eu", "eu-central-1", endpoint, ready.s3_bucket_eu, key_id, secret).ensure_bucket()
    good = ready.model_copy(
        update={
            "s3_endpoint_eu": endpoint,
            "s3_access_key_id": SecretStr(key_id),
            "s3_secret_access_key": SecretStr(secret),
            "s3_endpoint_moscow": None,
        }
    )
    assert _finding(run_checks(good), "s3-eu")["status"] == "ok"
    wrong = "x" * len(secret)
    report = run_checks(good.model_copy(update={"s3_secret_access_key": SecretStr(wrong)}))
    finding = _finding(report, "s3-eu")
    assert finding["status"] == "fail"
    assert "SignatureDoesNotMatch" in finding["found"]
    assert "RESILIENCE_S3_SECRET_ACCESS_KEY" in finding["fix"]
    assert wrong not in json.dumps(report.to_dict())
    assert report.exit_code == 2


def test_settings_that_do_not_load_are_one_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    code, out, _ = run_task(
        check_tasks.check,
        {"RESILIENCE_SNAPSHOT_MAX_AGE": "soon"},
        tmp_path,
        monkeypatch,
        capsys,
        json=True,
    )
    doc = json.loads(out)
    assert code == 2
    assert [f["name"] for f in doc["findings"]] == ["settings"]
    assert "snapshot_max_age" in doc["findings"][0]["found"].lower()


def test_every_module_a_check_imports_is_imported_before_the_checks_start() -> None:
    """The checks run side by side in threads: a module one of them imports lazily is imported
    first by run_checks (in a fresh process, two threads importing modules that import each
    other see one half initialised), except the packages of names it imports from them."""
    import re

    import resilience.check as check

    source = "\n".join(p.read_text() for p in Path(check.__file__).parent.glob("*.py"))
    lazy = set(re.findall(r"^\s+from (resilience\.[\w.]+) import", source, flags=re.M))
    lazy -= {"resilience.errors", "resilience.config"}  # imported at the top
    lazy = {m for m in lazy if not m.startswith("resilience.check.")}  # the package's own
    covered = set(check._CHECK_MODULES)
    missing = {
        m for m in lazy if m not in covered and not any(c.startswith(m + ".") for c in covered)
    }
    assert missing == set()
