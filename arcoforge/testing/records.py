"""Generated catalog records (no store behind them) for tests and the catalog benchmark.

``generated_record(i)`` is a plausible daily gridded dataset whose title, tags, license,
provider, output type and status vary with ``i``, so that a catalog of many of them has
something to search and filter.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from arcoforge.catalog.record import (
    DatasetRecord,
    Dimension,
    Extent,
    Maintainer,
    Provider,
    QuickLook,
    Run,
    Store,
    TimeCoverage,
    Variable,
)

TOPICS = ("sea surface temperature", "precipitation", "soil moisture", "sea ice", "wind")
TAGS = ("ocean", "atmosphere", "land", "cryosphere", "reanalysis", "satellite", "model")
LICENSES = ("CC-BY-4.0", "CC0-1.0", "ODbL-1.0")
PROVIDERS = ("NOAA", "ECMWF", "NASA", "Met Office")
TYPES = ("zarr", "references-json", "references-parquet", "icechunk")
STATUSES = ("ok", "ok", "ok", "failed", "never-baked", "unreadable")
VARIABLES = {
    "sea surface temperature": ("sst", "Celsius", "sea_surface_temperature"),
    "precipitation": ("precip", "mm/day", "precipitation_amount"),
    "soil moisture": ("sm", "m3 m-3", "volume_fraction_of_condensed_water_in_soil"),
    "sea ice": ("ice", "%", "sea_ice_area_fraction"),
    "wind": ("uwnd", "m s-1", "eastward_wind"),
}


def generated_record(i: int, quicklook: bool = False, **fields) -> DatasetRecord:
    """The ``i``-th generated dataset; ``fields`` override any of the record's fields."""
    topic = TOPICS[i % len(TOPICS)]
    name, units, standard = VARIABLES[topic]
    status = STATUSES[i % len(STATUSES)]
    kind = TYPES[i % len(TYPES)]
    days = 30 + (i * 37) % 3000
    start = datetime(1981, 9, 1) + timedelta(days=(i * 11) % 4000)
    end = start + timedelta(days=days - 1)
    feedstock = f"feedstock-{i:04d}"
    suffix = {"zarr": ".zarr", "references-json": ".json", "references-parquet": ".parq"}
    url = f"s3://bucket/arco/{feedstock}{suffix.get(kind, '.icechunk')}"
    started = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(hours=i)
    runs = [
        Run(
            id=f"{started:%Y%m%dT%H%M%SZ}-{i:06x}",
            status="succeeded" if status != "failed" else "failed",
            started=started.isoformat(timespec="seconds"),
            ended=(started + timedelta(seconds=40 + i % 300)).isoformat(timespec="seconds"),
            seconds=40.0 + i % 300,
            inputs=days,
            retries=i % 3,
            command=f"arcoforge bake {feedstock} --target-root s3://bucket/arco",
            version="0.1.0",
        )
    ]
    record = DatasetRecord(
        id=f"{feedstock}/{name}-daily",
        slug=f"{feedstock}-{name}-daily",
        feedstock=feedstock,
        recipe=f"{name}-daily",
        title=f"Daily {topic} {i}",
        description=f"Daily {topic} on a regular quarter-degree grid, dataset number {i}.",
        license=LICENSES[i % len(LICENSES)],
        license_url=f"https://spdx.org/licenses/{LICENSES[i % len(LICENSES)]}.html",
        providers=[
            Provider(
                name=PROVIDERS[i % len(PROVIDERS)],
                roles=["producer", "licensor"],
                url="https://example.org/provider",
            ),
            Provider(name="arcoforge bakery", roles=["host"]),
        ],
        maintainers=[Maintainer(name=f"Maintainer {i % 7}", github=f"maintainer{i % 7}")],
        tags=sorted({TAGS[i % len(TAGS)], TAGS[(i // 2 + 3) % len(TAGS)]}),
        store=Store(url=url, type=kind, size_bytes=10_000 * days, objects=4 * days),
        status=status,
        error="FileNotFoundError: zarr.json not found" if status == "unreadable" else None,
        dims=[
            Dimension(
                name="time",
                size=days,
                start=f"{start:%Y-%m-%d}",
                end=f"{end:%Y-%m-%d}",
                kind="time",
            ),
            Dimension(
                name="lat", size=720, start="-89.875", end="89.875", units="degrees_north", kind="y"
            ),
            Dimension(
                name="lon", size=1440, start="0.125", end="359.875", units="degrees_east", kind="x"
            ),
        ],
        variables=[
            Variable(
                name=name,
                dims=["time", "lat", "lon"],
                dtype="int16",
                shape=[days, 720, 1440],
                chunks=[1, 720, 1440],
                codecs=["bytes", "zstd"],
                units=units,
                long_name=f"Daily {topic}",
                standard_name=standard,
            ),
            Variable(
                name="time",
                dims=["time"],
                dtype="int64",
                shape=[days],
                chunks=[days],
                coordinate=True,
            ),
        ],
        time_coverage=TimeCoverage(start=f"{start:%Y-%m-%d}", end=f"{end:%Y-%m-%d}"),
        extent=Extent(west=0.0, south=-90.0, east=360.0, north=90.0),
        quicklook=QuickLook(
            variable=name,
            first="quicklook-first.png",
            last="quicklook-last.png",
            alt_first=f"Map of {name} on {start:%Y-%m-%d}",
            alt_last=f"Map of {name} on {end:%Y-%m-%d}",
        )
        if quicklook
        else None,
        snippets={"xarray": f'import xarray as xr\nds = xr.open_zarr("{url}")'},
        repr=f"<xarray.Dataset> Size: {10_000 * days}B\nDimensions: (time: {days}, lat: 720, lon: 1440)",
        runs=runs if status != "never-baked" else [],
    )
    return DatasetRecord.model_validate({**record.model_dump(), **fields})
