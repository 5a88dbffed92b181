"""The headless browser: scripts run (timers in virtual time, real fetches), screenshots are PNGs,
and failures Chromium exits 0 on are errors."""

from __future__ import annotations

import json
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from resilience.drill import browser
from resilience.errors import StackError
from resilience.infra.processes import free_port


def _have_chromium() -> bool:
    try:
        browser.find_chromium()
    except StackError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _have_chromium(), reason="needs Chromium (./run)")

PAGE = """<!doctype html>
<html><head><title>ticks</title></head>
<body>
<h1>ticks</h1>
<p>count: <span id="count">0</span></p>
<p>status: <span id="status">none</span></p>
<script>
let count = 0;
setInterval(async () => {
  const response = await fetch("/data.json", {cache: "no-store"});
  const data = await response.json();
  count += 1;
  document.getElementById("count").textContent = String(count);
  document.getElementById("status").textContent = data.status;
}, 1000);
</script>
</body></html>
"""


@dataclass
class Site:
    url: str
    hits: int = 0
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def site() -> Iterator[Site]:
    """The page above, `/data.json` (counts its hits) and `/hang` (answers only at teardown)."""
    state = Site(url="")
    lock = threading.Lock()

    @Request.application
    def app(request: Request) -> Response:
        if request.path == "/data.json":
            with lock:
                state.hits += 1
                hit = state.hits
            body = json.dumps({"status": f"server-ok-{hit}"})
            return Response(body, mimetype="application/json")
        if request.path == "/hang":
            state.release.wait(60)
            return Response("late", mimetype="text/plain")
        return Response(PAGE, mimetype="text/html")

    server = make_server("127.0.0.1", 0, app, threaded=True)
    state.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def _text(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}">([^<]*)<', dom)
    assert match, dom
    return match.group(1)


def test_render_runs_timers_and_fetches(site: Site) -> None:
    dom = browser.render(site.url + "/", wait_ms=5000)
    count = int(_text(dom, "count"))
    assert count >= 2
    assert site.hits >= 2
    # The DOM shows what the server answered, to one of the fetches that completed.
    status = _text(dom, "status")
    assert re.fullmatch(r"server-ok-\d+", status)
    assert 1 <= int(status.rsplit("-", 1)[1]) <= site.hits


def test_screenshot_writes_a_png(site: Site, tmp_path: Path) -> None:
    path = browser.screenshot(site.url + "/", tmp_path / "shots" / "page.png", wait_ms=2000)
    assert path == (tmp_path / "shots" / "page.png").resolve()
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000
    # The IHDR chunk carries the window size.
    assert int.from_bytes(data[16:20], "big") == 1280
    assert int.from_bytes(data[20:24], "big") == 1024


def test_profile_is_removed(site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    browser.render(site.url + "/", wait_ms=0)
    assert list(tmp_path.glob("resilience-chromium-*")) == []


def test_unreachable_page_is_an_error_though_chromium_exits_0() -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(StackError, match="ERR_CONNECTION_REFUSED"):
        browser.render(url, wait_ms=0)


def test_page_that_never_loads_times_out(site: Site) -> None:
    with pytest.raises(StackError, match=r"did not finish .* within 3 s"):
        browser.render(site.url + "/hang", wait_ms=0, timeout=3)


def test_missing_chromium_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(browser.ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(StackError, match=r"apt-get install chromium"):
        browser.find_chromium()


def test_chromium_bin_overrides_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    found = browser.find_chromium()
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv(browser.ENV_VAR, found)
    assert browser.find_chromium() == found
    monkeypatch.setenv(browser.ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(StackError, match=r"CHROMIUM_BIN=.*nope is not an executable"):
        browser.find_chromium()


def test_failed_run_names_the_last_line_that_is_not_noise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "chromium"
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'early line' >&2\n"
        "echo '[1:1:0101/000000.000000:FATAL:zygote_host_impl_linux.cc] No usable sandbox!' >&2\n"
        "echo '[1:2:0101/000000.000001:ERROR:dbus/bus.cc:405] Failed to connect to the bus' >&2\n"
        "exit 2\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv(browser.ENV_VAR, str(fake))
    with pytest.raises(StackError, match=r"\(exit 2\): .*FATAL.*No usable sandbox!$"):
        browser.render("http://127.0.0.1:9/", wait_ms=0)
