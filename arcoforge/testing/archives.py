"""Synthetic archives of netCDF files shaped like real ones (NOAA OISST v2.1 by default).

Every field is a function of the grid, the seed and the calendar date only, so a slice of
a long dataset equals a short dataset that starts on the slice's first day. Values are
generated as packed int16 and decoded the way xarray decodes them, so they survive a
write/read round trip exactly.

Broken inputs for error tests are built from the same pieces, for example::

    write_files(oisst_dataset(days=1, ny=36, nx=72), root)            # a different grid
    write_files(oisst_dataset(days=1, variables=("sst",)), root)      # a missing variable
    write_files(oisst_dataset(days=1), root, name="oisst-copy")       # a duplicated time
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import cftime
import h5py
import numpy as np
import pandas as pd
import xarray as xr

TIME_UNITS = "days since 1978-01-01 12:00:00"
VARIABLES = ("sst", "anom", "err", "ice")
SCALE_FACTOR = np.float32(0.01)
FILL_VALUE = np.int16(-999)
LAND_FRACTION = 0.3

_VARIABLE_ATTRS = {
    "sst": {"long_name": "Daily sea surface temperature", "units": "Celsius"},
    "anom": {"long_name": "Daily sea surface temperature anomalies", "units": "Celsius"},
    "err": {"long_name": "Estimated error standard deviation of analysed_sst", "units": "Celsius"},
    "ice": {"long_name": "Sea ice concentration", "units": "%"},
}
# Standard deviation of the day-to-day noise, in each variable's units; tuned so that one
# 720x1440 day of all four variables compresses to about 2 MB with zlib level 4.
_NOISE = {"sst": 0.08, "anom": 0.08, "err": 0.01, "ice": 1.0}
_FORMATS = ("NETCDF4", "NETCDF3_64BIT")


class _Day(NamedTuple):
    year: int
    month: int
    day: int
    day_of_year: int


def _days(times: xr.CFTimeIndex | pd.DatetimeIndex) -> list[_Day]:
    fields = zip(times.year, times.month, times.day, times.day_of_year, strict=True)
    return [_Day(*map(int, values)) for values in fields]


class _Synth:
    """Static geography of one grid and seed; makes the fields of any day on it."""

    def __init__(self, ny: int, nx: int, seed: int):
        if ny < 1 or nx < 1:
            raise ValueError(f"grid must have at least one cell, got ny={ny}, nx={nx}")
        self.seed = seed
        self.lat = (-90.0 + (np.arange(ny) + 0.5) * (180.0 / ny)).astype(np.float32)
        self.lon = ((np.arange(nx) + 0.5) * (360.0 / nx)).astype(np.float32)
        self.latr = np.deg2rad(self.lat.astype(np.float64))[:, None]
        self.lonr = np.deg2rad(self.lon.astype(np.float64))[None, :]
        rng = np.random.default_rng([seed, ny, nx])
        relief = sum(
            rng.uniform(0.5, 1.0)
            * np.sin(rng.integers(1, 6) * self.lonr + rng.uniform(0, 2 * np.pi))
            * np.sin(rng.integers(1, 5) * self.latr + rng.uniform(0, 2 * np.pi))
            for _ in range(6)
        )
        self.land = relief > np.quantile(relief, 1.0 - LAND_FRACTION)
        self.climatology = (-1.8 + 30.0 * np.cos(self.latr) ** 2).astype(np.float32)
        self.error = 0.15 + 0.3 * np.abs(np.sin(self.latr))

    def noise(self, variable: str, day: _Day) -> np.ndarray:
        """Seeded white noise of one variable on ``day``, scaled to that variable."""
        key = [self.seed, VARIABLES.index(variable), day.year, day.month, day.day]
        rng = np.random.default_rng(key)
        return _NOISE[variable] * rng.standard_normal(self.land.shape, dtype=np.float32)

    def sst(self, day: _Day) -> np.ndarray:
        """Unrounded sea surface temperature on ``day``: climatology, season, waves, noise."""
        t = day.year * 365.25 + day.day_of_year
        season = -3.0 * np.sin(self.latr) * np.cos(2 * np.pi * (day.day_of_year - 45) / 365)
        wave = 1.2 * np.cos(self.latr) * np.sin(4 * self.lonr - 2 * np.pi * t / 30)
        eddies = 0.6 * np.sin(3 * self.lonr + 5 * self.latr + 2 * np.pi * t / 11)
        sst = self.climatology + (season + wave + eddies) + self.noise("sst", day)
        return np.clip(sst, -1.8, 34.0)

    def field(self, variable: str, day: _Day, sst: np.ndarray) -> np.ndarray:
        """Unrounded field of ``variable`` on ``day``, given that day's sst."""
        if variable == "sst":
            return sst
        noise = self.noise(variable, day)
        if variable == "anom":
            return sst - self.climatology + noise
        if variable == "err":
            return np.maximum(self.error + noise, 0.05)
        ice = np.clip((-0.5 - sst) / 1.3, 0.0, 1.0) * 100.0
        return np.clip(ice + noise * (ice > 0), 0.0, 100.0)

    def packed(self, variables: tuple[str, ...], day: _Day) -> dict[str, np.ndarray]:
        """Int16 packed values (scale 0.01, fill -999) of ``variables`` on ``day``."""
        sst = self.sst(day)
        out = {}
        for name in variables:
            packed = np.rint(self.field(name, day, sst) / SCALE_FACTOR).astype(np.int16)
            packed[self.land] = FILL_VALUE
            out[name] = packed
        return out


