"""Virtual datasets: chunk manifests of inputs, combined as arrays, written as references.

A scanner per format (:mod:`.hdf5`, :mod:`.netcdf3`, :mod:`.zarr`, :mod:`.grib`) turns one
input into a :class:`~.manifest.Manifest`: per array, its Zarr v2 metadata and three
arrays over its chunk grid (file index, byte offset, byte length). :func:`.combine.combine`
joins manifests with numpy concatenation, never key by key, and :mod:`arcoforge.writers`
writes the result as kerchunk JSON, Parquet or into an Icechunk repository.
"""
