"""Inputs that changed since their store was baked, noticed before a re-bake or an append.

The manifest beside a published store records the identity of each of its inputs (see
:mod:`arcoforge.sources.identity`). A bake that would find the store up to date, and an
append, first look up every input's identity now (``info`` calls only) and compare them:
the parts of the store that changed inputs feed are baked again; a deleted input stops
the bake, the store left as it was. A store whose manifest records no identities (baked
by an earlier version) gets them recorded, without being baked again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from arcoforge.core.append import held_identities
from arcoforge.core.plan import Plan, exists
from arcoforge.core.progress import Reporter
from arcoforge.errors import SourceError, one_line
from arcoforge.products import product_for
from arcoforge.sources import is_remote
from arcoforge.sources.cache import Cache
from arcoforge.sources.identity import Gone, changed
from arcoforge.sources.lookup import identities_now

UNCHECKED = "inputs not checked for changes (--assume-unchanged)"


class InputDeletedError(SourceError):
    """An input of the published store is no longer there."""


@dataclass
class Check:
    """What a check of a store's inputs found: how many had no identity recorded and have
    it now (``recorded``), which ``changed``, and the ``plan`` that bakes again what they
    feed; ``skipped`` with --assume-unchanged."""

    recorded: int = 0
    changed: list[str] = field(default_factory=list)
    plan: Plan | None = None
    skipped: bool = False

    @property
    def stats(self) -> dict:
        """What the check found, as a bake result's statistics (nothing, when all inputs
        were as recorded)."""
        if self.skipped:
            return {"inputs_unchecked": True}
        found = {"changed_inputs": self.changed, "identities_recorded": self.recorded}
        return {k: v for k, v in found.items() if v}


def check_inputs(
    plan: Plan, reporter: Reporter, *, append: bool = False, assume_unchanged: bool = False
) -> Check | None:
    """Compare the identities of the inputs of ``plan``'s published store with theirs
    now, and plan to bake again what the changed ones feed. Raises
    :class:`InputDeletedError` naming an input that is gone. Only stores that ``plan``
    would find up to date, or append to, are checked (None otherwise): any other bake
    reads every input anyway."""
    published = _checkable(plan, append)
    if published is None:
        return None
    if assume_unchanged:
        reporter.event("log", level="INFO", message=UNCHECKED)
        return Check(skipped=True)
    identities, unknown, changes = _compare(plan, published)
    published = {**published, "identities": identities}
    if unknown:
        _record(plan, published, unknown, reporter)
    check = Check(recorded=len(unknown))
    if changes:
        check.changed = [plan.open.redact(url) for url, _ in changes]
        check.plan = _plan_again(plan, published, changes, reporter)
    return check


def _compare(plan: Plan, published: dict) -> tuple[list, list[str], list[tuple[str, dict]]]:
    """The identities of the store's inputs (now, where none was recorded), the inputs
    that had none, and the inputs that changed with their identities now."""
    wanted = {i.url for i in plan.inputs} - set(published.get("missing", {}))  # skipped: unread
    identities = held_identities(published)
    held = [(k, url) for k, url in enumerate(published["inputs"]) if url in wanted]
    found = identities_now([plan.located(url) for _, url in held], plan.fetch)
    _stop_if_gone(plan, [(url, now) for (_, url), now in zip(held, found, strict=True)])
    unknown, changes = [], []
    for (k, url), now in zip(held, found, strict=True):
        differs = changed(identities[k], now) if identities[k] else None
        if differs is None:
            unknown.append(url)
            identities[k] = now
        elif differs:
            changes.append((url, now))
    return identities, unknown, changes


def _plan_again(
    plan: Plan, published: dict, changes: list[tuple[str, dict]], reporter: Reporter
) -> Plan:
    """Say which inputs changed, drop their cached copies, and return the plan that bakes
    again what they feed."""
    urls = [url for url, _ in changes]
    _forget_cached(plan, urls)
    first = plan.open.redact(urls[0])
    what = f"{first} and {len(urls) - 1} more inputs" if len(urls) > 1 else first
    feed = "they feed" if len(urls) > 1 else "it feeds"
    reporter.event(
        "log",
        level="INFO",
        message=f"{what} changed since the store was baked: baking again what {feed}",
    )
    refresh = product_for(plan.recipe).refresh
    return refresh(plan, published, urls, [now for _, now in changes])


def _checkable(plan: Plan, append: bool) -> dict | None:
    """The published manifest, if its store is complete and ``plan`` would find it up to
    date (or, with ``append``, add to it)."""
    published = plan.ledger.read()
    if published is None or published.get("status") != "complete":
        return None
    same = published["fingerprint"] == plan.store_fingerprint or (
        append and published.get("settings") == plan.settings
    )
    return published if same and exists(plan.url, plan.target.storage_options) else None


def _stop_if_gone(plan: Plan, found: list[tuple[str, dict | Exception]]) -> None:
    """Raise a one-line error naming the first input that is gone or cannot be checked."""
    gone = [(url, now) for url, now in found if isinstance(now, Gone)]
    if gone:
        url, why = gone[0]
        more = f"; {len(gone) - 1} more inputs too" if len(gone) > 1 else ""
        raise InputDeletedError(
            f"input {plan.open.redact(url)} was deleted since the store was baked "
            f"({why}{more}); the published store is left as it was"
        )
    for url, now in found:
        if isinstance(now, Exception):
            raise SourceError(
                plan.open.redact(
                    f"cannot check input {url} for changes: {one_line(now)}; the published "
                    "store is left as it was (--assume-unchanged skips the check)"
                )
            ) from now


def _record(plan: Plan, published: dict, unknown: list[str], reporter: Reporter) -> None:
    """Record the identities of inputs the manifest has none for, without baking them."""
    plan.ledger.write({k: v for k, v in published.items() if k != "version"})
    reporter.event(
        "log",
        level="INFO",
        message=f"identities of {len(unknown)} input{'s' * (len(unknown) != 1)} recorded "
        "(the store's manifest had none); they are not baked again",
    )


def _forget_cached(plan: Plan, urls: list[str]) -> None:
    """Drop the cached copies of changed remote inputs, so that they are fetched again."""
    cache = plan.open.fetch.cache
    if cache:
        for url in urls:
            if is_remote(url):
                Cache(cache).forget(url)
