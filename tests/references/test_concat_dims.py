"""References combined along several concat dims (one file per time and member) equal
their sources combined by xarray, value for value; the check refuses tampered ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from arcoforge import ConcatDim, FilePattern, MergeDim, bake
from arcoforge.errors import AppendError, ValidationError
from arcoforge.recipe.steps import OpenWithKerchunk, WriteCombinedReference
from arcoforge.references import held
from arcoforge.references.append import plan_reference_append
from arcoforge.references.check import CheckTask, check_decoded, check_input
from arcoforge.references.combine import CombineError, concat_grid
from arcoforge.references.formats import json as kerchunk_json
from arcoforge.references.formats import parquet as kerchunk
from arcoforge.references.inputs import ScanConfig
from arcoforge.references.plan import HELD, ReferenceState, describe, make_reference_plan
from arcoforge.references.scan import scan_input
from arcoforge.references.store import open_references
from arcoforge.testing.ensembles import (
    CHAR_MEMBERS,
    char_members,
    member_file,
    members_combined,
    members_pattern,
    one_member_per_file,
)
from arcoforge.testing.recipes import FORMATS, references_recipe

TIMES, MEMBERS = 3, 2
MEMBER_KEYS = [10, 20]


def ensemble(root: Path, layout: str, times=TIMES) -> FilePattern:
    root.mkdir(parents=True, exist_ok=True)
    for t in range(times):
        for m in MEMBER_KEYS:
            member_file(root, t, m, layout)
    return FilePattern(
        lambda time, member: str(root / f"tas_t{time}_m{member}.nc"),
        ConcatDim("time", list(range(times))),
        ConcatDim("member", MEMBER_KEYS),
    )


def combined_sources(pattern: FilePattern, layout: str) -> xr.Dataset:
    """The inputs combined by xarray: along member (a new dim unless the files have it),
    then along time."""
    rows = []
    for t in range(pattern.dims["time"]):
        members = [
            xr.open_dataset(pattern.format_function(time=t, member=k)).load() for k in MEMBER_KEYS
        ]
        if layout == "absent":
            members = [
                ds.expand_dims(member=[k]) for ds, k in zip(members, MEMBER_KEYS, strict=True)
            ]
        elif layout == "scalar":
            members = [ds.expand_dims("member") for ds in members]
        rows.append(xr.concat(members, "member", data_vars="minimal", coords="minimal"))
    return xr.concat(rows, "time", data_vars="minimal", coords="minimal")


def assert_equals(url, src: xr.Dataset) -> None:
    with open_references(str(url)) as out:
        assert set(out.variables) == set(src.variables)
        for name, var in src.variables.items():
            assert out[name].dims == var.dims, name
            np.testing.assert_array_equal(out[name].values, var.values, err_msg=name)
        assert out.attrs == src.attrs


@pytest.mark.parametrize("layout", ["dim", "scalar", "absent"])
@pytest.mark.parametrize("name", FORMATS)
def test_time_and_member_combine_as_xarray_does(tmp_path, name, layout):
    pattern = ensemble(tmp_path / "src", layout)
    result = bake(references_recipe(pattern, name), tmp_path / "out", workers=1)
    assert result.dims == {"time": 3, "member": 2, "lat": 24, "lon": 32}
    assert result.stats["validated_inputs"] == 2
    src = combined_sources(pattern, layout)
    dims = ("time", "member") if layout == "dim" else ("member", "time")
    assert src.tas.dims == (*dims, "lat", "lon")
    assert_equals(tmp_path / "out" / "ref" / name, src)


def test_files_of_unequal_steps_along_time(tmp_path):
    """Two, two and one days per file: each sample is checked at its own steps."""
    root = tmp_path / "src"
    root.mkdir()
    for t, steps in enumerate([2, 2, 1]):
        for m in MEMBER_KEYS:
            member_file(root, t, m, "dim", steps)
    pattern = FilePattern(
        lambda time, member: str(root / f"tas_t{time}_m{member}.nc"),
        ConcatDim("time", [0, 1, 2]),
        ConcatDim("member", MEMBER_KEYS),
    )
    for name in FORMATS:
        result = bake(references_recipe(pattern, name), tmp_path / name, workers=1)
        assert result.dims == {"time": 5, "member": 2, "lat": 24, "lon": 32}
        assert result.stats["validated_inputs"] == 2
        assert_equals(result.url, combined_sources(pattern, "dim"))


@pytest.mark.parametrize("layout", ["scalar", "absent"])
@pytest.mark.parametrize("name", FORMATS)
def test_one_concat_dim_the_files_lack(tmp_path, name, layout):
    """One concat dim that the files hold as a scalar coordinate, or not at all, becomes
    the leading dim; then appending a member adds it."""
    pattern = one_member_per_file(tmp_path / "src", layout, [10, 20, 30])
    first = FilePattern(pattern.format_function, ConcatDim("member", [10, 20]))
    result = bake(references_recipe(first, name), tmp_path / "out", workers=1)
    assert result.dims == {"member": 2, "time": 1, "lat": 24, "lon": 32}
    url = tmp_path / "out" / "ref" / name
    assert_equals(url, members_combined(first, layout))
    result = bake(references_recipe(pattern, name), tmp_path / "out", workers=1, append=True)
    assert result.stats["validated_inputs"] == 1
    assert_equals(url, members_combined(pattern, layout))


@pytest.mark.parametrize("target", [*FORMATS, "icechunk"])
def test_members_as_string_labels_of_different_widths(tmp_path, target):
    """Ensemble members named by labels the files lack (issue 16 item 7), wider than the
    first one later on, along time and member: combined as ``xarray.combine_nested``
    combines them, in the pattern's order (not sorted: r10 before r2)."""
    if target == "icechunk":
        pytest.importorskip("icechunk", reason="Icechunk targets need the [icechunk] extra")
    root = tmp_path / "src"
    root.mkdir()
    numbers = {"r1i1p1": 1, "r10i1p1": 10, "r2i1p1f1": 2}
    for t in range(2):
        for m in numbers.values():
            member_file(root, t, m, "absent")
    pattern = FilePattern(
        lambda time, member: str(root / f"tas_t{time}_m{numbers[member]}.nc"),
        ConcatDim("time", [0, 1]),
        ConcatDim("member", list(numbers)),
    )
    url = f"icechunk://{tmp_path / 'ic'}" if target == "icechunk" else tmp_path / "out"
    result = bake(
        references_recipe(pattern, "reference.json" if target == "icechunk" else target),
        url,
        workers=1,
    )
    assert result.dims == {"member": 3, "time": 2, "lat": 24, "lon": 32}
    src = xr.combine_nested(
        [
            [xr.open_dataset(pattern.format_function(time=t, member=m)) for t in range(2)]
            for m in numbers
        ],
        concat_dim=["member", "time"],
        data_vars="all",
        coords="minimal",
        combine_attrs="override",
    ).assign_coords(member=list(numbers))
    assert_equals(result.url, src)
    with open_references(str(result.url)) as out:
        assert out.member.values.tolist() == ["r1i1p1", "r10i1p1", "r2i1p1f1"]


