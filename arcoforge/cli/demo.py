"""``arcoforge demo``: an OISST-like archive served over loopback HTTP, baked and checked."""

from __future__ import annotations

import time
from pathlib import Path

import xarray as xr
from rich.console import Console

from arcoforge.bake.run import bake
from arcoforge.bake.summary import render_result, result_dict
from arcoforge.core.compare import compare_stored
from arcoforge.core.progress import JsonReporter, console_reporter
from arcoforge.core.runs import RunContext, new_id
from arcoforge.errors import ValidationError
from arcoforge.recipe.patterns import ConcatDim, FilePattern
from arcoforge.recipe.steps import OpenURLWithFSSpec, OpenWithXarray, StoreToZarr
from arcoforge.testing.archives import write_oisst_archive
from arcoforge.testing.httpserver import FileServer


def run_demo(folder: Path, days: int = 30, workers: int | None = None, as_json: bool = False):
    """Write ``days`` daily files, serve them, bake them into FOLDER/oisst.zarr, validate."""

    console = Console(highlight=False, quiet=as_json)
    source = folder / "source"
    t0 = time.perf_counter()
    paths = write_oisst_archive(source, days=days, ny=360, nx=720)
    console.print(
        f"wrote {len(paths)} daily netCDF4 files to {source} ({time.perf_counter() - t0:.1f} s)"
    )
    with FileServer(source) as server:
        console.print(f"serving them at {server.url}/ (loopback only)")
        names = {_day(p): p.name for p in paths}
        pattern = FilePattern(
            _UrlFor(server.url, names),
            ConcatDim("time", sorted(names), nitems_per_file=1),
            file_type="netcdf4",
        )
        recipe = (
            pattern
            | OpenURLWithFSSpec()
            | OpenWithXarray()
            | StoreToZarr(store_name="oisst.zarr", target_chunks={"time": 10})
        )
        run = RunContext(run_id=new_id())
        reporter = JsonReporter(run=run.run_id) if as_json else console_reporter()
        try:
            result = bake(
                recipe,
                folder,
                cache=str(folder / "cache"),
                workers=workers,
                reporter=reporter,
                run=run,
            )
        finally:
            reporter.close()
    checked = check_against_sources(result.url, paths)
    if as_json:
        reporter.event("summary", **result_dict(result), checked_days=checked)
        return result
    render_result(result, console, "demo (OISST-like)")
    console.print(f"checked: all {checked} days equal the source files read directly by xarray")
    console.print("open it with:")
    console.print(
        f'  import xarray as xr\n  ds = xr.open_zarr("{result.url}")\n  ds.sst.sel(lat=0, lon=180, method="nearest").plot()'
    )
    return result


def _day(path: Path) -> str:
    return path.name.split(".")[-2]


class _UrlFor:
    """Day -> URL on the demo server (picklable, unlike a closure)."""

    def __init__(self, root: str, names: dict[str, str]):
        self.root, self.names = root, names

    def __call__(self, time: str) -> str:
        return f"{self.root}/{self.names[time]}"


def check_against_sources(url: str, paths: list[Path]) -> int:
    """Compare every value of the store with the source files, packed variables as stored;
    return the days checked."""
    out = xr.open_zarr(url, mask_and_scale=False, decode_times=False)
    for i, path in enumerate(paths):
        with xr.open_dataset(path) as src:
            for name in src.data_vars:
                stored = out[[name]].isel(time=slice(i, i + 1))
                try:
                    compare_stored(src[[name]].load(), stored, path.name)
                except ValidationError as exc:
                    raise AssertionError(f"{path.name}: {name} differs from the store") from exc
    return len(paths)
