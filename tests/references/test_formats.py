"""Each reference format is a class of one interface, :class:`ReferenceFormat`: written
under its staging name, published, then read back by xarray with the values of the
netCDF input it points into."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from arcoforge.recipe.patterns import Input
from arcoforge.references.formats.base import ReferenceFormat
from arcoforge.references.formats.icechunk import IcechunkFormat
from arcoforge.references.formats.json import JsonFormat
from arcoforge.references.formats.parquet import ParquetFormat
from arcoforge.references.inputs import ScanConfig
from arcoforge.references.scan import scan_input
from arcoforge.references.store import open_references
from arcoforge.testing.archives import write_oisst_archive

CLASSES = (JsonFormat, ParquetFormat, IcechunkFormat)
ATTRS = {"made_by": "test_reference_formats"}


def _at(cls: type[ReferenceFormat], folder) -> ReferenceFormat:
    """A store of ``cls`` in ``folder``, staged as a bake stages it."""
    if cls is IcechunkFormat:
        pytest.importorskip("icechunk")
        url = str(folder / "repo")
        return cls(url, url)
    name = "refs.json" if cls is JsonFormat else "refs.parquet"
    return cls(str(folder / "ref" / name), str(folder / "ref" / f".{name}.partial"))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A real netCDF-4 file of two days and its manifest: the data variables' chunks are
    references into the file, the coordinates' are inline."""
    root = tmp_path_factory.mktemp("src")
    (path,) = write_oisst_archive(root, days=2, ny=6, nx=12, steps_per_file=2)
    config = ScanConfig(file_type="netcdf4", concat_dims=("time",), inline_threshold=0)
    return path, scan_input(Input(str(path), (("time", 0),)), config)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_each_format_implements_the_interface(cls):
    assert issubclass(cls, ReferenceFormat)
    assert not cls.__abstractmethods__
    for flag in ("checks_on_driver", "made_in_place", "reads_in_part"):
        assert isinstance(getattr(cls, flag), bool), flag
    assert (cls.checks_on_driver, cls.made_in_place, cls.reads_in_part) == (
        (True, True, False) if cls is IcechunkFormat else (False, False, True)
    )


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_each_format_round_trips_a_manifest(cls, source, tmp_path):
    path, manifest = source
    store = _at(cls, tmp_path)
    assert store.unwritable(manifest) is None
    store.check_inputs(manifest.paths)
    store.clear_staging()
    store.preload()
    assert store.seal() is None, "nothing published yet"
    assert all((manifest.arrays[v].files == 0).all() for v in ("sst", "anom", "err", "ice"))
    assert all(manifest.arrays[c].raw is not None for c in ("time", "lat", "lon"))
    store.write_staged(manifest, {**manifest.attrs, **ATTRS}, "test: two days")
    staged = store.seal(staged=True)
    assert staged is not None
    with xr.open_dataset(path) as src, store.open_staged() as out:
        _assert_same(out, src)
    if store.reads_in_part:
        refs = store.overlapping("time", [(1, 2)])["refs"]
        assert "sst/1.0.0" in refs and "sst/0.0.0" not in refs
    else:
        with pytest.raises(NotImplementedError):
            store.overlapping("time", [(1, 2)])
    store.publish()
    store.publish()  # repeatable
    assert store.seal() == staged
    assert store.bears(staged)
    assert store.folder == (None if cls is IcechunkFormat else str(tmp_path / "ref"))
    with xr.open_dataset(path) as src, open_references(store.url) as out:
        _assert_same(out, src)


def _assert_same(out: xr.Dataset, src: xr.Dataset) -> None:
    """Every variable of ``out`` equals that of ``src`` (as xarray decodes both: packed
    values in ``src``'s dtype, which xarray may widen when reading Zarr), and the
    attributes are the input's and those given to the writer."""
    assert set(out.variables) == set(src.variables)
    for name, var in src.variables.items():
        got = out[name].transpose(*var.dims).values
        assert got.shape == var.shape, name
        np.testing.assert_array_equal(got.astype(var.dtype), var.values, err_msg=name)
    assert out.attrs == {**src.attrs, **ATTRS}
