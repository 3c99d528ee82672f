"""``arcoforge validate`` on reference stores: corrupted byte ranges and missing files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from arcoforge import bake
from arcoforge.testing.archives import break_archive, write_oisst_archive
from arcoforge.testing.recipes import FORMATS, ref_recipe
from arcoforge.validate import checker_for


def validate(url: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "arcoforge.cli", "validate", url, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", FORMATS)
def test_validate_reports_corrupted_range_and_missing_file(tmp_path, name):
    paths = write_oisst_archive(tmp_path / "src", days=4, ny=18, nx=36)
    url = bake(ref_recipe(paths, name), tmp_path / "out", workers=2).url
    healthy = validate(url, "--json")
    assert healthy.returncode == 0, healthy.stderr
    assert json.loads(healthy.stdout)["ok"]
    against = checker_for(url)(url, against=ref_recipe(paths, name), full=True)
    assert against.ok and "4 of 4 inputs equal the store" in str(against.checks)

    offset, size = break_archive(paths)

    report = checker_for(url)(url, full=True)
    assert not report.ok
    text = "\n".join(report.findings)
    assert (
        f"sst/0.0.0 (bytes {offset}-{offset + size} of file://{paths[0]}) does not decode" in text
    )
    assert f"file://{paths[-1]}: missing (4 references, first anom/3.0.0)" in text

    broken = validate(url, "--full")
    assert broken.returncode == 1
    assert "missing" in broken.stdout + broken.stderr
    assert "Traceback" not in broken.stderr


def test_validate_icechunk_reports_corrupted_chunk_and_missing_file(tmp_path):
    pytest.importorskip("icechunk", reason="Icechunk targets need the [icechunk] extra")
    paths = write_oisst_archive(tmp_path / "src", days=4, ny=18, nx=36)
    url = bake(ref_recipe(paths), f"icechunk://{tmp_path / 'ic'}", workers=2).url
    healthy = validate(url, "--json")
    assert healthy.returncode == 0, healthy.stderr
    assert "4 files the virtual chunks point into are there" in healthy.stdout

    break_archive(paths)

    report = checker_for(url)(url, full=True)
    text = "\n".join(report.findings)
    assert not report.ok
    assert f"file://{paths[-1]}: missing (virtual chunks point into it)" in text
    assert "sst/0.0.0 does not decode" in text
    broken = validate(url, "--full")
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
