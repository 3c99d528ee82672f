"""The references product: chunk manifests of inputs, combined as arrays, written as
references that readers follow into the inputs themselves.

A scanner per format (:mod:`.scanners`) turns one input into a
:class:`~.manifest.Manifest`: per array, its Zarr v2 metadata and three arrays over its
chunk grid (file index, byte offset, byte length). :mod:`.combine` joins manifests with
numpy concatenation, never key by key, and :mod:`.formats` writes the result as kerchunk
JSON, Parquet or into an Icechunk repository.
"""

from arcoforge.references.store import open_references

__all__ = ["open_references"]
