"""Stacks that drills run on, behind one interface: `local` (default), `docker`, `external`."""

from __future__ import annotations

from resilience.config import DrillSettings
from resilience.drill.stack.base import Endpoints, S3Region, Stack

__all__ = ["Endpoints", "S3Region", "Stack", "make_stack"]


def make_stack(settings: DrillSettings) -> Stack:
    """The stack the settings name (RESILIENCE_BACKEND)."""
    if settings.backend == "local":
        from resilience.drill.stack.local import LocalStack

        return LocalStack(settings)
    if settings.backend == "docker":
        from resilience.drill.stack.docker import DockerStack

        return DockerStack(settings)
    from resilience.drill.stack.external import ExternalStack

    return ExternalStack(settings)
