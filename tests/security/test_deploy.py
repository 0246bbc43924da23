"""The compose file and the image: Flower needs a secret and stays on loopback; the api never runs as root."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_flower_requires_a_basic_auth_secret_and_is_published_on_loopback_only() -> None:
    flower = COMPOSE["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "${FLOWER_BASIC_AUTH:-}"
    assert 'test -n "$$FLOWER_BASIC_AUTH" ||' in " ".join(flower["command"])  # refuses to start without it
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])


def test_the_api_runs_as_a_non_root_user() -> None:
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert COMPOSE["services"]["api"]["user"] == users[-1]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_docker_compose_accepts_the_file() -> None:
    for profile in ([], ["--profile", "monitoring"]):
        done = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), *profile, "config", "-q"],
                              capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr
