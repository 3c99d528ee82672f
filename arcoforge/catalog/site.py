"""The catalog website: an index page with search and filters, a page per dataset, the
search index as JSON and each run record as JSON, all from :class:`DatasetRecord` s.

Pages are rendered with Jinja2 with autoescape on, so any text of a record (titles,
descriptions, attributes from source files) is shown as text; links are made only of
``http(s)`` URLs. Every link inside the site is relative, so the folder works from any
host and from disk; the index embeds its search index, as browsers refuse ``fetch()`` of
a ``file://`` URL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata, resources
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from arcoforge.amounts import size
from arcoforge.catalog.manifest import Published, publish, safe_path
from arcoforge.catalog.record import DatasetRecord, Run
from arcoforge.errors import ArcoforgeError

STATUS_LABELS = {
    "ok": "ok",
    "failed": "failed",
    "running": "running",
    "never-baked": "never baked",
    "unreadable": "unreadable",
}
TYPE_LABELS = {
    "zarr": "Zarr",
    "references-json": "Kerchunk references (JSON)",
    "references-parquet": "Kerchunk references (Parquet)",
    "icechunk": "Icechunk",
}
ASSETS = ("catalog.css", "catalog.js")
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_GITHUB = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")


class SiteError(ArcoforgeError):
    """Records that cannot make one site (two with one page name, a path outside it)."""


def write_site(
    records: Sequence[DatasetRecord],
    out: Path,
    base_url: str | None = None,
    quicklook_dir: Path | None = None,
    stac_dir: Path | None = None,
    run_records: Mapping[str, str] | None = None,
) -> Published:
    """Write the site of ``records`` into ``out``, touching only files whose bytes change.

    ``quicklook_dir`` holds the quick-look PNGs the records name (their paths relative to
    ``quicklook_dir/<slug>/``); ``stac_dir`` a STAC catalog to publish as ``out/stac``;
    ``run_records`` the full run records as JSON text (secrets masked) by run id, each
    published in place of its run's summary.
    """
    files = render_site(records, base_url=base_url, stac=stac_dir is not None)
    for record in records:
        for run in record.runs:
            if run_records and run.id in run_records:
                files[f"datasets/{record.slug}/{_run_file(run)}"] = run_records[run.id].encode()
    if quicklook_dir is not None:
        files.update(quicklook_files(records, quicklook_dir))
    if stac_dir is not None:
        files.update(_tree(stac_dir, "stac"))
    return publish(out, files)


def render_site(
    records: Sequence[DatasetRecord], base_url: str | None = None, stac: bool = False
) -> dict[str, bytes]:
    """Every page, the search index, the assets and the run records, by relative path."""
    check_records(records)
    records = sorted(records, key=lambda r: (r.title.casefold(), r.id))
    env = _environment()
    version = _version()
    base = base_url.rstrip("/") + "/" if base_url else None
    common = {"version": version, "stac": stac}
    index = [_index_entry(r, _absolute(base, _page(r))) for r in records]
    files = {
        "index.json": (json.dumps(index, indent=1, ensure_ascii=False) + "\n").encode(),
        "index.html": env.get_template("index.html")
        .render(
            root="",
            canonical=_absolute(base, "index.html") if base else None,
            cards=[_card(r) for r in records],
            filters=_filters(records),
            index=index,
            **common,
        )
        .encode(),
    }
    for name in ASSETS:
        files[f"assets/{name}"] = resources.files(__package__).joinpath("assets", name).read_bytes()
    for record in records:
        folder = f"datasets/{record.slug}"
        files[f"{folder}/index.html"] = _dataset_page(env, record, base, common).encode()
        for run in record.runs:
            files[f"{folder}/{_run_file(run)}"] = (run.model_dump_json(indent=1) + "\n").encode()
    return files


def check_records(records: Iterable[DatasetRecord]) -> None:
    """Refuse records whose pages would collide or whose files would land outside their
    folder: two datasets of one id or slug, a slug that is not a file name, a quick-look
    path that leaves the dataset's folder."""
    records = list(records)
    check_names((record.id, record.slug) for record in records)
    for record in records:
        look = record.quicklook
        for path in (look.first, look.last) if look else ():
            if not safe_path(path) or path == "index.html" or path.startswith("runs/"):
                raise SiteError(f"dataset {record.id!r}: quick-look path {path!r} is not allowed")


def check_names(names: Iterable[tuple[str, str]]) -> None:
    """Refuse (dataset id, slug) pairs whose pages would collide: an id given twice, a slug
    that is not a file name, two slugs that differ only in case."""
    ids: set[str] = set()
    slugs: dict[str, str] = {}
    for dataset_id, slug in names:
        if dataset_id in ids:
            raise SiteError(f"dataset {dataset_id!r} is given twice (feedstock given twice?)")
        ids.add(dataset_id)
        if not _SLUG.fullmatch(slug):
            raise SiteError(f"dataset {dataset_id!r}: slug {slug!r} is not a file name")
        if slug.casefold() in slugs:
            other = slugs[slug.casefold()]
            raise SiteError(f"datasets {other!r} and {dataset_id!r} have one page name {slug!r}")
        slugs[slug.casefold()] = dataset_id


