"""Errors a user can act on: one line naming the input, the step and the cause; and the
warnings of dependencies that tell a user nothing, silenced where arcoforge calls them."""

from __future__ import annotations

import functools
import importlib
import re
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
# warnings of dependencies about what arcoforge does on purpose, by the start of their text
NOISE = (
    "Consolidated metadata is currently not part",  # zarr 3 writes it all the same
    "Numcodecs codecs are not in the Zarr version 3",  # references keep the inputs' codecs
    "The 'fastparquet' engine is deprecated",  # fsspec reads Parquet references with it
    "The 'future.infer_string' option is deprecated",  # and sets this pandas option
)
_MISSING = re.compile(r"No module named '(\w+)|\bInstall (\w+) to\b")
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


class ArcoforgeError(Exception):
    """Base of every error arcoforge reports to users as one line."""


class RecipeError(ArcoforgeError):
    """A recipe is built wrongly (missing step, bad argument)."""


class SourceError(ArcoforgeError):
    """An input could not be fetched or opened."""


class SchemaError(ArcoforgeError):
    """Inputs do not combine into one dataset."""


class AppendError(SchemaError):
    """The new inputs do not continue the store."""


class ChangedInputError(SchemaError):
    """An input changed since the store was baked, and no longer fits the store."""


class FeedstockError(ArcoforgeError):
    """A feedstock folder (meta.yaml, recipe.py) is invalid."""


class ValidationError(ArcoforgeError):
    """An output does not match its sources."""


class TargetError(ArcoforgeError):
    """A target on an object store could not be read or written."""


class MissingDependency(ArcoforgeError):
    """An optional dependency is not installed."""


class Traced(ArcoforgeError):
    """Another error as text, where that error cannot go itself: into another process (its
    traceback and chain do not pickle, nor do some errors) or out of arcoforge while its
    message may hold a secret. ``str`` is the other's one line; ``text``, its traceback and
    chain as Python prints them, with the secrets its maker knew masked (see
    :func:`traced`)."""

    def __init__(self, line: str, text: str):
        super().__init__(line, text)
        self.line, self.text = line, text
        self.add_note(text)  # what Python's own traceback printing shows of it

    def __str__(self) -> str:
        return self.line


def one_line(exc: BaseException) -> str:
    """Return ``exc`` as a single line: its message, or its type and message; a missing
    optional dependency it names comes with the extra that installs it."""
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, ArcoforgeError) and type(exc).__name__ not in text:
        text = f"{type(exc).__name__}: {text}"
    return " ".join(text.split()) + install_hint(text)


def format_chain(exc: BaseException) -> str:
    """The traceback of ``exc`` and of the errors that led to it (``__cause__``, else the
    ``__context__`` not suppressed), oldest first, as Python prints them; a
    :class:`Traced` among them as the text it holds."""
    parts: list[str] = []
    seen: set[int] = set()
    link: BaseException | None = exc
    joint = ""
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, Traced):
            parts.append(link.text.rstrip("\n") + "\n" + joint)
            break
        parts.append("".join(traceback.format_exception(link, chain=False)) + joint)
        if link.__cause__ is not None:
            link, joint = link.__cause__, _CAUSE
        elif not link.__suppress_context__:
            link, joint = link.__context__, _CONTEXT
        else:
            link = None
    return "".join(reversed(parts))


def traced(exc: BaseException, redact: Callable[[str], str] = str) -> Traced:
    """``exc`` and its chain as a :class:`Traced`, its line and text passed through
    ``redact`` (which masks the secrets they may hold)."""
    return Traced(redact(one_line(exc)), redact(format_chain(exc)))


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


@contextmanager
def quiet() -> Iterator[None]:
    """Within: the warnings of :data:`NOISE` are not shown; others are, as before."""
    with warnings.catch_warnings():
        for message in NOISE:
            warnings.filterwarnings("ignore", message=re.escape(message))
        yield


def quietly(func: Callable) -> Callable:
    """``func``, run :func:`quiet`."""

    @functools.wraps(func)
    def run(*args, **kwargs):
        with quiet():
            return func(*args, **kwargs)

    return run
