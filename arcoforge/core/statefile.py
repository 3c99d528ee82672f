"""State files kept beside a store, as data that runs no code when read.

A value (dicts, lists, tuples, numbers, strings, bytes, numpy arrays and scalars,
datetimes, cftime dates and dataclasses of an explicit allowlist) becomes tagged JSON:
plain JSON where JSON says it all, ``{"~": TAG, ...}`` where it does not. Arrays go
either inline as base64 (:func:`dumps_json`, a JSON file) or as raw buffers after a JSON
header, each at a 64-byte boundary (:func:`dumps_binary`): a mapped file's arrays are then
views of the mapping, read only where they are used. Reading never imports or calls
anything the file names but the allowlisted classes, and anything unexpected is a
:class:`StateFileError` naming the file.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import datetime
import json
import math
import struct
from collections.abc import Iterable
from dataclasses import fields, is_dataclass
from typing import Any

import cftime
import numpy as np

from arcoforge.errors import ArcoforgeError, one_line

FORMAT = "arcoforge-state"
VERSION = 1  # of the format: a file of another version is refused, not guessed at
MAGIC = b"arcoforge-state\n"
ALIGN = 64
_SIZE = struct.Struct("<Q")
_CFTIME = {
    cls.__name__: cls
    for cls in (
        cftime.datetime,
        cftime.DatetimeNoLeap,
        cftime.DatetimeAllLeap,
        cftime.Datetime360Day,
        cftime.DatetimeJulian,
        cftime.DatetimeGregorian,
        cftime.DatetimeProlepticGregorian,
    )
}
_BUILTIN_ERRORS = (
    "OSError",
    "ValueError",
    "TypeError",
    "KeyError",
    "IndexError",
    "RuntimeError",
    "MemoryError",
    "TimeoutError",
    "FileNotFoundError",
    "PermissionError",
    "ConnectionError",
    "NotImplementedError",
)


class StateFileError(ArcoforgeError):
    """A state file that this arcoforge cannot read: tampered with, truncated, or written
    by another version of it."""


def not_ours(url: str, why: str) -> StateFileError:
    """The one-line error of an unreadable state file."""
    return StateFileError(f"{url}: not a state file of this arcoforge version ({why})")


def dumps_json(value: Any, kind: str, types: Iterable[type] = ()) -> bytes:
    """``value`` as a JSON document of ``kind``, its arrays inline (base64)."""
    body = _Encoder(types, buffers=None).encode(value)
    return json.dumps(_header(kind, body), separators=(",", ":"), allow_nan=False).encode()


def loads_json(data: bytes, url: str, kind: str, types: Iterable[type] = ()) -> Any:
    """The value of a document written by :func:`dumps_json`."""
    if data[:1] == b"\x80":
        raise not_ours(url, "a pickle, which arcoforge no longer reads")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise not_ours(url, f"not JSON: {_text(exc)}") from exc
    return _Decoder(types, None, url).decode(_checked(document, url, kind))


def dumps_binary(value: Any, kind: str, types: Iterable[type] = ()) -> bytes:
    """``value`` as a JSON header followed by its arrays' raw buffers, 64-byte aligned."""
    buffers: list[memoryview] = []
    body = _Encoder(types, buffers).encode(value)
    header = _header(kind, body)
    header["buffers"] = []
    start = 0
    for buffer in buffers:
        start += -start % ALIGN
        header["buffers"].append([start, buffer.nbytes])
        start += buffer.nbytes
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    out = bytearray(MAGIC + _SIZE.pack(len(text)) + text)
    out += bytes(-len(out) % ALIGN)
    base = len(out)
    for (at, _), buffer in zip(header["buffers"], buffers, strict=True):
        out += bytes(base + at - len(out))
        out += buffer
    return bytes(out)


