"""The Buffer form rows are written in (RESILIENCE_DB_BUFFER_FORM) on the embedded stack: how a
company's rows are counted per form, the import's choice (auto: the majority, the minority
reported and left as it is), the rewrite command, diagnose's report, the legacy moves, and real
Baileys' BufferJSON.reviver over what the way back wrote for a company whose rows are base64."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from task_runner import run_task

from resilience.authstate import pgraw
from resilience.authstate.bufferform import FormCounts, choose, count_forms, pinned
from resilience.authstate.codec import Style, decode, loads
from resilience.authstate.dataset import Dataset, generate
from resilience.authstate.filestore import FileAuthStore
from resilience.authstate.pgconn import Conn
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import view_of
from resilience.config import Settings, load_settings
from resilience.diagnose.integrity import check_integrity
from resilience.drill.stack import Stack
from resilience.errors import InputError
from resilience.files.export import export_company
from resilience.files.importer import import_company
from resilience.maintenance import legacy
from resilience.maintenance.bufferform import counted, rewrite_buffer_form, rewrite_company
from tasks import cleanup as cleanup_tasks

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[1]
REVIVE = ROOT / "tests" / "node" / "revive_rows.mjs"
BAILEYS = ROOT / ".tools" / "node" / "node_modules" / "@whiskeysockets" / "baileys"
NODE = shutil.which("node")
SOURCE = "postgresql://svc@db.example:5432/auth"
USER = "79001112233"
NEW: dict[tuple[str, str], Any] = {
    ("session", f"{USER}.0"): b"\x05" * 300,
    ("pre-key", "5000"): {"private": b"\x08" * 32, "public": b"\x09" * 32},
    ("tctoken", USER): {"token": b"\x0a" * 24, "timestamp": "1700000000"},
    ("lid-mapping", USER): "123456789012345",
}


@pytest.fixture
def operator(stack: Stack, tmp_path: Path) -> Settings:
    return load_settings(
        env_file=None,
        service_dsn=stack.endpoints.service_dsn,
        runs_dir=tmp_path / "runs",
        db_connect_timeout=5,
    )


def _seed(store: PgAuthStore, company: str, n: int, style: Any, creds: Style) -> Dataset:
    """A generated company whose key rows are in ``style(index)``, its creds in ``creds``."""
    data = generate(company, n)
    rows = [(record, style(i)) for i, record in enumerate(data.keys)]
    pgraw.insert_raw(store.conn, company, data.creds, rows, creds_style=creds)
    return data


def _texts(conn: Conn, company: str) -> dict[str, str]:
    """Every row of the company as stored (JSON text), creds under ``creds``."""
    rows = conn.execute(
        "SELECT key_type || '/' || key_id, value::text FROM whatsapp_keys WHERE company_id = %s",
        (company,),
    ).fetchall()
    creds = conn.execute(
        "SELECT creds::text FROM whatsapp_auth WHERE company_id = %s", (company,)
    ).fetchone()
    return {**dict(rows), **({"creds": creds[0]} if creds else {})}


def _digest(store: PgAuthStore, company: str) -> str:
    return view_of(company, store.load_creds(company), store.records(company)).digest().digest


def _file_mode_writes(root: Path, company: str, data: Dataset) -> list[tuple[str, str]]:
    """What the service does in file mode: new keys, two keys changed, one deleted."""
    files = FileAuthStore(root)
    for (key_type, key_id), value in NEW.items():
        files.write_key(company, key_type, key_id, value)
    sessions = [r for r in data.keys if r.key_type == "session"]
    changed = [(r.key_type, r.key_id) for r in sessions[:2]]
    for key_type, key_id in changed:
        files.write_key(company, key_type, key_id, {"changed": key_id.encode()})
    files.write_key(company, sessions[2].key_type, sessions[2].key_id, None)
    return changed


def _form_of(text: str) -> str:
    """The form of one stored value, read by hand (what the server's count must agree with)."""
    array = '"data": [' in text
    string = '"data": "' in text
    return "mixed" if array and string else "array" if array else "base64" if string else "none"


# --- counting ----------------------------------------------------------------------------------


def test_rows_are_counted_per_form(store: PgAuthStore, company: str, admin: Conn) -> None:
    rows = {
        ("session", "a"): {"type": "Buffer", "data": [1, 2]},
        ("session", "b"): {"type": "Buffer", "data": "AQI="},
        ("pre-key", "1"): {
            "private": {"type": "Buffer", "data": [1]},
            "public": {"type": "Buffer", "data": "AQ=="},
        },
        ("pre-key", "2"): {"private": {"buffer": True, "value": "AQI="}},  # older Baileys
        ("lid-mapping", "x"): "123",
        ("device-list", "y"): ["0", "1"],
        ("tctoken", "z"): {"token": '"data": [1]', "also": '"data": "x"'},  # text, no Buffer
    }
    for (key_type, key_id), value in rows.items():
        admin.execute(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) "
            "VALUES (%s, %s, %s, %s::jsonb)",
            (company, key_type, key_id, json.dumps(value)),
        )
    store.save_creds(company, {"noiseKey": b"\x01"}, style="base64")
    counts = store.buffer_form_counts(company)
    assert counts == FormCounts({"array": 1, "base64": 1, "mixed": 2, "none": 3}, "base64")
    assert counts.rows == {"array": 1, "base64": 2, "mixed": 2, "none": 3}
    assert counts.majority() == "base64"
    assert counts.unreadable("base64") == {"array": 1, "mixed": 2}
    assert counts.unreadable("array") == {"base64": 2, "mixed": 2}
    auto = choose("auto", counts)
    assert (auto.style, auto.minority) == ("base64", {"array": 1, "mixed": 2})
    assert choose("array", counts).counts is None and choose("array").style == "array"
    assert choose("auto").style == "base64"  # a company without rows: as BufferJSON writes
    with pytest.raises(InputError, match="unknown Buffer form 'hex'"):
        pinned("hex")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown Buffer form"):
        PgAuthStore(admin, buffer_form="hex")  # type: ignore[arg-type]


