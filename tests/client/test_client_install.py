"""`pip install ./client` alone: a fresh venv, offline, and no torch anywhere in the import.

What `pip install ./client` does is build a wheel (PEP 517, setuptools) and install it. Offline,
a fresh venv cannot do the first step itself: its ensurepip setuptools (65.5) has no
`bdist_wheel` and build isolation would download a newer one. So the wheel is built by this
interpreter's setuptools (the server's venv has >= 70 through torch) and installed into the
fresh venv with --no-deps; the runtime dependencies (httpx, tqdm, typer) are borrowed from
this interpreter's site-packages through a .pth line. torch is importable through that line
too, which is the point: the check is that importing the client never imports it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[2] / "client"
HEAVY = ("torch", "numpy", "PIL", "diffusers", "api", "models", "worker", "store")


def run(*args: str | Path) -> str:
    done = subprocess.run([str(a) for a in args], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_import_pulls_in_no_torch_numpy_or_server_code():
    code = f"import sys, regdiff_client, regdiff_client.cli; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    assert run(sys.executable, "-c", code).strip() == "[]"


def test_pip_install_client_into_a_fresh_venv(tmp_path):
    source = tmp_path / "client"  # a copy: the build must not write into the repository
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    dist = tmp_path / "dist"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-index",
        "--no-build-isolation",
        "--no-deps",
        "-w",
        dist,
        source,
    )
    (wheel,) = dist.glob("regdiff_client-*.whl")
    venv = tmp_path / "venv"
    run(getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-index", "--no-deps", wheel)

    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (site / "zz_borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    requires = run(
        python, "-c", "import importlib.metadata as m; print('\\n'.join(m.requires('regdiff-client')))"
    )
    names = {line.split(";")[0].split(">")[0].split("<")[0].strip().lower() for line in requires.splitlines()}
    assert names == {"httpx", "tqdm", "typer", "numpy", "pillow"}
    assert all("extra ==" in line for line in requires.splitlines() if line.startswith(("numpy", "pillow")))

    code = (
        "import sys, regdiff_client, regdiff_client.cli; "
        f"print(regdiff_client.__file__); print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    location, loaded = run(python, "-c", code).splitlines()
    assert location.startswith(str(venv)) and loaded == "[]"
    assert "runs" in run(venv / "bin" / "regdiff", "--help")