def loads_binary(data, url: str, kind: str, types: Iterable[type] = ()) -> Any:
    """The value of bytes (or a mapping) written by :func:`dumps_binary`, its arrays
    read-only views of ``data``."""
    view = memoryview(data)
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise not_ours(url, _unknown_start(bytes(view[:16])))
    at = len(MAGIC) + _SIZE.size
    if len(view) < at:
        raise not_ours(url, f"truncated: {len(view)} bytes")
    (size,) = _SIZE.unpack_from(view, len(MAGIC))
    if at + size > len(view):
        raise not_ours(url, f"truncated: {len(view)} bytes, its header alone needs {at + size}")
    try:
        header = json.loads(bytes(view[at : at + size]))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise not_ours(url, f"its header is not JSON: {_text(exc)}") from exc
    at += size
    base = at + (-at % ALIGN)
    buffers = []
    for entry in _field(header, "buffers", list, url):
        if not (isinstance(entry, list) and len(entry) == 2 and all(type(n) is int for n in entry)):
            raise not_ours(url, "a buffer is not [offset, size]")
        start, nbytes = base + entry[0], entry[1]
        if start + nbytes > len(view) or entry[0] < 0 or nbytes < 0:
            raise not_ours(url, f"truncated: {len(view)} bytes, its arrays need {start + nbytes}")
        buffers.append(view[start : start + nbytes])
    return _Decoder(types, buffers, url).decode(_checked(header, url, kind))


def _text(exc: Exception) -> str:
    """A parser's message on one line (JSON's names the line, column and character)."""
    return " ".join(str(exc).split())


def _unknown_start(start: bytes) -> str:
    if start[:1] == b"\x80" or start.startswith(b"arcoforge-held-1"):
        return "a pickle, which arcoforge no longer reads"
    return "it does not start with arcoforge's header" if start else "empty"


def _header(kind: str, body: Any) -> dict:
    return {"format": FORMAT, "version": VERSION, "kind": kind, "value": body}