# --- the import --------------------------------------------------------------------------------


def test_the_way_back_for_a_base64_company_is_read_by_baileys_own_reviver(
    store: PgAuthStore, conn: Conn, company: str, root: Path
) -> None:
    """Rows base64 (as a service on BufferJSON writes them), export, the service writes in
    file mode, the way back: every row the import wrote is base64, and Baileys 7's
    BufferJSON.reviver, run in node over every row, revives every Buffer as a Buffer."""
    if NODE is None or not (BAILEYS / "lib" / "index.js").is_file():
        pytest.skip("node and Baileys are needed (./run installs Baileys into .tools/node)")
    data = _seed(store, company, 300, lambda _i: "base64", "base64")
    export_company(store, root, company, source=SOURCE)
    changed = _file_mode_writes(root, company, data)
    FileAuthStore(root).write_creds(company, dict(data.creds, accountSyncCounter=9))

    result = import_company(store, root, company)

    assert result.upserted >= len(NEW) + len(changed)  # and the legacy rows' real names
    assert result.buffer_form is not None
    assert (result.buffer_form["form"], result.buffer_form["minority"]) == ("base64", {})
    texts = _texts(conn, company)
    assert {_form_of(t) for t in texts.values()} == {"base64", "none"}
    assert count_forms(conn, company).unreadable("base64") == {}

    rows_file = root / "rows.json"
    rows_file.write_text(json.dumps([{"ref": r, "text": t} for r, t in texts.items()]))
    done = subprocess.run(
        [str(NODE), str(REVIVE), str(BAILEYS), str(rows_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    revived = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(revived) == set(texts)
    buffers = 0
    for ref, text in texts.items():
        ours = loads(text, where=ref)
        assert revived[ref]["fakeBuffers"] == [], ref  # no Buffer left a plain object
        assert sorted(revived[ref]["buffers"]) == sorted(_byte_paths(ours, "value")), ref
        assert decode(revived[ref]["value"]) == ours, ref  # the same bytes
        buffers += len(revived[ref]["buffers"])
    assert buffers > len(texts)  # sessions, pre-keys, creds: Buffers were there to revive


def _byte_paths(value: Any, path: str) -> list[str]:
    if isinstance(value, bytes):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _byte_paths(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _byte_paths(v, f"{path}[{i}]")]
    return []


def test_an_empty_company_gets_base64_unless_the_form_is_pinned(
    store: PgAuthStore, conn: Conn, company: str, root: Path
) -> None:
    _seed(store, company, 120, lambda _i: "array", "array")
    exported = export_company(store, root, company, source=SOURCE)
    pgraw.delete_company(store.conn, company)  # a database lost and rebuilt empty
    result = import_company(store, root, company)
    assert result.buffer_form is not None and result.buffer_form["form"] == "base64"
    assert {_form_of(t) for t in _texts(conn, company).values()} == {"base64", "none"}
    assert _digest(store, company) == exported.digest

    pgraw.delete_company(store.conn, company)
    pinned_array = PgAuthStore(conn, buffer_form="array")
    result = import_company(pinned_array, root, company)
    assert result.buffer_form == {
        "setting": "array",
        "form": "array",
        "counts": None,
        "minority": {},
    }
    assert {_form_of(t) for t in _texts(conn, company).values()} == {"array", "none"}
    assert _digest(store, company) == exported.digest


def test_a_mixed_company_under_auto_the_majority_wins_and_the_minority_is_reported(
    store: PgAuthStore, conn: Conn, company: str, root: Path
) -> None:
    # keys: two of three base64; creds array
    data = _seed(store, company, 300, lambda i: "array" if i % 3 == 0 else "base64", "array")
    before = _texts(conn, company)
    counts = count_forms(conn, company)
    assert counts.majority() == "base64" and counts.rows["array"] > 50
    export_company(store, root, company, source=SOURCE)
    changed = _file_mode_writes(root, company, data)

    dry = import_company(store, root, company, dry_run=True)
    assert dry.buffer_form is not None and dry.buffer_form["form"] == "base64"
    result = import_company(store, root, company)

    assert result.buffer_form is not None
    assert result.buffer_form["form"] == "base64"
    assert result.buffer_form["minority"] == {"array": counts.rows["array"]}
    after = _texts(conn, company)
    written = {f"{t}/{i}" for t, i in [*NEW, *changed]}
    assert {_form_of(after[ref]) for ref in written} <= {"base64", "none"}
    # every row written is base64; an unchanged one is not rewritten for its form
    kept = {r for r in before.keys() & after.keys() if loads(before[r]) == loads(after[r])}
    rewritten = set(after) - kept
    assert written <= rewritten
    assert {_form_of(after[r]) for r in rewritten} <= {"base64", "none"}
    assert all(after[r] == before[r] for r in kept)
    assert sum(_form_of(after[r]) == "array" for r in kept) > 50  # the minority, as it was
    assert "creds" in kept and _form_of(after["creds"]) == "array"

    # pinned: the rows written are in the pinned form, even against the majority
    FileAuthStore(root).write_key(company, *changed[0], {"again": b"\x01\x02"})
    pinned_array = PgAuthStore(conn, buffer_form="array")
    again = import_company(pinned_array, root, company)
    assert again.upserted == 1
    assert _form_of(_texts(conn, company)["/".join(changed[0])]) == "array"


# --- the rewrite command -----------------------------------------------------------------------


def test_the_rewrite_goes_in_batches_keeps_times_and_decoded_values(
    store: PgAuthStore, admin: Conn, company: str
) -> None:
    _seed(store, company, 300, lambda i: "array" if i % 2 else "base64", "array")
    times = admin.execute(
        "SELECT key_type, key_id, created_at, updated_at, expires_at FROM whatsapp_keys "
        "WHERE company_id = %s ORDER BY 1, 2",
        (company,),
    ).fetchall()
    creds_times = admin.execute(
        "SELECT created_at, updated_at FROM whatsapp_auth WHERE company_id = %s", (company,)
    ).fetchall()
    digest = _digest(store, company)
    texts = _texts(admin, company)
    pending = sum(1 for r, t in texts.items() if _form_of(t) == "array" and r != "creds")
    assert pending > 100

    dry = rewrite_company(admin, company, "base64", dry_run=True)
    assert (dry.pending, dry.rewritten, dry.done) == (pending + 1, 0, False)  # + the creds
    assert _texts(admin, company) == texts

    done = rewrite_company(admin, company, "base64", batch_size=40)
    assert (done.rewritten, done.creds_rewritten, done.done) == (pending, True, True)
    assert done.batches == -(-pending // 40)
    assert count_forms(admin, company).unreadable("base64") == {}
    assert _digest(store, company) == digest  # what Baileys sees did not change
    assert (
        admin.execute(
            "SELECT key_type, key_id, created_at, updated_at, expires_at FROM whatsapp_keys "
            "WHERE company_id = %s ORDER BY 1, 2",
            (company,),
        ).fetchall()
        == times
    )
    assert (
        admin.execute(
            "SELECT created_at, updated_at FROM whatsapp_auth WHERE company_id = %s", (company,)
        ).fetchall()
        == creds_times
    )
    rerun = rewrite_company(admin, company, "base64", batch_size=40)
    assert (rerun.pending, rerun.rewritten, rerun.batches) == (0, 0, 0)


def test_the_command_and_its_task(
    operator: Settings,
    stack: Stack,
    store: PgAuthStore,
    admin: Conn,
    company: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _seed(store, company, 80, lambda i: "array" if i % 4 == 0 else "base64", "base64")
    with pytest.raises(InputError, match="contradict"):
        rewrite_buffer_form(operator, company_id=company, yes=True, dry_run=True)
    first = counted(admin, company, "auto")
    assert first.choice.style == "base64" and first.pending > 0

    env = {
        "RESILIENCE_SERVICE_DSN": stack.endpoints.service_dsn,
        "RESILIENCE_RUNS_DIR": str(tmp_path / "runs"),
    }
    code, out, err = run_task(
        cleanup_tasks.buffer_form, env, tmp_path, monkeypatch, capsys, company=company, json=True
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["dry_run"] is True and doc["pending"] == first.pending and doc["rewritten"] == 0
    assert count_forms(admin, company) == first.before  # the dry run changed nothing

    code, out, err = run_task(
        cleanup_tasks.buffer_form,
        env,
        tmp_path,
        monkeypatch,
        capsys,
        company=company,
        form="array",
        yes=True,
    )
    assert code == 0, err
    assert "rows rewritten" in out and "run record:" in out
    assert stack.endpoints.service_dsn not in out + err
    assert count_forms(admin, company).unreadable("array") == {}

    code, _out, err = run_task(
        cleanup_tasks.buffer_form, env, tmp_path, monkeypatch, capsys, company=company, form="hex"
    )
    assert code == 2 and "--form must be auto, array or base64" in err and "\n" not in err.strip()


# --- diagnose and the legacy moves ---------------------------------------------------------------


def test_integrity_reports_rows_the_service_cannot_read_when_the_form_is_pinned(
    store: PgAuthStore, admin: Conn, company: str
) -> None:
    _seed(store, company, 60, lambda i: "array" if i % 5 == 0 else "base64", "base64")
    counts = count_forms(admin, company)
    found = check_integrity(admin, company, "base64")
    assert not found.ok
    assert found.unreadable == {"array": counts.rows["array"]}
    assert found.to_dict()["unreadable"] == found.unreadable
    auto = check_integrity(admin, company, "auto")
    assert auto.ok and auto.unreadable == {}  # auto counts, never refuses
    assert auto.buffer_forms == counts.to_dict()
    rewrite_company(admin, company, "base64")
    assert check_integrity(admin, company, "base64").ok


def test_the_monitors_data_checks_count_them_too(
    operator: Settings, store: PgAuthStore, admin: Conn, company: str
) -> None:
    """The monitor's integrity check is diagnose's data walk over every company (scan_data):
    with the form pinned it finds this company's array rows as scenario 2 evidence."""
    from resilience.diagnose.tree import scan_data

    _seed(store, company, 40, lambda i: "array" if i % 2 else "base64", "base64")
    arrays = count_forms(admin, company).rows["array"]
    found = scan_data(admin, operator.model_copy(update={"db_buffer_form": "base64"}))
    assert found.scenario == 2
    [mine] = [i for i in found.integrity if i.company_id == company]
    assert mine.unreadable == {"array": arrays} and not mine.ok
    relaxed = scan_data(admin, operator)
    [mine] = [i for i in relaxed.integrity if i.company_id == company]
    assert mine.ok and mine.unreadable == {}


def _legacy_company(store: PgAuthStore, company: str, style: Style) -> None:
    data = generate(company, 60, legacy=6)  # legacy rows base64, as migrated from files
    pgraw.insert_raw(
        store.conn, company, data.creds, [(r, style) for r, _ in data.rows() if r.key_type != "pre"]
    )
    pgraw.insert_raw(store.conn, company, None, [(r, "base64") for r in data.legacy])


def test_legacy_moves_follow_the_form(store: PgAuthStore, admin: Conn, company: str) -> None:
    _legacy_company(store, company, "array")  # the company's rows array, legacy rows base64
    digest = _digest(store, company)
    plan = legacy.report_company(admin, company)
    moved = [(d.real_type, d.real_id) for d in plan.decisions if d.action == "move"]
    assert moved
    done = legacy.purge_company(admin, company)  # auto: the majority, array
    assert done.buffer_form is not None and done.buffer_form["form"] == "array"
    texts = _texts(admin, company)
    assert all(_form_of(texts[f"{t}/{i}"]) == "array" for t, i in moved)
    assert _digest(store, company) == digest  # what Baileys sees did not change
