"""A thin typed client for the Toxiproxy v2 HTTP API (checked against server v2.12.0).

Why not toxiproxy-python 0.1.1: it sets no request timeouts, lets a 500 through silently and
depends on `future`. This client puts a timeout on every request and turns every failure into a
`ChaosError` whose message carries the HTTP status and the server's own error text.

Units, as the server defines them: latency, jitter, delays and timeouts in milliseconds, except
the slicer's `delay`, which is in microseconds; bandwidth `rate` in KB/s; sizes in bytes. What the
API sends and takes (proxies, toxics, streams) is :mod:`resilience.chaos.model`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from resilience.chaos.model import (
    Proxy,
    ProxySpec,
    Stream,
    Toxic,
    check_non_negative,
    check_stream,
    check_toxicity,
)
from resilience.errors import ChaosError, ConfigError, InputError

_MAX_SERVER_MESSAGE = 300


class ToxiproxyAPIError(ChaosError):
    """Toxiproxy answered with a non-2xx status; `status` and `server_message` say what it said."""

    def __init__(self, method: str, path: str, status: int, server_message: str) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.server_message = server_message
        super().__init__(
            f"Toxiproxy {method} {path} failed with HTTP {status}: {server_message or '(no body)'}"
        )


def _server_message(response: httpx.Response) -> str:
    """The server's `error` field when the body is Toxiproxy's JSON error, else the body text."""
    text = response.text.strip()
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        text = body["error"]
    text = " ".join(text.split())
    if len(text) > _MAX_SERVER_MESSAGE:
        text = text[:_MAX_SERVER_MESSAGE] + "..."
    return text


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:120] if text else type(exc).__name__


def _segment(value: str) -> str:
    if not value:
        raise InputError("proxy and toxic names must not be empty")
    return quote(value, safe="")


class ToxiproxyClient:
    """Client for one Toxiproxy server. Every request times out after `timeout` seconds."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"Toxiproxy URL must be http(s)://host:port, not {base_url!r}")
        if timeout <= 0:
            raise ConfigError(f"Toxiproxy timeout must be positive, not {timeout!r}")
        # Toxiproxy has no authentication; drop any userinfo so it never shows in messages.
        self.base_url = str(url.copy_with(username=None, password=None)).rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout),
            headers={"Accept": "application/json"},
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"ToxiproxyClient({self.base_url!r}, timeout={self.timeout})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ToxiproxyClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- transport -------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; return the decoded JSON body (None when empty)."""
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TimeoutException:
            raise ChaosError(
                f"Toxiproxy server at {self.base_url} did not answer {method} {path} "
                f"within {self.timeout:g} s"
            ) from None
        except httpx.ConnectError as exc:
            raise ChaosError(
                f"Toxiproxy server at {self.base_url} is unreachable ({_reason(exc)}); "
                "start the stack with `./run stack.up`"
            ) from None
        except httpx.TransportError as exc:
            raise ChaosError(
                f"Toxiproxy server at {self.base_url} dropped {method} {path} "
                f"({type(exc).__name__}); is it running? `./run stack.up` starts it"
            ) from None
        except httpx.HTTPError as exc:
            raise ChaosError(
                f"Toxiproxy {method} {path} failed: {type(exc).__name__}: {exc}"
            ) from None
        if not response.is_success:
            raise ToxiproxyAPIError(method, path, response.status_code, _server_message(response))
        if not response.content.strip():
            return None
        try:
            return response.json()
        except ValueError:
            raise ChaosError(
                f"Toxiproxy {method} {path} returned HTTP {response.status_code} "
                "with a body that is not JSON"
            ) from None

    def _expect_dict(self, data: Any, what: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ChaosError(f"Toxiproxy returned {what} that is not a JSON object")
        return data

    def _expect_list(self, data: Any, what: str) -> list[Any]:
        if not isinstance(data, list):
            raise ChaosError(f"Toxiproxy returned {what} that is not a JSON array")
        return data

    # --- server ----------------------------------------------------------------------------

    def version(self) -> str:
        """GET /version. A `go install` build without ldflags reports "git"."""
        data = self._expect_dict(self._request("GET", "/version"), "a version")
        version = data.get("version")
        if not isinstance(version, str):
            raise ChaosError("Toxiproxy /version answer has no version string")
        return version

    def reset(self) -> None:
        """POST /reset: enable every proxy and remove every toxic (proxies are kept)."""
        self._request("POST", "/reset")

    # --- proxies ---------------------------------------------------------------------------

    def proxies(self) -> dict[str, Proxy]:
        """GET /proxies: every proxy by name, with its toxics."""
        data = self._expect_dict(self._request("GET", "/proxies"), "a proxy list")
        return {name: Proxy.from_json(item) for name, item in data.items()}

    def get_proxy(self, name: str) -> Proxy:
        return Proxy.from_json(self._request("GET", f"/proxies/{_segment(name)}"))

    def create_proxy(self, name: str, listen: str, upstream: str, enabled: bool = True) -> Proxy:
        """POST /proxies. `listen` may use port 0; the returned proxy has the bound port."""
        body = ProxySpec(name, listen, upstream, enabled).to_json()
        return Proxy.from_json(self._request("POST", "/proxies", body))

    def update_proxy(
        self,
        name: str,
        *,
        listen: str | None = None,
        upstream: str | None = None,
        enabled: bool | None = None,
    ) -> Proxy:
        """PATCH /proxies/{name}; fields left None keep their value. Changing the addresses
        restarts the proxy and drops its connections."""
        body: dict[str, Any] = {}
        if listen is not None:
            body["listen"] = listen
        if upstream is not None:
            body["upstream"] = upstream
        if enabled is not None:
            body["enabled"] = enabled
        return Proxy.from_json(self._request("PATCH", f"/proxies/{_segment(name)}", body))

    def delete_proxy(self, name: str) -> None:
        self._request("DELETE", f"/proxies/{_segment(name)}")

    def enable(self, name: str) -> Proxy:
        return self.update_proxy(name, enabled=True)

    def disable(self, name: str) -> Proxy:
        """Stop listening and close every connection through the proxy."""
        return self.update_proxy(name, enabled=False)

    def populate(self, specs: Iterable[ProxySpec | Mapping[str, Any]]) -> list[Proxy]:
        """POST /populate: create or replace proxies in bulk (unchanged ones are kept as is).
        On a server error the proxies it managed to create before failing stay in place."""
        body = [s.to_json() if isinstance(s, ProxySpec) else dict(s) for s in specs]
        data = self._expect_dict(self._request("POST", "/populate", body), "a populate answer")
        return [Proxy.from_json(p) for p in data.get("proxies") or ()]

    # --- toxics ----------------------------------------------------------------------------

    def toxics(self, proxy: str) -> list[Toxic]:
        data = self._expect_list(
            self._request("GET", f"/proxies/{_segment(proxy)}/toxics"), "a toxic list"
        )
        return [Toxic.from_json(t) for t in data]

    def get_toxic(self, proxy: str, name: str) -> Toxic:
        return Toxic.from_json(
            self._request("GET", f"/proxies/{_segment(proxy)}/toxics/{_segment(name)}")
        )

    def add_toxic(
        self,
        proxy: str,
        type: str,
        *,
        name: str | None = None,
        stream: Stream = "downstream",
        toxicity: float = 1.0,
        attributes: Mapping[str, Any] | None = None,
    ) -> Toxic:
        """POST /proxies/{proxy}/toxics. The server names it `<type>_<stream>` when `name` is
        None; unknown types are refused by the server (HTTP 400)."""
        check_stream(stream)
        check_toxicity(toxicity)
        body: dict[str, Any] = {
            "type": type,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": dict(attributes or {}),
        }
        if name is not None:
            body["name"] = name
        return Toxic.from_json(self._request("POST", f"/proxies/{_segment(proxy)}/toxics", body))

    def update_toxic(
        self,
        proxy: str,
        name: str,
        *,
        attributes: Mapping[str, Any] | None = None,
        toxicity: float | None = None,
    ) -> Toxic:
        """PATCH a toxic: attributes given are merged into the current ones."""
        body: dict[str, Any] = {}
        if attributes is not None:
            body["attributes"] = dict(attributes)
        if toxicity is not None:
            check_toxicity(toxicity)
            body["toxicity"] = toxicity
        path = f"/proxies/{_segment(proxy)}/toxics/{_segment(name)}"
        return Toxic.from_json(self._request("PATCH", path, body))

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._request("DELETE", f"/proxies/{_segment(proxy)}/toxics/{_segment(name)}")

    # --- typed helpers, one per toxic type ---------------------------------------------------

    def add_latency(
        self,
        proxy: str,
        latency: int,
        jitter: int = 0,
        *,
        stream: Stream = "downstream",
        name: str | None = None,
        toxicity: float = 1.0,
    ) -> Toxic:
        """Delay data by `latency` ms, ± `jitter` ms."""
        check_non_negative(latency=latency, jitter=jitter)
        attrs = {"latency": latency, "jitter": jitter}
        return self.add_toxic(
            proxy, "latency", name=name, stream=stream, toxicity=toxicity, attributes=attrs
        )

    def add_bandwidth(
        self,
        proxy: str,
        rate: int,
        *,
        stream: Stream = "downstream",
        name: str | None = None,
        toxicity: float = 1.0,
    ) -> Toxic:
        """Limit the stream to `rate` KB/s."""
        check_non_negative(rate=rate)
        return self.add_toxic(
            proxy,
            "bandwidth",
            name=name,
            stream=stream,
            toxicity=toxicity,
            attributes={"rate": rate},
        )

    def add_slow_close(
        self,
        proxy: str,
        delay: int,
        *,
        stream: Stream = "downstream",
        name: str | None = None,
        toxicity: float = 1.0,
    ) -> Toxic:
        """Delay the TCP close by `delay` ms."""
        check_non_negative(delay=delay)
        return self.add_toxic(
            proxy,
            "slow_close",
            name=name,
            stream=stream,
            toxicity=toxicity,
            attributes={"delay": delay},
        )

    def add_timeout(
        self,
        proxy: str,
        timeout: int,
        *,
        stream: Stream = "downstream",
        name: str | None = None,
        toxicity: float = 1.0,
    ) -> Toxic:
        """Stop all data; close the connection after `timeout` ms, or never when 0."""
        check_non_negative(timeout=timeout)
        return self.add_toxic(
            proxy,
            "timeout",
            name=name,
            stream=stream,
            toxicity=toxicity,
            attributes={"timeout": timeout},
        )

    def add_reset_peer(
        self,
        proxy: str,
        timeout: int = 0,
        *,
        stream: Stream = "downstream",
        name: str | None = None,
        toxicity: float = 1.0,
    ) -> Toxic:
        """Reset connections (TCP RST) at once, or after `timeout` ms."""
        check_non_negative(timeout=timeout)
        return self.add_toxic(
            proxy,
            "reset_peer",
            name=name,
            stream=stream,
            toxicity=toxicity,
            attributes={"timeout": timeout},
        )

    def add_slicer(
        self,
        proxy: str,
        average_size: int,
        size_variation: int = 0,
        delay: int = 0,
        *,
        stream: Stream = "downstream",
        name: str | None = None,
        toxicity: float = 1.0,
    ) -> Toxic:
        """Cut data into packets of `average_size` ± `size_variation` bytes, `delay` µs apart."""
        check_non_negative(average_size=average_size, size_variation=size_variation, delay=delay)
        attrs = {"average_size": average_size, "size_variation": size_variation, "delay": delay}
        return self.add_toxic(
            proxy, "slicer", name=name, stream=stream, toxicity=toxicity, attributes=attrs
        )

    def add_limit_data(
        self,
        proxy: str,
        bytes: int,
        *,
        stream: Stream = "downstream",
        name: str | None = None,
        toxicity: float = 1.0,
    ) -> Toxic:
        """Close the connection once `bytes` bytes have passed."""
        check_non_negative(bytes=bytes)
        return self.add_toxic(
            proxy,
            "limit_data",
            name=name,
            stream=stream,
            toxicity=toxicity,
            attributes={"bytes": bytes},
        )
