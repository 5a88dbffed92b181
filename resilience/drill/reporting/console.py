"""A page's DOM and its browser console, from headless Chromium: did it render, and quietly?

:func:`resilience.drill.browser.render` returns the DOM only and drops Chromium's stderr. Here
Chromium also runs with ``--enable-logging=stderr --v=0``, which logs every console message
(``console.*`` calls, uncaught exceptions, Content-Security-Policy violations, failed loads) as
``...:INFO:CONSOLE:<line>] "<message>", source: <url> (<line>)``; older builds write
``CONSOLE(<line>)``. Chromium does not log the message's level, so a page with no script (the
drill reports) is expected to log nothing at all. Same binary, flags and throwaway profile as
:mod:`resilience.drill.browser`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from resilience.drill.browser import FLAGS, TIMEOUT_HEADROOM, find_chromium
from resilience.errors import InputError, StackError
from resilience.infra.waiting import wait_until

LOGGING = ("--enable-logging=stderr", "--v=0")
_CONSOLE = re.compile(
    r":CONSOLE(?::\d+|\(\d+\))\] \"(?P<message>.*?)\", source: (?P<source>\S*) \((?P<line>\d+)\)",
    re.S,
)


@dataclass(frozen=True)
class ConsoleMessage:
    message: str
    source: str
    line: int


@dataclass(frozen=True)
class Rendered:
    dom: str
    console: list[ConsoleMessage]


def console_messages(stderr: str) -> list[ConsoleMessage]:
    """The console messages in Chromium's stderr, in order."""
    return [
        ConsoleMessage(m.group("message"), m.group("source"), int(m.group("line")))
        for m in _CONSOLE.finditer(stderr)
    ]


def render_with_console(url: str, *, wait_ms: int = 0, timeout: float | None = None) -> Rendered:
    """The DOM of ``url`` (a file:// URL works) and what its page wrote to the console."""
    if wait_ms < 0:
        raise InputError(f"wait_ms must be >= 0, not {wait_ms}")
    budget = [f"--virtual-time-budget={wait_ms}"] if wait_ms else []
    limit = timeout if timeout is not None else wait_ms / 1000 + TIMEOUT_HEADROOM
    profile = tempfile.mkdtemp(prefix="resilience-chromium-")
    argv = [find_chromium(), *FLAGS, *LOGGING, f"--user-data-dir={profile}", "--dump-dom",
            *budget, url]  # fmt: skip
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise StackError(f"chromium did not finish {url} within {limit:.0f} s") from None
    finally:
        _remove(profile)
    stderr = err.decode(errors="replace")
    dom = out.decode(errors="replace")
    if proc.returncode != 0 or not dom.strip():
        tail = [line for line in stderr.splitlines() if line.strip()][-1:] or ["no stderr"]
        raise StackError(f"chromium printed no DOM for {url} (exit {proc.returncode}): {tail[0]}")
    return Rendered(dom, console_messages(stderr))


def file_url(path: Path) -> str:
    return path.resolve().as_uri()


def _remove(profile: str) -> None:
    def gone() -> bool:
        shutil.rmtree(profile, ignore_errors=True)
        return not os.path.exists(profile)

    wait_until(gone, 10, f"removal of the chromium profile {profile}")
