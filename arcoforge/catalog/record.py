"""What the catalog knows of one dataset: the contract between reading stores and writing pages.

A :class:`DatasetRecord` is built from a feedstock's ``meta.yaml``, the store its recipe
baked and the run records of its bakes; the site, its search index and the STAC catalog are
all written from records alone, so a catalog can be rebuilt (or tested) without the stores.
Every text in a record is as the user or the source file wrote it: escaping is the writer's
job. URLs are kept with credentials masked.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

StoreType = Literal["zarr", "references-json", "references-parquet", "icechunk"]
Status = Literal["ok", "failed", "running", "never-baked", "unreadable"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Provider(_Model):
    name: str
    roles: list[str] = []
    url: str | None = None


class Maintainer(_Model):
    name: str
    github: str | None = None


class Store(_Model):
    """Where the dataset is and what it takes up."""

    url: str
    type: StoreType
    size_bytes: int | None = None
    objects: int | None = None


class Dimension(_Model):
    """A dimension and, when it has a 1-D coordinate, that coordinate's range as text
    (ISO dates for times)."""

    name: str
    size: int
    start: str | None = None
    end: str | None = None
    units: str | None = None
    kind: Literal["time", "x", "y", "z", "other"] = "other"


class Variable(_Model):
    name: str
    dims: list[str]
    dtype: str
    shape: list[int]
    chunks: list[int] | None = None
    shards: list[int] | None = None
    codecs: list[str] = []
    units: str | None = None
    long_name: str | None = None
    standard_name: str | None = None
    coordinate: bool = False


class Extent(_Model):
    """Longitude/latitude bounds in degrees."""

    west: float
    south: float
    east: float
    north: float


class TimeCoverage(_Model):
    start: str
    end: str


class QuickLook(_Model):
    """PNG images (paths relative to the dataset's folder in the site) of one variable."""

    variable: str
    first: str
    last: str
    alt_first: str
    alt_last: str


class Run(_Model):
    """One bake of the dataset, from its run record."""

    id: str
    status: str
    started: str
    ended: str | None = None
    seconds: float | None = None
    inputs: int
    retries: int = 0
    command: str | None = None
    by: str | None = None  # who ran it (the run record's ``by``)
    version: str | None = None


class DatasetRecord(_Model):
    """One recipe's dataset, everything its page, card, index entry and STAC Collection show."""

    id: str  # "<feedstock>/<recipe id>"
    slug: str  # a file-name-safe form of id, unique in the catalog
    feedstock: str
    recipe: str
    title: str
    description: str
    license: str
    license_url: str | None = None
    providers: list[Provider] = []
    maintainers: list[Maintainer] = []
    tags: list[str] = []
    store: Store
    status: Status
    error: str | None = None  # why the store could not be opened, one line
    dims: list[Dimension] = []
    variables: list[Variable] = []
    time_coverage: TimeCoverage | None = None
    extent: Extent | None = None
    quicklook: QuickLook | None = None
    snippets: dict[str, str] = {}  # label -> Python code that opens the store
    repr: str | None = None  # the xarray repr, as text
    runs: list[Run] = []  # newest first
