"""Zarr v3 codecs that Icechunk references need and zarr-python lacks."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numcodecs
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import parse_named_configuration

GRIB = "numcodecs.grib"


@dataclass(frozen=True)
class Grib(ArrayBytesCodec):
    """A chunk that is one GRIB message, decoded by kerchunk's numcodecs codec ``grib``
    (eccodes) and shaped as the chunk; read only. Named as zarr-python names the numcodecs
    codecs it wraps; registered for readers by the ``zarr.codecs`` entry point."""

    var: str
    dtype: str

    is_fixed_size = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grib:
        _, config = parse_named_configuration(data, GRIB)
        return cls(**config)

    def to_dict(self) -> dict[str, Any]:
        return {"name": GRIB, "configuration": {"var": self.var, "dtype": self.dtype}}

    async def _decode_single(self, chunk_bytes, chunk_spec):
        codec = numcodecs.get_codec({"id": "grib", "var": self.var, "dtype": self.dtype})
        values = await asyncio.to_thread(codec.decode, chunk_bytes.to_bytes())
        shaped = np.asarray(values).reshape(chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(shaped)

    async def _encode_single(self, chunk_array, chunk_spec):
        raise NotImplementedError("GRIB chunks are read, never written")

    def compute_encoded_size(self, input_byte_length: int, chunk_spec) -> int:
        raise NotImplementedError("GRIB messages have no fixed size")
