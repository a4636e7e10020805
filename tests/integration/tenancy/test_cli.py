"""The tenancy commands end to end: ``python -m pgtenantproxy ...`` with a config file and the
environment variables it names; exit codes, output, and no secret in any output."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgtenantproxy.tenancy.control_schema import LATEST_VERSION
from pgtenantproxy.tenancy.crypto import DataKey, Keyring, Sealed
from tests.fixtures.tenancy import ENV, TenancyBed

SHOPS_QUERY = "SELECT id FROM shops WHERE id BETWEEN 1 AND 4 ORDER BY id"
OUTPUTS: list[str] = []  # every stdout and stderr of the module, checked for secrets at the end


@pytest.fixture(scope="module")
def config_path(bed: TenancyBed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("cli") / "config.toml"
    path.write_text(bed.config_toml(tenancy={"shops_query": SHOPS_QUERY, "provision_concurrency": 4}))
    OUTPUTS.clear()
    yield path


def shop_passwords(bed: TenancyBed) -> list[str]:
    keyring = Keyring(DataKey.from_hex(bed.key_hex, source="test"))
    with psycopg.connect(bed.unified.dsn(dbname="handyshop")) as conn:
        rows = conn.execute("SELECT shop_id, key_id, password_enc FROM pgtenantproxy.tenant_credentials")
        return [keyring.open(Sealed(k, blob), shop_id=shop, purpose="password") for shop, k, blob in rows]


def cli(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pgtenantproxy", args[0], "--config", str(config), *args[1:]],
        env=env or dict(os.environ), capture_output=True, text=True, timeout=240, check=False,
    )
    OUTPUTS.extend([result.stdout, result.stderr])
    return result


def start(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pgtenantproxy", args[0], "--config", str(config), *args[1:]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def databases(bed: TenancyBed, name: str) -> list[str]:
    found = []
    for server, cluster in zip(("t1", "t2"), bed.tenants, strict=True):
        with psycopg.connect(cluster.dsn()) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                found.append(server)
    return found


def test_init_reports_the_schema_and_the_servers(config_path: Path) -> None:
    result = cli(config_path, "init")
    assert result.returncode == 0, result.stderr
    assert f"control schema pgtenantproxy at version {LATEST_VERSION} in database handyshop" in result.stdout
    assert "tenant server t1" in result.stdout and "tenant server t2" in result.stdout
    assert result.stdout.count("reachable") == 2
    assert "19 tenant tables" in result.stdout
    assert "public.devices.devices_device_model_id_fkey -> public.device_models" in result.stdout
    assert result.stdout.count(" -> public.") == 6


def test_two_concurrent_provisions_of_shop_7_make_one_database(bed: TenancyBed, config_path: Path) -> None:
    procs = [start(config_path, "provision", "--shop", "7") for _ in range(2)]
    results = [p.communicate(timeout=240) for p in procs]
    OUTPUTS.extend(text for pair in results for text in pair)
    assert [p.returncode for p in procs] == [0, 0], results
    stdout = "".join(out for out, _ in results)
    assert "shop 7: provisioned" in stdout and "shop 7: already" in stdout
    assert len(databases(bed, "shop_7_db")) == 1


def test_provision_one_then_all_then_list(bed: TenancyBed, config_path: Path) -> None:
    one = cli(config_path, "provision", "--shop", "3")
    assert one.returncode == 0, one.stderr
    assert "shop 3: provisioned on t" in one.stdout
    everything = cli(config_path, "provision", "--all")
    assert everything.returncode == 0, everything.stderr
    assert "provisioned 3, already provisioned 1, failed 0" in everything.stdout
    assert "provisioning" in everything.stderr  # the progress bar
    listing = cli(config_path, "tenants")
    assert listing.returncode == 0 and "5 shops" in listing.stdout
    as_json = cli(config_path, "tenants", "--json")
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(r["shop_id"], r["state"]) for r in rows] == [(s, "provisioned") for s in (1, 2, 3, 4, 7)]
    assert {r["server"] for r in rows} == {"t1", "t2"}


def test_migrate_schema_reports_failures_per_tenant(config_path: Path, tmp_path: Path) -> None:
    (tmp_path / "0001_note.sql").write_text("ALTER TABLE repairs ADD COLUMN note text;")
    ok = cli(config_path, "migrate-schema", str(tmp_path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "5 tenants, 5 migrations applied, 0 failed" in ok.stdout
    (tmp_path / "0002_broken.sql").write_text("ALTER TABLE no_such_table ADD COLUMN x int;")
    broken = cli(config_path, "migrate-schema", str(tmp_path))
    assert broken.returncode == 1
    assert broken.stdout.count("FAILED at 0002_broken") == 5 and "5 failed" in broken.stdout
    listing = [json.loads(line) for line in cli(config_path, "tenants", "--json").stdout.splitlines()]
    assert {r["schema_version"] for r in listing} == {1}


def test_harden(config_path: Path) -> None:
    result = cli(config_path, "harden")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tenant column protected on 19 tables" in result.stdout
    assert "installed pgtenantproxy_one_owner_per_shop" in result.stdout


def test_rotate_key_and_password(bed: TenancyBed, config_path: Path) -> None:
    new_hex = secrets.token_hex(32)
    env = {**os.environ, ENV["key"]: new_hex, ENV["previous"]: bed.key_hex}
    rotated = cli(config_path, "rotate-key", env=env)
    new_id = Keyring(DataKey.from_hex(new_hex, source="test")).primary_id
    assert rotated.returncode == 0, rotated.stderr
    assert f"re-encrypted 5 credential rows with key {new_id}" in rotated.stdout
    stale = cli(config_path, "rotate-password", "--shop", "3")  # the old key alone no longer opens the rows
    assert stale.returncode == 1 and "not in the keyring" in stale.stderr
    password = cli(config_path, "rotate-password", "--shop", "3", env={**os.environ, ENV["key"]: new_hex})
    assert password.returncode == 0 and "shop 3: password rotated" in password.stdout
    back = cli(config_path, "rotate-key", env={**os.environ, ENV["previous"]: new_hex})
    assert back.returncode == 0 and "re-encrypted 5 credential rows" in back.stdout


def test_deprovision_needs_confirmation(bed: TenancyBed, config_path: Path) -> None:
    refused = cli(config_path, "deprovision", "--shop", "4")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert databases(bed, "shop_4_db") != []
    done = cli(config_path, "deprovision", "--shop", "4", "--yes")
    assert done.returncode == 0 and "shop 4: deprovisioned" in done.stdout
    assert databases(bed, "shop_4_db") == []
    again = cli(config_path, "deprovision", "--shop", "4", "--yes")
    assert again.returncode == 0 and "nothing to deprovision" in again.stdout


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "PGTP_TEST_TENANT_KEY is not set"),
        ("abc123", "PGTP_TEST_TENANT_KEY must be exactly 64 hex characters"),
        ("zz" * 32, "PGTP_TEST_TENANT_KEY must contain only hex characters"),
    ],
)
def test_a_bad_key_is_a_clear_startup_error(config_path: Path, value: str | None, message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != ENV["key"]}
    if value is not None:
        env[ENV["key"]] = value
    result = cli(config_path, "provision", "--shop", "1", env=env)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert value is None or value not in result.stderr
    listing = cli(config_path, "tenants", env={k: v for k, v in os.environ.items() if k != ENV["key"]})
    assert listing.returncode == 0  # commands that need no key run without one


def test_an_unreachable_unified_database_is_reported(bed: TenancyBed, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(bed.config_toml(unified={"port": 1}))
    result = cli(config, "tenants")
    assert result.returncode == 2
    assert "cannot open the control plane on the unified database handyshop at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_output_contained_a_secret(bed: TenancyBed, config_path: Path) -> None:
    """Runs last: every output of this module, against every password and the key."""
    passwords = shop_passwords(bed)
    assert len(passwords) == 4 and len(OUTPUTS) > 40
    for output in OUTPUTS:
        for secret in [bed.unified.password, *(c.password for c in bed.tenants), bed.key_hex, *passwords]:
            assert secret not in output
