"""The formats references are written in, each a class of :class:`.base.ReferenceFormat`:
kerchunk JSON (:mod:`.json`), kerchunk Parquet (:mod:`.parquet`), Icechunk (:mod:`.icechunk`)."""
