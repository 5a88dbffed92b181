"""Runbook index: `invoke --list`. Thin tasks over the `resilience` library, one module per
namespace: each parses flags, calls one library command, formats the result (human or --json)
and maps library errors to exit codes with a one-line message (:mod:`tasks._run`)."""

from invoke.collection import Collection

from tasks import (
    backup,
    check,
    cleanup,
    dev,
    diagnose,
    drill,
    health,
    mirror,
    monitor,
    restore,
    runs,
    schedule,
    stack,
    status,
)

ns = Collection(
    Collection.from_module(stack),
    Collection.from_module(restore),
    Collection.from_module(backup),
    Collection.from_module(cleanup),
    Collection.from_module(drill),
    Collection.from_module(schedule),
    Collection.from_module(monitor),
    Collection.from_module(mirror),
    Collection.from_module(runs),
    health.health,
    diagnose.diagnose,
    check.check,
    status.status,
    dev.lint,
    dev.test,
    dev.bench,
)
