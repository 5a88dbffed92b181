"""The embedded stack: up, status, down leave nothing behind; bad set-ups give one clear line."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from resilience.authstate.pgconn import connect
from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.config import load_drill_settings
from resilience.drill.stack import Stack
from resilience.drill.stack.local import LocalStack
from resilience.drill.stack.s3 import client as s3_client
from resilience.errors import ConfigError, DatabaseError, DatabaseUnreachable, StackError
from resilience.infra.processes import accepts_connections
from resilience.infra.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
INVOKE = str(Path(sys.executable).parent / "invoke")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in state


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    with contextlib.suppress(StackError):
        wait_until(lambda: not any(_alive(p) for p in pids), timeout, "processes gone")
    return [p for p in pids if _alive(p)]


def _cli(stack_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RESILIENCE_STACK_DIR": str(stack_dir)}
    return subprocess.run(
        [INVOKE, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def _in(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A task run in `workdir` with no RESILIENCE_* variable but those given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENCE_")}
    return subprocess.run(
        [INVOKE, "--search-root", str(ROOT), *args],
        cwd=workdir,
        env={**clean, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.stack
def test_stack_up_is_a_deployment_the_operators_commands_run_on(tmp_path: Path) -> None:
    """`stack.up` writes the settings of what it runs; the switch, configured by that file
    alone, works against the embedded stack and leaves its journal under runs/."""
    tools = {"RESILIENCE_TOOLS_DIR": str(ROOT / ".tools")}
    up = _in(tmp_path, "stack.up", "--json", **tools)
    try:
        assert up.returncode == 0, up.stderr
        settings_file = tmp_path / ".stack" / "resilience.env"
        assert json.loads(up.stdout)["settings_file"] == ".stack/resilience.env"
        assert settings_file.stat().st_mode & 0o777 == 0o600
        named = {line.split("=")[0] for line in settings_file.read_text().splitlines()}
        assert "RESILIENCE_BACKEND" not in named and "RESILIENCE_ADMIN_DSN" not in named
        assert "RESILIENCE_SERVICE_DSN" in named

        switched = _in(tmp_path, "restore.to-files", "--yes", "--json")
        assert switched.returncode == 0, switched.stderr
        data = json.loads(switched.stdout)
        assert [s["name"] for s in data["run"]["steps"]][-2:] == ["verify", "remove-previous"]
        record = Path(data["record"])
        assert record.parent == tmp_path / "runs"
        journal = json.loads((record / "journal.json").read_text())
        assert (journal["status"], journal["measurements"]["rto_s"]) == ("completed", data["rto_s"])
        health = httpx.get(_health_url(settings_file), timeout=5).json()
        assert health["mode"] == "file" and health["company"] == "demo"
        snapshot = _in(tmp_path, "restore.snapshot", "--json")
        assert snapshot.returncode == 0, snapshot.stderr
        assert "demo" in json.loads(snapshot.stdout)["companies"]
    finally:
        down = _in(tmp_path, "stack.down", **tools)
    assert down.returncode == 0, down.stderr
    # all it made: the settings file, the service's work tree (on the fallback commit after
    # the switch), the snapshots, logs, PM2's home; the directory itself
    assert not (tmp_path / ".stack").exists(), sorted(
        str(p.relative_to(tmp_path)) for p in (tmp_path / ".stack").rglob("*")
    )[:20]


def _health_url(settings_file: Path) -> str:
    line = next(x for x in settings_file.read_text().splitlines() if "HEALTH_URL=" in x)
    return line.split("=", 1)[1]


@pytest.mark.stack
def test_cli_up_status_down_leaves_nothing_running(tmp_path: Path) -> None:
    stack_dir = tmp_path / "stack"
    up = _cli(stack_dir, "stack.up", "--json")
    assert up.returncode == 0, up.stderr
    status = json.loads(up.stdout)
    assert status["up"] is True
    comps = status["components"]
    assert set(comps) == {"postgres", "toxiproxy", "s3", "receivers", "pm2"}
    assert all(c["running"] for c in comps.values())
    # no secret in the status output
    state = json.loads((stack_dir / "state.json").read_text())
    assert state["postgres"]["admin_password"] not in up.stdout
    assert state["endpoints"]["telegram_bot_token"] not in up.stdout
    assert oct((stack_dir / "state.json").stat().st_mode & 0o777) == "0o600"

    again = _cli(stack_dir, "stack.status", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["components"]["postgres"]["pid"] == comps["postgres"]["pid"]

    pids = [c["pid"] for c in comps.values()]
    ports = [c["port"] for c in comps.values() if c.get("port")]
    ports.append(comps["toxiproxy"]["proxy_port"])
    down = _cli(stack_dir, "stack.down")
    assert down.returncode == 0, down.stderr
    assert _wait_gone(pids) == []
    assert [p for p in ports if accepts_connections(p)] == []
    assert not Path(state["postgres"]["data_root"]).exists()
    after = _cli(stack_dir, "stack.status", "--json")
    assert after.returncode == 3
    assert json.loads(after.stdout)["up"] is False


@pytest.mark.stack
def test_up_starts_the_service_from_a_fresh_work_tree_and_down_keeps_what_is_not_its_own(
    tmp_path: Path,
) -> None:
    """A service work tree nothing runs from (a crashed run, left on the fallback commit by a
    switch) is not reused by the next `stack.up`; `stack.down` removes the stack's and the demo's
    entries and leaves another stack's directory inside its own alone."""
    from resilience.drill.demo import DEMO_APP
    from resilience.drill.standin.deploy import FALLBACK_TAG
    from resilience.infra.pm2 import Pm2, find_pm2

    tools = {"RESILIENCE_TOOLS_DIR": str(ROOT / ".tools")}
    stack_dir = tmp_path / ".stack"
    service = stack_dir / "service"
    other = stack_dir / "test-1" / "state.json"  # a stack of a test run, in a subdirectory
    other.parent.mkdir(parents=True)
    other.write_text("{}")

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(service), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        up = _in(tmp_path, "stack.up", "--json", **tools)
        assert up.returncode == 0, up.stderr
        git("checkout", "-q", FALLBACK_TAG)  # as restore.to-files leaves it
        Pm2(find_pm2(ROOT / ".tools"), home=stack_dir / "pm2").delete(DEMO_APP)  # it crashed
        again = _in(tmp_path, "stack.up", "--json", **tools)
        assert again.returncode == 0, again.stderr
        assert git("branch", "--show-current") == "main"  # not on the fallback commit
        assert git("rev-parse", "HEAD") != git("rev-parse", f"{FALLBACK_TAG}^{{commit}}")
        assert (service / "AUTH_BACKEND").read_text().strip() == "postgresql"
    finally:
        down = _in(tmp_path, "stack.down", **tools)
    assert down.returncode == 0, down.stderr
    assert sorted(p.name for p in stack_dir.iterdir()) == ["test-1"]
    assert other.read_text() == "{}"


