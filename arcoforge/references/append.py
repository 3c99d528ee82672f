"""Plans that change published references: append new inputs, and put the rescanned
references of changed inputs in place of their old ones."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace

import fsspec
import numpy as np

from arcoforge.core import ledger as ledgers
from arcoforge.core.append import held_identities, new_inputs
from arcoforge.core.compare import sample_positions
from arcoforge.errors import AppendError, ChangedInputError
from arcoforge.references import held as held_files
from arcoforge.references.check import CheckTask
from arcoforge.references.combine import CombineError, concat, replace_input, with_dims
from arcoforge.references.inputs import reference_url
from arcoforge.references.manifest import Manifest
from arcoforge.references.plan import HELD, ReferencePlan, ReferenceState


def plan_reference_append(plan: ReferencePlan) -> ReferencePlan:
    """The plan that adds to ``plan``'s references the pattern's inputs they lack."""

    published = plan.published_manifest("append to")
    if published is None:
        return plan
    if len(plan.concat_dims) > 1:
        raise AppendError(
            f"cannot append to {plan.url}: appending references works along one concat dim, "
            f"not {len(plan.concat_dims)} ({', '.join(plan.concat_dims)})"
        )
    if plan.dim is None:
        raise AppendError("appending references works along a concat dim; this pattern has none")
    new = new_inputs(plan, published, plan.dim)
    if not new:
        return plan
    held = _held(plan, published)
    kept = {f.name: getattr(plan, f.name) for f in fields(plan)}
    return replace(ReferencePlan(**kept), inputs=new, held=held, published=published)


def _held(plan: ReferencePlan, published: dict) -> Manifest:
    """The manifest kept beside the published store: its segments joined."""
    inputs, parts = [], []
    for name in published.get("held", [HELD]):
        found = held_files.load(f"{plan.ledger.folder}/{name}", plan.target.storage_options)
        urls, manifest = found or ([None], None)
        inputs += urls
        parts.append((urls[0], manifest))
    if inputs != published["inputs"]:
        raise AppendError(
            f"cannot append to {plan.url}: the manifest kept beside it does not match it; "
            "bake it afresh with --force"
        )
    if len(parts) == 1:
        return parts[0][1]
    urls, manifests = zip(*parts, strict=True)
    return concat(manifests, plan.dim, urls, plan.recipe.writer.identical_dims)


@dataclass
class RefreshPlan(ReferencePlan):
    """The references of its inputs, which changed, scanned again and put in place of those
    the published store (``held``) had for them; the store's references are written again."""

    @property
    def store_fingerprint(self) -> str:
        """The store's as published: it holds the inputs it held (the recipe may have more,
        to append after)."""
        return self.published["fingerprint"]

    def combine(self, state: ReferenceState, results: Iterable) -> None:
        """Put each rescanned input's references in place of its old ones."""
        offsets = np.cumsum([0, *self.published["counts"]]).tolist()
        manifest = self.held
        for item, part, identity in sorted(
            (r for batch in results for r in batch), key=lambda r: r[0].pos(self.dim)
        ):
            url = reference_url(item.url, self.scan)
            try:
                if self.dim not in part.sizes():  # the store's leading dim, made at its bake
                    identical = self.recipe.writer.identical_dims
                    part = with_dims(part, self.concat_dims, dict(item.keys), url, identical)
                manifest = replace_input(manifest, part, self.dim, offsets[item.pos(self.dim)], url)
            except CombineError as exc:
                raise _misfit(self.open.redact(item.url), str(exc)) from exc
            state.identities[item.url] = identity
        self.store.preload()
        state.manifest = state.appended = manifest
        state.open = replace(self.open, promoted=manifest.promoted)
        state.counts = list(self.published["counts"])

    def _shared(self, state: ReferenceState) -> dict[str, int]:
        return {}  # the changed inputs may be anywhere: every reference is written

    def commit_message(self) -> str:
        return (
            f"arcoforge re-bake of {self.recipe.writer.store_name}: {len(self.inputs)} changed "
            f"inputs, {self.inputs[0].url} first"
        )

    def check_tasks(self, state: ReferenceState) -> list[CheckTask]:
        """Compare the first and the last changed input, where they lie in the store."""
        offsets = np.cumsum([0, *self.published["counts"]]).tolist()
        samples = []
        for i in sample_positions(len(self.inputs)):
            pos = self.inputs[i].pos(self.dim)
            samples.append((self.inputs[i], {self.dim: (offsets[pos], offsets[pos + 1])}))
        protocol = fsspec.utils.get_protocol(reference_url(self.inputs[0].url, self.scan))
        config = state.open or self.open
        return [CheckTask(self.store, config, tuple(samples), self.dim, protocol, self.scan)]

    def _keep(self, state: ReferenceState, inputs: list[str]) -> list[str]:
        """The manifest kept for appends, whole."""
        body = held_files.dumps((inputs, state.manifest))
        ledgers.put(f"{self.ledger.folder}/{HELD}", body, self.target.storage_options)
        return [HELD]

    def _contents(self, state: ReferenceState) -> dict:
        rescanned = {i.url: state.identities.get(i.url) for i in self.inputs}
        held = zip(self.published["inputs"], held_identities(self.published), strict=True)
        return {
            **{k: self.published[k] for k in ("inputs", "counts")},
            "dims": state.manifest.sizes(),
            "references": state.manifest.nrefs,
            "identities": [rescanned.get(url) or old for url, old in held],
        }


def _misfit(url: str, problem: str) -> ChangedInputError:
    return ChangedInputError(
        f"input {url} changed since the store was baked and no longer fits it: {problem}; "
        "the published store is left as it was (bake it afresh with --force)"
    )


def plan_reference_refresh(
    plan: ReferencePlan, published: dict, changed: list[str], now: list[dict]
) -> ReferencePlan:
    """The plan that scans the ``changed`` inputs of ``plan``'s references again and puts
    their references in place of the old ones (their identities ``now`` are found again
    by the scan); for references combined along several
    concat dims or merged, ``plan`` itself, which scans every input again."""
    if len(plan.concat_dims) != 1 or plan.merge_dim:
        return plan
    changed, held = set(changed), set(published["inputs"])
    kept = {f.name: getattr(plan, f.name) for f in fields(plan)}
    return RefreshPlan(
        **{
            **kept,
            "inputs": [i for i in plan.inputs if i.url in changed and i.url in held],
            "held": _held(plan, published),
            "published": published,
        }
    )


def plan_reference_retry(plan: ReferencePlan) -> ReferencePlan:
    """References skip no inputs, so there are none to retry."""
    raise AppendError("references hold no skipped inputs to retry")
