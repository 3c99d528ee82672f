"""Reference stores that xarray cannot read are not published (issue 16 item 13): char
variables that xarray decodes to strings (``_Encoding``) holding bytes that are not in that
encoding end a reader's ``open_dataset(...).load()`` in ``UnicodeDecodeError``. The in-bake
check and ``arcoforge validate`` open the store as readers do and name the variable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
from test_references import ref_recipe

from arcoforge import bake
from arcoforge.errors import ValidationError
from arcoforge.references.store import open_references

UTF8_ERROR = (
    "variable 'flag': xarray cannot read it: UnicodeDecodeError: 'utf-8' codec can't decode "
    "byte 0x80 in position 1: invalid start byte"
)
TARGETS = ["reference.json", "reference.parquet", "icechunk"]
FILE_TYPES = {"netcdf3": "NETCDF3_CLASSIC", "netcdf4": "NETCDF4"}


def char_files(folder: Path, file_type: str, encoding: str | None) -> list[Path]:
    """Two files of one step each, ``flag`` a char variable holding the byte 0x80 (and
    0xff, 0xfe), with the ``_Encoding`` attribute ``encoding`` (None: without it)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(2):
        path = folder / f"c{i}.nc"
        with netCDF4.Dataset(path, "w", format=FILE_TYPES[file_type]) as nc:
            nc.createDimension("time", None)
            nc.createDimension("n", 4)
            nc.createVariable("time", "f8", ("time",))[:] = [i]
            flag = nc.createVariable("flag", "S1", ("time", "n"))
            if encoding:
                flag._Encoding = encoding
            flag[0, :] = np.array([b"a", b"\x80", bytes([0xFF - i]), b""], "S1")
        paths.append(path)
    return paths


def target(tmp_path: Path, name: str) -> tuple[str, str]:
    """The target root of ``name`` and the output file name its recipe takes."""
    if name == "icechunk":
        pytest.importorskip("icechunk", reason="Icechunk targets need the [icechunk] extra")
        return f"icechunk://{tmp_path / 'ic'}", "reference.json"
    return str(tmp_path / "out"), name


@pytest.mark.parametrize("file_type", FILE_TYPES)
@pytest.mark.parametrize("name", TARGETS)
def test_chars_xarray_cannot_decode_are_refused_before_publishing(tmp_path, name, file_type):
    paths = char_files(tmp_path / "src", file_type, "utf-8")
    root, output = target(tmp_path, name)
    recipe = ref_recipe(paths, output, file_type=file_type)
    with pytest.raises(ValidationError) as caught:
        bake(recipe, root, workers=1)
    assert str(caught.value) == f"{paths[0]}: {UTF8_ERROR}"
    assert isinstance(caught.value.__cause__, UnicodeDecodeError)
    if name != "icechunk":
        assert not (tmp_path / "out" / "ref" / name).exists()


@pytest.mark.parametrize("file_type", FILE_TYPES)
@pytest.mark.parametrize("name", TARGETS)
def test_chars_without_an_encoding_are_bytes_and_publish(tmp_path, name, file_type):
    paths = char_files(tmp_path / "src", file_type, None)
    root, output = target(tmp_path, name)
    result = bake(ref_recipe(paths, output, file_type=file_type), root, workers=1)
    with open_references(str(result.url)) as out:
        assert out.flag.values.tolist() == [b"a\x80\xff", b"a\x80\xfe"]


def validate(url: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "arcoforge.cli", "validate", url, "--json"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["reference.json", "reference.parquet"])
def test_validate_names_a_variable_xarray_cannot_read(tmp_path, name):
    """A published store whose ``flag`` was given ``_Encoding`` afterwards (by hand, in
    its metadata): ``arcoforge validate`` reads it as readers do and fails."""
    paths = char_files(tmp_path / "src", "netcdf4", None)
    url = bake(ref_recipe(paths, name), tmp_path / "out", workers=1).url
    healthy = validate(url)
    assert healthy.returncode == 0, healthy.stderr
    path = Path(url.removeprefix("file://"))
    meta_path = path / ".zmetadata" if path.is_dir() else path
    doc = json.loads(meta_path.read_text())
    meta = doc["metadata"] if path.is_dir() else doc["refs"]
    attrs = meta["flag/.zattrs"]
    text = isinstance(attrs, str)
    attrs = {**(json.loads(attrs) if text else attrs), "_Encoding": "utf-8"}
    meta["flag/.zattrs"] = json.dumps(attrs) if text else attrs
    if not path.is_dir() and ".zmetadata" in meta:  # JSON holds consolidated metadata too
        zmeta = json.loads(meta[".zmetadata"])
        zmeta["metadata"]["flag/.zattrs"] = attrs
        meta[".zmetadata"] = json.dumps(zmeta)
    meta_path.write_text(json.dumps(doc))
    broken = validate(url)
    assert broken.returncode == 1, broken.stderr
    report = json.loads(broken.stdout)
    assert f"{url}: {UTF8_ERROR}" in report["findings"]
    assert "Traceback" not in broken.stderr
