"""What `pip install .` puts on the import path: the design card's names plus one namespace, nothing generic."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _top_level_names(project: Path, out: Path) -> set[str]:
    leftover = project / "build"
    existed = leftover.exists()
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", str(project), "--no-deps", "-q", "-w", str(out)],
            check=True,
            capture_output=True,
        )
    finally:
        if not existed:  # setuptools builds in the source tree; leave it as we found it
            shutil.rmtree(leftover, ignore_errors=True)
    (wheel,) = out.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    return {name.split("/")[0] for name in names if ".dist-info/" not in name}


def test_the_control_plane_wheel_installs_only_the_design_cards_names_and_agentpod(tmp_path: Path) -> None:
    names = _top_level_names(REPO, tmp_path / "plane")
    assert names == {"api", "activities", "workflows", "worker.py", "agentpod"}
    # Migrations travel with the package: `agentpod db upgrade` works from an installed wheel.
    wheel = next((tmp_path / "plane").glob("*.whl"))
    assert "agentpod/store/migrations/versions/0001_initial_schema_and_catalog.py" in zipfile.ZipFile(wheel).namelist()


def test_the_gateway_is_its_own_distribution(tmp_path: Path) -> None:
    assert _top_level_names(REPO / "gateway", tmp_path / "gateway") == {"agentpod_gateway"}