def _times(start: str, days: int, calendar: str) -> xr.CFTimeIndex | pd.DatetimeIndex:
    return xr.date_range(
        f"{start}T12:00:00",
        periods=days,
        freq="D",
        calendar=calendar,
        use_cftime=calendar != "standard",
    )


def _check_variables(variables: tuple[str, ...]) -> None:
    if not variables or not set(variables) <= set(VARIABLES):
        raise ValueError(f"variables must be a non-empty subset of {VARIABLES}, got {variables}")


def _check_layout(steps_per_file: int, file_format: str) -> None:
    if steps_per_file < 1:
        raise ValueError(f"steps_per_file must be >= 1, got {steps_per_file}")
    if file_format not in _FORMATS:
        raise ValueError(f"file_format must be one of {_FORMATS}, got {file_format!r}")


def _decode(packed: np.ndarray) -> np.ndarray:
    values = packed.astype(np.float32) * SCALE_FACTOR
    values[packed == FILL_VALUE] = np.nan
    return values


def _build(
    synth: _Synth, times: xr.CFTimeIndex | pd.DatetimeIndex, variables: tuple[str, ...]
) -> xr.Dataset:
    days = [synth.packed(variables, day) for day in _days(times)]
    data_vars = {
        name: (
            ("time", "lat", "lon"),
            _decode(np.stack([day[name] for day in days])),
            _VARIABLE_ATTRS[name],
        )
        for name in variables
    }
    coords = {
        "time": ("time", times, {"long_name": "Center time of the day"}),
        "lat": ("lat", synth.lat, {"long_name": "Latitude", "units": "degrees_north"}),
        "lon": ("lon", synth.lon, {"long_name": "Longitude", "units": "degrees_east"}),
    }
    attrs = {
        "title": "Synthetic daily sea surface temperature shaped like NOAA OISST v2.1",
        "source": "arcoforge.testing.archives",
        "Conventions": "CF-1.6",
    }
    return xr.Dataset(data_vars, coords, attrs)


def oisst_dataset(
    days: int = 60,
    ny: int = 720,
    nx: int = 1440,
    start: str = "1981-09-01",
    variables: tuple[str, ...] = VARIABLES,
    calendar: str = "standard",
    seed: int = 0,
) -> xr.Dataset:
    """Return a decoded float32 dataset shaped like NOAA OISST v2.1, with land as NaN."""
    _check_variables(variables)
    return _build(_Synth(ny, nx, seed), _times(start, days, calendar), variables)


def _date_stamp(day: _Day) -> str:
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def _encode_time(ds: xr.Dataset) -> xr.Dataset:
    """Replace decoded times by float64 days since 1978-01-01 12:00:00, units kept verbatim."""
    index = ds.indexes["time"]
    if isinstance(index, xr.CFTimeIndex):
        calendar, dates = index.calendar, list(index)
    else:
        calendar, dates = "standard", list(index.to_pydatetime())
    days = np.asarray(cftime.date2num(dates, TIME_UNITS, calendar), dtype=np.float64)
    attrs = {**ds["time"].attrs, "units": TIME_UNITS, "calendar": calendar}
    return ds.assign_coords(time=("time", days, attrs))


def _encoding(
    ds: xr.Dataset, *, netcdf4: bool, complevel: int, chunked: bool, pack: bool
) -> dict[str, dict[str, Any]]:
    encoding: dict[str, dict[str, Any]] = {
        name: {"_FillValue": None} for name in ds.dims if name in ds.coords
    }
    for name, var in ds.data_vars.items():
        enc: dict[str, Any] = {}
        if pack:
            enc.update(
                dtype="int16",
                scale_factor=SCALE_FACTOR,
                add_offset=np.float32(0.0),
                _FillValue=FILL_VALUE,
            )
        if netcdf4 and chunked:
            chunks = tuple(1 if dim == "time" else size for dim, size in var.sizes.items())
            enc.update(zlib=True, complevel=complevel, shuffle=True, chunksizes=chunks)
        elif netcdf4:
            enc.update(contiguous=True)
        encoding[name] = enc
    return encoding


