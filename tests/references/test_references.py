"""Reference stores (kerchunk JSON and Parquet) equal their sources value for value."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from arcoforge import (
    ConcatDim,
    FilePattern,
    MergeDim,
    OpenWithXarray,
    StoreToZarr,
    bake,
    pattern_from_file_sequence,
)
from arcoforge.errors import ArcoforgeError, RecipeError, SchemaError, SourceError
from arcoforge.recipe.steps import OpenWithKerchunk, WriteCombinedReference
from arcoforge.references.store import open_references
from arcoforge.testing.archives import (
    oisst_dataset,
    write_files,
    write_grib_archive,
    write_merge_archive,
    write_oisst_archive,
)
from arcoforge.testing.compare import assert_matches_sources
from arcoforge.testing.recipes import FORMATS, ref_recipe


@pytest.mark.parametrize("name", FORMATS)
def test_netcdf4_chunked_compressed_shuffled(tmp_path, name):
    paths = write_oisst_archive(tmp_path / "src", days=6, ny=18, nx=36, steps_per_file=2)
    result = bake(ref_recipe(paths, name), tmp_path / "out", workers=2)
    assert result.dims == {"time": 6, "lat": 18, "lon": 36}
    assert result.stats["validated_inputs"] == 2
    out = assert_matches_sources(result.url, paths)
    assert out.time.dtype.kind == "M"
    assert out.sst.attrs["units"] == "Celsius"


@pytest.mark.parametrize("name", FORMATS)
def test_netcdf4_contiguous(tmp_path, name):
    paths = write_oisst_archive(tmp_path / "src", days=3, ny=18, nx=36, chunked=False)
    result = bake(ref_recipe(paths, name), tmp_path / "out", workers=1)
    assert_matches_sources(result.url, paths)


def test_netcdf4_spatial_chunks_fletcher32_unpacked_floats(tmp_path):
    ds = oisst_dataset(days=4, ny=18, nx=36, variables=("sst", "ice"))
    paths = []
    for day in range(4):
        path = tmp_path / "src" / f"day{day}.nc"
        path.parent.mkdir(exist_ok=True)
        enc = {
            "sst": {"chunksizes": (1, 9, 12), "zlib": True, "fletcher32": True},
            "ice": {"chunksizes": (1, 18, 7), "zlib": True, "complevel": 1, "shuffle": False},
        }
        ds.isel(time=[day]).to_netcdf(path, encoding=enc)
        paths.append(path)
    result = bake(ref_recipe(paths, "reference.parquet", record_size=5), tmp_path / "out")
    out = assert_matches_sources(result.url, paths)
    assert out.sst.dtype == np.float32


def test_parquet_records_read_in_part_as_fsspec_reads_them(tmp_path):
    """The references the check reads of a Parquet store's records (those of the chunks
    that meet two spans of time) are what fsspec's lazy reader gives, key by key; the
    records hold offsets and sizes as integers for fastparquet, the engine it reads with."""
    from fsspec.implementations.reference import LazyReferenceMapper

    from arcoforge.references.formats.parquet import read_overlapping

    paths = write_oisst_archive(tmp_path / "src", days=6, ny=18, nx=36, steps_per_file=2)
    recipe = ref_recipe(paths, "reference.parquet", record_size=2)
    url = bake(recipe, tmp_path / "out").url
    part = read_overlapping(url, "time", [(2, 4), (5, 6)])
    lazy = LazyReferenceMapper(url)
    chunks = [k for k in part if not k.rsplit("/", 1)[-1].startswith(".")]
    assert {k.split("/")[0] for k in chunks} >= {"sst", "anom", "time", "lat", "lon"}
    assert {k for k in chunks if k.startswith("sst/")} == {"sst/2.0.0", "sst/3.0.0", "sst/5.0.0"}
    for key in chunks:
        assert part[key] == lazy[key], key
        if isinstance(part[key], list):
            assert all(type(v) is int for v in part[key][1:]), key
    frame = pd.read_parquet(f"{url}/sst/refs.1.parq", engine="fastparquet")
    assert frame["offset"].dtype == frame["size"].dtype == np.int64


def test_json_and_parquet_agree(tmp_path):
    paths = write_oisst_archive(tmp_path / "src", days=4, ny=18, nx=36)
    urls = [bake(ref_recipe(paths, n), tmp_path / n).url for n in FORMATS]
    with open_references(urls[0]) as a, open_references(urls[1]) as b:
        xr.testing.assert_identical(a.load(), b.load())


@pytest.mark.parametrize("name", FORMATS)
def test_merge_dim(tmp_path, name):
    by_var = write_merge_archive(tmp_path / "src", days=3, ny=18, nx=36)
    dates = pd.date_range("1981-09-01", periods=3)
    pattern = FilePattern(
        lambda variable, time: str(tmp_path / "src" / f"{variable}_{time:%Y%m%d}.nc"),
        MergeDim("variable", ["sst", "ice"]),
        ConcatDim("time", list(dates)),
    )
    recipe = pattern | OpenWithKerchunk() | WriteCombinedReference("ref", output_file_name=name)
    result = bake(recipe, tmp_path / "out", workers=2)
    src = xr.merge(
        [xr.open_mfdataset(p, combine="nested", concat_dim="time") for p in by_var.values()]
    ).load()
    with open_references(result.url) as out:
        assert set(out.data_vars) == {"sst", "ice"}
        for name_, var in src.variables.items():
            np.testing.assert_array_equal(out[name_].values.astype(var.dtype), var.values)


def test_uneven_inputs_are_refused_naming_the_input(tmp_path):
    ds = oisst_dataset(days=5, ny=10, nx=20)
    first = write_files(ds.isel(time=slice(0, 3)), tmp_path / "src", steps_per_file=3)
    rest = write_files(ds.isel(time=slice(3, 5)), tmp_path / "src", steps_per_file=2)
    assert bake(ref_recipe([*first, *rest]), tmp_path / "out").dims["time"] == 5
    other = write_oisst_archive(tmp_path / "grid", days=1, ny=12, nx=20)
    bad = ref_recipe([*first, *other])
    refused = r"oisst.*19810901.nc: coordinate 'lat' has 12 values, not 10, unlike the first input"
    with pytest.raises(ArcoforgeError, match=refused):
        bake(bad, tmp_path / "bad")
    assert not (tmp_path / "bad" / "ref" / "reference.json").exists()


@pytest.mark.parametrize("name", FORMATS)
def test_netcdf3(tmp_path, name):
    paths = write_oisst_archive(
        tmp_path / "src", days=4, ny=18, nx=36, steps_per_file=2, file_format="NETCDF3_64BIT"
    )
    result = bake(ref_recipe(paths, name, file_type="netcdf3"), tmp_path / "out", workers=2)
    assert result.dims == {"time": 4, "lat": 18, "lon": 36}
    assert_matches_sources(result.url, paths)


@pytest.mark.parametrize("variables", [("sst",), ("sst", "ice")])
def test_netcdf3_classic_record_variables_with_padding(tmp_path, variables):
    ds = oisst_dataset(days=4, ny=9, nx=21, variables=variables)
    packed = {"dtype": "int16", "scale_factor": 0.01, "_FillValue": -999}
    paths = []
    for i in range(2):
        path = tmp_path / f"part{i}.nc"
        ds.isel(time=slice(2 * i, 2 * i + 2)).to_netcdf(
            path,
            format="NETCDF3_CLASSIC",
            unlimited_dims=["time"],
            encoding={v: packed for v in variables},
        )
        paths.append(path)
    result = bake(ref_recipe(paths, file_type="netcdf3"), tmp_path / "out")
    assert_matches_sources(result.url, paths)


def test_variables_inlined_whole_keep_their_fill_value(tmp_path):
    paths = write_oisst_archive(tmp_path / "src", days=3, ny=12, nx=20)  # NaN over land
    pattern = pattern_from_file_sequence([str(p) for p in paths], "time")
    opener = OpenWithKerchunk(inline_threshold=1 << 20)  # every variable inline
    result = bake(pattern | opener | WriteCombinedReference("ref"), tmp_path / "out")
    out = assert_matches_sources(result.url, paths)
    assert np.isnan(out.sst.values).any()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_inputs(tmp_path, zarr_format):
    ds = oisst_dataset(days=4, ny=18, nx=36)
    stores = []
    for i in range(2):
        store = tmp_path / "src" / f"part{i}.zarr"
        part = ds.isel(time=slice(2 * i, 2 * i + 2)).chunk({"time": 1, "lat": 9})
        part.to_zarr(store, zarr_format=zarr_format, consolidated=False)
        stores.append(store)
    result = bake(ref_recipe(stores, "reference.parquet", file_type="zarr"), tmp_path / "out")
    assert_matches_sources(result.url, stores, engine="zarr", consolidated=False)


def _inputs_missing_lat(folder, file_type: str, fill, zarr_format: int) -> list:
    """Two inputs along time whose second's ``lat`` is missing at 5 and 7: stored as
    ``fill`` (its ``_FillValue``), or as NaN where ``fill`` is None."""
    ds = oisst_dataset(days=4, ny=18, nx=36)
    folder.mkdir()
    paths = []
    for i in range(2):
        part = ds.isel(time=slice(2 * i, 2 * i + 2))
        if i:
            lat = part.lat.values.copy()
            lat[[5, 7]] = np.nan
            part = part.assign_coords(lat=("lat", lat, part.lat.attrs))
        encoding = {"lat": {"_FillValue": fill}}
        if file_type == "zarr":
            path = folder / f"part{i}.zarr"
            part.to_zarr(path, zarr_format=zarr_format, consolidated=False, encoding=encoding)
        else:
            path = folder / f"part{i}.nc"
            form = "NETCDF3_64BIT" if file_type == "netcdf3" else "NETCDF4"
            part.to_netcdf(path, format=form, encoding=encoding)
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    ("file_type", "fill", "zarr_format"),
    [
        ("netcdf4", None, 0),
        ("netcdf4", -999.0, 0),
        ("netcdf3", -999.0, 0),
        ("zarr", None, 3),
        ("zarr", -999.0, 2),
        ("zarr", -999.0, 3),
    ],
)
def test_missing_values_in_a_dimension_coordinate_are_refused_by_the_scan(
    tmp_path, file_type, fill, zarr_format
):
    """As the Zarr product's scan refuses them, in the same line, before anything is
    written: a missing value in a dimension coordinate (``lat``, not the concat dim), NaN
    or a fill value, in netCDF-4, netCDF-3, and Zarr (v2: the array's fill value; v3: its
    ``_FillValue`` attribute) inputs."""
    paths = _inputs_missing_lat(tmp_path / "src", file_type, fill, zarr_format)
    engine = "zarr" if file_type == "zarr" else None
    with xr.open_dataset(paths[1], engine=engine, mask_and_scale=False) as raw:
        stored = raw.lat.values[[5, 7]]
        assert np.isnan(stored).all() if fill is None else (stored == fill).all()
    with xr.open_dataset(paths[1], engine=engine) as src:
        assert np.flatnonzero(np.isnan(src.lat.values)).tolist() == [5, 7]
    line = f"{paths[1]}: coordinate 'lat' has 2 missing value(s) of 18, first at index 5"
    with pytest.raises(SchemaError) as refused:
        bake(ref_recipe(paths, file_type=file_type), tmp_path / "out", workers=1)
    assert str(refused.value) == line
    assert not (tmp_path / "out" / "ref" / "reference.json").exists()
    pattern = pattern_from_file_sequence([str(p) for p in paths], "time", file_type=file_type)
    with pytest.raises(SchemaError) as zarr_refused:
        bake(pattern | OpenWithXarray() | StoreToZarr("out.zarr"), tmp_path / "z", workers=1)
    assert str(zarr_refused.value) == line


def test_sharded_zarr_v3_inputs(tmp_path):
    ds = oisst_dataset(days=6, ny=18, nx=36)
    stores = []
    for i in range(2):
        store = tmp_path / "src" / f"part{i}.zarr"
        part = ds.isel(time=slice(3 * i, 3 * i + 3))
        # 3 steps in shards of 2 x 18 x 36 holding chunks of 1 x 9 x 36: the second shard is
        # cut by the array's end, its index marks the chunks beyond it as absent
        inner = {"chunks": (1, 9, 36), "shards": (2, 18, 36)}
        part.to_zarr(store, zarr_format=3, consolidated=False, encoding=dict.fromkeys(ds, inner))
        stores.append(store)
    result = bake(ref_recipe(stores, file_type="zarr"), tmp_path / "out")
    assert result.stats["validated_inputs"] == 2
    assert_matches_sources(result.url, stores, engine="zarr", consolidated=False)


GRIB = {"engine": "cfgrib", "backend_kwargs": {"indexpath": ""}}


@pytest.mark.parametrize(
    "layout",
    [
        {"steps_per_file": 1},
        {"steps_per_file": 2, "members": 3},
        {"steps_per_file": 2, "levels": (500, 850), "variables": ("t", "u")},
        {"steps_per_file": 1, "edition": 1, "variables": ("2t", "msl")},
        {"steps_per_file": 2, "edition": 1, "levels": (500, 850), "variables": ("t",)},
    ],
    ids=["grib2-one-time", "grib2-members", "grib2-levels", "grib1", "grib1-levels"],
)
def test_grib(tmp_path, layout):
    pytest.importorskip("cfgrib", reason="GRIB needs the [grib] extra")
    pytest.importorskip("kerchunk", reason="GRIB references need the [virtual] extra")
    paths = write_grib_archive(tmp_path / "src", days=2, **layout)
    result = bake(ref_recipe(paths, file_type="grib"), tmp_path / "out", workers=2)
    assert result.stats["validated_inputs"] == 2
    assert_matches_sources(result.url, paths, coords="different", **GRIB)


def test_grib_filter_keeps_one_level_type_of_files_that_mix_them(tmp_path):
    pytest.importorskip("cfgrib", reason="GRIB needs the [grib] extra")
    # t at the surface and t on pressure levels: cfgrib cannot open them as one dataset
    surface = write_grib_archive(tmp_path / "sfc", days=2, variables=("t",))
    upper = write_grib_archive(tmp_path / "pl", days=2, variables=("t",), levels=(500, 850))
    mixed = []
    for sfc, pl in zip(surface, upper, strict=True):  # a GRIB file is its messages, end to end
        mixed.append(tmp_path / "mixed" / sfc.name)
        mixed[-1].parent.mkdir(exist_ok=True)
        mixed[-1].write_bytes(sfc.read_bytes() + pl.read_bytes())
    with pytest.raises(SourceError, match=r"mixed/analysis-2020010100\.grib2: cannot scan"):
        bake(ref_recipe(mixed, file_type="grib"), tmp_path / "unfiltered")
    pattern = pattern_from_file_sequence([str(p) for p in mixed], "time", file_type="grib")
    for level, sources in (("isobaricInhPa", upper), ("surface", surface)):
        opener = OpenWithKerchunk(kerchunk_open_kwargs={"filter": {"typeOfLevel": level}})
        result = bake(pattern | opener | WriteCombinedReference(level), tmp_path / "out")
        assert result.stats["validated_inputs"] == 2
        out = assert_matches_sources(result.url, sources, coords="different", **GRIB)
        assert list(out.data_vars) == ["t"]
        assert ("isobaricInhPa" in out.t.dims) == (level == "isobaricInhPa")
    with pytest.raises(RecipeError, match="kerchunk_open_kwargs \\['filter_by_keys'\\]"):
        OpenWithKerchunk(kerchunk_open_kwargs={"filter_by_keys": {"typeOfLevel": "surface"}})


def test_identical_dims_are_checked(tmp_path):
    paths = write_oisst_archive(tmp_path / "src", days=2, ny=12, nx=20)
    other = oisst_dataset(days=1, ny=12, nx=20, start="1981-09-03")
    shifted = write_files(other.assign_coords(lon=other.lon + 1), tmp_path / "shifted")
    ok = ref_recipe(paths, identical_dims=["lat", "lon"])
    assert bake(ok, tmp_path / "ok").dims["time"] == 2
    bad = ref_recipe([*paths, *shifted], identical_dims=["lat", "lon"])
    with pytest.raises(ArcoforgeError, match=r"shifted/.*\.nc: lon differs from the first"):
        bake(bad, tmp_path / "bad")


def test_cli_bake_dry_run_append_and_errors(tmp_path):
    import subprocess
    import sys

    from arcoforge.cli.templates import META
    from arcoforge.testing.archives import write_corrupt_file

    write_oisst_archive(tmp_path / "src", days=3, ny=12, nx=20)
    feedstock = tmp_path / "feedstock"
    feedstock.mkdir()
    (feedstock / "meta.yaml").write_text(META.format(title="References", ident="refs"))
    (feedstock / "recipe.py").write_text(
        "import glob\n"
        "from arcoforge import OpenWithKerchunk, WriteCombinedReference\n"
        "from arcoforge import pattern_from_file_sequence\n"
        f"paths = sorted(glob.glob({str(tmp_path / 'src' / '*.nc')!r}))\n"
        "recipe = (pattern_from_file_sequence(paths, 'time') | OpenWithKerchunk()\n"
        "          | WriteCombinedReference('ref', output_file_name='reference.parquet'))\n"
    )

    def run(*args):
        command = [sys.executable, "-m", "arcoforge.cli", "bake", str(feedstock), *args]
        command += ["--target-root", str(tmp_path / "out")]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    dry = run("--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert '"references_estimate": 12' in dry.stdout
    assert run("--json").returncode == 0
    write_oisst_archive(tmp_path / "src", days=4, ny=12, nx=20)
    appended = run("--append", "--json")
    assert appended.returncode == 0, appended.stderr
    assert_matches_sources(
        tmp_path / "out" / "ref" / "reference.parquet", sorted((tmp_path / "src").glob("*.nc"))
    )
    write_corrupt_file(tmp_path / "src" / "oisst-avhrr-v02r01.19810905.nc")
    failed = run("--append")
    assert failed.returncode == 1
    assert "19810905.nc: cannot scan as netcdf4" in failed.stderr
    assert "Traceback" not in failed.stderr
    lines = failed.stderr.strip().splitlines()  # progress lines, then the one error line
    assert [line for line in lines if line.startswith("error:")] == lines[-1:]


@pytest.mark.parametrize("name", FORMATS)
def test_inputs_over_http(tmp_path, small_archive, served, name):
    urls = [f"{served.url}/{p.name}" for p in small_archive]
    result = bake(ref_recipe(urls, name), tmp_path / "out", workers=2)
    assert result.stats["validated_inputs"] == 2
    assert_matches_sources(result.url, small_archive)


def test_duplicate_or_unsorted_steps_are_refused(tmp_path):
    paths = write_oisst_archive(tmp_path / "src", days=3, ny=12, nx=20)
    copy = write_files(oisst_dataset(days=2, ny=12, nx=20).isel(time=[1]), tmp_path / "dup")
    with pytest.raises(ArcoforgeError, match=r"dup/.*: time 1981-09-02 12:00:00 is already in"):
        bake(ref_recipe([*paths, *copy]), tmp_path / "a")
    with pytest.raises(ArcoforgeError, match=r"19810902.nc: time .* not sorted along 'time'"):
        bake(ref_recipe([paths[0], paths[2], paths[1]]), tmp_path / "b")
    assert not (tmp_path / "a" / "ref" / "reference.json").exists()


def test_parquet_without_pyarrow_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    """Without pyarrow a Parquet bake stops with a one-line error naming the extra to
    install, and publishes nothing."""
    paths = write_oisst_archive(tmp_path / "src", days=2, ny=6, nx=12)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ArcoforgeError, match=r"^Parquet references need pyarrow: pip install"):
        bake(ref_recipe(paths, "reference.parquet"), tmp_path / "out")
    assert not (tmp_path / "out" / "ref" / "reference.parquet").exists()
