"""The package an operator installs: the wheel's command, core dependencies only (the drill
rig's and barman-cloud's are extras), and no core module importing an extra at import time."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Packages of the extras (drill, barman), never imported by a core module at import time.
EXTRAS = ("moto", "testcontainers", "brotli", "barman", "psycopg2", "docker")
OPERATOR = ("restore.", "backup.", "cleanup.", "schedule.", "monitor.", "mirror.", "diagnose")
RIG = ("stack.", "drill.", "bench", "lint", "test")


def _core_modules() -> list[str]:
    names = ["tasks", "tasks.program"]
    for path in sorted((ROOT / "resilience").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if module.startswith("resilience.drill") or path.name == "rss_probe.py":
            continue
        names.append(module.removesuffix(".__init__"))
    names += [f"tasks.{p.stem}" for p in sorted((ROOT / "tasks").glob("*.py"))]
    return names


def test_no_core_module_imports_an_extra() -> None:
    """Every module outside the drill rig imports with the extras' packages made unimportable."""
    script = (
        "import importlib, sys\n"
        f"for name in {EXTRAS!r}: sys.modules[name] = None\n"
        f"for module in {_core_modules()!r}: importlib.import_module(module)\n"
        "print('imported')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imported" in done.stdout


def test_program_lists_the_operator_namespaces_only() -> None:
    from tasks.program import operator_namespace

    names = operator_namespace().task_names
    for prefix in OPERATOR:
        assert any(name.startswith(prefix) for name in names), prefix
    for prefix in RIG:
        assert not any(name.startswith(prefix) for name in names), prefix


@pytest.mark.slow
def test_wheel_installs_with_core_dependencies_only(tmp_path: Path) -> None:
    """Build the wheel, install it into a fresh venv without extras (pip's cache or PyPI), and
    run its command."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(wheels)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("baileys_resilience-*.whl")
    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    python = str(target / "bin" / "python")
    installed = subprocess.run(
        [python, "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=tmp_path,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    present = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    ).stdout.lower()
    for package in ("moto", "testcontainers", "barman", "psycopg2", "brotli"):
        assert f"\n{package}==" not in f"\n{present}", package
    listed = subprocess.run(
        [str(target / "bin" / "baileys-resilience"), "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "restore.to-files" in listed.stdout and "backup.run" in listed.stdout
    assert "stack.up" not in listed.stdout and "drill." not in listed.stdout
