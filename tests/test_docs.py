"""README and runbooks stay true to the code: every command they show is a real task with real
flags whose `--help` works, the safe ones run against the embedded stack, every setting is
documented, and every setting they name exists.

Which commands are found. In ```sh blocks, every line that starts with `./run` or with `invoke`
(also `.venv/bin/invoke`; Invoke's own options before the task, such as `--search-root DIR`, are
skipped). In every other fenced block (the runbook's ```text output and ```mermaid decision tree,
```cron lines, the README's layout), every `./run ...` or `invoke ...` inside a line, up to a
comment, a redirection, a quote or a tag. Each is checked: the task exists and takes every flag
shown. `invoke --help TASK` then runs once per distinct task, in-process through Invoke's own
Program on a fresh copy of the namespace taken at import (Invoke pops a task's help texts the
first time it builds its parser): it must exit 0, list every flag the docs show, and give each
option a help text. It is `--help TASK` rather than `TASK --help` because a task with a
positional argument (`bench NAME`) takes a `--help` after it as the argument's value.

Which commands run for real, and why. Only ```sh lines (what an operator types), and only those
that promise to change nothing:

- with `--dry-run` and without `--yes` (`schedule.install`, `schedule.remove`,
  `monitor.install`, `restore.to-files`, `restore.to-postgres`): the flag's promise;
- read-only ones: `stack.status`, `backup.list`, `diagnose`, and `health` with `--once` or
  `--json` (the live view never ends);
- dry runs by omission: `cleanup.keys`, `cleanup.legacy`, `cleanup.buffer-form` and
  `backup.prune` without `--yes`.

Never run: anything with `--yes`, `backup.run`, `backup.validate`, `backup.restore` (without
`--yes` it still restores into a scratch database), snapshots and exports, `stack.up` and
`stack.down`, drills, benches, lint, test.

They run as `invoke` with this project's tasks, in subprocesses (an operator's process each),
several at once, each in a temporary working directory; commands that differ only in their
flags' values (`diagnose --company acme`, `diagnose --company demo`) run once. Their settings are
the operator's for the session's embedded stack, as `RESILIENCE_*` variables: its service DSN,
PM2 and alert fakes; both regions in fresh buckets; snapshots, spool, validation log and run
records in the temporary directory; a monitor port nobody serves, so `health` computes
directly; plus the stack's own `RESILIENCE_STACK_DIR` for `stack.status`. That stack runs no
service (`restore.to-*` preflights refuse with 2: no service directory) and holds whatever other
tests left, so a safe command may fail for a reason the README documents (`diagnose` 11-14, or 2
for an unknown company; `health` 1 or 2): each must exit with a code of its own documented set
(at most 0-6 and 11-14), print no traceback and no secret of its settings. Those that must
succeed on the stack do: `stack.status` (local backend), `backup.list`,
`monitor.install --dry-run`, the dry runs by omission, and `schedule.* --dry-run` where
`crontab` exists (else exit 2, saying so).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from invoke.collection import Collection
from invoke.program import Program
from psycopg.conninfo import conninfo_to_dict

from resilience.config import DrillSettings, settings_as_env
from resilience.drill.stack import Stack
from resilience.drill.standin.deploy import backup_settings, operator_settings
from resilience.infra.pm2 import Pm2, find_pm2
from resilience.infra.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Invoke's own options that take a value (skipped with it before the task name).
CORE_WITH_VALUE = {
    "--search-root", "-r", "--collection", "-c", "--config", "-f", "--command-timeout", "-T",
    "--hide", "--list-depth", "-D", "--list-format", "-F", "--print-completion-script",
}  # fmt: skip
#: Invoke's own options without a value; `--list` and `--version` name no task.
CORE_FLAGS = {
    "--list", "-l", "--help", "-h", "--version", "-V", "--complete", "--debug", "-d", "--dry",
    "-R", "--echo", "-e", "--pty", "-p", "--warn-only", "-w", "--write-pyc",
    "--prompt-for-sudo-password",
}  # fmt: skip
#: README, "Exit codes": 0-8, and diagnose's 11-14.
DOCUMENTED_EXIT_CODES = frozenset({0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 14})
#: Per task, the codes a safe run on the stack may end with (else the documented set).
EXPECTED_EXIT_CODES = {
    "diagnose": frozenset({0, 2, 11, 12, 13, 14}),
    "health": frozenset({0, 1, 2}),
    "stack.status": frozenset({0, 3}),
}
READ_ONLY = {"stack.status", "backup.list", "diagnose"}
DRY_WITHOUT_YES = {"cleanup.keys", "cleanup.legacy", "cleanup.buffer-form", "backup.prune"}
# schedule.install writes the PM2 ecosystem file alone where there is no crontab
MUST_SUCCEED = {"backup.list", "monitor.install", "schedule.install", *DRY_WITHOUT_YES}
NEEDS_CRONTAB = {"schedule.remove"}


@dataclass(frozen=True)
class Command:
    """One documented command: the task (None: an Invoke option such as `--list`) and what
    follows it."""

    doc: str
    block: str  # the fence's language ("sh", "text", "mermaid", "")
    text: str  # as written, comments and redirections left out
    task: str | None
    args: tuple[str, ...]

    @property
    def flags(self) -> list[str]:
        """Flag names as written, without `=value` and trailing punctuation of prose."""
        return [a.split("=", 1)[0].rstrip(",.;:") for a in self.args if a.startswith("-")]

    @property
    def run_key(self) -> tuple[str, ...]:
        """Commands that differ only in their flags' values run once (`diagnose --company acme`
        and `--company demo` take the same path on the stack)."""
        return (self.task or "", *sorted(set(self.flags)))

    @property
    def safe(self) -> bool:
        if self.block != "sh" or self.task is None or "--yes" in self.flags:
            return False
        if "--dry-run" in self.flags or self.task in READ_ONLY | DRY_WITHOUT_YES:
            return True
        return self.task == "health" and bool({"--once", "--json"} & set(self.flags))

    def __str__(self) -> str:
        return f"{self.doc}: {self.text}"


def _namespace() -> Collection:
    import tasks

    ns = tasks.ns
    assert isinstance(ns, Collection)
    return ns


def _blocks(text: str) -> list[tuple[str, list[str]]]:
    """Fenced blocks (also indented ones, in lists): (language, stripped lines)."""
    out: list[tuple[str, list[str]]] = []
    lang: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            if lang is None:
                lang, lines = stripped[3:].strip(), []
            else:
                out.append((lang, lines))
                lang = None
        elif lang is not None:
            lines.append(stripped)
    return out


def _is_program(word: str) -> bool:
    return word == "./run" or Path(word).name == "invoke"


def _parse(doc: str, block: str, text: str) -> Command | None:
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    if not words or not _is_program(words[0]):
        return None
    rest = words[1:]
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option in ("--help", "-h"):
            break  # `invoke --help TASK`: the task's help
        if option in CORE_WITH_VALUE:
            rest = rest[1:]
        elif option in CORE_FLAGS or option.split("=", 1)[0] in CORE_WITH_VALUE:
            continue
        else:
            return Command(doc, block, text, f"(unknown Invoke option {option})", ())
    if not rest:
        return Command(doc, block, text, None, ())
    return Command(doc, block, text, rest[0], tuple(rest[1:]))


SH_COMMENT = re.compile(r"(^|\s)#.*$")
#: `./run ...` or `invoke ...` inside a line of a non-sh block, up to a comment, a redirection,
#: a quote, a tag or a closing bracket.
INLINE = re.compile(r"(?:^|(?<=[\s>\"'`(\[]))((?:\./run|(?:\S*/)?invoke)\s+[^#\"'`<>|&;)\]]+)")


def _commands(doc: Path) -> list[Command]:
    out: list[Command] = []
    for lang, lines in _blocks(doc.read_text()):
        for line in lines:
            if lang == "sh":
                found = [SH_COMMENT.sub("", line).strip()]
            else:
                found = [m.strip() for m in INLINE.findall(line)]
            for text in found:
                command = _parse(doc.name, lang, text)
                if command is not None:
                    out.append(command)
    return out


COMMANDS = [command for doc in DOCS for command in _commands(doc)]
TASKS = sorted(
    {c.task for c in COMMANDS if c.task is not None and c.task in _namespace().task_names}
)
SAFE = list({c.text: c for c in COMMANDS if c.safe}.values())
#: One run per task and set of flags: the first command of the docs that has them.
RUNS: dict[tuple[str, ...], Command] = {}
for _command in SAFE:
    RUNS.setdefault(_command.run_key, _command)
TO_RUN = list(RUNS.values())


def test_docs_show_commands() -> None:
    assert len([c for c in COMMANDS if c.block == "sh"]) >= 8
    assert len(SAFE) >= 5


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_every_documented_command_is_a_real_task_with_real_flags(command: Command) -> None:
    ns = _namespace()
    if command.task is None:
        return  # an Invoke option alone (`./run --list`): checked by the parser above
    assert command.task in ns.task_names, f"{command.doc}: {command.task} is not a task"
    task = ns[command.task]
    accepted = {
        ("--" if len(n) > 1 else "-") + n.replace("_", "-")
        for arg in task.get_arguments()
        for n in arg.names
    }
    for flag in command.flags:
        assert flag in accepted, (
            f"{command.doc}: {command.task} has no flag {flag} (has {sorted(accepted)})"
        )


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str
    seconds: float


def _invoke(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> Ran:
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    return Ran(done.returncode, done.stdout, done.stderr, time.monotonic() - began)


#: The namespace as imported, before any parser was built from it (see :func:`_help`).
PRISTINE = copy.deepcopy(_namespace())


def _help(task: str) -> Ran:
    """`invoke --help TASK` through Invoke's own Program, in-process, on a fresh copy of the
    namespace: Invoke pops a task's help texts the first time it builds its parser."""
    out, err = io.StringIO(), io.StringIO()
    began, code = time.monotonic(), 0
    program = Program(namespace=copy.deepcopy(PRISTINE), binary="invoke")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            program.run(["invoke", "--help", task], exit=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Ran(code, out.getvalue(), err.getvalue(), time.monotonic() - began)


OPTION_LINE = re.compile(r"^  (-{1,2}[\w-]+)(?:[= ][A-Z]+)?(?:\s{2,}(\S.*))?$")


@pytest.mark.parametrize("task", TASKS)
def test_help_of_every_documented_task_shows_its_documented_flags(task: str) -> None:
    ran = _help(task)
    assert ran.code == 0, f"invoke --help {task}: exit {ran.code}: {ran.err[-500:]}"
    assert "Traceback" not in ran.out + ran.err
    assert "Usage: " in ran.out and task in ran.out
    options: dict[str, str | None] = {}
    if "Options:" in ran.out:
        for line in ran.out.split("Options:", 1)[1].splitlines():
            if match := OPTION_LINE.match(line):
                options[match.group(1)] = match.group(2)
    shown = {flag for c in COMMANDS if c.task == task for flag in c.flags}
    assert shown <= set(options), f"{task}: the docs show {sorted(shown - set(options))}"
    undescribed = sorted(name for name, text in options.items() if not text)
    assert undescribed == [], f"{task}: options without a help text: {undescribed}"


@pytest.fixture(scope="module")
def operator_env(
    stack: Stack, settings: DrillSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, str], Path, list[str]]]:
    """The environment an operator of this stack would have: (env, work dir, its secrets)."""
    work = tmp_path_factory.mktemp("docs-commands")
    ep = stack.endpoints
    pm2 = Pm2(find_pm2(settings.tools_dir), home=Path(ep.pm2_home) if ep.pm2_home else None)
    operator = backup_settings(stack, operator_settings(stack, settings, pm2), work)
    operator = operator.model_copy(
        update={
            "snapshot_dir": work / "snapshots",
            "monitor_port": free_port(),  # no monitor answers there: health computes directly
            "monitor_url": None,
            "monitor_state_file": work / "monitor" / "state.json",
        }
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RESILIENCE_")}
    env.update(settings_as_env(operator))
    env.update(settings_as_env(settings, ["backend", "stack_dir", "tools_dir"]))
    yield env, work, _secrets(operator.secret_values() + settings.secret_values())


def _secrets(values: list[str]) -> list[str]:
    """The secret values and the passwords inside the DSNs among them; not the fixed words of
    fakes (an alphabetic S3 key such as the project's name shows up in innocent output)."""
    out = list(values)
    for value in values:
        try:
            out.append(str(conninfo_to_dict(value).get("password") or ""))
        except psycopg.ProgrammingError:
            continue
    return sorted({s for s in out if len(s) >= 8 and not s.isalpha()})


@pytest.fixture(scope="module")
def safe_runs(
    operator_env: tuple[dict[str, str], Path, list[str]],
) -> dict[tuple[str, ...], Ran]:
    """Every safe documented command, run at once, each in a working directory of its own."""
    env, work, _ = operator_env

    def run(number_and_command: tuple[int, Command]) -> Ran:
        number, command = number_and_command
        cwd = work / f"cwd-{number}"
        cwd.mkdir()
        assert command.task is not None
        return _invoke([command.task, *command.args], env, cwd)

    with ThreadPoolExecutor(max_workers=6) as pool:
        done = pool.map(run, enumerate(TO_RUN))
        return {c.run_key: ran for c, ran in zip(TO_RUN, done, strict=True)}


@pytest.mark.stack
@pytest.mark.parametrize("command", SAFE, ids=str)
def test_safe_documented_commands_run_against_the_stack(
    command: Command,
    safe_runs: dict[tuple[str, ...], Ran],
    operator_env: tuple[dict[str, str], Path, list[str]],
    settings: DrillSettings,
) -> None:
    ran = safe_runs[command.run_key]
    said = ran.out + ran.err
    where = f"{command} (ran as {RUNS[command.run_key].text!r}): exit {ran.code}: {said[-800:]}"
    assert "Traceback" not in said, where
    assert ran.code in EXPECTED_EXIT_CODES.get(command.task or "", DOCUMENTED_EXIT_CODES), where
    assert not [s for s in operator_env[2] if s in said], f"{command}: a secret in the output"
    if command.task in NEEDS_CRONTAB and shutil.which("crontab") is None:
        assert ran.code == 2 and "crontab not found" in ran.err, where
    elif _must_succeed(command, settings.backend):
        assert ran.code == 0, where


def _must_succeed(command: Command, backend: str) -> bool:
    if command.task == "stack.status":
        return backend == "local"  # another backend's stack is not this process's to know
    return command.task in MUST_SUCCEED | NEEDS_CRONTAB


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [f for f in DrillSettings.model_fields if f"RESILIENCE_{f.upper()}" not in readme]
    assert missing == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_setting_named_in_the_docs_exists(doc: Path) -> None:
    known = {f"RESILIENCE_{f.upper()}" for f in DrillSettings.model_fields}
    named = set(re.findall(r"RESILIENCE_[A-Z0-9_]+", doc.read_text()))
    assert named - known == set()


def test_the_runbook_draws_its_tree_and_says_how_to_confirm_each_scenario() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    [diagram] = [lines for lang, lines in _blocks(runbook) if lang == "mermaid"]
    tree = "\n".join(diagram)
    assert diagram[0].startswith("flowchart") and "./run diagnose" in tree
    for code in ("exit 2", "exit 11", "exit 12", "exit 13", "exit 14", "exit 0"):
        assert code in tree, f"the diagram has no branch ending in {code}"
    sections = re.split(r"^## ", runbook, flags=re.M)
    for number in (1, 2, 3, 4):
        [section] = [s for s in sections if s.startswith(f"Scenario {number}:")]
        assert f"How to confirm success (scenario {number})" in section
        assert "./run diagnose" in section and "./run health --once" in section


#: What the docs and the code may not lean on: a file outside the repository (the product
#: brief the project grew from), or its sections. The domain facts live in docs/domain.md.
OUTSIDE = re.compile(r"\.\./shared|\bbrief\.md\b|\bbrief §|\bbrief\b \(|\(brief\b")


def test_nothing_points_outside_the_repository() -> None:
    sources = [*DOCS, *sorted((ROOT / "resilience").rglob("*.py")), *(ROOT / "tasks").glob("*.py")]
    sources += sorted((ROOT / "resilience").rglob("*.sql"))
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sources
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert found == []


def test_every_domain_section_the_docs_and_code_name_exists() -> None:
    """`docs/domain.md §N` names a section of docs/domain.md, numbered `## N.`."""
    domain = (ROOT / "docs" / "domain.md").read_text()
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", domain, flags=re.M)}
    sources = [*DOCS, *sorted((ROOT / "resilience").rglob("*.py")), *(ROOT / "tasks").glob("*.py")]
    named: set[int] = set()
    for path in sources:
        for ref in re.findall(r"domain\.md`? (§[\d§, -]+)", path.read_text()):
            named |= {int(n) for n in re.findall(r"§(\d+)", ref)}
    assert named and named <= sections
    readme = (ROOT / "README.md").read_text()
    assert "`docs/domain.md`" in readme.split("## Two commands")[0]  # the README points there