@pytest.mark.parametrize("name", FORMATS)
def test_members_as_scalar_string_coordinates_of_different_widths(tmp_path, name):
    """Each file names its member in a scalar string coordinate, as CMIP's
    ``realization`` may be; the widest label is not the first."""
    labels = ["r1i1p1", "r10i1p1f1", "r2i1p1"]
    for label in labels:
        ds = xr.Dataset(
            {"tas": ("time", np.arange(3.0) + len(label))},
            coords={"time": ("time", np.arange(3), {"units": "days since 2000-01-01"})},
        )
        ds.assign_coords(realization=label).to_netcdf(tmp_path / f"{label}.nc")
    pattern = FilePattern(
        lambda realization: str(tmp_path / f"{realization}.nc"), ConcatDim("realization", labels)
    )
    recipe = (
        pattern
        | OpenWithKerchunk()
        | WriteCombinedReference("ref", concat_dims=["realization"], output_file_name=name)
    )
    result = bake(recipe, tmp_path / "out", workers=1)
    src = xr.concat([xr.open_dataset(tmp_path / f"{label}.nc") for label in labels], "realization")
    assert_equals(result.url, src)


def test_appending_a_member_labelled_by_a_string(tmp_path):
    """A member appended along a dim of string labels follows the held ones, however it
    sorts among them (was: ``TypeError: unsupported operand type(s) for -: 'str' and
    'str'``)."""
    numbers = {"r1i1p1": 1, "r10i1p1": 10, "r2i1p1f1": 2}
    labels = list(numbers)
    pattern = one_member_per_file(tmp_path / "src", "absent", list(numbers.values()))

    def members(keys):
        def path(member: str) -> str:
            return pattern.format_function(member=numbers[member])

        return references_recipe(FilePattern(path, ConcatDim("member", keys)), "reference.json")

    bake(members(labels[:2]), tmp_path / "out", workers=1)
    result = bake(members(labels), tmp_path / "out", workers=1, append=True)
    assert result.stats["validated_inputs"] == 1
    with open_references(str(result.url)) as out:
        assert out.member.values.tolist() == labels
        src = xr.open_dataset(tmp_path / "src" / "tas_t0_m2.nc")
        np.testing.assert_array_equal(out.tas.isel(member=2).values, src.tas.values)


