"""Real files nobody here wrote (``arcoforge/testing/corpus.py``, ``docs/corpus.md``) bake to Zarr and to
JSON, Parquet and Icechunk references that equal xarray's reading of the sources (values,
dims, dtypes, attributes, calendars, bounds), or are refused in one line naming the file
and the cause. Cases that fail today are strict xfails naming the cause, so that they flip
when fixed."""

from __future__ import annotations

import base64
import json
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr

from arcoforge import ConcatDim, FilePattern, OpenURLWithFSSpec, OpenWithXarray, StoreToZarr, bake
from arcoforge import pattern_from_file_sequence as sequence
from arcoforge.errors import ArcoforgeError, SchemaError
from arcoforge.recipe.steps import OpenWithKerchunk, WriteCombinedReference
from arcoforge.references.store import open_references
from arcoforge.testing import corpus
from arcoforge.testing.archives import write_oisst_archive
from arcoforge.testing.httpserver import FileServer

pytest.importorskip("iris_sample_data", reason="the corpus needs the test extra")
DATA = Path(__file__).resolve().parents[1] / "data"


def data(name: str) -> Path:
    """A file copied into ``tests/data`` (from cfgrib's sdist, Apache-2.0)."""
    return DATA / name


GRIB = {"engine": "cfgrib", "backend_kwargs": {"indexpath": ""}, "decode_timedelta": True}
PRODUCTS = ("zarr", "json", "parquet", "icechunk")
CHAR_FILL_REFUSED = (
    "variable 'var6_char': chars with a _FillValue (b'b') cannot be written to Zarr v3 so "
    "that xarray reads them (it cannot decode the _FillValue of a |S1 array); bake with "
    "StoreToZarr(zarr_format=2)"
)
CHAR_FILL_ICECHUNK = (
    "variable 'var6_char': chars with a _FillValue (b'b') cannot be referenced in Icechunk so "
    "that xarray reads them (it cannot decode the Zarr v3 _FillValue of a byte string array); "
    "write JSON or Parquet references"
)

MISSING_TEMPERATURE = "{0}: coordinate 'Temperature' has 1 missing value(s) of 15, first at index 3"


@dataclass(frozen=True)
class Case:
    """A real file (or a series cut from one) and what each product makes of it: "ok", an
    xfail reason, or the first line of the refusal (by product, "refs" for every reference
    format; ``{0}`` is the first input's path, ``{1}`` the second's)."""

    make: Callable[[Path], list[Path]]
    dim: str
    file_type: str
    xfail: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    inline_threshold: int = 300


def _nemo(_: Path) -> list[Path]:
    return corpus.nemo_series()


def _cut(name: str, dim: str, sizes: list[int], model: str | None = None):
    def make(folder: Path) -> list[Path]:
        return corpus.split(corpus.iris(name), dim, sizes, folder / "src", model)

    return make


def _one(locate: Callable[[], Path]):
    return lambda _: [locate()]


def _grib_series(locate: Callable[[], Path]):
    return lambda folder: corpus.split_grib(locate(), folder / "src")


