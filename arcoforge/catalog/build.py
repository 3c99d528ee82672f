"""``arcoforge catalog``: describe the datasets of feedstocks, then write their site and
STAC catalog into one folder, touching only what changed."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import fsspec

from arcoforge.catalog.describe import describe_feedstock, slug
from arcoforge.catalog.manifest import Published, read_manifest
from arcoforge.catalog.record import DatasetRecord
from arcoforge.catalog.site import check_names, check_records, write_site
from arcoforge.catalog.stac import build_stac
from arcoforge.core.runs import RUNS_FOLDER, RunRecord
from arcoforge.recipe.feedstock import read_meta
from arcoforge.sources.secrets import redact, secret_values


def build_catalog(
    feedstocks: Sequence[Path],
    target_root: str,
    out: Path,
    base_url: str | None = None,
    storage_options: dict | None = None,
    described: Callable[[DatasetRecord], None] | None = None,
) -> tuple[list[DatasetRecord], Published]:
    """The records of every recipe of ``feedstocks`` (their stores under ``target_root``),
    and what writing their site and STAC catalog (``out/stac``) did to ``out``.
    ``described`` is called with each record as it is made."""
    read_manifest(out)  # refuse a folder of something else before reading any store
    check_names(_names(feedstocks))  # and pages that would collide
    with tempfile.TemporaryDirectory(prefix="arcoforge-catalog-") as tmp:
        stage = Path(tmp)
        quicklooks = stage / "quicklooks"
        records = []
        for folder in feedstocks:
            for record in describe_feedstock(
                folder,
                target_root,
                storage_options=storage_options,
                quicklook_dir=quicklooks,
            ):
                records.append(record)
                if described:
                    described(record)
        check_records(records)
        build_stac(records, stage / "stac", base_url=_stac_url(base_url), quicklook_dir=quicklooks)
        published = write_site(
            records,
            out,
            base_url=base_url,
            quicklook_dir=quicklooks,
            stac_dir=stage / "stac",
            run_records=run_records(records, storage_options),
        )
    return records, published


def run_records(
    records: Sequence[DatasetRecord], storage_options: dict | None = None
) -> dict[str, str]:
    """The run records of ``records`` as JSON text (secrets masked) by run id, read again
    from the folder beside each store where bake wrote them; a run whose record is not
    there (or names another store) is left out, and its summary is published instead."""
    secrets = tuple(secret_values(open_kwargs=storage_options))
    found = {}
    for record in records:
        parent = record.store.url.rstrip("/").rpartition("/")[0]
        for run in record.runs:
            try:
                fs, path = fsspec.core.url_to_fs(
                    f"{parent}/{RUNS_FOLDER}/{run.id}.json", **(storage_options or {})
                )
                full = RunRecord.model_validate_json(fs.cat_file(path))
            except Exception:  # missing, unreadable or not a record: each filesystem has its own
                continue
            if full.id == run.id and full.target == record.store.url:
                found[run.id] = redact(full.model_dump_json(indent=1), secrets) + "\n"
    return found


def _names(feedstocks: Sequence[Path]) -> list[tuple[str, str]]:
    """The (dataset id, slug) of each recipe of ``feedstocks``, from their meta.yaml alone
    (named as :func:`describe_feedstock` names them)."""
    names = []
    for folder in feedstocks:
        feedstock = Path(folder).resolve().name
        for ref in read_meta(Path(folder)).recipes:
            dataset_id = f"{feedstock}/{ref.id}"
            names.append((dataset_id, slug(dataset_id)))
    return names


def _stac_url(base_url: str | None) -> str | None:
    """Where the STAC catalog is published: ``stac/`` under the site's URL."""
    return f"{base_url.rstrip('/')}/stac/" if base_url else None
