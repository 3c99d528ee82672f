"""The Zarr product: inputs opened with xarray, combined into one schema, and copied into a
Zarr store region by region, each region checked against its inputs before publishing."""
