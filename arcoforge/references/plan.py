"""The plan of a reference bake: scan every input on the workers, combine the manifests on
the driver, write the references under a staging name, compare sample inputs read through
them with the inputs read directly, then publish.

An append scans only the inputs the store lacks and joins their manifest to the one kept
beside the store, after checking that they continue it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import fsspec
import numpy as np

from arcoforge.core import ledger as ledgers
from arcoforge.core.append import check_steps, held_identities, value_text
from arcoforge.core.compare import sample_positions
from arcoforge.core.open import open_config
from arcoforge.core.plan import STAGED, BakeState, Plan, Stage, nothing
from arcoforge.core.runs import RUNS_FOLDER
from arcoforge.core.targets import target_at
from arcoforge.errors import AppendError, RecipeError
from arcoforge.recipe.patterns import Input
from arcoforge.references import held as held_files
from arcoforge.references.check import CheckTask, check_input, decoded
from arcoforge.references.combine import CombineError, concat, concat_grid, merge
from arcoforge.references.formats.base import ReferenceFormat
from arcoforge.references.inputs import ScanConfig, reference_url
from arcoforge.references.manifest import ArrayRefs, Manifest
from arcoforge.references.scan import ScanTask, scan_input, scan_inputs
from arcoforge.references.store import reference_store, store_location
from arcoforge.sources import FetchConfig
from arcoforge.sources.secrets import secret_values

HELD = "references.held"  # the manifest kept for appends; each append adds a segment
_KEPT = (".held", ".pkl")  # names of the manifest's files, now and as arcoforge 0.1 kept them
SEGMENTS = 16  # segments kept before an append writes the whole manifest again
BATCH = 16  # inputs scanned by one task, at most
FEW = 4  # inputs scanned by one task, at least, when a bake has no more than BATCH


@dataclass
class ReferenceState(BakeState):
    """What the driver knows of a reference bake: the combined manifest, an append's own
    manifest before it joins the store's, and each input's steps along each concat dim."""

    manifest: Manifest | None = None
    appended: Manifest | None = None
    steps: dict[str, dict[int, int]] = field(default_factory=dict)  # per concat dim, position


@dataclass
class ReferencePlan(Plan):
    """A :class:`~arcoforge.core.plan.Plan` whose output is references to its inputs."""

    scan: ScanConfig | None = None
    store: ReferenceFormat | None = None
    held: Manifest | None = None
    published: dict = field(default_factory=dict)

    @property
    def state_types(self) -> tuple[type, ...]:
        return (Manifest, ArrayRefs)

    def new_state(self) -> ReferenceState:
        return ReferenceState()

    @property
    def fetch(self) -> FetchConfig:
        """Inputs are read with the opener's options, not the fetch's."""
        return replace(self.open.fetch, open_kwargs=dict(self.scan.storage_options or {}))

    def located(self, url: str) -> str:
        return reference_url(url, self.scan)

    @property
    def stages(self) -> list[Stage]:
        """prepare -> scan (and combine) -> write -> check -> publish."""
        return [
            Stage("prepare", "clear what an interrupted bake left", nothing, None, self.prepare),
            Stage(
                "scan", "read every input's chunk index", self.scan_tasks, scan_inputs, self.combine
            ),
            Stage("write", "write the combined references", nothing, None, self.write),
            self._check_stage(),
            Stage("publish", "move the references into place", nothing, None, self.publish),
        ]

    def _check_stage(self) -> Stage:
        """Checks run on the workers, or in the driver for a format that asks it (Icechunk:
        its runtime does not survive the fork of a worker from a driver that has used it)."""
        about = "compare sample inputs read through the references with the inputs"
        if self.store.checks_on_driver:
            return Stage("check", about, nothing, None, self.check_here)
        return Stage("check", about, self.check_tasks, check_input, self.count_checked)

    def check_here(self, state: ReferenceState, results: Iterable) -> None:
        self.count_checked(state, map(check_input, self.check_tasks(state)))

    @property
    def dim(self) -> str | None:
        return self.concat_dims[0] if self.concat_dims else None

    def prepare(self, state: ReferenceState, results: Iterable) -> None:
        """Clear what an interrupted bake staged; import what the workers will use, once,
        before they are forked (no more: they inherit the driver's memory)."""
        if self.scan.file_type in ("netcdf4", "hdf5"):
            import h5py  # noqa: F401

        self.clear_staging()
        if self._fresh and ledgers.exists(self.url):  # an interrupted first bake's
            self.claim_staging(fresh=True)

    @property
    def _fresh(self) -> bool:
        """Whether this bake makes its store in place: one of a format made in place (an
        Icechunk repository) with none published yet (so one that is there was made by an
        interrupted bake of ours)."""
        return self.store.made_in_place and self.ledger.read() is None

    def clear_staging(self) -> None:
        """Remove what an unfinished bake staged: the Icechunk staging branch, the staging
        name's references, then the staging records."""
        self.store.clear_staging()
        self.ledger.clear_staging()

    def check_ours(self) -> None:
        """Also refuse a folder of references (TARGET_ROOT/STORE_NAME) that is a file or
        holds anything arcoforge did not make, and inputs an Icechunk repository cannot
        point into."""
        super().check_ours()
        if self.store.folder is not None:
            ledgers.check_folder(self.store.folder, self.target.storage_options, ours=[RUNS_FOLDER])
        self.store.check_inputs([reference_url(item.url, self.scan) for item in self.inputs])

    def bears(self, seal: str) -> bool:
        return self.store.bears(seal)

    def seal(self, staged: bool = False) -> str | None:
        return self.store.seal(staged)

    def scan_tasks(self, state: ReferenceState) -> list[ScanTask]:
        """Batches of inputs: about eight tasks per worker, at most ``BATCH`` inputs each;
        ``BATCH`` inputs or fewer (an append's, say) as one task per worker, of at least
        ``FEW`` inputs (the local engine runs one in the driver, forks for the others)."""
        n = len(self.inputs)
        if n <= BATCH:
            size = max(FEW, -(-n // self.workers))
        else:
            size = max(1, min(BATCH, n // (8 * self.workers)))
        return [
            ScanTask(tuple(self.inputs[i : i + size]), self.scan)
            for i in range(0, len(self.inputs), size)
        ]

    def combine(self, state: ReferenceState, results: Iterable) -> None:
        """Join the inputs' manifests (and the held one, when appending). Once the first
        batch is in, the driver imports what writing and checking the references use,
        while the workers scan the others (rather than later, while they idle)."""
        order = {item: i for i, item in enumerate(self.inputs)}
        scanned = []
        for batch in results:
            if not scanned:
                self.check_concat_dims(*batch[0][:2])
                self.store.preload()
            scanned += batch
        scanned.sort(key=lambda r: order[r[0]])
        manifests = [m for _, m, _ in scanned]
        state.identities = {item.url: identity for item, _, identity in scanned}
        grid = self._on_grid(manifests)
        new = self._combined(manifests, grid)
        self._check_sorted(new, manifests)
        state.appended = new
        if self.held is not None:
            self._check_continues(new, manifests)
            urls = [self.url, self.inputs[0].url]
            new = concat([self.held, new], self.dim, urls, self.recipe.writer.identical_dims)
        problem = self.store.unwritable(new)
        if problem:
            raise CombineError(f"{self.inputs[0].url}: {problem}")
        state.manifest = new
        state.open = replace(self.open, promoted=new.promoted)
        state.counts = [m.sizes().get(self.dim, 1) for m in manifests] if self.dim else []
        if grid:
            state.steps = {d: _steps(self.inputs, manifests, d) for d in self.concat_dims}

    def check_concat_dims(self, item: Input, manifest: Manifest) -> None:
        """Refuse a concat dim of the writer that is neither a ConcatDim of the pattern (a
        new dim, which the files may lack) nor a dim of the inputs, as ``manifest`` of
        ``item`` shows them: a misspelt one would be ignored."""
        pattern, sizes = self.concat_dims, manifest.sizes()
        for dim in self.scan.concat_dims:
            if dim not in pattern and dim not in sizes:
                raise RecipeError(
                    f"WriteCombinedReference: concat dim {dim!r} is neither a ConcatDim of "
                    f"the pattern ({', '.join(pattern) or 'none'}) nor a dim of the inputs "
                    f"({self.open.redact(item.url)} has {', '.join(sizes) or 'none'})"
                )

    def _on_grid(self, manifests: list[Manifest]) -> bool:
        """Whether the inputs combine on a grid: along several concat dims, or along one
        that the (first) input lacks as a dim."""
        return len(self.concat_dims) > 1 or bool(self.dim and self.dim not in manifests[0].sizes())

    def _combined(self, manifests: list[Manifest], grid: bool) -> Manifest:
        groups: dict[Any, list[tuple[Input, Manifest]]] = {}
        for item, manifest in zip(self.inputs, manifests, strict=True):
            key = item.pos(self.merge_dim) if self.merge_dim else None
            groups.setdefault(key, []).append((item, manifest))
        joined, urls = [], []
        for pairs in groups.values():
            if grid:
                joined.append(self._grid(pairs))
                urls.append(pairs[0][0].url)
                continue
            pairs.sort(key=lambda p: p[0].pos(self.dim) if self.dim else 0)
            items, parts = [p[0].url for p in pairs], [p[1] for p in pairs]
            identical = self.recipe.writer.identical_dims
            joined.append(concat(parts, self.dim, items, identical) if self.dim else parts[0])
            urls.append(items[0])
        return merge(joined, urls) if len(joined) > 1 else joined[0]

    def _grid(self, pairs: list[tuple[Input, Manifest]]) -> Manifest:
        """Inputs combined along every concat dim, at their positions in the pattern."""
        dims, items = self.concat_dims, [item for item, _ in pairs]
        return concat_grid(
            [manifest for _, manifest in pairs],
            dims,
            [tuple(item.pos(d) for d in dims) for item in items],
            [item.url for item in items],
            [dict(item.keys) for item in items],
            self.recipe.writer.identical_dims,
        )

    def _check_continues(self, new: Manifest, manifests: list[Manifest]) -> None:
        """The new inputs hold the store's variables and follow its last step."""
        held, dim = self.held, self.dim
        first = self.inputs[0].url
        for name in sorted(set(held.arrays) ^ set(new.arrays)):
            where = "the store lacks it" if name in new.arrays else "the new inputs lack it"
            raise AppendError(f"cannot append {first}: variable {name!r}: {where}")
        if dim not in held.coords:
            return
        old, values = held.coords[dim], new.coords[dim]
        if held.arrays[dim].attrs == new.arrays[dim].attrs and _continues(old, values):
            return  # as numbers in one encoding, so as times too: spare decoding them
        if values.dtype.kind in "OUS":  # labels: new ones, in the pattern's order
            self._check_unique(dim, np.concatenate([old, values]), manifests, len(old))
            return
        old, values = decoded(old, held.arrays[dim].attrs), decoded(values, new.arrays[dim].attrs)
        check_steps(old, values, dim, self._input_at(manifests, dim))

    def _check_sorted(self, new: Manifest, manifests: list[Manifest]) -> None:
        """Each concat coordinate of the inputs increases, input after input."""
        for dim in self.concat_dims:
            self._check_sorted_along(dim, new, manifests)

    def _check_sorted_along(self, dim: str, new: Manifest, manifests: list[Manifest]) -> None:
        if dim not in new.coords or self.merge_dim:
            return
        values = new.coords[dim]  # in one encoding: increasing as numbers is as times
        if values.dtype.kind in "iuf" and (values[1:] > values[:-1]).all():
            return
        if values.dtype.kind in "OUS":  # labels (ensemble members): the pattern's order
            self._check_unique(dim, values, manifests)
            return
        values = decoded(values, new.arrays[dim].attrs)
        unsorted = np.flatnonzero(values[1:] <= values[:-1])
        if unsorted.size:
            i = int(unsorted[0]) + 1
            late = self._input_at(manifests, dim)(i).url
            what = "is already in an earlier input" if values[i] in values[:i] else "comes after it"
            error = AppendError if self.held is not None else CombineError
            raise error(
                f"cannot {'append' if self.held is not None else 'combine'} {late}: {dim} "
                f"{value_text(values[i])} {what} ({value_text(values[i - 1])} is before it); the inputs "
                f"are not sorted along {dim!r}"
            )

    def _check_unique(
        self, dim: str, values: np.ndarray, manifests: list[Manifest], held: int = 0
    ) -> None:
        """Each label along ``dim`` in one input only (the first ``held`` of ``values``
        the store's, when appending)."""
        seen: set = set()
        for i, value in enumerate(values.tolist()):
            if value in seen:
                late = self._input_at(manifests, dim)(i - held).url
                error = AppendError if self.held is not None else CombineError
                raise error(
                    f"cannot {'append' if self.held is not None else 'combine'} {late}: {dim} "
                    f"{value_text(value)} is already in an earlier input; the inputs hold each "
                    f"{dim} once"
                )
            seen.add(value)

    def _input_at(self, manifests: list[Manifest], dim: str):
        """An input that holds step ``i`` along ``dim`` of the steps of ``manifests``."""
        firsts = {}
        for item in self.inputs:
            firsts.setdefault(item.pos(dim), item)
        items = [firsts[p] for p in sorted(firsts)]
        steps = np.cumsum(list(_steps(self.inputs, manifests, dim).values()))
        return lambda i: items[int(np.searchsorted(steps, i, side="right"))]

    def write(self, state: ReferenceState, results: Iterable) -> None:
        """Write the combined references under the staging name."""
        attrs = {**state.manifest.attrs, **self.recipe.writer.attrs}
        self.claim_staging(fresh=self._fresh)
        self.store.write_staged(state.manifest, attrs, self.commit_message(), self._shared(state))
        sizes = state.manifest.sizes()
        state.stats["references"] = state.manifest.nrefs
        state.stats["dims"] = sizes

    def _shared(self, state: ReferenceState) -> dict[str, int]:
        """Per array, the leading references (in C order) the held store already has:
        all of the held ones when the array grows along its first axis or is unchanged."""
        if self.held is None:
            return {}
        shared = {}
        for name, refs in state.manifest.arrays.items():
            old = self.held.arrays.get(name)
            if old is None or old.raw is not None or refs.raw is not None:
                continue
            grows = (
                refs.dims[:1] == [self.dim]
                and {**old.meta, "shape": refs.meta["shape"]} == refs.meta
            )
            if grows or _same(old, refs):
                shared[name] = int(old.files.size)
        return shared

    def commit_message(self) -> str:
        """What this write of the references is, as an Icechunk commit records it: the
        inputs' URLs as the plan holds them (their secrets masked)."""
        first, last = self.inputs[0].url, self.inputs[-1].url
        what = "append" if self.held is not None else "bake"
        span = first if first == last else f"{first} .. {last}"
        return f"arcoforge {what} of {self.recipe.writer.store_name}: {len(self.inputs)} inputs, {span}"

    def check_tasks(self, state: ReferenceState) -> list[CheckTask]:
        """One task comparing the first and the last input, each where it lies in the
        store: the references are opened (and, as JSON, parsed) once."""
        if not self.inputs:
            return []
        starts = np.cumsum([0, *state.counts]).tolist() if self.dim else []
        held = self.held.sizes().get(self.dim, 0) if self.held is not None and self.dim else 0
        order = sorted({item.pos(self.dim) if self.dim else 0 for item in self.inputs})
        samples = []
        for i in sample_positions(len(self.inputs)):
            item = self.inputs[i]
            region = {}
            if state.steps:
                region = _region(item, state.steps, held)
            elif self.dim:
                rank = order.index(item.pos(self.dim))
                region = {self.dim: (held + starts[rank], held + starts[rank + 1])}
            samples.append((item, region))
        protocol = fsspec.utils.get_protocol(reference_url(self.inputs[0].url, self.scan))
        config = state.open or self.open
        dim = _leading(state.manifest, self.concat_dims) if state.steps else self.dim
        return [CheckTask(self.store, config, tuple(samples), dim, protocol, self.scan)]

    def count_checked(self, state: ReferenceState, results: Iterable) -> None:
        state.stats["validated_inputs"] = sum(len(urls) for urls in results)

    def publish(self, state: ReferenceState, results: Iterable) -> None:
        """Keep the manifest for appends, move the references into place, record them."""
        contents = self._contents(state)
        contents["held"] = self._keep(state, contents["inputs"])
        self.ledger.write(self.manifest("complete", seal=self.seal(staged=True)), STAGED)
        self.store.publish()
        self.ledger.write(self.manifest("complete", seal=self.seal(), **contents))
        if contents["held"] == [HELD]:
            self._drop_segments()
        self.ledger.clear_staging()

    def _drop_segments(self) -> None:
        """Remove the segments of the manifest kept for appends that the store no longer
        lists, once it is kept whole (after a bake afresh, say), and the pickles an earlier
        arcoforge kept them in."""
        options = self.target.storage_options or {}
        fs, folder = fsspec.core.url_to_fs(self.ledger.folder, **options)
        for path in fs.ls(folder, detail=False):
            name = path.rsplit("/", 1)[-1]
            if name != HELD and name.startswith("references.") and name.endswith(_KEPT):
                fs.rm_file(path)

    def _keep(self, state: ReferenceState, inputs: list[str]) -> list[str]:
        """Write the manifest that later appends read, and return the names of its files:
        an append adds its own inputs' manifest as one more segment (so that what it
        writes does not grow with the store), up to ``SEGMENTS``; else all of it is one."""
        held = self.published.get("held", [HELD]) if self.held is not None else []
        if 0 < len(held) <= SEGMENTS:
            name, part = f"references.{len(held)}.held", [i.url for i in self.inputs]
            kept = [*held, name]
            body = held_files.dumps((part, state.appended))
        else:
            name, kept = HELD, [HELD]
            body = held_files.dumps((inputs, state.manifest))
        ledgers.put(f"{self.ledger.folder}/{name}", body, self.target.storage_options)
        return kept

    def _contents(self, state: ReferenceState) -> dict:
        held = self.published.get("inputs", []) if self.held is not None else []
        counts = self.published.get("counts", []) if self.held is not None else []
        return {
            "inputs": [*held, *(i.url for i in self.inputs)],
            "counts": [*counts, *state.counts],
            "dims": state.manifest.sizes(),
            "references": state.manifest.nrefs,
            "identities": [
                *(held_identities(self.published) if self.held is not None else []),
                *(state.identities.get(i.url) for i in self.inputs),
            ],
        }

    def published_summary(self) -> dict[str, Any]:
        published = self.ledger.read()
        return {"dims": published["dims"], "chunks": {}, "bytes_in": 0, "bytes_decoded": 0}

    def summary(self, state: ReferenceState) -> dict[str, Any]:
        """Sizes for the bake's result."""
        manifest = state.manifest
        return {
            "dims": manifest.sizes(),
            "chunks": _chunks(manifest),
            "bytes_in": int(sum(int(a.lengths.sum()) for a in manifest.arrays.values())),
            "bytes_decoded": 0,
        }


def _steps(inputs: list[Input], manifests: list[Manifest], dim: str) -> dict[int, int]:
    """The steps along ``dim`` of the inputs at each position along it, in order."""
    found = {}
    for item, manifest in zip(inputs, manifests, strict=True):
        found.setdefault(item.pos(dim), manifest.sizes().get(dim, 1))
    return {p: found[p] for p in sorted(found)}


def _continues(held: np.ndarray, values: np.ndarray) -> bool:
    """Whether ``values`` follow ``held`` at its one step, as numbers, exactly."""
    if len(held) < 2 or held.dtype.kind not in "iuf" or values.dtype.kind not in "iuf":
        return False
    steps = np.diff(np.concatenate([held, values]))
    return steps[0] > 0 and (steps == steps[0]).all()


def _region(item: Input, steps: dict, held: int) -> dict[str, tuple[int, int]]:
    """Where ``item`` lies along each concat dim, of ``steps`` at each position, after the
    ``held`` steps of an append (along the one concat dim then)."""
    region = {}
    for dim, counts in steps.items():
        pos = item.pos(dim)
        start = held + sum(n for p, n in counts.items() if p < pos)
        region[dim] = (start, start + counts[pos])
    return region


def _leading(manifest: Manifest, dims: tuple[str, ...]) -> str:
    """The concat dim that leads the store's arrays, when combined on a grid: a JSON check
    reads only the rows of chunks along it that its samples meet."""
    for refs in manifest.arrays.values():
        if len(refs.dims) > 1 and refs.dims[0] in dims:
            return refs.dims[0]
    return dims[0]


def _chunks(manifest: Manifest) -> dict[str, int]:
    chunks: dict[str, int] = {}
    for refs in manifest.arrays.values():
        if refs.raw is None:
            for d, c in zip(refs.dims, refs.chunks, strict=True):
                chunks.setdefault(d, c)
    return chunks


def _same(a: ArrayRefs, b: ArrayRefs) -> bool:
    """Whether two arrays have the same metadata and references."""
    return (a.meta, a.attrs) == (b.meta, b.attrs) and all(
        np.array_equal(x, y)
        for x, y in ((a.files, b.files), (a.offsets, b.offsets), (a.lengths, b.lengths))
    )


def make_reference_plan(
    recipe,
    target_root: str,
    *,
    cache: str | None,
    workers: int,
    skip_failed: bool = False,
    storage_options: dict | None = None,
) -> ReferencePlan:
    """The plan of a recipe that ends in :class:`~arcoforge.recipe.WriteCombinedReference`."""

    if skip_failed:
        raise RecipeError("--skip-failed does not apply to references: every input is needed")
    writer, opener = recipe.writer, recipe.opener
    if opener.grib_filter and recipe.file_type != "grib":
        raise RecipeError(f"OpenWithKerchunk: a filter applies to GRIB, not {recipe.file_type}")
    dims = writer.concat_dims or tuple(d.name for d in recipe.pattern.concat_dims)
    url = store_location(target_root, writer)
    ledger = ledgers.Ledger(url, storage_options)
    config = open_config(recipe, cache)
    scan_secrets = secret_values(open_kwargs=opener.storage_options)  # masked like the fetch's
    config = replace(
        config, fetch=replace(config.fetch, secrets=(*config.fetch.secrets, *scan_secrets))
    )
    return ReferencePlan(
        recipe=recipe,
        url=url,
        target=target_at(ledger.staging_store, storage_options=storage_options),
        open=config,
        inputs=list(recipe.pattern.inputs()),
        ledger=ledger,
        workers=workers,
        scan=ScanConfig(
            file_type=recipe.file_type,
            concat_dims=tuple(dims),
            inline_threshold=opener.inline_threshold,
            storage_options=opener.storage_options,
            remote_protocol=opener.remote_protocol,
            secrets=config.fetch.secrets,
            grib_filter=opener.grib_filter or None,
            fetch=config.fetch,
        ),
        store=reference_store(target_root, writer, ledger.staging_store, storage_options),
    )


def describe(plan: ReferencePlan) -> dict[str, Any]:
    """What a reference bake will do, from a scan of its first input (for --dry-run)."""
    first = scan_input(plan.inputs[0], plan.scan)
    plan.check_concat_dims(plan.inputs[0], first)
    sizes = first.sizes()
    steps = 1
    for dim in plan.concat_dims:
        n = len({i.pos(dim) for i in plan.inputs})
        steps *= n
        sizes[dim] = sizes.get(dim, 1) * n  # a dim the input lacks leads the store
    nbytes = sum(int(a.lengths.sum()) for a in first.arrays.values()) * steps
    tasks = {"scan": len(plan.inputs), "check": min(2, len(plan.inputs))}
    return {
        "target": plan.url,
        "inputs": len(plan.inputs),
        "input_bytes_estimate": nbytes,
        "output_bytes_decoded_estimate": 0,
        "dims": sizes,
        "chunks": _chunks(first),
        "variables": sorted(first.arrays),
        "references_estimate": first.nrefs * steps,
        "stages": [
            {"stage": s.name, "tasks": tasks.get(s.name, 0), "what": s.description}
            for s in plan.stages
        ],
    }
