"""Tests of the archive generators and the loopback file server in arcoforge.testing."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import cftime
import fsspec
import netCDF4
import numpy as np
import pytest
import requests
import xarray as xr

from arcoforge.testing.archives import (
    TIME_UNITS,
    oisst_dataset,
    write_coords_archive,
    write_corrupt_file,
    write_files,
    write_merge_archive,
    write_oisst_archive,
)
from arcoforge.testing.httpserver import Faults, FileServer

GRID = {"ny": 18, "nx": 36}


def test_oisst_dataset_matches_the_oisst_layout():
    ds = oisst_dataset(days=1)
    assert dict(ds.sizes) == {"time": 1, "lat": 720, "lon": 1440}
    assert ds.lat.dtype == np.float32 and ds.lon.dtype == np.float32
    assert (ds.lat[0], ds.lat[-1], ds.lon[0], ds.lon[-1]) == (-89.875, 89.875, 0.125, 359.875)
    assert np.allclose(np.diff(ds.lat), 0.25) and np.allclose(np.diff(ds.lon), 0.25)
    assert ds.time.values[0] == np.datetime64("1981-09-01T12:00")
    assert set(ds.data_vars) == {"sst", "anom", "err", "ice"}
    assert all(var.dtype == np.float32 for var in ds.data_vars.values())
    assert ds.attrs["Conventions"].startswith("CF")
    assert ds.sst.attrs["units"] == "Celsius" and "long_name" in ds.ice.attrs


def test_oisst_fields_are_realistic_and_share_one_land_mask():
    ds = oisst_dataset(days=3, ny=72, nx=144)
    land = ds.sst.isel(time=0).isnull()
    assert 0.25 < float(land.mean()) < 0.35
    for var in ds.data_vars.values():
        assert (var.isnull() == land).all()
    sst = ds.sst
    assert float(sst.min()) >= -1.8 and float(sst.max()) <= 34.0
    tropics = float(sst.where(abs(ds.lat) < 20).mean())
    polar = float(sst.where(abs(ds.lat) > 60).mean())
    assert tropics - polar > 15
    assert float(ds.err.min()) > 0 and float(ds.ice.min()) >= 0 and float(ds.ice.max()) <= 100
    assert float(ds.ice.where(abs(ds.lat) > 70).max()) > 50
    assert not np.array_equal(sst[0], sst[1], equal_nan=True)


def test_oisst_values_survive_int16_packing_exactly():
    ds = oisst_dataset(days=2, **GRID)
    for var in ds.data_vars.values():
        values = var.values[~np.isnan(var.values)]
        packed = np.rint(values / np.float32(0.01)).astype(np.int16)
        np.testing.assert_array_equal(packed.astype(np.float32) * np.float32(0.01), values)


def test_oisst_fields_depend_only_on_the_date_and_seed():
    long = oisst_dataset(days=6, **GRID)
    short = oisst_dataset(days=2, start="1981-09-04", variables=("ice", "sst"), **GRID)
    xr.testing.assert_identical(long[["ice", "sst"]].isel(time=slice(3, 5)), short)
    other = oisst_dataset(days=1, seed=1, **GRID)
    assert not np.array_equal(long.sst[0], other.sst[0], equal_nan=True)


def test_unknown_variables_and_formats_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="variables"):
        oisst_dataset(days=1, variables=("sst", "salinity"), **GRID)
    with pytest.raises(ValueError, match="file_format"):
        write_oisst_archive(tmp_path, days=1, file_format="GRIB", **GRID)


def test_oisst_archive_round_trips_and_is_encoded_like_oisst(tmp_path):
    paths = write_oisst_archive(tmp_path, days=8, **GRID)
    assert [p.name for p in paths] == [f"oisst-avhrr-v02r01.198109{d:02d}.nc" for d in range(1, 9)]
    with xr.open_mfdataset(paths) as opened:
        xr.testing.assert_identical(opened.load(), oisst_dataset(days=8, **GRID))
    with netCDF4.Dataset(paths[0]) as nc:
        assert nc.data_model == "NETCDF4"
        time_var = nc["time"]
        assert (time_var.units, time_var.calendar) == (TIME_UNITS, "standard")
        assert time_var.dtype == np.float64 and time_var[:].tolist() == [1339.0]
        for name in ("sst", "anom", "err", "ice"):
            var = nc[name]
            var.set_auto_maskandscale(False)
            assert var.dtype == np.int16 and var._FillValue == -999
            assert var.scale_factor.dtype == np.float32 and var.scale_factor == np.float32(0.01)
            assert var.add_offset.dtype == np.float32 and var.add_offset == 0
            assert var.chunking() == [1, 18, 36]
            assert var.filters()["zlib"] and var.filters()["complevel"] == 4


def test_oisst_archive_groups_days_per_file(tmp_path):
    paths = write_oisst_archive(tmp_path, days=8, steps_per_file=3, **GRID)
    assert [p.name[-11:-3] for p in paths] == ["19810901", "19810904", "19810907"]
    sizes = []
    for path in paths:
        with xr.open_dataset(path) as ds:
            sizes.append(ds.sizes["time"])
    assert sizes == [3, 3, 2]


def test_contiguous_and_netcdf3_archives(tmp_path):
    expected = oisst_dataset(days=2, **GRID)
    contiguous = write_oisst_archive(tmp_path / "contiguous", days=2, chunked=False, **GRID)
    with netCDF4.Dataset(contiguous[0]) as nc:
        assert nc["sst"].chunking() == "contiguous" and not nc["sst"].filters()["zlib"]
    classic = write_oisst_archive(tmp_path / "nc3", days=2, file_format="NETCDF3_64BIT", **GRID)
    with netCDF4.Dataset(classic[0]) as nc:
        assert nc.data_model == "NETCDF3_64BIT_OFFSET" and nc["sst"].dtype == np.int16
    for paths in (contiguous, classic):
        with xr.open_mfdataset(paths) as opened:
            xr.testing.assert_identical(opened.load(), expected)


def test_noleap_archive_decodes_to_cftime(tmp_path):
    paths = write_oisst_archive(tmp_path, days=3, start="1984-02-27", calendar="noleap", **GRID)
    assert [p.name[-11:-3] for p in paths] == ["19840227", "19840228", "19840301"]
    with netCDF4.Dataset(paths[0]) as nc:
        assert (nc["time"].units, nc["time"].calendar) == (TIME_UNITS, "noleap")
    with xr.open_mfdataset(paths) as opened:
        assert isinstance(opened.time.values[0], cftime.DatetimeNoLeap)
        expected = oisst_dataset(days=3, start="1984-02-27", calendar="noleap", **GRID)
        xr.testing.assert_identical(opened.load(), expected)


def test_merge_archive_has_one_variable_per_file(tmp_path):
    paths = write_merge_archive(tmp_path, days=2)
    assert {name: [p.name for p in files] for name, files in paths.items()} == {
        "sst": ["sst_19810901.nc", "sst_19810902.nc"],
        "ice": ["ice_19810901.nc", "ice_19810902.nc"],
    }
    parts = []
    for name, files in paths.items():
        with xr.open_mfdataset(files) as part:
            assert list(part.data_vars) == [name]
            parts.append(part.load())
    expected = oisst_dataset(days=2, variables=("sst", "ice"), **GRID)
    xr.testing.assert_identical(xr.merge(parts, combine_attrs="override"), expected)


def test_coords_archive_has_non_dimension_coordinates(tmp_path):
    paths = write_coords_archive(tmp_path)
    assert [p.name for p in paths] == ["t2m.19810901.nc", "t2m.19810903.nc", "t2m.19810905.nc"]
    masks, hours = [], []
    for path in paths:
        with xr.open_dataset(path) as ds:
            assert list(ds.data_vars) == ["t2m"]
            assert ds.mask.dims == ("lat", "lon") and ds.mask.dtype == np.int8
            assert ds.forecast_hour.dims == ("time",) and ds.forecast_hour.dtype == np.int32
            assert ds.t2m.dtype == np.float32 and 200 < float(ds.t2m.mean()) < 320
            masks.append(ds.mask.values)
            hours += ds.forecast_hour.values.tolist()
        with netCDF4.Dataset(path) as nc:
            assert nc["t2m"].dtype == np.float32 and "scale_factor" not in nc["t2m"].ncattrs()
    assert hours == [24, 48, 72, 96, 120, 144]
    assert all(np.array_equal(mask, masks[0]) for mask in masks) and 0 < masks[0].mean() < 1


def test_corrupt_file_starts_like_hdf5_but_does_not_open(tmp_path):
    path = write_corrupt_file(tmp_path / "broken.nc")
    data = path.read_bytes()
    assert data[:8] == b"\x89HDF\r\n\x1a\n" and len(data) == 4096
    with pytest.raises(OSError):
        xr.open_dataset(path, engine="netcdf4").load()


def test_error_inputs_are_built_from_write_files(tmp_path):
    base = write_oisst_archive(tmp_path, days=1, **GRID)
    coarse = write_files(oisst_dataset(days=1, ny=9, nx=18), tmp_path / "coarse")
    missing = write_files(oisst_dataset(days=1, variables=("sst",), **GRID), tmp_path / "missing")
    duplicate = write_files(oisst_dataset(days=1, **GRID), tmp_path, name="oisst-copy")
    with xr.open_dataset(base[0]) as ds, xr.open_dataset(coarse[0]) as other:
        assert ds.sizes["lat"] == 18 and other.sizes["lat"] == 9
    with xr.open_dataset(missing[0]) as ds:
        assert list(ds.data_vars) == ["sst"]
    with xr.open_dataset(base[0]) as ds, xr.open_dataset(duplicate[0]) as twin:
        assert duplicate[0] != base[0] and (ds.time.values == twin.time.values).all()


@pytest.fixture
def served(tmp_path):
    """A folder with a binary file and a nested netCDF file."""
    data = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    (tmp_path / "data.bin").write_bytes(data)
    write_oisst_archive(tmp_path / "nested", days=1, **GRID)
    return tmp_path


def _port(server: FileServer) -> int:
    return urlsplit(server.url).port


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_serves_identical_bytes_and_records_requests(served):
    netcdf = served / "nested" / "oisst-avhrr-v02r01.19810901.nc"
    with FileServer(served) as server:
        assert server.url.startswith("http://127.0.0.1:")
        status, headers, body = _get(f"{server.url}/data.bin")
        assert status == 200 and body == (served / "data.bin").read_bytes()
        assert headers["Content-Length"] == "100000" and headers["Accept-Ranges"] == "bytes"
        status, _, body = _get(f"{server.url}/nested/{netcdf.name}?x=1")
        assert status == 200 and body == netcdf.read_bytes()
        head = requests.head(f"{server.url}/data.bin", timeout=10)
        assert head.status_code == 200 and head.headers["Content-Length"] == "100000"
        assert head.content == b""
        assert _get(f"{server.url}/missing.nc")[0] == 404
        assert _get(f"{server.url}/nested")[0] == 404
        assert server.requests == [
            "/data.bin",
            f"/nested/{netcdf.name}?x=1",
            "/data.bin",
            "/missing.nc",
            "/nested",
        ]
        assert [method for method, _ in server.calls] == ["GET", "GET", "HEAD", "GET", "GET"]
        assert [target for _, target in server.calls] == server.requests


def test_paths_outside_root_are_not_served(served):
    (served.parent / "secret.txt").write_text("secret")
    with FileServer(served) as server:
        connection = http.client.HTTPConnection("127.0.0.1", _port(server))
        connection.request("GET", f"/../{served.parent.name}/secret.txt")
        assert connection.getresponse().status == 404
        connection.close()


def test_range_requests(served):
    data = (served / "data.bin").read_bytes()
    with FileServer(served) as server:
        url = f"{server.url}/data.bin"
        status, headers, body = _get(url, {"Range": "bytes=10-19"})
        assert (status, body) == (206, data[10:20])
        assert headers["Content-Range"] == "bytes 10-19/100000"
        assert headers["Content-Length"] == "10"
        assert _get(url, {"Range": "bytes=99990-"})[2] == data[99990:]
        assert _get(url, {"Range": "bytes=-5"})[2] == data[-5:]
        assert _get(url, {"Range": "bytes=99999-200000"})[2] == data[-1:]
        for bad in ("bytes=200000-300000", "bytes=20-10", "lines=1-2", "bytes=0-1,5-6"):
            status, headers, _ = _get(url, {"Range": bad})
            assert status == 416 and headers["Content-Range"] == "bytes */100000"


def test_basic_auth(served):
    with FileServer(served, auth=("ada", "pa55")) as server:
        url = f"{server.url}/data.bin"
        anonymous = requests.get(url, timeout=10)
        assert anonymous.status_code == 401
        assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
        assert requests.get(url, auth=("ada", "wrong"), timeout=10).status_code == 401
        good = requests.get(url, auth=("ada", "pa55"), timeout=10)
        assert good.status_code == 200 and len(good.content) == 100_000


def test_token_and_required_headers(served):
    with FileServer(served, token="s3cr3t", required_headers={"X-Client": "arco"}) as server:
        url = f"{server.url}/data.bin"
        header = {"X-Client": "arco"}
        assert requests.get(url, headers=header, timeout=10).status_code == 403
        assert requests.get(f"{url}?token=nope", headers=header, timeout=10).status_code == 403
        assert requests.get(f"{url}?token=s3cr3t", timeout=10).status_code == 403
        wrong = {"X-Client": "other"}
        assert requests.get(f"{url}?token=s3cr3t", headers=wrong, timeout=10).status_code == 403
        good = requests.get(f"{url}?a=1&token=s3cr3t", headers=header, timeout=10)
        assert good.status_code == 200 and len(good.content) == 100_000
        assert server.requests[-1] == "/data.bin?a=1&token=s3cr3t"


def test_errors_stop_after_the_per_path_fault_budget(served):
    faults = Faults(error_rate=1.0, max_faults_per_path=2)
    with FileServer(served, faults=faults) as server:
        statuses = [_get(f"{server.url}/data.bin")[0] for _ in range(3)]
        assert statuses[0] in (500, 503) and statuses[1] in (500, 503) and statuses[2] == 200
        assert _get(f"{server.url}/missing.nc")[0] in (500, 503)


def test_fault_draws_repeat_with_the_seed(served):
    def statuses(seed: int) -> list[int]:
        with FileServer(served, faults=Faults(error_rate=0.5, seed=seed)) as server:
            return [_get(f"{server.url}/data.bin")[0] for _ in range(20)]

    first = statuses(3)
    assert first == statuses(3) and {200} < set(first) and set(first) <= {200, 500, 503}


def test_truncated_body_is_shorter_than_its_content_length(served):
    with FileServer(served, faults=Faults(truncate_rate=1.0)) as server:
        connection = http.client.HTTPConnection("127.0.0.1", _port(server))
        connection.request("GET", "/data.bin")
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Content-Length") == "100000"
        with pytest.raises(http.client.IncompleteRead) as caught:
            response.read()
        assert len(caught.value.partial) == 50_000
        connection.close()


def test_reset_closes_the_connection_without_an_answer(served):
    with FileServer(served, faults=Faults(reset_rate=1.0, max_faults_per_path=1)) as server:
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{server.url}/data.bin", timeout=10)
        assert requests.get(f"{server.url}/data.bin", timeout=10).status_code == 200


def test_stalls_overlap_and_are_counted_as_concurrent(served):
    with FileServer(served, faults=Faults(stall_seconds=0.5)) as server:
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(_get(f"{server.url}/data.bin")[0]))
            for _ in range(4)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        assert results == [200] * 4 and 0.5 <= elapsed < 1.5
        assert server.max_concurrent() == 4


def test_stop_is_prompt_with_stalled_and_idle_connections(served):
    server = FileServer(served, faults=Faults(stall_seconds=60)).start()
    idle = socket.create_connection(("127.0.0.1", _port(server)), timeout=10)
    outcome = []

    def fetch():
        try:
            outcome.append(requests.get(f"{server.url}/data.bin", timeout=30).status_code)
        except requests.ConnectionError as error:
            outcome.append(error)

    stalled = threading.Thread(target=fetch)
    stalled.start()
    while not server.requests:
        time.sleep(0.01)
    started = time.monotonic()
    server.stop()
    stalled.join(5)
    assert time.monotonic() - started < 2.5
    assert len(outcome) == 1 and isinstance(outcome[0], requests.ConnectionError)
    assert idle.recv(1) == b""
    idle.close()
    with pytest.raises(RuntimeError):
        _ = server.url


def test_fsspec_http_reads_through_the_server(served):
    data = (served / "data.bin").read_bytes()
    with FileServer(served, token="t0k") as server:
        fs = fsspec.filesystem("http", skip_instance_cache=True)
        url = f"{server.url}/data.bin?token=t0k"
        assert fs.cat(url) == data
        assert fs.cat_file(url, start=100, end=250) == data[100:250]
        with fs.open(url, block_size=4096) as remote:
            remote.seek(50_000)
            assert remote.read(10_000) == data[50_000:60_000]
        assert any("token=t0k" in target for target in server.requests)