CASES = {
    # NEMO: three monthly files whose time_counter is 0 in each (the time is time_centered)
    "nemo-360day-series": Case(
        _nemo,
        "time_counter",
        "netcdf4",
        refused={
            "zarr": "time_counter 0.0 in {1} repeats time_counter 0.0 in {0}: inputs must be "
            "sorted along 'time_counter' without duplicates or overlaps",
            "refs": "cannot combine {1}: time_counter 0.0 is already in an earlier input (0.0 "
            "is before it); the inputs are not sorted along 'time_counter'",
        },
    ),
    "hadgem-a1b-360day-bounds": Case(
        _cut("A1B_north_america.nc", "time", [120, 120]),
        "time",
        "netcdf4",
    ),
    "hadgem-a1b-netcdf3-short-last": Case(
        _cut("A1B_north_america.nc", "time", [120, 118, 2], "NETCDF3_CLASSIC"),
        "time",
        "netcdf3",
        inline_threshold=20000,  # the last input's air_temperature (2 steps) is inline
    ),
    "ostia-gregorian-bounds": Case(
        _cut("ostia_monthly.nc", "time", [27, 27]),
        "time",
        "netcdf4",
    ),
    "era5-expver-vlen-strings": Case(_cut("vlstr_type.nc", "time", [100, 50]), "time", "netcdf4"),
    "soi-darwin-series": Case(_cut("SOI_Darwin.nc", "time", [1000, 776]), "time", "netcdf4"),
    "scipy-netcdf3-record": Case(_one(lambda: corpus.scipy_nc("example_1.nc")), "time", "netcdf3"),
    # packed int32, _FillValue and missing_value 9999 at index 3: xarray reads NaN there
    "scipy-netcdf3-missing-coordinate": Case(
        _one(lambda: corpus.scipy_nc("example_2.nc")),
        "Temperature",
        "netcdf3",
        refused={"zarr": MISSING_TEMPERATURE, "refs": MISSING_TEMPERATURE},
    ),
    "scipy-netcdf3-masked-chars": Case(
        _one(lambda: corpus.scipy_nc("example_3_maskedvals.nc")),
        "dim1",
        "netcdf3",
        refused={"zarr": CHAR_FILL_REFUSED, "icechunk": "{0}: " + CHAR_FILL_ICECHUNK},
    ),
    "space-weather-netcdf3-char-scalar": Case(
        _one(lambda: corpus.iris("space_weather.nc")),
        "height",
        "netcdf3",
    ),
    "ugrid-mesh-netcdf3-64bit": Case(
        _one(lambda: corpus.iris("mesh_C4_synthetic_float.nc")),
        "nexample_C4_face",
        "netcdf3",
    ),
    "grib2-members-levels-series": Case(
        _grib_series(lambda: corpus.xarray_data("example.grib")),
        "time",
        "grib",
    ),
    "era5-grib1-members-levels-series": Case(
        _grib_series(lambda: data("era5-levels-members.grib")),
        "time",
        "grib",
    ),
    "era5-grib1-scalar-time": Case(
        _one(lambda: data("era5-single-level-scalar-time.grib")),
        "time",
        "grib",
    ),
    "grib1-missing-values-series": Case(
        _grib_series(lambda: data("fields_with_missing_values.grib")),
        "time",
        "grib",
    ),
    "grib1-regular-ll-surface": Case(
        _one(lambda: data("regular_ll_sfc.grib")),
        "time",
        "grib",
    ),
    "grib1-isobaric-analysis": Case(
        _one(lambda: data("t_analysis_and_fc_0.grib")),
        "time",
        "grib",
    ),
    "cams-grib1-monthly": Case(
        _one(lambda: data("cams-egg4-monthly.grib")),
        "time",
        "grib",
    ),
    "polar-stereographic-grib2": Case(
        _one(lambda: corpus.iris("polar_stereo.grib2")),
        "time",
        "grib",
    ),
}


def _params():
    for name, case in CASES.items():
        for product in PRODUCTS:
            reason = case.xfail.get(product)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(name, product, marks=marks, id=f"{name}-{product}")


def _recipe(case: Case, paths: list[Path], product: str, zarr_format: int = 3):
    pattern = sequence([str(p) for p in paths], case.dim, file_type=case.file_type)
    if product == "zarr":
        return (
            pattern
            | OpenURLWithFSSpec()
            | OpenWithXarray(file_type=case.file_type)
            | StoreToZarr("out", zarr_format=zarr_format)
        )
    name = "reference.parquet" if product == "parquet" else "reference.json"
    return (
        pattern
        | OpenWithKerchunk(inline_threshold=case.inline_threshold)
        | WriteCombinedReference("out", concat_dims=[case.dim], output_file_name=name)
    )


