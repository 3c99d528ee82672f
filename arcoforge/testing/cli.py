"""The ``arcoforge`` command run as a real subprocess (``python -m arcoforge.cli``), and
readers of what it prints: tests check its exit codes, its one ``error:`` line and its
JSON events as a user's shell would see them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TIMEOUT = 120
"""Seconds a command may take before the test fails."""

NAME = "sst-feed"
"""The name tests give the feedstock that ``arcoforge init`` writes."""

HIDE_MODULES = """\
import importlib.machinery, os, sys

MISSING = set(os.environ["ARCOFORGE_TEST_WITHOUT"].split(","))


class Without(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in MISSING:
            return None
        return super().find_spec(name, path, target)


sys.meta_path[:] = [Without if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""
"""A ``sitecustomize.py`` that hides the top-level modules named (comma-separated) in
``$ARCOFORGE_TEST_WITHOUT``, as if they were not installed: its folder goes first on the
child's ``PYTHONPATH``."""


def arcoforge(*args, cwd: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``python -m arcoforge.cli ARGS`` in ``cwd``; wide, colourless output."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "arcoforge.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """``proc``, checked to have exited 0 (its output in the message if not)."""
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def error_line(proc: subprocess.CompletedProcess, rc: int | None = None) -> str:
    """The one ``error:`` line of a failed run (and no traceback), checked to be the last
    line of stderr; with ``rc``, the exit code checked too."""
    assert proc.returncode != 0, proc.stdout
    if rc is not None:
        assert proc.returncode == rc, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == errors[0]
    return errors[0]


def json_lines(text: str) -> list[dict]:
    """The JSON objects of ``text``, one a non-blank line (the output of ``--json``)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def sample_sources(feedstock: Path) -> list[Path]:
    """The sample netCDF files ``arcoforge init`` wrote into ``feedstock``, sorted."""
    return sorted((feedstock / "sample-data").glob("*.nc"))