@pytest.mark.stack
def test_down_cleans_up_after_a_crashed_run(tmp_path: Path) -> None:
    """A run that died without `down` (state file gone too) is cleaned by the next `down`."""
    settings = load_drill_settings(
        env_file=None, stack_dir=tmp_path / "s", tools_dir=ROOT / ".tools"
    )
    stack = LocalStack(settings)
    stack.up()
    pids = [c["pid"] for c in stack.status()["components"].values()]
    data_root = Path(
        json.loads((tmp_path / "s" / "state.json").read_text())["postgres"]["data_root"]
    )
    (tmp_path / "s" / "state.json").unlink()  # what a crash mid-`up` can leave
    LocalStack(settings).down()
    assert _wait_gone(pids) == []
    assert not data_root.exists()


@pytest.mark.stack
def test_up_replaces_a_half_dead_stack(tmp_path: Path) -> None:
    settings = load_drill_settings(
        env_file=None, stack_dir=tmp_path / "s", tools_dir=ROOT / ".tools"
    )
    stack = LocalStack(settings)
    try:
        stack.up()
        toxiproxy_pid = stack.status()["components"]["toxiproxy"]["pid"]
        os.kill(toxiproxy_pid, 9)
        assert _wait_gone([toxiproxy_pid]) == []
        assert stack.status()["up"] is False
        stack.up()
        assert stack.status()["up"] is True
    finally:
        stack.down()


def test_port_already_taken_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = load_drill_settings(
            env_file=None, stack_dir=tmp_path / "s", tools_dir=ROOT / ".tools", pg_port=port
        )
        with pytest.raises(StackError, match=f"port {port} .*RESILIENCE_PG_PORT") as info:
            LocalStack(settings).up()
    assert "\n" not in str(info.value)
    assert list((tmp_path / "s").glob("pids/*.pid")) == []