@pytest.mark.parametrize(("name", "product"), list(_params()))
def test_real_file_bakes_and_equals_xarray_reading(tmp_path, name, product):
    case = CASES[name]
    paths = case.make(tmp_path)
    root = f"icechunk://{tmp_path / 'ic'}" if product == "icechunk" else tmp_path / "out"
    refused = case.refused.get(product, case.refused.get("refs" if product != "zarr" else ""))
    if refused:
        with pytest.raises(ArcoforgeError) as caught:
            bake(_recipe(case, paths, product), root, workers=1)
        assert str(caught.value) == refused.format(*paths)
        return
    result = bake(_recipe(case, paths, product), root, workers=1)
    src = _sources(paths, case)
    if product == "zarr":
        with xr.open_zarr(result.url) as out:
            assert_same(out, src)
    else:
        with open_references(str(result.url)) as out:
            assert_same(out, src)


def _sources(paths: list[Path], case: Case) -> xr.Dataset:
    """The sources as xarray reads them, concatenated along the case's dim."""
    grib = case.file_type == "grib"
    opened = [xr.open_dataset(p, **(GRIB if grib else {})).load() for p in paths]
    return xr.concat(  # a scalar coordinate of one file becomes its dim, as in a bake
        opened,
        dim=case.dim,
        data_vars="minimal",
        coords="different" if grib else "minimal",
        compat="equals" if grib else "override",
    )


def assert_same(out: xr.Dataset, src: xr.Dataset) -> None:
    """``out`` holds ``src``'s variables with their dims, dtypes, values, attributes and
    calendars, and its attributes."""
    assert sorted(out.variables) == sorted(src.variables)
    for name, want in src.variables.items():
        got = out[name].variable
        assert got.dims == want.dims, name
        assert _kind(got.dtype) == _kind(want.dtype), f"{name}: {got.dtype} != {want.dtype}"
        if want.dtype.kind not in "OUS":
            assert got.dtype == want.dtype, f"{name}: {got.dtype} != {want.dtype}"
        _assert_values(got.values, want.values, name)
        assert _stable(got.attrs) == _stable(want.attrs), name
        if "calendar" in want.encoding:  # else the default, which a store may name
            assert got.encoding.get("calendar") == want.encoding["calendar"], name
    assert _stable(out.attrs) == _stable(src.attrs)


def _kind(dtype: np.dtype) -> str:
    """Strings are strings however held (``<U4``, ``object``, numpy's StringDType)."""
    return "text" if dtype.kind in "OUT" else dtype.kind


def _assert_values(got: np.ndarray, want: np.ndarray, name: str) -> None:
    if want.dtype.kind in "OUT":
        assert [str(v) for v in got.ravel()] == [str(v) for v in want.ravel()], name
    elif want.dtype.kind in "fc":
        np.testing.assert_array_equal(got, want, err_msg=name)
    else:
        assert np.array_equal(got, want), name


def _stable(attrs: dict) -> dict:
    """``attrs`` as lists and scalars, less what a reader writes at open time (cfgrib's
    ``history``)."""
    return {
        k: np.asarray(v).tolist()
        for k, v in attrs.items()
        if not (k == "history" and "cfgrib" in str(v))
    }


def _reference_json(tmp_path: Path, case: Case, paths: list[Path]) -> dict:
    result = bake(_recipe(case, paths, "json"), tmp_path / "out", workers=1)
    return json.loads(Path(result.url.removeprefix("file://")).read_text())["refs"]


def test_netcdf3_references_stay_big_endian_when_a_short_last_input_is_inline(tmp_path):
    # issue 16 item 6: np.concatenate made the inline '>f4' native, so the bake was refused
    case = CASES["hadgem-a1b-netcdf3-short-last"]
    paths = case.make(tmp_path)
    refs = _reference_json(tmp_path, case, paths)
    meta = json.loads(refs["air_temperature/.zarray"])
    assert (meta["dtype"], meta["chunks"], meta["shape"]) == (">f4", [1, 37, 49], [240, 37, 49])
    assert isinstance(refs["air_temperature/0.0.0"], list)  # the first input: referenced
    last = refs["air_temperature/239.0.0"]  # the last input's: inline, bytes as stored
    with netCDF4.Dataset(paths[-1]) as nc:
        nc.set_auto_maskandscale(False)
        stored = nc["air_temperature"][-1].astype(">f4").tobytes()
    assert base64.b64decode(last.removeprefix("base64:")) == stored
    with open_references(str(tmp_path / "out" / "out" / "reference.json")) as out:
        assert out.air_temperature.dtype == np.float32


