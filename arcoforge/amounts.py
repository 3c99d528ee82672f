"""Amounts written for people: a count with its noun, a size in the unit that suits it."""

from __future__ import annotations

UNITS = ((1e9, "GB"), (1e6, "MB"), (1e3, "KB"))


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 input``, ``2 inputs``: the noun singular where the count is one."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def size(nbytes: float) -> str:
    """Bytes in KB, MB or GB (decimal), whichever keeps the number at 1 or more; a size
    below a kilobyte in bytes. Small stores show as ``62.3 KB``, not ``0.1 MB``."""
    for scale, unit in UNITS:
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{int(nbytes)} B"
