"""`./run`: a second run touches no network; a prerequisite it cannot install is one clear line."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NO_NETWORK = {
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "npm_config_registry": "http://127.0.0.1:9/",
    "GOPROXY": "off",
    "GOFLAGS": "-mod=mod",
}


def _installed() -> bool:
    return (ROOT / ".venv" / ".stamp").exists() and (ROOT / ".tools" / "node" / ".stamp").exists()


pytestmark = pytest.mark.skipif(not _installed(), reason="needs a bootstrapped checkout (./run)")


def test_second_run_needs_no_network() -> None:
    result = subprocess.run(
        [str(ROOT / "run"), "--version"],
        env={**os.environ, **NO_NETWORK},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Invoke" in result.stdout
    assert "installing" not in result.stderr and "building" not in result.stderr


def _copy(tmp_path: Path) -> None:
    """A copy of the project whose Python part is present (the venv of this checkout)."""
    for name in ("run", "pyproject.toml", "constraints.txt"):
        shutil.copy2(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "tools", tmp_path / "tools")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")


def test_operator_tasks_need_no_rig(tmp_path: Path) -> None:
    """`./run restore.export` on a clone with no .tools and no `go` on PATH: the rig's parts
    (PostgreSQL server, Chromium, Toxiproxy, Node tools) are not asked for."""
    _copy(tmp_path)
    shutil.copytree(ROOT / "tasks", tmp_path / "tasks")
    result = subprocess.run(
        [str(tmp_path / "run"), "restore.export", "--help"],
        env={**os.environ, **NO_NETWORK, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--company" in result.stdout
    assert result.stderr == ""
    assert not (tmp_path / ".tools").exists()


def test_missing_toxiproxy_without_go_is_one_clear_line(tmp_path: Path) -> None:
    """A rig task on a copy whose Node part is present, but no toxiproxy-server, on a PATH
    without `go`."""
    _copy(tmp_path)
    (tmp_path / ".tools").mkdir()
    (tmp_path / ".tools" / "node").symlink_to(ROOT / ".tools" / "node")
    result = subprocess.run(
        [str(tmp_path / "run"), "stack.status"],
        env={**os.environ, **NO_NETWORK, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "toxiproxy-server missing and 'go' not found" in lines[0]
    assert "install Go" in lines[0]