def test_netcdf3_names_lose_the_trailing_nul_some_writers_count(tmp_path):
    # issue 16 item 11: 'lat' written as 'lat\0' (its length counts the NUL, which was
    # already there as padding): the netCDF library reads 'lat'; so must the scan
    raw = bytearray(corpus.scipy_nc("example_1.nc").read_bytes())
    for at in (16, 368):  # the length of the dimension's name, then of the variable's
        assert raw[at : at + 7] == b"\x00\x00\x00\x03lat"
        raw[at + 3] = 4
    path = tmp_path / "nul.nc"
    path.write_bytes(bytes(raw))
    case = Case(lambda _: [path], "time", "netcdf3")
    refs = _reference_json(tmp_path, case, [path])
    assert json.loads(refs["lat/.zattrs"])["_ARRAY_DIMENSIONS"] == ["lat"]
    with open_references(str(tmp_path / "out" / "out" / "reference.json")) as out:
        assert_same(out, _sources([path], case))


def test_strings_and_chars_are_inline_as_kerchunk_holds_them(tmp_path):
    # issue 16 item 10: "variable 'expver': HDF5 type object cannot be referenced"
    case = CASES["era5-expver-vlen-strings"]
    paths = case.make(tmp_path)
    refs = _reference_json(tmp_path, case, paths)
    meta = json.loads(refs["expver/.zarray"])
    assert (meta["dtype"], meta["filters"]) == ("|O", [{"id": "vlen-utf8"}])
    case = CASES["scipy-netcdf3-masked-chars"]
    refs = _reference_json(tmp_path / "chars", case, case.make(tmp_path))
    meta = json.loads(refs["var6_char/.zarray"])
    assert (meta["dtype"], meta["fill_value"]) == ("|S1", base64.b64encode(b"b").decode())


def test_masked_chars_and_two_fill_values_bake_to_zarr_v2(tmp_path):
    # issue 16 item 2's case: the char variable var6_char(dim1) shares its dim with numbers,
    # so xarray keeps it as chars (masked where b'b'); var3 has _FillValue 1 and
    # missing_value 2, which xarray decodes but cannot encode: it is stored decoded
    case = CASES["scipy-netcdf3-masked-chars"]
    paths = case.make(tmp_path)
    result = bake(_recipe(case, paths, "zarr", zarr_format=2), tmp_path / "out", workers=1)
    with xr.open_zarr(result.url) as out:
        assert_same(out, _sources(paths, case))
        chars = out.var6_char.values
        assert (chars.dtype, chars[0], chars[2]) == (object, b"a", b"c") and np.isnan(chars[1])
        assert out.var6_char.encoding["_FillValue"] == b"b"
        np.testing.assert_array_equal(out.var3_fillvalAndMissingValue, [np.nan, np.nan, 3.0])


@pytest.mark.parametrize("product", ["json", "parquet", "icechunk"])
def test_a_missing_coordinate_value_is_refused_before_anything_is_written(tmp_path, product):
    # the references of example_2.nc were published, and `arcoforge validate` then said
    # "Temperature: 1 missing value(s), first at index 3"; the Zarr product's scan refuses
    # the file: so does the references product's, in the same line, before writing
    case = CASES["scipy-netcdf3-missing-coordinate"]
    paths = case.make(tmp_path)
    root = tmp_path / ("ic" if product == "icechunk" else "out")
    url = f"icechunk://{root}" if product == "icechunk" else root
    with pytest.raises(SchemaError) as caught:
        bake(_recipe(case, paths, product), url, workers=1)
    assert str(caught.value) == MISSING_TEMPERATURE.format(*paths)
    folder = "" if product == "icechunk" else "out/"  # where the references' name is
    name = {"json": "reference.json", "parquet": "reference.parquet", "icechunk": "out"}
    made = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert len(made) == 2  # no store, no staging: the bake's lock and its run record
    assert made[1] == f"{folder}.{name[product]}.arcoforge/lock"
    assert made[0].startswith(f"{folder}.arcoforge-runs/") and made[0].endswith(".json")


