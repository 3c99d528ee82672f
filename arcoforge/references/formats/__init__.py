"""The formats references are written in: kerchunk JSON, kerchunk Parquet, Icechunk."""
