"""``arcoforge validate``: a finished store seen from outside, checked and compared with its
sources. Zarr stores and references each have their checks; :func:`checker_for` picks."""

from __future__ import annotations

from collections.abc import Callable

from arcoforge.core.report import StoreReport
from arcoforge.references.store import is_reference_url
from arcoforge.validate.references import validate_references
from arcoforge.validate.zarr import validate_store

Checker = Callable[..., StoreReport]


def checker_for(url: str, storage_options: dict | None = None) -> Checker:
    """The audit for the store at ``url``: of references, or else of a Zarr store. A
    checker takes the URL and the keywords of :func:`validate_store` and returns a
    :class:`~arcoforge.core.report.StoreReport`."""
    if is_reference_url(url, storage_options):
        return validate_references
    return validate_store


__all__ = ["StoreReport", "checker_for", "validate_references", "validate_store"]
