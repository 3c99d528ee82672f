"""The files of the manifest kept beside a reference store for appends."""

import pickle

import numpy as np
import pytest

from arcoforge.core.statefile import StateFileError
from arcoforge.references import held
from arcoforge.references.manifest import ArrayRefs, Manifest, zarray


def _manifest(n: int) -> Manifest:
    rng = np.random.default_rng(n)
    grid = (n, 3)
    refs = ArrayRefs(
        zarray((n * 4, 6), (4, 2), np.float32),
        {"_ARRAY_DIMENSIONS": ["time", "x"]},
        rng.integers(0, 5, grid).astype(np.int32),
        rng.integers(0, 2**40, grid).astype(np.uint64),
        rng.integers(1, 2**20, grid).astype(np.uint64),
    )
    return Manifest(["a.nc", "b.nc"], {"v": refs}, {"title": "t"}, {"time": np.arange(n * 4.0)})


def _equal(a: Manifest, b: Manifest) -> None:
    assert (a.paths, a.attrs) == (b.paths, b.attrs)
    np.testing.assert_array_equal(a.coords["time"], b.coords["time"])
    x, y = a.arrays["v"], b.arrays["v"]
    assert (x.meta, x.attrs) == (y.meta, y.attrs)
    for field in ("files", "offsets", "lengths"):
        got, want = getattr(x, field), getattr(y, field)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_a_held_file_maps_its_arrays_at_aligned_offsets(tmp_path):
    manifest = _manifest(50)
    path = tmp_path / "references.held"
    path.write_bytes(held.dumps((["a.nc", "b.nc"], manifest)))
    urls, loaded = held.load(str(path))
    assert urls == ["a.nc", "b.nc"]
    _equal(loaded, manifest)
    offsets = loaded.arrays["v"].offsets
    assert not offsets.flags.writeable  # a view of the mapped file, not a copy
    assert offsets.ctypes.data % held.ALIGN == 0


def test_held_bytes_load_as_well(tmp_path):
    manifest = _manifest(7)
    urls, loaded = held.loads(held.dumps((["a.nc"], manifest)))
    assert urls == ["a.nc"]
    _equal(loaded, manifest)


def test_a_held_file_kept_as_a_pickle_is_refused_not_unpickled(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "references.pkl"
    path.write_bytes(pickle.dumps(_RunsCode(str(marker)), protocol=5))
    with pytest.raises(StateFileError) as info:
        held.load(str(path))
    assert str(info.value) == (
        f"{path}: not a state file of this arcoforge version (a pickle, which arcoforge no "
        "longer reads); bake the store again with --force"
    )
    assert not marker.exists()


class _RunsCode:
    """A pickle that would create a file when unpickled."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_no_held_file_or_an_empty_one_is_none(tmp_path):
    path = tmp_path / "references.held"
    assert held.load(str(path)) is None
    path.write_bytes(b"")
    assert held.load(str(path)) is None
