"""Errors a user can act on: one line naming the input, the step and the cause."""

from __future__ import annotations


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


def one_line(exc: BaseException) -> str:
    """Return ``exc`` as a single line: its message, or its type and message."""
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, ArcoforgeError) and type(exc).__name__ not in text:
        text = f"{type(exc).__name__}: {text}"
    return " ".join(text.split())


def first_field_error(exc) -> str:
    """A pydantic ``ValidationError`` as ``field: message (and N more)``."""
    errors = exc.errors()
    field = ".".join(str(p) for p in errors[0]["loc"]) or "(top level)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{field}: {errors[0]['msg']}{more}"
