"""Context managers that inject one fault for the duration of a `with` block.

Each removes its fault on exit, also when the body raises. When the body raised and the cleanup
fails too, the body's exception propagates (with a note naming the cleanup failure) and the
cleanup failure is logged; when only the cleanup fails, it raises `ChaosError`.

Every helper takes `allowed`: pass the target's drill-target flag. When it is False nothing is
sent to Toxiproxy and `ChaosError` is raised.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from resilience.chaos.model import Proxy, Stream, Toxic
from resilience.chaos.toxiproxy import ToxiproxyAPIError, ToxiproxyClient
from resilience.errors import ChaosError

log = logging.getLogger(__name__)

REFUSAL = (
    "refusing to inject faults: target is not marked as a drill target "
    "(set RESILIENCE_DRILL_TARGET=true)"
)


def require_drill_target(allowed: bool) -> None:
    """Raise ChaosError unless fault injection is allowed on this target."""
    if not allowed:
        raise ChaosError(REFUSAL)


def _unique_name(kind: str, stream: str) -> str:
    return f"fault_{kind}_{stream}_{uuid.uuid4().hex[:8]}"


def _undo(action: Callable[[], None], body_error: BaseException | None, what: str) -> None:
    """Run one cleanup action; never let its failure hide the body's own exception."""
    try:
        action()
    except ChaosError as exc:
        if body_error is None:
            raise ChaosError(f"could not {what}: {exc}") from None
        log.warning("could not %s after the drill body failed: %s", what, exc)
        body_error.add_note(f"also could not {what}: {exc}")


AddToxic = Callable[[Stream, str], Toxic]


@contextmanager
def _with_toxics(
    client: ToxiproxyClient,
    proxy: str,
    kind: str,
    streams: tuple[Stream, ...],
    add: AddToxic,
    allowed: bool,
) -> Iterator[list[Toxic]]:
    """Add one toxic per stream via `add(stream, name)`; remove every one added on exit."""
    require_drill_target(allowed)
    added: list[Toxic] = []

    def remove_all(body_error: BaseException | None) -> None:
        for toxic in reversed(added):

            def remove(name: str = toxic.name) -> None:
                try:
                    client.remove_toxic(proxy, name)
                except ToxiproxyAPIError as exc:
                    if exc.status != 404:  # 404: already gone (reset, or proxy deleted)
                        raise

            _undo(remove, body_error, f"remove toxic {toxic.name} from proxy {proxy}")

    try:
        for stream in streams:
            added.append(add(stream, _unique_name(kind, stream)))
        yield added
    except BaseException as exc:
        remove_all(exc)
        raise
    remove_all(None)


@contextmanager
def proxy_disabled(client: ToxiproxyClient, proxy: str, *, allowed: bool = True) -> Iterator[Proxy]:
    """Take the proxy down (new connections refused, open ones closed); restore on exit.

    A proxy that was already disabled before is left disabled."""
    require_drill_target(allowed)
    was_enabled = client.get_proxy(proxy).enabled

    def restore() -> None:
        if was_enabled:
            client.enable(proxy)

    try:
        yield client.disable(proxy)
    except BaseException as exc:
        _undo(restore, exc, f"re-enable proxy {proxy}")
        raise
    _undo(restore, None, f"re-enable proxy {proxy}")


@contextmanager
def latency(
    client: ToxiproxyClient,
    proxy: str,
    ms: int,
    jitter: int = 0,
    stream: Stream = "downstream",
    *,
    allowed: bool = True,
) -> Iterator[Toxic]:
    """Delay data on one stream by `ms` ± `jitter` milliseconds."""

    def add(s: Stream, name: str) -> Toxic:
        return client.add_latency(proxy, ms, jitter, stream=s, name=name)

    with _with_toxics(client, proxy, "latency", (stream,), add, allowed) as added:
        yield added[0]


@contextmanager
def black_hole(
    client: ToxiproxyClient, proxy: str, *, allowed: bool = True
) -> Iterator[list[Toxic]]:
    """Connections open, but no data passes either way and nothing is closed (timeout=0)."""

    def add(s: Stream, name: str) -> Toxic:
        return client.add_timeout(proxy, 0, stream=s, name=name)

    streams: tuple[Stream, ...] = ("upstream", "downstream")
    with _with_toxics(client, proxy, "timeout", streams, add, allowed) as added:
        yield added


@contextmanager
def reset_peer(
    client: ToxiproxyClient,
    proxy: str,
    timeout: int = 0,
    stream: Stream = "downstream",
    *,
    allowed: bool = True,
) -> Iterator[Toxic]:
    """Reset connections (TCP RST) at once, or after `timeout` ms."""

    def add(s: Stream, name: str) -> Toxic:
        return client.add_reset_peer(proxy, timeout, stream=s, name=name)

    with _with_toxics(client, proxy, "reset_peer", (stream,), add, allowed) as added:
        yield added[0]


@contextmanager
def bandwidth(
    client: ToxiproxyClient,
    proxy: str,
    rate: int,
    stream: Stream = "downstream",
    *,
    allowed: bool = True,
) -> Iterator[Toxic]:
    """Limit one stream to `rate` KB/s."""

    def add(s: Stream, name: str) -> Toxic:
        return client.add_bandwidth(proxy, rate, stream=s, name=name)

    with _with_toxics(client, proxy, "bandwidth", (stream,), add, allowed) as added:
        yield added[0]


@contextmanager
def server_stopped(
    stop: Callable[[], None], start: Callable[[], None], what: str, *, allowed: bool = True
) -> Iterator[None]:
    """Stop a server (`stop`) for the block and start it again (`start`) on exit, also when
    the body raises; `what` names it in errors. The stack's own controls do the work, so a
    backend that cannot stop its server says so before anything happens."""
    require_drill_target(allowed)
    stop()
    body_error: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        body_error = exc
        raise
    finally:
        _undo(start, body_error, f"start {what} again")