def quicklook_files(records: Iterable[DatasetRecord], folder: Path) -> dict[str, bytes]:
    """The quick-look PNGs of ``records`` from ``folder/<slug>/``, by their path in the site."""
    files = {}
    for record in records:
        look = record.quicklook
        for path in (look.first, look.last) if look else ():
            source = folder / record.slug / path
            try:
                files[f"datasets/{record.slug}/{path}"] = source.read_bytes()
            except OSError as exc:
                raise SiteError(
                    f"dataset {record.id!r}: quick-look {source}: {exc.strerror or exc}"
                ) from exc
    return files


def _tree(folder: Path, prefix: str) -> dict[str, bytes]:
    """Every file under ``folder``, by its path under ``prefix``."""
    return {
        f"{prefix}/{path.relative_to(folder).as_posix()}": path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader(__package__, "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.globals.update(status_labels=STATUS_LABELS, type_labels=TYPE_LABELS)
    env.filters["web_url"] = web_url
    env.filters["github_url"] = _github_url
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "ensure_ascii": False}
    return env


def web_url(url: str | None) -> bool:
    """Whether ``url`` may be a link: http(s) only (no ``javascript:`` or ``data:``)."""
    return bool(url) and re.match(r"https?://[^\s\"'<>]+$", url, re.IGNORECASE) is not None


def _github_url(handle: str) -> str | None:
    return f"https://github.com/{handle}" if _GITHUB.fullmatch(handle) else None


def _version() -> str:
    try:
        return metadata.version("arcoforge")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _page(record: DatasetRecord) -> str:
    return f"datasets/{record.slug}/index.html"


def _absolute(base: str | None, path: str) -> str:
    return f"{base}{path}" if base else path


def _run_file(run: Run) -> str:
    return "runs/" + re.sub(r"[^A-Za-z0-9_.-]", "-", run.id).lstrip(".") + ".json"


def _index_entry(record: DatasetRecord, url: str) -> dict:
    """What the index page searches and filters by, for one dataset."""
    last = record.runs[0] if record.runs else None
    return {
        "id": record.id,
        "slug": record.slug,
        "url": url,
        "title": record.title,
        "description": record.description,
        "license": record.license,
        "providers": [p.name for p in record.providers],
        "tags": record.tags,
        "variables": [v.name for v in record.variables if not v.coordinate],
        "long_names": [v.long_name for v in record.variables if v.long_name and not v.coordinate],
        "type": record.store.type,
        "status": record.status,
        "size_bytes": record.store.size_bytes,
        "time_coverage": record.time_coverage.model_dump() if record.time_coverage else None,
        "last_bake": {"status": last.status, "started": last.started} if last else None,
    }


def _card(record: DatasetRecord) -> dict:
    last = record.runs[0] if record.runs else None
    coverage = record.time_coverage
    return {
        "slug": record.slug,
        "href": _page(record),
        "title": record.title,
        "description": record.description,
        "license": record.license,
        "providers": [p.name for p in record.providers],
        "tags": record.tags,
        "type": record.store.type,
        "status": record.status,
        "size": _size(record.store.size_bytes),
        "time": f"{coverage.start} to {coverage.end}" if coverage else None,
        "last_bake": f"{_when(last.started)} ({last.status})" if last else "never",
    }


def _filters(records: Sequence[DatasetRecord]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """The filter menus: name, label and the (value, text) options the records have."""

    def options(values: Iterable[str], labels: dict[str, str] | None = None):
        return [(v, (labels or {}).get(v, v)) for v in sorted(set(values), key=str.casefold)]

    return [
        ("tag", "Tag", options(t for r in records for t in r.tags)),
        ("license", "License", options(r.license for r in records)),
        ("provider", "Provider", options(p.name for r in records for p in r.providers)),
        ("type", "Output type", options((r.store.type for r in records), TYPE_LABELS)),
        ("status", "Status", options((r.status for r in records), STATUS_LABELS)),
    ]


def _dataset_page(env: Environment, record: DatasetRecord, base: str | None, common: dict) -> str:
    data = [v for v in record.variables if not v.coordinate]
    coords = [v for v in record.variables if v.coordinate]
    tables = [("Variables", "variables", data), ("Coordinates", "coordinates", coords)]
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", record.description) if p.strip()]
    return env.get_template("dataset.html").render(
        root="../../",
        canonical=_absolute(base, _page(record)) if base else None,
        r=record,
        paragraphs=paragraphs,
        size=_size(record.store.size_bytes),
        objects=f"{record.store.objects:,}" if record.store.objects is not None else "unknown",
        variable_tables=[t for t in tables if t[2]],
        runs=[_run_row(run) for run in record.runs],
        **common,
    )


def _run_row(run: Run) -> dict:
    return {
        **run.model_dump(),
        "href": _run_file(run),
        "started": _when(run.started),
        "duration": _duration(run.seconds),
    }


def _size(nbytes: int | None) -> str:
    return size(nbytes) if nbytes is not None else "unknown"


def _when(text: str) -> str:
    """An ISO time as ``2026-11-25 08:15:00 UTC``; other text as it is."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is None:
        return f"{moment:%Y-%m-%d %H:%M:%S}"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {rest:02d} s" if minutes else f"{seconds:.1f} s"
