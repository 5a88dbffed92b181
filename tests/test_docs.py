"""README and runbooks stay true to the code: every command they show is a real task with real
flags, every setting is documented, and every setting they name exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from invoke import Collection

from resilience.config import DrillSettings as Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _namespace() -> Collection:
    import tasks

    ns = tasks.ns
    assert isinstance(ns, Collection)
    return ns


def _commands(doc: Path) -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", doc.read_text(), re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line.split("#")[0].strip() for line in lines if line.startswith("./run ")]


COMMANDS = [(doc.name, cmd) for doc in DOCS for cmd in _commands(doc)]


def test_docs_show_commands() -> None:
    assert len(COMMANDS) >= 8


@pytest.mark.parametrize(("doc", "command"), COMMANDS)
def test_every_documented_command_is_a_real_task_with_real_flags(doc: str, command: str) -> None:
    ns = _namespace()
    words = shlex.split(command)[1:]
    name, flags = words[0], [w for w in words[1:] if w.startswith("--")]
    assert name in ns.task_names, f"{doc}: {name} is not a task"
    task = ns[name]
    accepted = {"--" + n for arg in task.get_arguments() for n in arg.names if len(n) > 1}
    for flag in flags:
        assert flag in accepted, f"{doc}: {name} has no flag {flag} (has {sorted(accepted)})"


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [f for f in Settings.model_fields if f"RESILIENCE_{f.upper()}" not in readme]
    assert missing == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_setting_named_in_the_docs_exists(doc: Path) -> None:
    known = {f"RESILIENCE_{f.upper()}" for f in Settings.model_fields}
    named = set(re.findall(r"RESILIENCE_[A-Z0-9_]+", doc.read_text()))
    assert named - known == set()
