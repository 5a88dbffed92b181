"""Real Baileys (Node) reads every file FileAuthStore writes, and we read what Baileys writes.

`tests/node/read_auth_state.mjs` runs Baileys' own `useMultiFileAuthState(dir)`; values come
back as JSON through `BufferJSON.replacer`, plus the list of paths that were real Buffers in
memory (the replacer alone would hide a Buffer object the reviver failed to revive).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from resilience.authstate import codec
from resilience.authstate.filestore import FileAuthStore

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "node" / "read_auth_state.mjs"
BAILEYS = ROOT / ".tools" / "node" / "node_modules" / "@whiskeysockets" / "baileys"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed (Node.js >= 20 is needed)"),
    pytest.mark.skipif(
        not (BAILEYS / "lib" / "index.js").is_file(),
        reason=f"Baileys is not installed at {BAILEYS}: run ./run to install it",
    ),
]

CID = "compat_1"


def blob(tag: int, size: int) -> bytes:
    """Deterministic bytes that cover the whole 0..255 range."""
    return bytes((tag * 31 + i * 7) % 256 for i in range(size))


def sync_key_id(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


SLASH_PLUS_ID = sync_key_id(bytes([0xFB, 0xFF, 0xBF, 0x00, 0x00, 0x01]))  # "+/+/AAAB"
OTHER_SYNC_ID = sync_key_id(b"\x00\x00\x00\x00\x1f\xff")  # contains "/"
assert "/" in SLASH_PLUS_ID and "+" in SLASH_PLUS_ID and "/" in OTHER_SYNC_ID

CREDS: dict[str, Any] = {
    "noiseKey": {"private": blob(1, 32), "public": blob(2, 32)},
    "pairingEphemeralKeyPair": {"private": blob(3, 32), "public": blob(4, 32)},
    "signedIdentityKey": {"private": blob(5, 32), "public": blob(6, 32)},
    "signedPreKey": {
        "keyPair": {"private": blob(7, 32), "public": blob(8, 32)},
        "signature": blob(9, 64),
        "keyId": 1,
    },
    "registrationId": 12345,
    "advSecretKey": base64.b64encode(blob(10, 32)).decode(),  # a base64 *string* in Baileys
    "processedHistoryMessages": [],
    "nextPreKeyId": 813,
    "firstUnuploadedPreKeyId": 813,
    "accountSyncCounter": 3,
    "accountSettings": {"unarchiveChats": False},
    "registered": True,
    "pairingCode": None,
    "lastPropHash": "2V77qU",
    "routingInfo": blob(11, 12),
    "me": {
        "id": "79001234567:12@s.whatsapp.net",
        "lid": "123456789012345:12@lid",
        "name": "Acme Support",
    },
    "account": {
        "details": blob(12, 60),
        "accountSignatureKey": blob(13, 32),
        "accountSignature": blob(14, 64),
        "deviceSignature": blob(15, 64),
    },
    "signalIdentities": [
        {
            "identifier": {"name": "79001234567:12@s.whatsapp.net", "deviceId": 0},
            "identifierKey": blob(16, 33),
        }
    ],
    "platform": "android",
    "myAppStateKeyId": SLASH_PLUS_ID,
}

KEYS: dict[str, dict[str, Any]] = {
    "pre-key": {
        str(n): {"private": blob(20 + n, 32), "public": blob(40 + n, 32)} for n in (1, 2, 812)
    },
    "session": {
        "79001234567.0": blob(60, 300),
        "123456789012345_1.12": blob(61, 280),
        "79007654321_128.99": blob(62, 250),
    },
    "identity-key": {"123456789012345_1.0": blob(63, 33)},
    "sender-key": {
        "120363041234567890@g.us::79001234567::0": blob(70, 120),
        "79001234567-1600000000@g.us::123456789012345_1::3": blob(71, 120),
        "status@broadcast::79001234567::12": blob(72, 120),
    },
    "sender-key-memory": {
        "120363041234567890@g.us": {
            "79001234567:12@s.whatsapp.net": True,
            "123456789012345@lid": True,
        },
        "79001234567-1600000000@g.us": {"79007654321@s.whatsapp.net": True},
    },
    "app-state-sync-key": {
        SLASH_PLUS_ID: {
            "keyData": blob(80, 32),
            "fingerprint": {"rawId": 1234567, "currentIndex": 2, "deviceIndexes": [0, 1, 12]},
            "timestamp": 1700000000123,
        },
        # As Baileys itself stores a proto object (toJSON): keyData a base64 *string*.
        OTHER_SYNC_ID: {
            "keyData": base64.b64encode(blob(81, 32)).decode(),
            "fingerprint": {"rawId": 7, "currentIndex": 0, "deviceIndexes": [0]},
            "timestamp": "1700000000456",
        },
    },
    "app-state-sync-version": {
        "regular_high": {
            "version": 17,
            "hash": blob(90, 128),
            "indexValueMap": {
                base64.b64encode(blob(91, 32)).decode(): {"valueMac": blob(92, 32)},
                base64.b64encode(blob(93, 32)).decode(): {"valueMac": blob(94, 32)},
            },
        },
        "critical_unblock_low": {"version": 2, "hash": blob(95, 128), "indexValueMap": {}},
    },
    "lid-mapping": {
        "79001234567": "123456789012345",
        "123456789012345_reverse": "79001234567",
    },
    "device-list": {"79001234567": ["0", "12", "33"]},
    "tctoken": {
        "123456789012345@lid": {"token": blob(100, 24), "timestamp": "1700000000"},
        "__index": {"token": json.dumps(["123456789012345@lid"]).encode(), "timestamp": "1"},
    },
    # Not a Baileys type today: must pass through untouched.
    "future-type": {"x1": {"nested": [1, "two", {"raw": blob(110, 5)}], "flag": False}},
}
DELETED = ("pre-key", "3")
MISSING = ("session", "79000000000.0")


def byte_paths(value: Any, path: str) -> list[str]:
    """Paths of `bytes` in a decoded value, spelled as the Node script spells them."""
    if isinstance(value, bytes):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in byte_paths(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in byte_paths(v, f"{path}[{i}]")]
    return []


def run_node(mode: str, auth_dir: Path, payload: Any, tmp_path: Path) -> Any:
    arg = tmp_path / f"{mode}-input.json"
    arg.write_bytes(codec.dumps_file(payload))
    assert NODE is not None
    done = subprocess.run(
        [NODE, str(SCRIPT), mode, str(BAILEYS), str(auth_dir), str(arg)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def written(tmp_path: Path) -> FileAuthStore:
    store = FileAuthStore(tmp_path / "auth")
    flat = [(t, i, v) for t, ids in KEYS.items() for i, v in ids.items()]
    store.write_all(CID, CREDS, [*flat, (*DELETED, {"private": b"x", "public": b"y"})])
    store.write_key(CID, *DELETED, None)
    return store


def test_baileys_reads_everything_we_wrote(written: FileAuthStore, tmp_path: Path) -> None:
    spec = {t: list(ids) for t, ids in KEYS.items()}
    spec["pre-key"].append(DELETED[1])
    spec["session"].append(MISSING[1])
    out = run_node("read", written.company_dir(CID), spec, tmp_path)

    assert codec.decode(out["creds"]) == CREDS
    assert sorted(out["buffers"]["creds"]) == sorted(byte_paths(CREDS, "creds"))
    assert out["fakeBuffers"]["creds"] == []

    assert out["keys"]["pre-key"][DELETED[1]] is None  # a None write deleted the file
    assert out["keys"]["session"][MISSING[1]] is None
    checked = 0
    for key_type, ids in KEYS.items():
        for key_id, value in ids.items():
            got = out["keys"][key_type][key_id]
            assert out["fakeBuffers"][key_type][key_id] == [], (key_type, key_id)
            if key_type == "app-state-sync-key":
                # Baileys turns this one into proto.Message.AppStateSyncKeyData.fromObject(value):
                # the JSON shape changes (Long timestamp, proto defaults), so compare the fields
                # that carry meaning. keyData may be stored as Buffer or as a base64 string (as
                # Baileys' own proto toJSON writes it); either way the proto holds the same bytes.
                key_data = value["keyData"]
                raw = key_data if isinstance(key_data, bytes) else base64.b64decode(key_data)
                assert got["isProto"] is True
                assert codec.decode(got["keyData"]) == raw
                assert got["fingerprint"] == value["fingerprint"]
                assert got["timestamp"] == str(value["timestamp"])
            else:
                assert codec.decode(got) == value, (key_type, key_id)
                assert sorted(out["buffers"][key_type][key_id]) == sorted(
                    byte_paths(value, "value")
                ), (key_type, key_id)
            checked += 1
    assert checked == sum(len(ids) for ids in KEYS.values())


def test_we_read_what_baileys_writes(tmp_path: Path) -> None:
    store = FileAuthStore(tmp_path / "auth")
    auth_dir = store.company_dir(CID)
    payload = {"creds": CREDS, "keys": {**KEYS, "pre-key": {**KEYS["pre-key"], "3": None}}}
    assert run_node("write", auth_dir, payload, tmp_path) == {"ok": True}

    assert store.read_creds(CID) == CREDS
    expected = {(t, i): v for t, ids in KEYS.items() for i, v in ids.items()}
    names = {fix(f"{t}-{i}.json"): v for (t, i), v in expected.items()}
    assert store.read_files(CID) == names
    assert "pre-key-3.json" not in names  # Baileys deleted the null key: nothing to read
    # Byte for byte what JSON.stringify(value, BufferJSON.replacer) wrote.
    assert (auth_dir / "creds.json").read_bytes() == codec.dumps_file(CREDS)
    for name, value in names.items():
        assert (auth_dir / name).read_bytes() == codec.dumps_file(value), name
    # Unknown types cannot be mapped back from names alone; every known one can.
    (auth_dir / "future-type-x1.json").unlink()
    del expected[("future-type", "x1")]
    assert store.read_keys(CID) == expected


def fix(name: str) -> str:
    """Baileys' fixFileName, spelled out independently of resilience.authstate.naming."""
    return name.replace("/", "__").replace(":", "-")