def test_icechunk_along_time_and_member_equals_sources(tmp_path):
    """Checked through xarray, as Icechunk stores are."""
    pytest.importorskip("icechunk", reason="Icechunk targets need the [icechunk] extra")
    pattern = ensemble(tmp_path / "src", "absent")
    result = bake(
        references_recipe(pattern, "reference.json"), f"icechunk://{tmp_path / 'ic'}", workers=1
    )
    assert result.stats["validated_inputs"] == 2
    assert_equals(result.url, combined_sources(pattern, "absent"))


def test_dry_run_counts_every_concat_dim(tmp_path):
    pattern = ensemble(tmp_path / "src", "absent")
    plan = make_reference_plan(
        references_recipe(pattern, "reference.json"), str(tmp_path / "out"), cache=None, workers=1
    )
    about = describe(plan)
    assert about["dims"] == {"member": 2, "time": 3, "lat": 24, "lon": 32}
    assert about["references_estimate"] == TIMES * MEMBERS * 4


def test_member_and_variable_merge(tmp_path):
    """A merge dim with two concat dims: each variable's inputs combined, then merged."""
    root = tmp_path / "src"
    root.mkdir()
    for t in range(2):
        for m in MEMBER_KEYS:
            ds = xr.open_dataset(member_file(root, t, m, "dim")).load()
            ds.rename(tas="pr").to_netcdf(root / f"pr_t{t}_m{m}.nc")
    pattern = FilePattern(
        lambda variable, time, member: str(root / f"{variable}_t{time}_m{member}.nc"),
        MergeDim("variable", ["tas", "pr"]),
        ConcatDim("time", [0, 1]),
        ConcatDim("member", MEMBER_KEYS),
    )
    bake(references_recipe(pattern, "reference.json"), tmp_path / "out", workers=1)
    with open_references(str(tmp_path / "out" / "ref" / "reference.json")) as out:
        for variable in ("tas", "pr"):
            for t in range(2):
                for m in MEMBER_KEYS:
                    path = pattern.format_function(variable=variable, time=t, member=m)
                    with xr.open_dataset(path) as src:
                        got = out[variable].isel(time=[t], member=[MEMBER_KEYS.index(m)]).values
                        np.testing.assert_array_equal(got, src[variable].values)


def test_unsorted_keys_are_refused(tmp_path):
    ensemble(tmp_path / "src", "dim")
    root = tmp_path / "src"
    pattern = FilePattern(
        lambda time, member: str(root / f"tas_t{time}_m{member}.nc"),
        ConcatDim("time", [0, 1, 2]),
        ConcatDim("member", MEMBER_KEYS[::-1]),
    )
    with pytest.raises(CombineError, match=r"tas_t0_m10\.nc: member 10 comes after it \(20 is "):
        bake(references_recipe(pattern, "reference.json"), tmp_path / "out", workers=1)


def test_duplicate_keys_are_refused(tmp_path):
    pattern = ensemble(tmp_path / "src", "absent")
    pattern = FilePattern(
        pattern.format_function, ConcatDim("time", [0, 1, 2]), ConcatDim("member", [10, 10])
    )
    with pytest.raises(CombineError, match=r"member 10 is already in an earlier input"):
        bake(references_recipe(pattern, "reference.json"), tmp_path / "out", workers=1)


