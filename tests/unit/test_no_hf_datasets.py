"""FleetFL's own top-level ``datasets`` package shadows HuggingFace's: neither HuggingFace ``datasets``
nor ``flwr-datasets`` may be installed in the project's environment (issue 2, section 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Runs in a fresh interpreter, outside the repository, searching only the installed locations: the
# repository root is removed from the path and the editable-install finder (which maps our own
# ``datasets`` package) is bypassed by asking the path finder directly.
PROBE = """
import importlib.machinery, importlib.metadata as md, json, sys
paths = [p for p in sys.path if p not in ("", ".") and not p.startswith(ROOT)]
found = {}
for module in ("datasets", "flwr_datasets"):
    spec = importlib.machinery.PathFinder.find_spec(module, paths)
    if spec is not None:
        found[module] = spec.origin
for dist in ("datasets", "flwr-datasets"):
    try:
        found[dist + " (distribution)"] = md.version(dist)
    except md.PackageNotFoundError:
        pass
print(json.dumps(found))
"""


def test_huggingface_datasets_and_flwr_datasets_are_not_installed(repo_root: Path, tmp_path: Path) -> None:
    code = f"ROOT = {str(repo_root)!r}\n{PROBE}"
    result = subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == "{}", f"must not be installed: {result.stdout.strip()}"


def test_our_datasets_package_is_the_one_imported() -> None:
    import datasets

    assert Path(datasets.__file__).resolve().parent.name == "datasets"
    assert hasattr(__import__("datasets.prepare").prepare, "prepare")
