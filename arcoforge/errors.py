"""Errors a user can act on: one line naming the input, the step and the cause."""

from __future__ import annotations

import importlib
import re
from types import ModuleType

# optional dependencies, by top-level module, and the extra of arcoforge that installs them
EXTRAS = {
    "s3fs": "s3",
    "cfgrib": "grib",
    "eccodes": "grib",
    "gribapi": "grib",
    "pyarrow": "virtual",
    "kerchunk": "virtual",
    "fastparquet": "virtual",
    "icechunk": "icechunk",
    "dask": "dask",
    "distributed": "dask",
    "pyspark": "spark",
    "apache_beam": "beam",
    "jinja2": "catalog",
    "matplotlib": "catalog",
    "pystac": "catalog",
    "jsonschema": "catalog",
}
_MISSING = re.compile(r"No module named '(\w+)|\bInstall (\w+) to\b")


class ArcoforgeError(Exception):
    """Base of every error arcoforge reports to users as one line."""


class RecipeError(ArcoforgeError):
    """A recipe is built wrongly (missing step, bad argument)."""


class SourceError(ArcoforgeError):
    """An input could not be fetched or opened."""


class SchemaError(ArcoforgeError):
    """Inputs do not combine into one dataset."""


class FeedstockError(ArcoforgeError):
    """A feedstock folder (meta.yaml, recipe.py) is invalid."""


class ValidationError(ArcoforgeError):
    """An output does not match its sources."""


class TargetError(ArcoforgeError):
    """A target on an object store could not be read or written."""


class MissingDependency(ArcoforgeError):
    """An optional dependency is not installed."""


def one_line(exc: BaseException) -> str:
    """Return ``exc`` as a single line: its message, or its type and message; a missing
    optional dependency it names comes with the extra that installs it."""
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, ArcoforgeError) and type(exc).__name__ not in text:
        text = f"{type(exc).__name__}: {text}"
    return " ".join(text.split()) + install_hint(text)


def install_hint(text: str) -> str:
    """`` (pip install "arcoforge[EXTRA]")`` when ``text`` says that a module of an extra
    is missing and does not say how to install it; else ``""``."""
    if "pip install" in text:
        return ""
    for match in _MISSING.finditer(text):
        extra = EXTRAS.get(next(name for name in match.groups() if name))
        if extra:
            return f' (pip install "arcoforge[{extra}]")'
    return ""


def require(module: str, needed_by: str) -> ModuleType:
    """Import the optional dependency ``module``, or raise :class:`MissingDependency`
    saying that ``needed_by`` needs it and which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.partition(".")[0]
        missing = (exc.name or top).partition(".")[0]
        missing = missing if missing in EXTRAS else top  # or what it needs: cfgrib's eccodes
        extra = EXTRAS[top]
        raise MissingDependency(
            f'{needed_by} need {missing}: pip install "arcoforge[{extra}]"'
        ) from exc


def first_field_error(exc) -> str:
    """A pydantic ``ValidationError`` as ``field: message (and N more)``."""
    errors = exc.errors()
    field = ".".join(str(p) for p in errors[0]["loc"]) or "(top level)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{field}: {errors[0]['msg']}{more}"
