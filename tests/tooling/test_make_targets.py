"""`make run` installs the runtime only; `make test` the development extras; the package
metadata builds without deprecation warnings."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(target: str, venv: Path) -> list[str]:
    """The commands ``make TARGET`` would run with its virtualenv at ``venv`` (make -n)."""
    done = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def installs(lines: list[str]) -> list[str]:
    return [line for line in lines if "pip install" in line]


def test_make_run_installs_the_runtime_only(tmp_path: Path) -> None:
    lines = installs(dry_run("run", tmp_path / "venv"))
    assert len(lines) == 1
    assert lines[0].endswith(" -e .")
    assert "dev" not in lines[0]


def test_make_test_installs_the_development_extras(tmp_path: Path) -> None:
    lines = installs(dry_run("test", tmp_path / "venv"))
    assert len(lines) == 1
    assert lines[0].endswith(" -e '.[dev]'")


def test_switching_from_test_to_run_installs_nothing_more(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/python").touch()
    (venv / ".installed-dev").touch()
    (venv / ".installed-run").touch()
    assert installs(dry_run("run", venv)) == []
    assert installs(dry_run("test", venv)) == []
    # a run-only virtualenv still gets the extras for the tests
    (venv / ".installed-dev").unlink()
    assert installs(dry_run("run", venv)) == []
    assert len(installs(dry_run("test", venv))) == 1
    # an edited pyproject.toml reinstalls
    later = (ROOT / "pyproject.toml").stat().st_mtime - 10
    os.utime(venv / ".installed-run", (later, later))
    assert len(installs(dry_run("run", venv))) == 1


def test_the_license_is_an_spdx_expression() -> None:
    # a TOML table is deprecated by setuptools (three warnings on every install)
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["license"] == "Apache-2.0"
    assert data["build-system"]["requires"] == ["setuptools>=77"]
