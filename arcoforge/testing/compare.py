"""Assertions that a bake's output equals its sources, and fingerprints of what it wrote.

Tests compare stores with the sources read directly by xarray, value for value, and compare
the bytes under a target before and after an operation that must not change them.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from arcoforge.bake.run import bake
from arcoforge.core.runs import RUNS_FOLDER
from arcoforge.errors import ArcoforgeError
from arcoforge.references.store import open_references


def assert_same_as_sources(
    store, paths, concat_dim: str = "time", decoded: bool = False, **open_kwargs
):
    """Every variable and coordinate of the store (a URL or an opened dataset) equals the
    sources read directly by xarray, as xarray's own ``to_zarr`` of them reads back (the
    source encoding kept: a float32 ``scale_factor`` becomes a JSON number, so packed
    variables read back as float64); with ``decoded``, as xarray decodes the sources.
    Returns the store and the sources, opened."""
    out = store if isinstance(store, xr.Dataset) else xr.open_zarr(store)
    src = xr.concat(
        [xr.open_dataset(p, **open_kwargs).load() for p in paths],
        dim=concat_dim,
        data_vars="minimal",
        coords="minimal",
        compat="override",
    )
    if not decoded:
        src = xarray_to_zarr(src)
    assert set(out.variables) == set(src.variables)
    for name, var in src.variables.items():
        got = out[name].transpose(*var.dims).values
        want = var.values
        assert got.dtype == want.dtype, name
        if want.dtype.kind == "f":
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            assert (got == want).all(), name
    return out, src


def xarray_to_zarr(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` written by ``xarray.Dataset.to_zarr`` with its defaults and read back."""
    with tempfile.TemporaryDirectory() as folder:
        ds.to_zarr(f"{folder}/xarray.zarr", consolidated=False)
        return xr.open_zarr(f"{folder}/xarray.zarr", consolidated=False).load()


def assert_matches_sources(url, paths, concat_dim="time", coords="minimal", **open_kwargs):
    """Every variable of the references at ``url`` equals the sources read directly by
    xarray, and so do the attributes; returns the references, loaded."""
    src = xr.concat(
        [xr.open_dataset(p, **open_kwargs).load() for p in paths],
        dim=concat_dim,
        data_vars="minimal",
        coords=coords,
        compat="override" if coords == "minimal" else "equals",
    )
    with open_references(str(url)) as out:
        assert set(out.variables) == set(src.variables)
        for name, var in src.variables.items():
            got = out[name].transpose(*var.dims).values
            assert got.shape == var.shape, name
            np.testing.assert_array_equal(got.astype(var.dtype), var.values, err_msg=name)
        # cfgrib stamps the minute of each open into ``history``
        assert _stable(out.attrs) == _stable(src.attrs)
        return out.load()


def _stable(attrs: dict) -> dict:
    """``attrs`` less what a reader writes at open time."""
    return {k: v for k, v in attrs.items() if k != "history" or "cfgrib" not in str(v)}


def nothing_baked(target: Path) -> bool:
    """No store, staged or published, under ``target``: at most the records beside one,
    and the run records."""
    return not target.exists() or all(
        p.name.endswith(".arcoforge") or p.name == RUNS_FOLDER for p in target.iterdir()
    )


def looks_complete(store: Path) -> bool:
    """Whether ``store`` carries consolidated metadata, which readers take as published."""
    if (store / ".zmetadata").exists():
        return True
    root = store / "zarr.json"
    if not root.exists():
        return False
    consolidated = json.loads(root.read_text()).get("consolidated_metadata") or {}
    return bool(consolidated.get("metadata"))


def complete_stores(target: Path) -> list[str]:
    """Names of the stores under ``target`` (staging ones included) that look complete."""
    if not target.exists():
        return []
    return sorted(p.name for p in target.iterdir() if p.is_dir() and looks_complete(p))


def bake_fails(
    recipe,
    target: Path,
    kind: type[ArcoforgeError],
    *needles: str,
    workers: int = 1,
    published: tuple[str, ...] = (),
) -> str:
    """Bake ``recipe``; check it raises ``kind`` as one line holding every needle, and
    return that line. Afterwards only the stores in ``published`` (baked earlier) may look
    complete. An error that is not an :class:`ArcoforgeError` propagates."""
    try:
        bake(recipe, target, workers=workers)
    except ArcoforgeError as exc:
        error = exc
    else:
        raise AssertionError(f"the bake of {target} did not raise {kind.__name__}")
    assert type(error) is kind, f"{type(error).__name__}: {error}"
    text = str(error)
    assert "\n" not in text and text == " ".join(text.split()), text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    assert complete_stores(target) == sorted(published)
    return text


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, the store's records beside it included (but
    not the lock, nor the run records, which every bake adds to)."""
    files = [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "lock" and RUNS_FOLDER not in p.parts
    ]
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def digest(path: Path) -> str:
    """One hash of a reference file, or of every file of a reference folder (names and
    bytes)."""
    files = sorted(p for p in [path, *path.rglob("*")] if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def files_containing(root: Path, needle: bytes) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``needle``."""
    return [f for f in sorted(root.rglob("*")) if f.is_file() and needle in f.read_bytes()]
