"""No code from clients: nothing in the service unpickles, evaluates or imports what it is sent.

A static guard over the source (AST, so comments and docstrings do not count): every
`np.load` says `allow_pickle=False`, `torch.load` only with `weights_only=True`, and no
pickle/marshal/dill/joblib/eval/exec/unsafe yaml at all. Checkpoints are safetensors
(models/checkpoint.py), uploads are parsed by models/uploads.py, regularizers are chosen by
registered name (models/regularizers.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from models import regularizers
from models.spec import RunSpec
from tests.security.harness import ROOT

PACKAGES = ("api", "worker", "models", "store", "client/regdiff_client")
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
BANNED_CALLS = {"eval", "exec", "__import__"}


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    found = []
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where} imports {n}" for n in names if n.split(".")[0] in BANNED_MODULES]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        if isinstance(func, ast.Name) and name in BANNED_CALLS:
            found.append(f"{where} calls {name}()")
        if owner in ("np", "numpy") and name == "load" and _keyword(node, "allow_pickle") is not False:
            found.append(f"{where} np.load without allow_pickle=False")
        if owner == "torch" and name == "load" and _keyword(node, "weights_only") is not True:
            found.append(f"{where} torch.load without weights_only=True")
        if owner == "yaml" and name in ("load", "unsafe_load", "full_load"):
            found.append(f"{where} yaml.{name} (use yaml.safe_load)")
    return found


def test_no_source_file_can_run_code_from_data():
    sources = _sources()
    assert len(sources) > 30
    problems = [o for path in sources for o in offences(path)]
    assert problems == []


def test_the_guard_catches_what_it_should(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport numpy as np\nimport torch\nnp.load(f)\nnp.load(f, allow_pickle=True)\n"
                   "torch.load(f)\ntorch.load(f, weights_only=True)\nnp.load(f, allow_pickle=False)\neval('1')\n")
    assert len(offences(bad)) == 5


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "__import__('os')", "models.regularizers.REGISTRY"])
def test_regularizers_are_chosen_by_registered_name_only(name):
    with pytest.raises(ValueError, match="unknown regularizer"):
        RunSpec.model_validate({"regularizer": name})
    assert name not in regularizers.REGISTRY
