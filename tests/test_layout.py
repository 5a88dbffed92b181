"""The shape of the house: the rig depends on the library, never back; one home per block.

Read from the source with `ast`, so a late import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "resilience"
RIG = LIBRARY / "drill"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _library_files() -> list[Path]:
    return [p for p in LIBRARY.rglob("*.py") if RIG not in p.parents]


def test_the_library_never_imports_the_rig() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.startswith("resilience.drill"))
        for p in _library_files()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_tasks_call_the_library_not_the_rig_for_operator_commands() -> None:
    restore = _imports(ROOT / "tasks" / "restore.py")
    assert not any(m.startswith("resilience.drill") for m in restore)


def _defined(name: str) -> list[str]:
    hits = []
    for path in [*LIBRARY.rglob("*.py"), *(ROOT / "tasks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
                hits.append(str(path.relative_to(ROOT)))
    return hits


def test_one_home_per_building_block() -> None:
    assert _defined("Redactor") == ["resilience/infra/redact.py"]
    assert _defined("redact_dsn") == ["resilience/infra/redact.py"]
    assert _defined("wait_until") == ["resilience/infra/waiting.py"]
    assert _defined("atomic_write") == ["resilience/infra/fsutil.py"]
    assert _defined("Journal") == ["resilience/runs/journal.py"]
    assert _defined("Manifest") == ["resilience/files/manifest.py"]
    assert _defined("stage_and_swap") == ["resilience/files/staging.py"]
    assert _defined("read_transaction") == ["resilience/authstate/pgconn.py"]
    assert _defined("insert_raw") == ["resilience/authstate/pgraw.py"]
    assert _defined("replace_company_raw") == ["resilience/authstate/pgraw.py"]
    assert _defined("iso_or_none") == ["resilience/infra/timefmt.py"]
    assert _defined("epoch_iso") == ["resilience/infra/timefmt.py"]
    formats = ("resilience/monitoring/", "resilience/mirror/", "resilience/files/")
    assert [p for p in _defined("_iso") if p.startswith(formats)] == []


def test_the_mode_flags_are_named_in_one_module() -> None:
    named = [
        str(p.relative_to(ROOT))
        for p in LIBRARY.rglob("*.py")
        if '"USE_DATABASE_AUTH_STATE"' in p.read_text()
    ]
    assert named == ["resilience/service/modes.py"]


def test_no_bare_sleep_loops_in_the_library() -> None:
    """Waiting goes through the one helper; `time.sleep` appears nowhere else."""
    sleepers = [
        str(p.relative_to(ROOT))
        for p in LIBRARY.rglob("*.py")
        if "time.sleep(" in p.read_text() and p.name != "waiting.py"
    ]
    assert sleepers == []


def test_one_home_for_the_first_line_of_an_error() -> None:
    assert _defined("first_line") == ["resilience/errors.py"]
    assert _defined("_first_line") == []


def _package_graph() -> dict[str, set[str]]:
    """Which packages of the library import which (the drill rig left out)."""
    packages = {p.name for p in LIBRARY.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    packages.discard(RIG.name)
    graph: dict[str, set[str]] = {name: set() for name in packages}
    for path in _library_files():
        source = path.relative_to(LIBRARY).parts[0]
        if source not in packages:
            continue
        for module in _imports(path):
            parts = module.split(".")
            if parts[0] == "resilience" and len(parts) > 1 and parts[1] in packages - {source}:
                graph[source].add(parts[1])
    return graph


def test_no_import_cycle_between_packages() -> None:
    graph = _package_graph()

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    assert {(a, b) for a in graph for b in graph[a] if a in reach(b)} == set()
    # the file side is used by the switch, backups, the mirror and maintenance, never the reverse
    assert graph["files"] <= {"authstate", "infra"}
    assert "restore" not in graph["backup"] | graph["maintenance"] | graph["mirror"]


#: Modules of the library (the rig included) over MODULE_LINES, each with its one-line reason.
LONG_MODULES: dict[str, str] = {
    "resilience/drill/bench/restore.py": "one bench (export, import, the way back, many companies,"
    " the RTO) whose rounds and raw limits read side by side, one step per function",
}
#: Functions over FUNCTION_LINES ("path:name"), each with its one-line reason.
LONG_FUNCTIONS: dict[str, str] = {}
MODULE_LINES = 500
FUNCTION_LINES = 80


def test_modules_and_functions_stay_small_or_say_why() -> None:
    """One concern per module (about 500 lines at most), named steps per function (about 80):
    a longer one is listed above with its reason, and a listed one that shrank is dropped."""
    long_modules = {}
    long_functions = {}
    for path in LIBRARY.rglob("*.py"):
        name = str(path.relative_to(ROOT))
        source = path.read_text()
        if source.count("\n") > MODULE_LINES:
            long_modules[name] = source.count("\n")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > FUNCTION_LINES:
                    long_functions[f"{name}:{node.name}"] = length
    assert set(long_modules) == set(LONG_MODULES), long_modules
    assert set(long_functions) == set(LONG_FUNCTIONS), long_functions