def write_files(
    ds: xr.Dataset,
    root: str | Path,
    *,
    steps_per_file: int = 1,
    file_format: str = "NETCDF4",
    complevel: int = 4,
    chunked: bool = True,
    pack: bool = True,
    name: str = "oisst-avhrr-v02r01",
    sep: str = ".",
) -> list[Path]:
    """Write a decoded dataset split along time as ``{name}{sep}YYYYMMDD.nc`` files.

    With ``pack`` every data variable is stored as int16 (scale 0.01, fill -999). NETCDF4
    files are zlib-compressed with one HDF5 chunk per step when ``chunked``, else
    contiguous and uncompressed; NETCDF3_64BIT files are never compressed.
    """
    _check_layout(steps_per_file, file_format)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    encoding = _encoding(
        ds, netcdf4=file_format == "NETCDF4", complevel=complevel, chunked=chunked, pack=pack
    )
    days = _days(ds.indexes["time"])
    encoded = _encode_time(ds)
    paths = []
    for first in range(0, len(days), steps_per_file):
        path = root / f"{name}{sep}{_date_stamp(days[first])}.nc"
        part = encoded.isel(time=slice(first, first + steps_per_file))
        part.to_netcdf(path, format=file_format, engine="netcdf4", encoding=encoding)
        paths.append(path)
    return sorted(paths)


def write_oisst_archive(
    root: str | Path,
    days: int = 60,
    ny: int = 720,
    nx: int = 1440,
    *,
    steps_per_file: int = 1,
    file_format: str = "NETCDF4",
    complevel: int = 4,
    chunked: bool = True,
    calendar: str = "standard",
    start: str = "1981-09-01",
    seed: int = 0,
    variables: tuple[str, ...] = VARIABLES,
) -> list[Path]:
    """Write ``oisst_dataset(...)`` as OISST-named files of ``steps_per_file`` days each.

    Files are generated one at a time, so memory stays at one file's worth of data.
    """
    _check_variables(variables)
    _check_layout(steps_per_file, file_format)
    synth = _Synth(ny, nx, seed)
    times = _times(start, days, calendar)
    paths = []
    for first in range(0, days, steps_per_file):
        part = _build(synth, times[first : first + steps_per_file], variables)
        paths += write_files(
            part,
            root,
            steps_per_file=steps_per_file,
            file_format=file_format,
            complevel=complevel,
            chunked=chunked,
        )
    return sorted(paths)


def write_merge_archive(
    root: str | Path,
    days: int = 4,
    ny: int = 18,
    nx: int = 36,
    variables: tuple[str, ...] = ("sst", "ice"),
) -> dict[str, list[Path]]:
    """Write one ``{var}_YYYYMMDD.nc`` file per variable and day; return the paths by variable."""
    ds = oisst_dataset(days, ny, nx, variables=variables)
    return {name: write_files(ds[[name]], root, name=name, sep="_") for name in variables}


def write_coords_archive(root: str | Path, days: int = 6, ny: int = 10, nx: int = 20) -> list[Path]:
    """Write two-day files of unpacked ``t2m`` with non-dimension coordinates.

    ``mask(lat, lon)`` is an int8 land mask, the same in every file; ``forecast_hour(time)``
    is an int32 lead time that differs from step to step.
    """
    synth = _Synth(ny, nx, seed=0)
    times = _times("1981-09-01", days, "standard")
    t2m = np.stack(
        [(273.15 + synth.sst(day) - 5.0 * synth.land).astype(np.float32) for day in _days(times)]
    )
    ds = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), t2m, {"long_name": "2 metre temperature", "units": "K"})},
        coords={
            "time": times,
            "lat": ("lat", synth.lat, {"units": "degrees_north"}),
            "lon": ("lon", synth.lon, {"units": "degrees_east"}),
            "mask": (("lat", "lon"), synth.land.astype(np.int8), {"long_name": "Land mask"}),
            "forecast_hour": (
                "time",
                np.arange(1, days + 1, dtype=np.int32) * 24,
                {"long_name": "Forecast lead time", "units": "hours"},
            ),
        },
        attrs={"title": "Synthetic 2 metre temperature", "Conventions": "CF-1.6"},
    )
    return write_files(ds, root, steps_per_file=2, pack=False, name="t2m")


