"""`regdiff-admin keys create|list|revoke`, run as an operator would, against the app's database."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.security.harness import ROOT, bearer

ENTRY_POINT = shutil.which("regdiff-admin", path=os.path.dirname(sys.executable))


def admin(home, *args: str, module: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGDIFF_")}
    command = [sys.executable, "-m", "store.admin"] if module or ENTRY_POINT is None else [ENTRY_POINT]
    return subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**env, "REGDIFF_HOME": str(home)})


def test_create_prints_the_key_last_and_it_works_until_revoked(make_client, tmp_path):
    client = make_client(REGDIFF_AUTH="required")
    home = tmp_path / "home"

    created = admin(home, "keys", "create", "--tenant", "acme")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("rdk_") and " " not in key
    assert client.get("/v1/runs", headers=bearer(key)).status_code == 200

    listed = admin(home, "keys", "list", module=True)  # `python -m store.admin` works too
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "\tacme\t" in line)
    key_id = row.split("\t")[0]
    assert key_id.startswith("key_") and row.endswith("active") and key not in listed.stdout

    revoked = admin(home, "keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert client.get("/v1/runs", headers=bearer(key)).status_code == 401
    assert "revoked" in admin(home, "keys", "list").stdout
    assert admin(home, "keys", "revoke", key_id).returncode == 1  # already revoked: says so


@pytest.mark.parametrize("tenant", ["Acme", "../x", "x" * 65])
def test_create_refuses_bad_tenant_names(tmp_path, tenant):
    result = admin(tmp_path / "home", "keys", "create", "--tenant", tenant)
    assert result.returncode == 2 and "tenant" in result.stderr