def _scenarios(paths: dict[str, Path], name: str = "reference.json", dim: str = "scenario"):
    """``paths`` (one file a key) along a new dim ``dim``, in the order of ``paths``."""
    pattern = FilePattern(lambda **key: str(paths[key[dim]]), ConcatDim(dim, list(paths)))
    return (
        pattern
        | OpenWithKerchunk(file_type="netcdf4")
        | WriteCombinedReference("out", concat_dims=[dim], output_file_name=name)
    )


@pytest.mark.parametrize("name", ["reference.json", "reference.parquet"])
def test_scenarios_along_a_new_dim_equal_xarray_reading(tmp_path, name):
    paths = {"A1B": corpus.iris("A1B_north_america.nc"), "E1": corpus.iris("E1_north_america.nc")}
    result = bake(_scenarios(paths, name), tmp_path / "out", workers=1)
    src = xr.combine_nested(
        [xr.open_dataset(p) for p in paths.values()],
        concat_dim="scenario",
        data_vars="all",
        coords="all",  # scalar and auxiliary coordinates too, as references lead them
        compat="override",
        combine_attrs="override",  # the first input's, as references keep them
    ).assign_coords(scenario=list(paths))
    with open_references(str(result.url)) as out:
        assert_same(out, src)


@pytest.mark.parametrize("product", ["json", "parquet", "icechunk"])
def test_experiments_as_string_keys_of_any_width_in_the_pattern_s_order(tmp_path, product):
    # issue 16 item 7: "realization values do not fit the first input's <U12"; labels are
    # kept in the pattern's order (E1 before A1B), the later one wider than the first
    paths = {"E1": corpus.iris("E1_north_america.nc"), "A1B": corpus.iris("A1B_north_america.nc")}
    paths["A1B-r10i1p1"] = paths["A1B"]  # wider still: the same file under a longer label
    name = "reference.parquet" if product == "parquet" else "reference.json"
    root = f"icechunk://{tmp_path / 'ic'}" if product == "icechunk" else tmp_path / "out"
    result = bake(_scenarios(paths, name, "experiment"), root, workers=1)
    assert result.dims["experiment"] == 3
    assert result.stats["validated_inputs"] == 2
    src = xr.combine_nested(
        [xr.open_dataset(p) for p in paths.values()],
        concat_dim="experiment",
        data_vars="all",
        coords="all",
        compat="override",
        combine_attrs="override",
    ).assign_coords(experiment=list(paths))
    with open_references(str(result.url)) as out:
        assert out.experiment.values.tolist() == ["E1", "A1B", "A1B-r10i1p1"]
        assert_same(out, src)


def test_a_string_key_given_twice_is_refused(tmp_path):
    e1 = corpus.iris("E1_north_america.nc")
    pattern = FilePattern(lambda experiment: str(e1), ConcatDim("experiment", ["E1", "A", "E1"]))
    recipe = (
        pattern
        | OpenWithKerchunk(file_type="netcdf4")
        | WriteCombinedReference("out", concat_dims=["experiment"])
    )
    with pytest.raises(ArcoforgeError) as caught:
        bake(recipe, tmp_path / "out", workers=1)
    assert str(caught.value) == (
        f"cannot combine {e1}: experiment E1 is already in an earlier input; the inputs hold "
        "each experiment once"
    )