def test_duplicate_and_missing_positions_are_refused(tmp_path):
    pattern = ensemble(tmp_path / "src", "dim", times=2)
    inputs = list(pattern.inputs())
    config = ScanConfig("netcdf4", ("time", "member"))
    manifests = [scan_input(item, config) for item in inputs]
    urls = [item.url for item in inputs]
    positions = [(0, 0), (0, 1), (1, 0), (0, 1)]
    with pytest.raises(CombineError, match=r"tas_t1_m20\.nc: .*tas_t0_m20\.nc is at its position"):
        concat_grid(manifests, ("time", "member"), positions, urls)
    with pytest.raises(CombineError, match=r"no input is at time=1, member=1$"):
        concat_grid(manifests[:3], ("time", "member"), positions[:3], urls[:3])


def swapped(dim: str):
    """A tamper: the first two steps of ``tas`` along ``dim`` point to each other's chunks."""

    def tamper(m) -> None:
        tas = m.arrays["tas"]
        axis = tas.dims.index(dim)
        for refs in (tas.files, tas.offsets, tas.lengths):
            view = np.moveaxis(refs, axis, 0)
            view[[0, 1]] = view[[1, 0]]

    return tamper


@pytest.mark.parametrize("layout", ["dim", "absent"])
@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("swap", [None, "time", "member"])
def test_check_compares_each_sample_at_its_region(tmp_path, name, layout, swap):
    """The first and last inputs, at their steps along both dims, checked against
    references written again with two steps along ``swap`` swapped."""
    pattern = ensemble(tmp_path / "src", layout)
    plan = make_reference_plan(
        references_recipe(pattern, name), str(tmp_path / "out"), cache=None, workers=1
    )
    bake(plan.recipe, tmp_path / "out", workers=1)
    _, manifest = held.loads(bytearray(Path(plan.ledger.folder, HELD).read_bytes()))
    assert manifest.arrays["tas"].nrefs == TIMES * MEMBERS * 4  # none inline
    if swap is not None:
        swapped(swap)(manifest)
    staged = tmp_path / f"staged-{name}"
    if name.endswith(".json"):
        kerchunk_json.write_json(manifest, staged)
    else:
        kerchunk.write_parquet(manifest, staged, record_size=5)
    region = {"time": (2, 3), "member": (1, 2)}
    samples = ((plan.inputs[0], {"time": (0, 1), "member": (0, 1)}), (plan.inputs[-1], region))
    store = type(plan.store)(str(staged), str(staged))
    task = CheckTask(store, plan.open, samples, "time", "file", plan.scan)
    if swap is None:
        assert check_input(task) == [plan.inputs[0].url, plan.inputs[-1].url]
        check_decoded(task)  # and as xarray reads both
        return
    differs = r"tas_t0_m10\.nc: 'tas' differs at \{'time': 0, "
    with pytest.raises(ValidationError, match=differs):
        check_input(task)
    with pytest.raises(ValidationError, match=differs):
        check_decoded(task)


@pytest.mark.parametrize(("layout", "leading"), [("dim", "time"), ("absent", "member")])
def test_check_task_reads_the_rows_along_the_leading_dim(tmp_path, layout, leading):
    """The samples (the first and the last input) at their steps along both dims; JSON
    references are read along the dim that leads the store's arrays."""
    pattern = ensemble(tmp_path / "src", layout)
    plan = make_reference_plan(
        references_recipe(pattern, "reference.json"), str(tmp_path / "out"), cache=None, workers=1
    )
    bake(plan.recipe, tmp_path / "out", workers=1)
    _, manifest = held.loads(bytearray(Path(plan.ledger.folder, HELD).read_bytes()))
    steps = {"time": {0: 1, 1: 1, 2: 1}, "member": {0: 1, 1: 1}}
    (task,) = plan.check_tasks(ReferenceState(manifest=manifest, steps=steps))
    assert task.dim == leading
    first, last = {"time": (0, 1), "member": (0, 1)}, {"time": (2, 3), "member": (1, 2)}
    assert task.samples == ((plan.inputs[0], first), (plan.inputs[-1], last))


def test_append_along_several_dims_is_refused(tmp_path):
    pattern = ensemble(tmp_path / "src", "dim")
    bake(references_recipe(pattern, "reference.json"), tmp_path / "out", workers=1)
    plan = make_reference_plan(
        references_recipe(pattern, "reference.json"), str(tmp_path / "out"), cache=None, workers=1
    )
    with pytest.raises(AppendError, match=r"one concat dim, not 2 \(time, member\)$"):
        plan_reference_append(plan)


