"""The report of a store's checks, and the checks every kind of store shares."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from arcoforge.amounts import count

MAX_FINDINGS_PER_CHECK = 20


@dataclass
class Check:
    """One check of a store: its name, whether it passed, and one line of detail."""

    name: str
    ok: bool
    detail: str


@dataclass
class StoreReport:
    """What an audit of the store at ``url`` found."""

    url: str
    checks: list[Check] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and not self.findings

    def add(self, name: str, problems: list[str], passed: str, failed: str = "") -> None:
        """Record check ``name``: passed when ``problems`` is empty, else add them (capped)."""
        if not problems:
            self.checks.append(Check(name, True, passed))
            return
        new = [p for p in problems if p not in self.findings]  # seen by an earlier check
        shown = new[:MAX_FINDINGS_PER_CHECK]
        if len(new) > len(shown):
            shown.append(f"{name}: and {len(new) - len(shown)} more problems")
        self.findings.extend(shown)
        self.checks.append(Check(name, False, failed or count(len(problems), "problem")))

    def summary(self) -> str:
        """One line: healthy, or how many checks failed and the first finding."""
        failed = [c.name for c in self.checks if not c.ok]
        if not failed:
            return f"{self.url}: healthy ({len(self.checks)} checks passed)"
        first = self.findings[0] if self.findings else failed[0]
        return f"{self.url}: {len(failed)} of {len(self.checks)} checks failed; first: {first}"

    def to_dict(self) -> dict:
        return {
            "url": self.url,
            "ok": self.ok,
            "checks": [asdict(c) for c in self.checks],
            "findings": list(self.findings),
        }


def check_coordinates(report: StoreReport, ds: xr.Dataset) -> None:
    names = [str(d) for d in ds.dims if d in ds.coords]
    problems = [p for name in names for p in coordinate_problems(name, ds[name].values)]
    report.add("coordinates", problems, f"{', '.join(names) or 'none'}: complete, sorted, unique")


def coordinate_problems(name: str, values: np.ndarray) -> list[str]:
    """Missing values, duplicates and breaks in the order of one dimension coordinate."""
    index = pd.Index(values)
    missing = np.flatnonzero(pd.isna(values))
    if missing.size:
        return [f"{name}: {missing.size} missing value(s), first at index {missing[0]}"]
    problems = []
    dup = np.flatnonzero(index.duplicated())
    if dup.size:
        first = int(dup[0])
        earlier = int(np.flatnonzero(values[:first] == values[first])[0])
        problems.append(f"{name}: duplicate value {values[first]} at indices {earlier} and {first}")
    labels = values.dtype.kind in "SUT"  # names (ensemble members) keep the pattern's order
    if not labels and not (index.is_monotonic_increasing or index.is_monotonic_decreasing):
        ahead, behind = values[1:], values[:-1]
        breaks = ahead < behind if values[-1] >= values[0] else ahead > behind
        bad = int(np.flatnonzero(breaks)[0])
        problems.append(
            f"{name}: not sorted: {values[bad]} at index {bad} is followed by {values[bad + 1]}"
        )
    return problems


def storage_chunks(array: zarr.Array) -> tuple[int, ...]:
    """The shape of one stored object: a shard when sharded, else a chunk."""
    return tuple(array.shards or array.chunks)


def chunk_grid(array: zarr.Array) -> Iterator[tuple[int, ...]]:
    shape = [math.ceil(n / c) for n, c in zip(array.shape, storage_chunks(array), strict=True)]
    return itertools.product(*(range(n) for n in shape))


def pick(items: list, k: int | None, seed: str) -> list:
    """All of ``items`` when ``k`` is None; else ``k`` of them: the first, the last and
    seeded random ones between."""
    if k is None or len(items) <= k:
        return items
    ends = [0, len(items) - 1][: max(k, 0)]
    between = random.Random(seed).sample(range(1, len(items) - 1), max(k - len(ends), 0))
    return [items[i] for i in sorted(ends + between)]


def incomplete(name: str, missing: np.ndarray, size: int) -> str:
    """What is wrong with dimension coordinate ``name`` of ``size`` values, missing at the
    indices ``missing``: in these words from both products (Zarr and references)."""
    count, first = len(missing), missing[0]
    return f"coordinate {name!r} has {count} missing value(s) of {size}, first at index {first}"
