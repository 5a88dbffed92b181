"""Evidence drills and tests assert on: fingerprints read from the real database, the seeded
dataset, and the service's own log of acknowledged writes replayed over them.

Keys are compared by fingerprint (SHA-256 over type, id and the decoded value), never by JSON
text, over the view Baileys has (legacy twins resolved).
"""

from __future__ import annotations

from resilience.authstate.dataset import Dataset
from resilience.authstate.fingerprint import KeyFingerprint
from resilience.authstate.pgconn import connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import CompanyView, view_of
from resilience.drill.standin.writelog import WriteEntry
from resilience.errors import DataError

Fingerprints = dict[tuple[str, str], str]


def fingerprints(view: CompanyView) -> Fingerprints:
    return {(t, i): KeyFingerprint.of(t, i, v) for t, i, v in view.key_values()}


def database_state(admin_dsn: str, company_id: str) -> tuple[str, Fingerprints, str]:
    """(creds fingerprint, key fingerprints, set digest) of a company, read directly."""
    with connect(admin_dsn) as conn:
        store = PgAuthStore(conn)
        view = view_of(company_id, store.load_creds(company_id), store.records(company_id))
    return KeyFingerprint.of("creds", "", view.creds), fingerprints(view), view.digest().digest


def seeded(dataset: Dataset, company_id: str) -> Fingerprints:
    """The key fingerprints a seeded company starts with."""
    return fingerprints(view_of(company_id, dataset.creds, dataset.keys))


def replay(base: Fingerprints, entries: list[WriteEntry]) -> Fingerprints:
    """`base` after every acknowledged write, in order (a deletion removes the key)."""
    state = dict(base)
    for entry in entries:
        if entry.deleted:
            state.pop((entry.type, entry.id), None)
        elif entry.fingerprint is None:
            raise DataError(f"write log entry {entry.seq} has neither a value nor a deletion")
        else:
            state[(entry.type, entry.id)] = entry.fingerprint
    return state


def differences(a: Fingerprints, b: Fingerprints) -> list[tuple[str, str]]:
    """The keys whose fingerprints differ (or that one side lacks), sorted."""
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