def _checked(document: Any, url: str, kind: str) -> Any:
    """The body of a document, once its header says it is one of ours, of ``kind``."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise not_ours(url, "no arcoforge-state header")
    if document.get("version") != VERSION:
        version = document.get("version")
        raise not_ours(url, f"format version {version!r}; this arcoforge reads {VERSION}")
    if document.get("kind") != kind:
        raise not_ours(url, f"it holds {document.get('kind')!r}, not {kind!r}")
    if "value" not in document:
        raise not_ours(url, "no value")
    return document["value"]


def _field(document: Any, name: str, kind: type, url: str) -> Any:
    value = document.get(name) if isinstance(document, dict) else None
    if not isinstance(value, kind):
        raise not_ours(url, f"no {name!r}")
    return value


def _error_classes() -> dict[str, type[BaseException]]:
    """The exceptions a state file may name: arcoforge's and a few of Python's own."""
    found: dict[str, type[BaseException]] = {n: getattr(builtins, n) for n in _BUILTIN_ERRORS}
    pending = [ArcoforgeError]
    while pending:
        cls = pending.pop()
        found[f"{cls.__module__}.{cls.__qualname__}"] = cls
        pending += cls.__subclasses__()
    return found


def _error_class(name: str) -> type[BaseException] | None:
    """The class a state file names; one of arcoforge's by its own name when the module
    it was in has moved since the file was written."""
    classes = _error_classes()
    if name in classes or not name.startswith("arcoforge."):
        return classes.get(name)
    moved = [c for n, c in classes.items() if n.rpartition(".")[2] == name.rpartition(".")[2]]
    return moved[0] if len(moved) == 1 else None


class _Encoder:
    """Values to tagged JSON; arrays to ``buffers`` (or inline when it is None)."""

    def __init__(self, types: Iterable[type], buffers: list[memoryview] | None):
        self.types = {cls.__name__: cls for cls in types}
        self.buffers = buffers

    def encode(self, value: Any) -> Any:
        kind = type(value)
        if value is None or kind in (str, bool, int):
            return value
        if kind is float:
            return value if math.isfinite(value) else {"~": "float", "value": repr(value)}
        if kind is list:  # of paths, say: as it is when JSON holds every item as it is
            plain = {type(v) for v in value} <= _PLAIN
            return list(value) if plain else [self.encode(v) for v in value]
        if kind is tuple:
            return {"~": "tuple", "items": [self.encode(v) for v in value]}
        if kind is dict:
            return self._dict(value)
        if kind is bytes:
            return {"~": "bytes", **self._data(value)}
        if isinstance(value, np.ndarray):
            return self._array(value)
        if isinstance(value, np.generic):
            return self._scalar(value)
        return self._other(value)

    def _dict(self, value: dict) -> dict:
        if all(type(k) is str for k in value) and "~" not in value:
            return {k: self.encode(v) for k, v in value.items()}
        return {"~": "dict", "items": [[self.encode(k), self.encode(v)] for k, v in value.items()]}

    def _data(self, data: bytes | np.ndarray) -> dict:
        """Raw bytes (of a contiguous array, say): a buffer's index, or base64."""
        if isinstance(data, np.ndarray):  # as bytes: dates have no buffer format
            data = data.reshape(-1).view(np.uint8)
        if self.buffers is None:
            return {"b64": base64.b64encode(data).decode()}
        self.buffers.append(memoryview(data).cast("B"))
        return {"buffer": len(self.buffers) - 1}

    def _array(self, value: np.ndarray) -> dict:
        shape = list(value.shape)
        if value.dtype.hasobject:
            items = [self.encode(v) for v in value.ravel(order="C").tolist()]
            return {"~": "objects", "shape": shape, "items": items}
        if value.dtype.fields is not None:
            raise TypeError(f"an array of structured dtype {value.dtype}")
        data = np.ascontiguousarray(value)
        return {"~": "array", "dtype": value.dtype.str, "shape": shape, **self._data(data)}

    def _scalar(self, value: np.generic) -> dict:
        dtype = value.dtype
        if dtype.kind in "biu" or (dtype.kind == "f" and dtype.itemsize <= 8):
            return {"~": "scalar", "dtype": dtype.str, "value": self.encode(value.item())}
        if dtype.hasobject or dtype.fields is not None:
            raise TypeError(f"a numpy scalar of dtype {dtype}")
        return {"~": "scalar", "dtype": dtype.str, **self._data(np.array(value).tobytes())}

    def _other(self, value: Any) -> dict:
        kind = type(value)
        if kind is datetime.datetime:
            return {"~": "datetime", "iso": value.isoformat()}
        if kind is datetime.date:
            return {"~": "date", "iso": value.isoformat()}
        if kind is datetime.timedelta:
            return {"~": "timedelta", "value": [value.days, value.seconds, value.microseconds]}
        if _CFTIME.get(kind.__name__) is kind:
            return self._cftime(value)
        if isinstance(value, BaseException):
            return self._error(value)
        if is_dataclass(value) and self.types.get(kind.__name__) is kind:
            values = {f.name: self.encode(getattr(value, f.name)) for f in fields(value)}
            return {"~": kind.__name__, "fields": values}
        raise TypeError(f"a value of type {kind.__module__}.{kind.__qualname__}")

    def _cftime(self, value) -> dict:
        parts = [value.year, value.month, value.day, value.hour, value.minute, value.second]
        return {
            "~": "cftime",
            "class": type(value).__name__,
            "calendar": value.calendar,
            "has_year_zero": value.has_year_zero,
            "fields": [*parts, value.microsecond],
        }

    def _error(self, exc: BaseException) -> dict:
        name = type(exc).__qualname__
        if type(exc).__module__ != "builtins":
            name = f"{type(exc).__module__}.{name}"
        try:
            args = self.encode(list(exc.args))
        except TypeError:
            args = [one_line(exc)]
        found = {"~": "error", "class": name, "args": args, "line": one_line(exc)}
        if exc.__cause__ is not None:  # a task's, as text (see arcoforge.core.tasks.portable)
            found["cause"] = self._error(exc.__cause__)
        return found