def test_every_input_s_coordinates_are_compared_not_only_the_first_and_last(tmp_path):
    # issue 16 item 8: the middle scenario's time (the A1B run's second half) was combined
    # silently with the first's; the in-bake check reads only the first and last inputs
    a1b = corpus.split(corpus.iris("A1B_north_america.nc"), "time", [120, 120], tmp_path / "a")
    e1 = corpus.split(corpus.iris("E1_north_america.nc"), "time", [120, 120], tmp_path / "e")
    paths = {"A1B": a1b[0], "A1B-late": a1b[1], "E1": e1[0]}
    with pytest.raises(ArcoforgeError) as caught:
        bake(_scenarios(paths), tmp_path / "out", workers=1)
    assert str(caught.value) == (
        f"{a1b[1]}: coordinate 'time' has 90000.0 at 0, not -946800.0, unlike the first input"
    )
    assert not (tmp_path / "out" / "out" / "reference.json").exists()
    # the same times, on another calendar (only the attribute is changed, in a copy)
    noleap = tmp_path / "e" / "E1_noleap.nc"
    shutil.copyfile(e1[0], noleap)
    with netCDF4.Dataset(noleap, "a") as nc:
        nc["time"].calendar = "noleap"
    paths = {"A1B": a1b[0], "E1-noleap": noleap, "E1": e1[0]}
    with pytest.raises(ArcoforgeError) as caught:
        bake(_scenarios(paths), tmp_path / "out", workers=1)
    assert str(caught.value) == (
        f"{noleap}: coordinate 'time' has calendar 'noleap', not '360_day', unlike the first input"
    )


@pytest.mark.parametrize("name", ["reference.json", "reference.parquet"])
def test_grib_references_over_http_fetch_each_file_once_through_the_cache(tmp_path, name):
    # issue 16 item 9: "GRIB inputs are scanned from local files only"
    paths = corpus.split_grib(data("era5-levels-members.grib"), tmp_path / "src")
    with FileServer(paths[0].parent) as server:
        urls = [f"{server.url}/{p.name}" for p in paths]
        recipe = (
            sequence(urls, "time", file_type="grib")
            | OpenWithKerchunk()
            | WriteCombinedReference("out", concat_dims=["time"], output_file_name=name)
        )
        result = bake(recipe, tmp_path / "out", workers=1, cache=str(tmp_path / "cache"))
        fetched = Counter(server.requests)
        # each file once whole (its size, then its bytes) into the cache, which the check
        # reads again; the check reads the first and last inputs' messages through the
        # references, one range request a message
        messages = [corpus.grib_messages(p) for p in paths]
        ends = {0: 2 + messages[0], len(paths) - 1: 2 + messages[-1]}
        assert [fetched[f"/{p.name}"] for p in paths] == [ends.get(k, 2) for k in range(len(paths))]
        assert result.stats["validated_inputs"] == 2
        with open_references(str(result.url)) as out:
            assert_same(out, _sources(paths, Case(lambda _: paths, "time", "grib")))
        if name == "reference.json":  # the chunks are read from the server, not the cache
            refs = json.loads(Path(result.url.removeprefix("file://")).read_text())["refs"]
            assert refs["t/0.0.0.0.0"][0] == urls[0]


def test_packed_int16_decodes_to_float64_equal_to_the_float32_of_the_files(tmp_path):
    # issue 16 item 14, as README's "Packed variables" explains: JSON attributes are float64
    paths = write_oisst_archive(tmp_path / "src", days=2, ny=18, nx=36)
    case = Case(lambda _: paths, "time", "netcdf4")
    result = bake(_recipe(case, paths, "json"), tmp_path / "out", workers=1)
    src = _sources(paths, case)
    assert src.sst.encoding["dtype"] == np.int16 and src.sst.dtype == np.float32
    assert src.sst.encoding["add_offset"] == 0  # else float64 may round otherwise
    with open_references(str(result.url)) as out:
        assert out.sst.dtype == np.float64
        np.testing.assert_array_equal(out.sst.values.astype(np.float32), src.sst.values)
