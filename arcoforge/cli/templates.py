"""``arcoforge init``: a new feedstock that lints clean and whose example bakes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from arcoforge.errors import FeedstockError
from arcoforge.testing.archives import write_oisst_archive

META = """\
title: {title}
description: >-
  Daily sea surface temperature on a regular grid, baked into one Zarr store.
  Replace this text with what your dataset holds.
recipes:
  - id: "{ident}"
    object: "recipe:recipe"
provenance:
  providers:
    - name: "Your data provider"
      description: "Who produces the source files."
      roles: [producer, licensor]
      url: "https://example.org/data"
  license: "CC-BY-4.0"
maintainers:
  - name: "Your Name"
    github: your-github-handle
"""

RECIPE = '''\
"""Recipe for the dataset of this feedstock.

The example reads the sample files beside this recipe. Point make_url at your archive
(https://, ftp://, s3:// or local paths) and set the dates it covers.
"""

from pathlib import Path

import pandas as pd

from arcoforge import ConcatDim, FilePattern, OpenURLWithFSSpec, OpenWithXarray, StoreToZarr

HERE = Path(__file__).parent
dates = pd.date_range("1981-09-01", periods=4, freq="D")


def make_url(time):
    """The URL of the file holding ``time``."""
    return (HERE / "sample-data" / f"oisst-avhrr-v02r01.{{time:%Y%m%d}}.nc").as_uri()


pattern = FilePattern(make_url, ConcatDim("time", dates, nitems_per_file=1), file_type="netcdf4")
recipe = (
    pattern
    | OpenURLWithFSSpec()
    | OpenWithXarray()
    | StoreToZarr(store_name="{ident}.zarr", target_chunks={{"time": 2}})
)
'''


def write_feedstock(folder: Path, force: bool = False) -> Path:
    """Write ``folder`` with meta.yaml, recipe.py and four small sample files."""

    if folder.exists() and any(folder.iterdir()) and not force:
        raise FeedstockError(f"{folder}: already exists and is not empty (use --force)")
    name = folder.resolve().name
    ident = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-._") or "recipe"
    title = name.replace("-", " ").replace("_", " ").strip() or "My dataset"
    folder.mkdir(parents=True, exist_ok=True)
    # a JSON string is a YAML string too: any title, quotes and all, stays text
    (folder / "meta.yaml").write_text(META.format(title=json.dumps(title), ident=ident))
    (folder / "recipe.py").write_text(RECIPE.format(ident=ident))
    write_oisst_archive(folder / "sample-data", days=4, ny=36, nx=72)
    return folder
