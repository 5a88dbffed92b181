"""The Toxiproxy client and fault helpers against the real toxiproxy-server binary.

Upstream is a tiny in-process TCP echo server, so these tests need no PostgreSQL.
"""

from __future__ import annotations

import shutil
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from resilience.chaos import faults
from resilience.chaos.model import STREAMS, Proxy, ProxySpec, Stream
from resilience.chaos.toxiproxy import ToxiproxyAPIError, ToxiproxyClient
from resilience.errors import ChaosError, ConfigError, InputError, StackError
from resilience.infra.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_DEADLINE_S = 15.0


# --- helpers -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toxiproxy_binary() -> str | None:
    local = REPO_ROOT / ".tools" / "bin" / "toxiproxy-server"
    if local.is_file():
        return str(local)
    return shutil.which("toxiproxy-server")


def _wait_for_version(url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether the server answers /version before `timeout` (False at once if it exited)."""

    def answers() -> bool:
        if proc.poll() is not None:
            raise StackError("toxiproxy-server exited")
        return httpx.get(f"{url}/version", timeout=0.5).status_code == 200

    try:
        return wait_until(answers, timeout, "toxiproxy-server /version")
    except StackError:
        return False


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def echo_round_trip(proxy: Proxy, payload: bytes = b"ping\n", timeout: float = 5.0) -> float:
    """Send `payload` through the proxy, read it back; return the seconds send→echo took."""
    with socket.create_connection((proxy.host, proxy.port), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionResetError("connection closed before the echo arrived")
            received += chunk
        elapsed = time.monotonic() - started
    assert received == payload
    return elapsed


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toxiproxy_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _toxiproxy_binary()
    if binary is None:
        pytest.skip(
            "toxiproxy-server not found in .tools/bin or on PATH; `./run` installs it "
            "(go install github.com/Shopify/toxiproxy/v2/cmd/server@v2.12.0)"
        )
    log_path = tmp_path_factory.mktemp("toxiproxy") / "server.log"
    with log_path.open("wb") as log:
        proc: subprocess.Popen[bytes] | None = None
        url = ""
        for _attempt in range(3):  # a free port can be taken between probe and bind
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            proc = subprocess.Popen(
                [binary, "-host", "127.0.0.1", "-port", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            if _wait_for_version(url, proc, STARTUP_DEADLINE_S):
                break
            proc.kill()
            proc.wait(timeout=10)
            proc = None
        if proc is None:
            pytest.fail(f"toxiproxy-server did not answer /version; log:\n{log_path.read_text()}")
        try:
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            assert proc.returncode is not None, "toxiproxy-server is still running"


@pytest.fixture(scope="module")
def echo_address() -> Iterator[str]:
    server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, name="echo-server", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive()


@pytest.fixture
def client(toxiproxy_url: str) -> Iterator[ToxiproxyClient]:
    with ToxiproxyClient(toxiproxy_url, timeout=5.0) as c:
        try:
            yield c
        finally:
            for name in c.proxies():
                c.delete_proxy(name)


@pytest.fixture
def echo_proxy(client: ToxiproxyClient, echo_address: str) -> Proxy:
    return client.create_proxy("echo", "127.0.0.1:0", echo_address)


# --- server and proxies ------------------------------------------------------------------------


def test_version_matches_the_binary(client: ToxiproxyClient) -> None:
    version = client.version()
    binary = _toxiproxy_binary()
    assert binary is not None
    printed = subprocess.run(
        [binary, "-version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert version
    assert version in printed.stdout + printed.stderr


def test_proxy_crud_round_trip(client: ToxiproxyClient, echo_address: str) -> None:
    created = client.create_proxy("crud", "127.0.0.1:0", echo_address)
    assert created.name == "crud"
    assert created.upstream == echo_address
    assert created.enabled is True
    assert created.toxics == ()
    assert created.port != 0  # the server resolved the ephemeral port

    assert client.get_proxy("crud") == created
    assert client.proxies() == {"crud": created}

    other_upstream = f"127.0.0.1:{_free_port()}"
    moved = client.update_proxy("crud", upstream=other_upstream)
    assert moved.upstream == other_upstream
    assert moved.listen == created.listen
    assert moved.enabled is True

    disabled = client.update_proxy("crud", enabled=False)
    assert disabled.enabled is False
    assert client.get_proxy("crud").enabled is False
    assert client.enable("crud").enabled is True
    assert client.disable("crud").enabled is False

    client.delete_proxy("crud")
    assert "crud" not in client.proxies()
    with pytest.raises(ToxiproxyAPIError) as info:
        client.get_proxy("crud")
    assert info.value.status == 404
    assert "proxy not found" in str(info.value)


def test_create_disabled_proxy(client: ToxiproxyClient, echo_address: str) -> None:
    proxy = client.create_proxy("off", "127.0.0.1:0", echo_address, enabled=False)
    assert proxy.enabled is False
    assert client.get_proxy("off").enabled is False


def test_populate_creates_and_replaces(client: ToxiproxyClient, echo_address: str) -> None:
    made = client.populate(
        [
            ProxySpec("pop_a", "127.0.0.1:0", echo_address),
            {"name": "pop_b", "listen": "127.0.0.1:0", "upstream": echo_address},
        ]
    )
    assert [p.name for p in made] == ["pop_a", "pop_b"]
    assert all(p.enabled and p.port != 0 for p in made)
    assert set(client.proxies()) == {"pop_a", "pop_b"}

    elsewhere = f"127.0.0.1:{_free_port()}"
    again = client.populate(
        [
            ProxySpec("pop_a", made[0].listen, echo_address),  # unchanged: kept
            ProxySpec("pop_b", made[1].listen, elsewhere, enabled=False),  # replaced
        ]
    )
    assert again[0] == made[0]
    assert client.get_proxy("pop_b").upstream == elsewhere
    assert client.get_proxy("pop_b").enabled is False


def test_populate_server_error_is_not_swallowed(
    client: ToxiproxyClient, toxiproxy_url: str, echo_address: str
) -> None:
    api_listen = toxiproxy_url.removeprefix("http://")  # already bound by the API itself
    with pytest.raises(ToxiproxyAPIError) as info:
        client.populate([ProxySpec("clash", api_listen, echo_address)])
    assert info.value.status == 500
    assert "address already in use" in info.value.server_message
    assert "HTTP 500" in str(info.value)


# --- toxics ------------------------------------------------------------------------------------

TYPED: dict[str, tuple[Callable[..., Any], dict[str, Any], dict[str, int]]] = {
    # type: (helper, kwargs, attributes the server must report back)
    "latency": (
        ToxiproxyClient.add_latency,
        {"latency": 120, "jitter": 15},
        {"latency": 120, "jitter": 15},
    ),
    "bandwidth": (ToxiproxyClient.add_bandwidth, {"rate": 64}, {"rate": 64}),
    "slow_close": (ToxiproxyClient.add_slow_close, {"delay": 250}, {"delay": 250}),
    "timeout": (ToxiproxyClient.add_timeout, {"timeout": 1500}, {"timeout": 1500}),
    "reset_peer": (ToxiproxyClient.add_reset_peer, {"timeout": 700}, {"timeout": 700}),
    "slicer": (
        ToxiproxyClient.add_slicer,
        {"average_size": 64, "size_variation": 16, "delay": 300},
        {"average_size": 64, "size_variation": 16, "delay": 300},
    ),
    "limit_data": (ToxiproxyClient.add_limit_data, {"bytes": 4096}, {"bytes": 4096}),
}


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("toxic_type", sorted(TYPED))
def test_every_toxic_type_round_trips(
    client: ToxiproxyClient, echo_proxy: Proxy, toxic_type: str, stream: Stream
) -> None:
    helper, kwargs, expected = TYPED[toxic_type]
    added = helper(client, echo_proxy.name, stream=stream, toxicity=0.75, **kwargs)
    assert added.type == toxic_type
    assert added.stream == stream
    assert added.name == f"{toxic_type}_{stream}"  # the server's default name
    assert added.toxicity == pytest.approx(0.75)
    assert added.attributes == expected

    assert client.get_toxic(echo_proxy.name, added.name) == added
    assert client.toxics(echo_proxy.name) == [added]
    assert client.get_proxy(echo_proxy.name).toxics == (added,)


def test_generic_toxic_update_and_remove(client: ToxiproxyClient, echo_proxy: Proxy) -> None:
    added = client.add_toxic(
        echo_proxy.name,
        "latency",
        name="slow_up",
        stream="upstream",
        toxicity=0.5,
        attributes={"latency": 10},
    )
    assert added.name == "slow_up"
    assert added.attributes == {"latency": 10, "jitter": 0}

    updated = client.update_toxic(echo_proxy.name, "slow_up", attributes={"jitter": 4})
    assert updated.attributes == {"latency": 10, "jitter": 4}  # merged, not replaced
    assert updated.toxicity == pytest.approx(0.5)
    updated = client.update_toxic(echo_proxy.name, "slow_up", toxicity=1.0)
    assert updated.toxicity == pytest.approx(1.0)
    assert client.get_toxic(echo_proxy.name, "slow_up") == updated

    client.remove_toxic(echo_proxy.name, "slow_up")
    assert client.toxics(echo_proxy.name) == []
    with pytest.raises(ToxiproxyAPIError) as info:
        client.get_toxic(echo_proxy.name, "slow_up")
    assert info.value.status == 404
    assert info.value.server_message == "toxic not found"


def test_both_streams_can_hold_toxics_at_once(client: ToxiproxyClient, echo_proxy: Proxy) -> None:
    up = client.add_latency(echo_proxy.name, 5, stream="upstream")
    down = client.add_bandwidth(echo_proxy.name, 100, stream="downstream")
    assert sorted(client.toxics(echo_proxy.name), key=lambda t: t.name) == [down, up]


@pytest.mark.parametrize("stream", STREAMS)
def test_latency_toxic_slows_the_round_trip(
    client: ToxiproxyClient, echo_proxy: Proxy, stream: Stream
) -> None:
    echo_round_trip(echo_proxy)  # works without the toxic (its speed is not asserted)
    client.add_latency(echo_proxy.name, 300, stream=stream)
    assert echo_round_trip(echo_proxy) >= 0.3


def test_disabled_proxy_refuses_connections_and_enable_restores(
    client: ToxiproxyClient, echo_proxy: Proxy
) -> None:
    echo_round_trip(echo_proxy)
    with socket.create_connection((echo_proxy.host, echo_proxy.port), timeout=5) as open_conn:
        client.disable(echo_proxy.name)
        # A connection open before the disable is closed by the proxy.
        with suppress(ConnectionResetError):
            assert open_conn.recv(1) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((echo_proxy.host, echo_proxy.port), timeout=5).close()

    client.enable(echo_proxy.name)
    echo_round_trip(echo_proxy)


def test_reset_removes_toxics_and_reenables(client: ToxiproxyClient, echo_proxy: Proxy) -> None:
    client.add_timeout(echo_proxy.name, 0, stream="upstream")
    client.add_latency(echo_proxy.name, 1000)
    client.disable(echo_proxy.name)
    assert len(client.toxics(echo_proxy.name)) == 2

    client.reset()

    after = client.get_proxy(echo_proxy.name)
    assert after.enabled is True
    assert after.toxics == ()
    assert after.listen == echo_proxy.listen
    echo_round_trip(echo_proxy)


# --- errors ------------------------------------------------------------------------------------


def test_duplicate_proxy_is_a_409_with_the_server_message(
    client: ToxiproxyClient, echo_proxy: Proxy, echo_address: str
) -> None:
    with pytest.raises(ChaosError) as info:
        client.create_proxy(echo_proxy.name, "127.0.0.1:0", echo_address)
    assert isinstance(info.value, ToxiproxyAPIError)
    assert info.value.status == 409
    assert info.value.server_message == "proxy already exists"
    assert "HTTP 409" in str(info.value)
    assert "proxy already exists" in str(info.value)


def test_unknown_toxic_type_is_a_400(client: ToxiproxyClient, echo_proxy: Proxy) -> None:
    with pytest.raises(ToxiproxyAPIError) as info:
        client.add_toxic(echo_proxy.name, "gremlins", attributes={})
    assert info.value.status == 400
    assert info.value.server_message == "invalid toxic type"
    assert client.toxics(echo_proxy.name) == []


def test_duplicate_toxic_is_a_409(client: ToxiproxyClient, echo_proxy: Proxy) -> None:
    client.add_latency(echo_proxy.name, 1)
    with pytest.raises(ToxiproxyAPIError) as info:
        client.add_latency(echo_proxy.name, 2)
    assert info.value.status == 409
    assert info.value.server_message == "toxic already exists"


def test_missing_upstream_is_a_400(client: ToxiproxyClient) -> None:
    with pytest.raises(ToxiproxyAPIError) as info:
        client.create_proxy("no_upstream", "127.0.0.1:0", "")
    assert info.value.status == 400
    assert "missing required field" in info.value.server_message


def test_unknown_proxy_is_a_404(client: ToxiproxyClient) -> None:
    for call in (
        lambda: client.get_proxy("ghost"),
        lambda: client.delete_proxy("ghost"),
        lambda: client.enable("ghost"),
        lambda: client.toxics("ghost"),
        lambda: client.add_latency("ghost", 1),
        lambda: client.remove_toxic("ghost", "latency_downstream"),
    ):
        with pytest.raises(ToxiproxyAPIError) as info:
            call()
        assert info.value.status == 404
        assert info.value.server_message == "proxy not found"


def test_bad_arguments_are_refused_before_any_request(
    client: ToxiproxyClient, echo_proxy: Proxy
) -> None:
    with pytest.raises(InputError):
        client.add_latency(echo_proxy.name, -1)
    with pytest.raises(InputError):
        client.add_toxic(echo_proxy.name, "latency", stream="sideways")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        client.add_bandwidth(echo_proxy.name, 10, toxicity=1.5)
    with pytest.raises(InputError):
        client.get_proxy("")
    assert client.toxics(echo_proxy.name) == []


def test_bad_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        ToxiproxyClient("localhost:8474")
    with pytest.raises(ConfigError):
        ToxiproxyClient("http://127.0.0.1:8474", timeout=0)


def test_unreachable_server_says_how_to_start_it() -> None:
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    with ToxiproxyClient(url, timeout=2.0) as c, pytest.raises(ChaosError) as info:
        c.version()
    message = str(info.value)
    assert url in message
    assert "unreachable" in message
    assert "./run stack.up" in message


def test_silent_server_times_out() -> None:
    """A server that accepts the connection but never answers must not hang the client."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with ToxiproxyClient(url, timeout=0.3) as c, pytest.raises(ChaosError) as info:
            c.proxies()
    assert "did not answer" in str(info.value)
    assert url in str(info.value)


# --- fault helpers ------------------------------------------------------------------------------

FaultFactory = Callable[[ToxiproxyClient, str, bool], AbstractContextManager[Any]]

FAULTS: dict[str, FaultFactory] = {
    "proxy_disabled": lambda c, p, ok: faults.proxy_disabled(c, p, allowed=ok),
    "latency": lambda c, p, ok: faults.latency(c, p, 300, allowed=ok),
    "black_hole": lambda c, p, ok: faults.black_hole(c, p, allowed=ok),
    "reset_peer": lambda c, p, ok: faults.reset_peer(c, p, allowed=ok),
    "bandwidth": lambda c, p, ok: faults.bandwidth(c, p, 8, "upstream", allowed=ok),
}


def _assert_fault_active(name: str, client: ToxiproxyClient, proxy: Proxy) -> None:
    current = client.get_proxy(proxy.name)
    if name == "proxy_disabled":
        assert current.enabled is False
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((proxy.host, proxy.port), timeout=5).close()
        return
    assert current.enabled is True
    toxics = {(t.type, t.stream): t.attributes for t in current.toxics}
    if name == "latency":
        assert toxics == {("latency", "downstream"): {"latency": 300, "jitter": 0}}
        assert echo_round_trip(proxy) >= 0.3
    elif name == "black_hole":
        assert toxics == {
            ("timeout", "upstream"): {"timeout": 0},
            ("timeout", "downstream"): {"timeout": 0},
        }
        with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
            sock.sendall(b"anyone there?\n")
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(1)  # nothing comes back, and the connection is not closed either
    elif name == "reset_peer":
        assert toxics == {("reset_peer", "downstream"): {"timeout": 0}}
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            echo_round_trip(proxy)
    elif name == "bandwidth":
        assert toxics == {("bandwidth", "upstream"): {"rate": 8}}
    else:  # pragma: no cover - a new entry in FAULTS without a check
        pytest.fail(f"no check for fault {name}")


def _assert_fault_gone(client: ToxiproxyClient, proxy: Proxy) -> None:
    current = client.get_proxy(proxy.name)
    assert current.enabled is True
    assert current.toxics == ()
    echo_round_trip(proxy)


class _Boom(Exception):
    pass


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault_is_active_inside_and_removed_after(
    client: ToxiproxyClient, echo_proxy: Proxy, name: str
) -> None:
    with FAULTS[name](client, echo_proxy.name, True):
        _assert_fault_active(name, client, echo_proxy)
    _assert_fault_gone(client, echo_proxy)


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault_is_removed_when_the_body_raises(
    client: ToxiproxyClient, echo_proxy: Proxy, name: str
) -> None:
    with pytest.raises(_Boom), FAULTS[name](client, echo_proxy.name, True):
        raise _Boom
    _assert_fault_gone(client, echo_proxy)


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault_refused_when_not_a_drill_target(
    client: ToxiproxyClient, echo_proxy: Proxy, name: str
) -> None:
    entered = False
    with pytest.raises(ChaosError) as info, FAULTS[name](client, echo_proxy.name, False):
        entered = True
    assert not entered
    assert str(info.value) == (
        "refusing to inject faults: target is not marked as a drill target "
        "(set RESILIENCE_DRILL_TARGET=true)"
    )
    assert client.get_proxy(echo_proxy.name) == echo_proxy  # nothing changed


def test_fault_cleanup_tolerates_a_reset_inside_the_body(
    client: ToxiproxyClient, echo_proxy: Proxy
) -> None:
    with faults.black_hole(client, echo_proxy.name) as added:
        assert len(added) == 2
        client.reset()  # removes the toxics before the helper does
    _assert_fault_gone(client, echo_proxy)


def test_nested_faults_of_one_kind_do_not_collide(
    client: ToxiproxyClient, echo_proxy: Proxy
) -> None:
    with (
        faults.latency(client, echo_proxy.name, 10) as outer,
        faults.latency(client, echo_proxy.name, 20) as inner,
    ):
        assert outer.name != inner.name
        assert len(client.toxics(echo_proxy.name)) == 2
    _assert_fault_gone(client, echo_proxy)


def test_failed_cleanup_does_not_hide_the_body_error(
    client: ToxiproxyClient, echo_proxy: Proxy
) -> None:
    with pytest.raises(_Boom) as info, faults.proxy_disabled(client, echo_proxy.name):
        client.delete_proxy(echo_proxy.name)  # re-enabling will now fail with 404
        raise _Boom
    notes = getattr(info.value, "__notes__", [])
    assert any("could not re-enable proxy echo" in note for note in notes)


def test_failed_cleanup_raises_when_the_body_succeeded(
    client: ToxiproxyClient, echo_proxy: Proxy
) -> None:
    with pytest.raises(ChaosError) as info, faults.proxy_disabled(client, echo_proxy.name):
        client.delete_proxy(echo_proxy.name)
    assert "could not re-enable proxy echo" in str(info.value)
    assert "proxy not found" in str(info.value)


def test_proxy_disabled_leaves_an_already_disabled_proxy_disabled(
    client: ToxiproxyClient, echo_proxy: Proxy
) -> None:
    client.disable(echo_proxy.name)
    with faults.proxy_disabled(client, echo_proxy.name) as inside:
        assert inside.enabled is False
    assert client.get_proxy(echo_proxy.name).enabled is False


def test_fault_arguments_are_validated(client: ToxiproxyClient, echo_proxy: Proxy) -> None:
    with pytest.raises(InputError), faults.latency(client, echo_proxy.name, -5):
        pass
    assert client.toxics(echo_proxy.name) == []
