"""What the tool tells the operator names the command they type: `./run TASK` in a clone,
`baileys-resilience TASK` where the package is installed (its console script says so); and
`--list` shows every task's first sentence whole."""

from __future__ import annotations

import inspect

import pytest
from invoke.collection import Collection
from invoke.util import helpline

from resilience.backup.barman import find_command
from resilience.config import Settings
from resilience.diagnose import tree
from resilience.errors import ConfigError
from resilience.infra.commandline import PROGRAM_VARIABLE, operator_command
from tasks import ns
from tasks.program import operator_namespace


@pytest.mark.parametrize(
    ("program", "typed"), [(None, "./run"), ("baileys-resilience", "baileys-resilience")]
)
def test_hints_name_the_command_the_operator_types(
    monkeypatch: pytest.MonkeyPatch, program: str | None, typed: str
) -> None:
    if program is None:
        monkeypatch.delenv(PROGRAM_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(PROGRAM_VARIABLE, program)
    assert operator_command("check") == f"{typed} check"
    run, preview = tree._switch("acme")
    assert run == f"{typed} restore.to-files --company acme --yes"
    assert preview == f"{typed} restore.to-files --company acme --dry-run"
    assert tree._rewrite_forms("acme", "base64")[0].startswith(f"{typed} cleanup.buffer-form ")
    with pytest.raises(ConfigError) as info:
        find_command("barman-cloud-that-is-not-there", Settings())
    if program is None:
        assert "run ./run, which installs barman[cloud]" in str(info.value)
    else:
        assert "pipx install 'WHEEL[barman]'" in str(info.value)


def _tasks(space: Collection) -> list[tuple[str, str]]:
    return [(name, inspect.cleandoc(space[name].__doc__ or "")) for name in space.task_names]


@pytest.mark.parametrize(
    ("name", "doc"),
    sorted({*_tasks(ns), *_tasks(operator_namespace())}),
    ids=lambda v: v if "\n" not in v and len(v) < 40 else "",
)
def test_list_shows_every_task_first_sentence_whole(name: str, doc: str) -> None:
    """Invoke's `--list` (and `baileys-resilience --list`) shows a docstring's first line only:
    that line is a whole sentence (the details go in the next paragraph, for `--help TASK`)."""
    shown = helpline(type("T", (), {"__doc__": doc}))
    assert shown, f"{name} has no docstring"
    assert shown.rstrip().endswith((".", "?", "!")), f"{name}: --list cuts {shown!r}"
    assert len(doc.split("\n\n")[0].splitlines()) == 1, f"{name}: its first paragraph is cut"
