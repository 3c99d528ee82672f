"""The package's layout holds: layers import only downward, nothing imports arcoforge from
inside a function, no private name crosses modules, and importing changes no global state."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import arcoforge

PACKAGE = Path(arcoforge.__file__).parent
# the catalog's modules need its extra (jinja2), checked by the command before it imports them
LAZY = {("cli/main.py", "arcoforge.catalog.build"), ("cli/main.py", "arcoforge.catalog.preview")}


def modules() -> list[tuple[str, ast.Module]]:
    return [
        (str(path.relative_to(PACKAGE)), ast.parse(path.read_text()))
        for path in sorted(PACKAGE.rglob("*.py"))
    ]


def test_the_import_contract_is_kept():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is in the test extra"
    done = subprocess.run(
        [lint], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def test_no_function_imports_arcoforge():
    found = [
        (name, node.module)
        for name, tree in modules()
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("arcoforge")
    ]
    assert set(found) == LAZY


def test_no_private_name_is_imported_across_modules():
    found = [
        (name, node.module, alias.name)
        for name, tree in modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("arcoforge")
        for alias in node.names
        if alias.name.startswith("_") and alias.name != "__version__"
    ]
    assert found == []


def test_importing_arcoforge_changes_no_global_state():
    code = (
        "import gc, warnings\n"
        "import xarray, zarr, numcodecs, fsspec, h5py, netCDF4, pandas, rich, click, aiohttp\n"
        "before = list(warnings.filters)\n"
        "import arcoforge, arcoforge.cli, arcoforge.validate, arcoforge.products\n"
        "import arcoforge.engines.local, arcoforge.references.formats.icechunk\n"
        "print(warnings.filters == before, gc.get_freeze_count(), gc.isenabled())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["True", "0", "True"]