def one_member_per_grib(root: Path) -> list[list[Path]]:
    """GRIB files of one analysis time and one ensemble member each: the messages of
    files of two members, split by member."""
    eccodes = pytest.importorskip("eccodes")
    pytest.importorskip("cfgrib", reason="GRIB needs the [grib] extra")
    from arcoforge.testing.archives import write_grib_archive

    grid = []
    for path in write_grib_archive(root, days=2, steps_per_file=1, members=MEMBERS):
        messages: dict[int, list[bytes]] = {}
        with open(path, "rb") as f:
            while (gid := eccodes.codes_grib_new_from_file(f)) is not None:
                number = eccodes.codes_get(gid, "number")
                messages.setdefault(number, []).append(eccodes.codes_get_message(gid))
                eccodes.codes_release(gid)
        grid.append([path.with_suffix(f".m{n}.grib2") for n in sorted(messages)])
        for out, n in zip(grid[-1], sorted(messages), strict=True):
            out.write_bytes(b"".join(messages[n]))
    return grid


def test_grib_one_time_and_member_per_file(tmp_path):
    """Scalar time and number become dims; valid_time, differing along time, a coordinate
    along it."""
    grid = one_member_per_grib(tmp_path / "src")
    pattern = FilePattern(
        lambda time, number: str(grid[time][number]),
        ConcatDim("time", list(range(len(grid)))),
        ConcatDim("number", list(range(MEMBERS))),
        file_type="grib",
    )
    result = bake(references_recipe(pattern, "reference.json"), tmp_path / "out", workers=1)
    assert result.stats["validated_inputs"] == 2
    with open_references(result.url) as out:
        assert out.t2m.dims == ("number", "time", "latitude", "longitude")
        for t, row in enumerate(grid):
            for n, path in enumerate(row):
                with xr.open_dataset(
                    path, engine="cfgrib", backend_kwargs={"indexpath": ""}
                ) as src:
                    for var in ("t2m", "msl"):
                        got = out[var].isel(time=t, number=n).values
                        np.testing.assert_array_equal(got, src[var].values)
                    assert out.valid_time.values[t] == src.valid_time.values
                    assert out.time.values[t] == src.time.values
                    assert out.number.values[n] == src.number.values


def test_scalar_coordinates_differing_along_a_later_dim_are_refused(tmp_path):
    pattern = ensemble(tmp_path / "src", "dim", times=2)
    for item in pattern.inputs():
        with xr.open_dataset(item.url) as src:
            ds = src.load()
        ds.assign_coords(seed=item.pos("member")).to_netcdf(item.url)
    with pytest.raises(CombineError, match=r"seed differ along 'member', not only along 'time'$"):
        bake(references_recipe(pattern, "reference.json"), tmp_path / "out", workers=1)


@pytest.mark.parametrize("file_format", ["NETCDF4", "NETCDF3_CLASSIC"])
@pytest.mark.parametrize("name", [*FORMATS, "icechunk"])
def test_members_named_by_a_scalar_char_array(tmp_path, name, file_format):
    """xarray reads the 0-d char array as one string and concatenates the members along
    it; so do the references (was: ``'realization' is neither a dim nor a scalar held
    inline``)."""
    paths = char_members(tmp_path / "src", file_format)
    file_type = "netcdf3" if file_format.startswith("NETCDF3") else "netcdf4"
    root, output = str(tmp_path / "out"), name
    if name == "icechunk":
        pytest.importorskip("icechunk", reason="Icechunk targets need the [icechunk] extra")
        root, output = f"icechunk://{tmp_path / 'ic'}", "reference.json"
    recipe = (
        members_pattern(paths)
        | OpenWithKerchunk(file_type=file_type)
        | WriteCombinedReference("ref", concat_dims=["realization"], output_file_name=output)
    )
    result = bake(recipe, root, workers=1)
    assert result.stats["validated_inputs"] == 2
    src = xr.concat([xr.open_dataset(p).load() for p in paths.values()], "realization")
    assert src.realization.dtype == "S9"
    assert_equals(result.url, src)
    with open_references(str(result.url)) as out:
        assert out.realization.values.tolist() == [label.encode() for label in CHAR_MEMBERS]
        assert out.tas.dims == ("realization", "time")
