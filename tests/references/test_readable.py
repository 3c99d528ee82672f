"""Reference stores that xarray cannot read are not published (issue 16 item 13): char
variables that xarray decodes to strings (``_Encoding``) holding bytes that are not in that
encoding end a reader's ``open_dataset(...).load()`` in ``UnicodeDecodeError``. The in-bake
check and ``arcoforge validate`` open the store as readers do and name the variable.

Packed variables (issue 16 item 14): xarray reads int16 packed with a float32
``scale_factor`` from references as float64 (JSON attributes have no float32), as it reads
kerchunk's own references of the same files; ``.astype("float32")`` is within float32's
rounding of its decoding of the files (docs/real-archives.md)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr

from arcoforge import bake, pattern_from_file_sequence
from arcoforge.errors import ValidationError
from arcoforge.recipe.steps import OpenWithKerchunk, WriteCombinedReference
from arcoforge.references.store import open_references
from arcoforge.testing import corpus
from arcoforge.testing.archives import write_oisst_archive
from arcoforge.testing.recipes import ref_recipe

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


def kerchunk_references(paths: list[Path], file_type: str, concat_dim: str) -> dict:
    """kerchunk's own references of ``paths``, combined along ``concat_dim`` if several."""
    pytest.importorskip("kerchunk", reason="kerchunk is the peer compared with")
    from kerchunk.combine import MultiZarrToZarr
    from kerchunk.hdf import SingleHdf5ToZarr
    from kerchunk.netCDF3 import NetCDF3ToZarr

    scan = SingleHdf5ToZarr if file_type == "netcdf4" else NetCDF3ToZarr
    singles = [scan(str(p), inline_threshold=0).translate() for p in paths]
    if len(singles) == 1:
        return singles[0]
    return MultiZarrToZarr(singles, concat_dims=[concat_dim]).translate()


def offset_kelvin(paths: list[Path]) -> None:
    """Give ``sst`` a float32 ``add_offset`` of 273.15 (its raw int16 values unchanged)."""
    for path in paths:
        with netCDF4.Dataset(path, "a") as nc:
            nc["sst"].add_offset = np.float32(273.15)


def assert_float64_within_float32_rounding(
    got: np.ndarray, decoded: np.ndarray, raw: np.ndarray, scale: np.float32, name: str
) -> None:
    """``got`` (float64, exact: int16 x float32 fits float64's mantissa) is within one
    float32 rounding of the product ``raw * scale`` and one of the sum that xarray's
    float32 decoding ``decoded`` made; with no offset, the sum rounds nothing."""
    assert np.array_equal(np.isnan(got), np.isnan(decoded)), name
    product = np.abs(raw.astype(np.float32) * scale)
    bound = (np.spacing(product).astype(np.float64) + np.spacing(np.abs(decoded))) / 2
    error = np.abs(got - decoded.astype(np.float64))
    assert (error[~np.isnan(got)] <= bound[~np.isnan(got)]).all(), name


def assert_as_kerchunk(got: np.ndarray, peer: xr.DataArray, scale: np.float32, file_type: str):
    """``got`` equals kerchunk's values: exactly for HDF5, whose references keep the file's
    float32 ``scale_factor`` as its float64 value; kerchunk's netCDF-3 references write it
    through ``str`` (0.01, not 0.009999999776482582), so theirs are off by that (under half
    a float32 ulp, relatively) and ours are the file's."""
    if file_type == "netcdf4":
        np.testing.assert_array_equal(got, peer.values)
        return
    assert peer.encoding["scale_factor"] == float(str(scale)) != float(scale)
    np.testing.assert_allclose(got, peer.values, rtol=2**-24, atol=0)


PACKED = {
    "netcdf4": ("NETCDF4", None),
    "netcdf3": ("NETCDF3_64BIT", None),
    "netcdf4-add_offset": ("NETCDF4", offset_kelvin),
}


@pytest.mark.parametrize("case", PACKED)
@pytest.mark.parametrize("name", TARGETS)
def test_packed_int16_with_float32_scale_reads_as_kerchunk_float64(tmp_path, name, case):
    file_format, change = PACKED[case]
    file_type = "netcdf3" if file_format.startswith("NETCDF3") else "netcdf4"
    paths = write_oisst_archive(tmp_path / "src", days=4, ny=18, nx=36, file_format=file_format)
    if change:
        change(paths)
    root, output = target(tmp_path, name)
    url = bake(ref_recipe(paths, output, file_type=file_type), root, workers=1).url
    peer = kerchunk_references(paths, file_type, "time")
    sources = {"paths": paths, "combine": "nested", "concat_dim": "time"}
    with (
        xr.open_mfdataset(**sources) as source,
        xr.open_mfdataset(**sources, mask_and_scale=False) as raw,
        xr.open_dataset(peer, engine="kerchunk", chunks=None) as kerchunk,
        open_references(str(url)) as out,
    ):
        for var in ("sst", "anom", "err", "ice"):
            assert raw[var].dtype == np.int16, var
            assert out[var].dtype == kerchunk[var].dtype == np.float64, var
            got, scale = out[var].values, raw[var].attrs["scale_factor"]
            assert_as_kerchunk(got, kerchunk[var], scale, file_type)
            decoded = source[var].values
            assert decoded.dtype == np.float32, var
            assert_float64_within_float32_rounding(got, decoded, raw[var].values, scale, var)
            if raw[var].attrs["add_offset"] == 0:  # one rounding: float32 gives it back
                np.testing.assert_array_equal(got.astype(np.float32), decoded, err_msg=var)
        assert raw.sst.attrs["add_offset"] == (np.float32(273.15) if change else 0)


def test_a_real_packed_file_reads_as_xarray_reads_the_file(tmp_path):
    """scipy's ``example_2.nc`` packs int32 with a float32 ``scale_factor`` and an int32
    ``add_offset``: xarray decodes the file to float64 (an integer offset), and so the
    references, value for value; kerchunk's too. Its dimension coordinate misses its value
    at index 3 (9999, the fill value), which both products refuse (tests/corpus/test_corpus.py):
    this copy holds 214 there, between its neighbours, its other bytes as they are."""
    raw = bytearray(corpus.scipy_nc("example_2.nc").read_bytes())
    assert struct.unpack(">5i", raw[212:232]) == (0, 71, 143, 9999, 286)
    raw[224:228] = struct.pack(">i", 214)
    path = tmp_path / "example_2.nc"
    path.write_bytes(bytes(raw))
    pattern = pattern_from_file_sequence([str(path)], "Temperature", file_type="netcdf3")
    recipe = pattern | OpenWithKerchunk() | WriteCombinedReference("ref")
    url = bake(recipe, tmp_path / "out", workers=1).url
    peer = kerchunk_references([path], "netcdf3", "Temperature")
    with (
        xr.open_dataset(path) as source,
        xr.open_dataset(peer, engine="kerchunk", chunks=None) as kerchunk,
        open_references(str(url)) as out,
    ):
        got = out.Temperature
        assert source.Temperature.dtype == got.dtype == kerchunk.Temperature.dtype
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got.values, source.Temperature.values)
        assert got.values[3] == 214 * float(np.float32(0.01)) + 20  # as xarray decodes
        assert_as_kerchunk(got.values, kerchunk.Temperature, np.float32(0.01), "netcdf3")