def write_corrupt_file(path: str | Path, size: int = 4096, intact: int = 512) -> Path:
    """Write a file whose first ``intact`` bytes are a real netCDF4 header and the rest garbage."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    oisst_dataset(days=1, ny=4, nx=8).to_netcdf(path, engine="netcdf4")
    head = path.read_bytes()[:intact]
    garbage = np.random.default_rng(0).integers(0, 256, size - len(head), dtype=np.uint8)
    path.write_bytes(head + garbage.tobytes())
    return path


def break_archive(paths: list[Path]) -> tuple[int, int]:
    """Damage an archive of OISST files as a disk or a mirror might: the bytes of the first
    chunk of ``sst`` in the first file inverted (its byte range returned), and the last
    file deleted."""
    with h5py.File(paths[0]) as f:
        info = f["sst"].id.get_chunk_info(0)
        offset, size = info.byte_offset, info.size
    data = bytearray(paths[0].read_bytes())
    data[offset : offset + size] = bytes(b ^ 0xFF for b in data[offset : offset + size])
    paths[0].write_bytes(bytes(data))
    paths[-1].unlink()
    return offset, size


def write_grib_archive(
    root: str | Path,
    days: int = 3,
    ny: int = 7,
    nx: int = 12,
    *,
    steps_per_file: int = 2,
    members: int = 0,
    variables: tuple[str, ...] = ("2t", "msl"),
    levels: tuple[int, ...] = (),
    edition: int = 2,
) -> list[Path]:
    """Write GRIB files of ``steps_per_file`` analysis times (every 12 h) each.

    Each file holds one message per time, variable, pressure level (when ``levels`` are
    given, in hPa, e.g. for variable ``t``) and (when ``members`` > 0, GRIB 2 only)
    ensemble member, on a regular lat/lon grid, written with eccodes in GRIB ``edition``
    1 or 2 and packed to 16 bits.
    """
    import eccodes

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    times = pd.date_range("2020-01-01", periods=days * 2, freq="12h")
    synth = _Synth(ny, nx, seed=0)
    paths = []
    for first in range(0, len(times), steps_per_file):
        path = root / f"analysis-{times[first]:%Y%m%d%H}.grib2"
        with open(path, "wb") as out:
            for time in times[first : first + steps_per_file]:
                for number in range(members) if members else [None]:
                    for name in variables:
                        for level in levels or [None]:
                            field = _grib_field(synth, name, time, number or 0) + (level or 0)
                            where = (number, level, edition)
                            _write_message(eccodes, out, name, time, where, field)
        paths.append(path)
    return paths


def _grib_field(synth: _Synth, name: str, time: pd.Timestamp, member: int) -> np.ndarray:
    day = _Day(time.year, time.month, time.day, time.day_of_year)
    base = synth.sst(day) + 0.5 * member + time.hour / 12
    return (273.15 + base if name == "2t" else 101325.0 + 100 * base).astype(np.float64)


def _write_message(eccodes, out, name: str, time: pd.Timestamp, where: tuple, field):
    number, level, edition = where
    ny, nx = field.shape
    sample = f"regular_ll_{'pl' if level else 'sfc'}_grib{edition}"
    gid = eccodes.codes_grib_new_from_samples(sample)
    try:
        if level:
            eccodes.codes_set(gid, "typeOfLevel", "isobaricInhPa")
            eccodes.codes_set(gid, "level", level)
        if number is not None:
            eccodes.codes_set(gid, "productDefinitionTemplateNumber", 1)
            eccodes.codes_set(gid, "typeOfEnsembleForecast", 3)
            eccodes.codes_set(gid, "numberOfForecastsInEnsemble", 10)
            eccodes.codes_set(gid, "perturbationNumber", number)
        keys = {
            "Ni": nx,
            "Nj": ny,
            "latitudeOfFirstGridPointInDegrees": 60.0,
            "longitudeOfFirstGridPointInDegrees": 0.0,
            "latitudeOfLastGridPointInDegrees": 60.0 - 2.0 * (ny - 1),
            "longitudeOfLastGridPointInDegrees": 2.0 * (nx - 1),
            "iDirectionIncrementInDegrees": 2.0,
            "jDirectionIncrementInDegrees": 2.0,
            "shortName": name,
            "dataDate": int(f"{time:%Y%m%d}"),
            "dataTime": int(f"{time:%H%M}"),
            "bitsPerValue": 16,
        }
        for key, value in keys.items():
            eccodes.codes_set(gid, key, value)
        eccodes.codes_set_values(gid, np.nan_to_num(field, nan=float(np.nanmean(field))).ravel())
        eccodes.codes_write(gid, out)
    finally:
        eccodes.codes_release(gid)
