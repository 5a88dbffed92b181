"""A real browser for testing pages and reports: Debian's Chromium, headless, driven by its
command line (Playwright and Selenium are not installable here).

Every call starts one browser with a throwaway profile (``--user-data-dir`` in the system temp
dir, removed afterwards) and these flags:

``--headless --no-sandbox --disable-gpu``
    the new headless mode; ``--no-sandbox`` because the drills run as root, where Chromium's
    sandbox refuses to start.
``--disable-dev-shm-usage --no-first-run --disable-background-networking``
    containers have a 64 MB ``/dev/shm`` that Chromium can exhaust; no first-run UI and no calls
    home (Debian's ``/etc/chromium.d`` turns background networking on).
``--virtual-time-budget=<wait_ms>``
    how long the page's scripts may run before the DOM is dumped or the screenshot taken. The
    budget is *virtual* time: timers fire as fast as the page can handle them, so a page that
    ``fetch``es every 1 s from ``setInterval`` runs 5 times under a 5000 ms budget in under a
    second of real time; and virtual time stands still while a network fetch is pending, so
    every tick's fetch completes (a server answering in 0.5 s still gives 5 ticks, in ~4 s).
    This was checked with Chromium 156; no other flag is needed. ``wait_ms=0`` leaves the flag
    out (the DOM right after the ``load`` event): ``--virtual-time-budget=0`` would never end on
    a page with a timer.

Chromium writes noise to stderr (dbus, Debian's launcher script): it is ignored unless the run
failed. Chromium exits 0 even when the page did not load or the screenshot was not written; the
headless command handler's ``ERROR`` lines say so and are turned into :class:`StackError`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from resilience.errors import InputError, StackError
from resilience.infra.waiting import wait_until

#: Environment variable naming the Chromium binary (``RESILIENCE_*`` names are settings).
ENV_VAR = "CHROMIUM_BIN"
NAMES = ("chromium", "chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
)
#: Real seconds allowed on top of the virtual-time budget (start-up, page load, slow fetches).
TIMEOUT_HEADROOM = 60.0
_HANDLER_ERROR = re.compile(r":ERROR:[^\]]*headless_command_handler[^\]]*\]\s*(.*)")
_NOISE = re.compile(r"dbus|^/usr/bin/chromium: \d+:|bytes written to file")


def find_chromium() -> str:
    """The Chromium binary: ``$CHROMIUM_BIN``, else ``chromium`` or ``chromium-browser`` on PATH."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise StackError(
                f"{ENV_VAR}={configured} is not an executable: point it at Chromium or unset it"
            )
        return found
    for name in NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    raise StackError(
        f"Chromium not found: run 'apt-get install chromium' as root (or set {ENV_VAR})"
    )


def render(url: str, *, wait_ms: int, timeout: float | None = None) -> str:
    """The DOM of ``url`` (serialised HTML) after its scripts ran for ``wait_ms`` of virtual
    time (see the module docstring)."""
    dom = _run(["--dump-dom", *budget(wait_ms), url], url, wait_ms, timeout)
    if not dom.strip():
        raise StackError(f"chromium printed no DOM for {url}")
    return dom


def screenshot(
    url: str,
    path: Path | str,
    *,
    width: int = 1280,
    height: int = 1024,
    wait_ms: int,
    timeout: float | None = None,
) -> Path:
    """A PNG of ``url`` at ``width`` x ``height`` after its scripts ran for ``wait_ms`` of virtual
    time, written to ``path`` (parents created); returns the path."""
    if width <= 0 or height <= 0:
        raise InputError(f"window size must be positive, not {width}x{height}")
    target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    flags = [f"--screenshot={target}", f"--window-size={width},{height}", "--hide-scrollbars"]
    _run([*flags, *budget(wait_ms), url], url, wait_ms, timeout)
    if not target.is_file() or target.stat().st_size == 0:
        raise StackError(f"chromium wrote no screenshot of {url} to {target}")
    return target


def budget(wait_ms: int) -> list[str]:
    if wait_ms < 0:
        raise InputError(f"wait_ms must be >= 0, not {wait_ms}")
    # `--virtual-time-budget=0` is not "no wait": Chromium then lets virtual time run with no
    # end, and a page with a timer never gets dumped. Without the flag it dumps after `load`.
    return [f"--virtual-time-budget={wait_ms}"] if wait_ms else []


def _run(args: Sequence[str], url: str, wait_ms: int, timeout: float | None) -> str:
    return run_chromium(args, url, wait_ms, timeout)[0]


def run_chromium(
    args: Sequence[str], url: str, wait_ms: int, timeout: float | None
) -> tuple[str, str]:
    """Run Chromium once with a throwaway profile; its stdout and stderr, or StackError saying
    why not (a timeout kills its whole process group)."""
    binary = find_chromium()
    limit = timeout if timeout is not None else wait_ms / 1000 + TIMEOUT_HEADROOM
    profile = tempfile.mkdtemp(prefix="resilience-chromium-")
    try:
        argv = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: a timeout kills the renderers too
        )
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            # The group leader is not reaped yet, so its pid (the group id) is still ours.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise StackError(
                f"chromium did not finish {url} within {limit:.0f} s (killed)"
            ) from None
    finally:
        _remove(profile)
    stderr = err.decode(errors="replace")
    if proc.returncode != 0:
        raise StackError(f"chromium failed on {url} (exit {proc.returncode}): {_reason(stderr)}")
    failures = [m.group(1).strip() for m in map(_HANDLER_ERROR.search, stderr.splitlines()) if m]
    if failures:
        raise StackError(f"chromium failed on {url}: {failures[-1]}")
    return out.decode(errors="replace"), stderr


def _reason(stderr: str) -> str:
    """The last stderr line that is not known noise, else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "no message on stderr"
    meaningful = [line for line in lines if not _NOISE.search(line)]
    return (meaningful or lines)[-1][:300]


def _remove(profile: str) -> None:
    """Remove the profile; a browser child may still be closing files in it for a moment."""

    def gone() -> bool:
        shutil.rmtree(profile, ignore_errors=True)
        return not os.path.exists(profile)

    wait_until(gone, 10, f"removal of the chromium profile {profile}")
