"""Sources: bring each input's bytes within reach of the opener (fsspec, cache, retries, limits)."""

from arcoforge.sources.fetch import FetchConfig, is_remote, local_copy

__all__ = ["FetchConfig", "is_remote", "local_copy"]
