"""What the Toxiproxy v2 API sends and takes: proxies, their toxics, the streams and toxic
types, and the checks on a toxic's values before it is sent (InputError when they are wrong).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from resilience.errors import ChaosError, InputError

Stream = Literal["upstream", "downstream"]
ToxicType = Literal[
    "latency", "bandwidth", "slow_close", "timeout", "reset_peer", "slicer", "limit_data"
]

STREAMS: tuple[Stream, ...] = get_args(Stream)
TOXIC_TYPES: tuple[ToxicType, ...] = get_args(ToxicType)


@dataclass(frozen=True)
class Toxic:
    """One active toxic on a proxy, as the server reports it."""

    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> Toxic:
        if not isinstance(data, dict):
            raise ChaosError(f"Toxiproxy returned a toxic that is not an object: {data!r:.100}")
        try:
            attributes = data.get("attributes") or {}
            return cls(
                name=str(data["name"]),
                type=str(data["type"]),
                stream=str(data["stream"]),
                toxicity=float(data["toxicity"]),
                attributes=dict(attributes),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ChaosError(f"Toxiproxy returned a malformed toxic: {exc}") from None


@dataclass(frozen=True)
class Proxy:
    """One proxy with its active toxics. `listen` is the bound address (port 0 resolved)."""

    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: tuple[Toxic, ...] = ()

    @property
    def host(self) -> str:
        """Host part of `listen`, for clients that connect through the proxy."""
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        """Port part of `listen`."""
        return int(self.listen.rsplit(":", 1)[1])

    @classmethod
    def from_json(cls, data: Any) -> Proxy:
        if not isinstance(data, dict):
            raise ChaosError(f"Toxiproxy returned a proxy that is not an object: {data!r:.100}")
        try:
            return cls(
                name=str(data["name"]),
                listen=str(data["listen"]),
                upstream=str(data["upstream"]),
                enabled=bool(data["enabled"]),
                toxics=tuple(Toxic.from_json(t) for t in data.get("toxics") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ChaosError(f"Toxiproxy returned a malformed proxy: {exc}") from None


@dataclass(frozen=True)
class ProxySpec:
    """What `populate` needs to create or replace one proxy."""

    name: str
    listen: str
    upstream: str
    enabled: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
        }


def check_stream(stream: str) -> None:
    if stream not in STREAMS:
        raise InputError(f"toxic stream must be 'upstream' or 'downstream', not {stream!r}")


def check_toxicity(toxicity: float) -> None:
    if not 0.0 <= toxicity <= 1.0:
        raise InputError(f"toxicity must be between 0.0 and 1.0, not {toxicity!r}")


def check_non_negative(**values: int) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"toxic attribute {key} must be a non-negative integer, not {value!r}")
