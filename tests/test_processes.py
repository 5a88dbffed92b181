"""Ports for the stack's listeners: picked below the kernel's ephemeral range, so an outgoing
connection never holds a port a listener binds again (a Toxiproxy proxy enabled after a fault)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from resilience.infra import processes
from resilience.infra.processes import LISTEN_PORTS_FROM, free_port, port_in_use


def _range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    path = tmp_path / "ip_local_port_range"
    path.write_text(text)
    monkeypatch.setattr(processes, "EPHEMERAL_RANGE", path)


def test_a_listening_port_is_free_and_below_the_ephemeral_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _range(tmp_path, monkeypatch, "32768\t60999\n")
    ports = {free_port() for _ in range(20)}
    assert all(LISTEN_PORTS_FROM <= p < 32768 for p in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free indeed
    # an outgoing connection's port is never one of them: it comes from the ephemeral range
    with socket.socket() as listener, socket.socket() as client:
        listener.bind(("127.0.0.1", free_port()))
        listener.listen()
        client.connect(listener.getsockname())
        assert client.getsockname()[1] >= 32768 or not _kernel_range_is_default()


def _kernel_range_is_default() -> bool:
    return Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0] == "32768"


def test_a_taken_port_is_never_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _range(tmp_path, monkeypatch, "21000 60999")  # 1,000 candidates: 20000-20999
    taken = []
    try:
        for port in range(LISTEN_PORTS_FROM, 20990):  # all but ten (or those others hold)
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            taken.append(s)
        given = free_port()
        assert given not in {s.getsockname()[1] for s in taken} and not port_in_use(given)
    finally:
        for s in taken:
            s.close()


def test_with_no_room_below_the_ephemeral_range_the_kernel_picks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _range(tmp_path, monkeypatch, "1024 65000")
    port = free_port()
    assert port >= 1024 and not port_in_use(port)
