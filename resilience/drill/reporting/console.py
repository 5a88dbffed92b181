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

import re
from dataclasses import dataclass
from pathlib import Path

from resilience.drill.browser import budget, run_chromium
from resilience.errors import StackError

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
    out, err = run_chromium([*LOGGING, "--dump-dom", *budget(wait_ms), url], url, wait_ms, timeout)
    if not out.strip():
        raise StackError(f"chromium printed no DOM for {url}")
    return Rendered(out, console_messages(err))


def file_url(path: Path) -> str:
    return path.resolve().as_uri()