def test_port_taken_via_cli_exits_non_zero(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env_port = {"RESILIENCE_TOXIPROXY_PORT": str(port)}
        result = subprocess.run(
            [INVOKE, "stack.up"],
            cwd=ROOT,
            env={**os.environ, "RESILIENCE_STACK_DIR": str(tmp_path / "s"), **env_port},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 3
    assert f"port {port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_toxiproxy_binary_says_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    settings = load_drill_settings(
        env_file=None, stack_dir=tmp_path / "s", tools_dir=tmp_path / "none"
    )
    with pytest.raises(StackError, match="toxiproxy-server not found.*go"):
        LocalStack(settings).up()


@pytest.mark.skipif(
    os.geteuid() != 0, reason="the postgres user is only needed when running as root"
)
def test_missing_postgres_user_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    from resilience.drill.stack import postgres

    real = pwd.getpwnam

    def fake(name: str) -> pwd.struct_passwd:
        if name == "postgres":
            raise KeyError(name)
        return real(name)

    monkeypatch.setattr(postgres.pwd, "getpwnam", fake)
    with pytest.raises(StackError, match="'postgres' user, which does not exist.*apt-get install"):
        postgres.server_user()


def test_bad_config_via_cli_names_the_field(tmp_path: Path) -> None:
    result = subprocess.run(
        [INVOKE, "stack.status"],
        cwd=ROOT,
        env={**os.environ, "RESILIENCE_PG_PORT": "not-a-port"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "RESILIENCE_PG_PORT" in result.stderr
    assert "Traceback" not in result.stderr


# --- the shared session stack ------------------------------------------------------------------
@pytest.mark.stack
def test_service_dsn_goes_through_the_proxy_with_the_schema(stack: Stack) -> None:
    ep = stack.endpoints
    with connect(ep.service_dsn) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
        assert {"whatsapp_auth", "whatsapp_keys"} <= tables
        user = conn.execute("SELECT current_user").fetchone()
        assert user is not None and user[0] == "baileys_service"
    with ToxiproxyClient(ep.toxiproxy_url) as toxiproxy:
        proxy = toxiproxy.get_proxy(ep.toxiproxy_proxy)
    assert proxy.enabled
    assert f":{proxy.port}/" in ep.service_dsn


@pytest.mark.stack
def test_wrong_password_is_a_clear_error_without_the_password(stack: Stack) -> None:
    bad = stack.endpoints.service_dsn.replace("baileys_service:", "baileys_service:WRONGpw")
    with pytest.raises(ConfigError, match="password authentication failed") as info:
        connect(bad)  # a wrong password is a configuration error, never read as an outage
    assert "WRONGpw" not in str(info.value)


@pytest.mark.stack
def test_each_region_has_its_bucket(stack: Stack) -> None:
    ep = stack.endpoints
    assert {r.region for r in ep.s3.values()} == {"ru-central1", "eu-central-1"}
    for region in ep.s3.values():
        s3 = s3_client(region, ep.s3_access_key_id, ep.s3_secret_access_key)
        location = s3.get_bucket_location(Bucket=region.bucket)  # type: ignore[attr-defined]
        assert location["LocationConstraint"] == region.region


@pytest.mark.stack
def test_latency_toxic_slows_a_query_and_reset_restores(stack: Stack) -> None:
    ep = stack.endpoints
    with ToxiproxyClient(ep.toxiproxy_url) as toxiproxy, connect(ep.service_dsn) as conn:
        toxiproxy.add_latency(ep.toxiproxy_proxy, 400)
        try:
            started = time.monotonic()
            conn.execute("SELECT 1").fetchone()
            slowed = time.monotonic() - started
        finally:
            toxiproxy.reset()
        assert slowed >= 0.4  # a lower bound only: noise can only make it slower
        assert toxiproxy.toxics(ep.toxiproxy_proxy) == []


@pytest.mark.stack
def test_disabled_proxy_refuses_and_reset_restores(stack: Stack) -> None:
    ep = stack.endpoints
    with ToxiproxyClient(ep.toxiproxy_url) as toxiproxy:
        toxiproxy.disable(ep.toxiproxy_proxy)
        try:
            with pytest.raises(DatabaseUnreachable, match="PostgreSQL unreachable at"):
                connect(ep.service_dsn, timeout=2)
        finally:
            toxiproxy.reset()
    with connect(ep.service_dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.stack
def test_postgres_can_be_stopped_killed_and_started(stack: Stack) -> None:
    ep = stack.endpoints
    stack.stop_postgres()
    with pytest.raises(DatabaseError):
        connect(ep.admin_dsn, timeout=2)
    stack.start_postgres()
    stack.kill_postgres()
    with pytest.raises(DatabaseError):
        connect(ep.admin_dsn, timeout=2)
    stack.start_postgres()
    with psycopg.connect(ep.admin_dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