class _Decoder:
    """Tagged JSON back to values; anything unexpected is a :class:`StateFileError`."""

    def __init__(self, types: Iterable[type], buffers: list[memoryview] | None, url: str):
        self.types = {cls.__name__: cls for cls in types}
        self.buffers = buffers
        self.url = url

    def decode(self, data: Any) -> Any:
        """The value of a file's body."""
        try:
            return self.value(data)
        except RecursionError as exc:
            raise self.fail("nested too deeply") from exc

    def fail(self, why: str) -> StateFileError:
        return not_ours(self.url, why)

    def value(self, data: Any) -> Any:
        if isinstance(data, list):
            plain = {type(v) for v in data} <= _PLAIN
            return data if plain else [self.value(v) for v in data]
        if not isinstance(data, dict):
            return data
        tag = data.get("~")
        if tag is None:
            return {k: self.value(v) for k, v in data.items()}
        try:
            return self._tagged(tag, data)
        except StateFileError:
            raise
        except (KeyError, TypeError, ValueError, OverflowError, IndexError) as exc:
            raise self.fail(f"a bad {tag!r} value: {one_line(exc)}") from exc

    def _tagged(self, tag: str, data: dict) -> Any:
        decode = getattr(self, f"_{tag}", None) if tag in _TAGS else None
        if decode is not None:
            return decode(data)
        cls = self.types.get(tag) if isinstance(tag, str) else None
        if cls is None:
            raise self.fail(f"unknown type {tag!r}")
        return self._dataclass(cls, data["fields"])

    def _dataclass(self, cls: type, values: dict) -> Any:
        names = {f.name for f in fields(cls)}
        extra = sorted(set(values) - names)
        if extra:
            raise self.fail(f"{cls.__name__} has no field {extra[0]!r}")
        return cls(**{k: self.value(v) for k, v in values.items()})

    def _float(self, data: dict) -> float:
        if data["value"] not in ("nan", "inf", "-inf"):
            raise ValueError(data["value"])
        return float(data["value"])

    def _tuple(self, data: dict) -> tuple:
        return tuple(self.value(v) for v in data["items"])

    def _dict(self, data: dict) -> dict:
        return {_hashable(self.value(k)): self.value(v) for k, v in data["items"]}

    def _bytes(self, data: dict) -> bytes:
        return bytes(self._raw(data))

    def _raw(self, data: dict):
        if "b64" in data:  # writable, as arrays read back from JSON are used and changed
            return bytearray(base64.b64decode(data["b64"], validate=True))
        if self.buffers is None:
            raise ValueError("a buffer in a file without buffers")
        return self.buffers[data["buffer"]]

    def _array(self, data: dict) -> np.ndarray:
        dtype, shape = _plain_dtype(data["dtype"]), tuple(int(n) for n in data["shape"])
        raw = self._raw(data)
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise self.fail(f"an array of {len(raw)} bytes, not {shape} of {dtype}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def _objects(self, data: dict) -> np.ndarray:
        shape = tuple(int(n) for n in data["shape"])
        items = [self.value(v) for v in data["items"]]
        if len(items) != math.prod(shape):
            raise self.fail(f"{len(items)} objects, not {shape}")
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out.reshape(shape)

    def _scalar(self, data: dict) -> np.generic:
        dtype = _plain_dtype(data["dtype"])
        if "value" in data:
            return dtype.type(self.value(data["value"]))
        return np.frombuffer(self._raw(data), dtype=dtype, count=1)[0]

    def _datetime(self, data: dict) -> datetime.datetime:
        return datetime.datetime.fromisoformat(data["iso"])

    def _date(self, data: dict) -> datetime.date:
        return datetime.date.fromisoformat(data["iso"])

    def _timedelta(self, data: dict) -> datetime.timedelta:
        days, seconds, micro = (int(n) for n in data["value"])
        return datetime.timedelta(days=days, seconds=seconds, microseconds=micro)

    def _cftime(self, data: dict):
        cls = _CFTIME.get(data["class"])
        if cls is None:
            raise self.fail(f"unknown date class {data['class']!r}")
        parts = [int(n) for n in data["fields"]]
        options = {"has_year_zero": bool(data["has_year_zero"])}
        if cls is cftime.datetime:
            options["calendar"] = str(data["calendar"])
        return cls(*parts, **options)

    def _error(self, data: dict) -> BaseException:
        cls = _error_class(str(data["class"]))
        args = self.value(data["args"])
        error = ArcoforgeError(str(data["line"]))
        if cls is not None:
            with contextlib.suppress(Exception):
                error = cls(*args)
        if isinstance(data.get("cause"), dict):
            error.__cause__ = self._error(data["cause"])
        return error


_PLAIN = {str, int, bool, type(None)}  # what JSON holds as it is (floats may be NaN)
_TAGS = {
    "float",
    "tuple",
    "dict",
    "bytes",
    "array",
    "objects",
    "scalar",
    "datetime",
    "date",
    "timedelta",
    "cftime",
    "error",
}


def _plain_dtype(text: Any) -> np.dtype:
    """A dtype of numbers, dates, strings or bytes: never one of Python objects."""
    if not isinstance(text, str):
        raise TypeError(f"dtype {text!r}")
    dtype = np.dtype(text)
    if dtype.hasobject or dtype.fields is not None:
        raise ValueError(f"dtype {text!r} is not kept in state files")
    return dtype


def _hashable(value: Any) -> Any:
    if isinstance(value, list | dict | np.ndarray):
        raise TypeError(f"a key of type {type(value).__name__}")
    return value
