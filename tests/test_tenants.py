"""The tenants file of ``--company all``: each tenant's service validated like the settings,
nothing but the service's own settings may differ, and no service is named twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from resilience.config import load_settings
from resilience.errors import ConfigError
from resilience.restore.tenants import tenant_settings

TWO = """
[tenants.acme]
pm2_app = "wa-acme"
service_dir = "/srv/wa/acme"
health_url = "http://127.0.0.1:8101/health"

[tenants.globex]
pm2_app = "wa-globex"
service_dir = "/srv/wa/globex"
"""


def tenants_of(tmp_path: Path, text: str) -> dict[str, object]:
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    settings = load_settings(
        env_file=None, tenants_file=path, snapshot_dir=tmp_path / "snapshots", pm2_home="/pm2"
    )
    return dict(tenant_settings(settings))


def test_each_tenant_is_the_main_settings_with_its_service(tmp_path: Path) -> None:
    found = tenants_of(tmp_path, TWO)
    assert list(found) == ["acme", "globex"]
    acme, globex = found["acme"], found["globex"]
    assert acme.company_id == "acme" and acme.pm2_app == "wa-acme"  # type: ignore[attr-defined]
    assert acme.env_path == Path("/srv/wa/acme/.env")  # type: ignore[attr-defined]
    assert acme.auth_root == Path("/srv/wa/acme/auth_info")  # type: ignore[attr-defined]
    assert globex.health_url is None  # type: ignore[attr-defined]
    for tenant in (acme, globex):  # what is not the service's stays the main settings'
        assert tenant.snapshot_dir == tmp_path / "snapshots"  # type: ignore[attr-defined]
        assert tenant.pm2_home == Path("/pm2")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("[tenants.acme\n", "is not valid TOML"),
        ("", "no [tenants.<company>] table"),
        ("[other]\nx = 1\n[tenants.a]\npm2_app = 'a'\n", "unknown table(s) other"),
        ("[tenants.acme]\nservice_dsn = 'postgresql://x'\n", "service_dsn cannot differ"),
        ("[tenants.'../evil']\npm2_app = 'x'\n", "company id"),
        ("[tenants]\nacme = 'wa-acme'\n", "[tenants.acme] must be a table"),
        ("[tenants.acme]\nhealth_url = 'ftp://x'\n", "health_url: must be an http(s) URL"),
        (
            "[tenants.a]\npm2_app = 'same'\n[tenants.b]\npm2_app = 'same'\n",
            "tenants a and b name the same PM2 app same",
        ),
        (
            "[tenants.a]\npm2_app = 'a'\nservice_env = '/srv/.env'\n"
            "[tenants.b]\npm2_app = 'b'\nservice_env = '/srv/.env'\n",
            "tenants a and b share the .env /srv/.env",
        ),
    ],
)
def test_a_bad_tenants_file_is_refused_naming_the_problem(
    tmp_path: Path, text: str, phrase: str
) -> None:
    with pytest.raises(ConfigError) as info:
        tenants_of(tmp_path, text)
    assert phrase in str(info.value)
    assert "RESILIENCE_TENANTS_FILE" in str(info.value)


def test_no_tenants_file_says_which_setting_to_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--company all needs RESILIENCE_TENANTS_FILE"):
        tenant_settings(load_settings(env_file=None))
    missing = load_settings(env_file=None, tenants_file=tmp_path / "nowhere.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        tenant_settings(missing)
