"""The contract between products and engines: a plan of stages over plain, picklable data.

Building a plan runs nothing. Each :class:`Stage` maps a function over items on an
engine's workers and folds the results into the plan's state on the driver; the items of
a stage may depend on what earlier stages learned (the write tasks follow from the
combined inputs), so a stage gets them from the state. A product (Zarr copies,
references) is a :class:`Plan` subclass: its stages, its state, and the plans that
append to, retry or refresh what it published.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import fsspec

from arcoforge.core import ledger as ledgers
from arcoforge.core.open import OpenConfig
from arcoforge.core.targets import Target
from arcoforge.errors import AppendError
from arcoforge.recipe.patterns import Input
from arcoforge.recipe.steps import Recipe
from arcoforge.sources import FetchConfig

DEFAULT_TASK_BYTES = 1 << 27
STAGED = ledgers.STAGED


@dataclass
class BakeState:
    """What the driver knows so far; each stage's ``reduce`` adds to it. Products add
    the fields of their own results."""

    open: OpenConfig | None = None
    resumed: bool = False
    missing: dict[str, str] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    counts: list[int] = field(default_factory=list)
    identities: dict[str, dict | None] = field(default_factory=dict)  # by (redacted) URL

    def outcome(self) -> BakeState:
        """What the driver needs of this state once a run elsewhere is done: its results,
        not the opener (which holds the recipe's functions)."""
        return replace(self, open=None)


@dataclass(frozen=True)
class Stage:
    """A map of ``func`` over ``items(state)`` on workers, then ``reduce`` on the driver."""

    name: str
    description: str
    items: Callable[[BakeState], Sequence]
    func: Callable[[Any], Any] | None
    reduce: Callable[[BakeState, Iterable], None]


@dataclass
class Plan(ABC):
    """Everything a bake of one recipe does, stage by stage.

    Tasks write to ``target``, a staging store beside the final one; publishing moves it
    to ``url``, so a failed bake never leaves a store that looks complete there and never
    harms the store a previous bake published.
    """

    recipe: Recipe
    url: str
    target: Target
    open: OpenConfig
    inputs: list[Input]
    ledger: ledgers.Ledger
    workers: int = 1
    max_task_bytes: int = DEFAULT_TASK_BYTES
    skip_failed: bool = False

    @property
    @abstractmethod
    def stages(self) -> list[Stage]:
        """The stages of this bake, in order."""

    @property
    @abstractmethod
    def state_types(self) -> tuple[type, ...]:
        """The classes this plan's state files may hold (see :mod:`arcoforge.core.statefile`)."""

    @abstractmethod
    def new_state(self) -> BakeState:
        """The state a run of this plan starts from."""

    @abstractmethod
    def summary(self, state: BakeState) -> dict[str, Any]:
        """Sizes for the bake's result: dims, chunks, bytes read and decoded."""

    @abstractmethod
    def published_summary(self) -> dict[str, Any]:
        """The same sizes, of the published store (for a bake that finds it up to date)."""

    @property
    def fetch(self) -> FetchConfig:
        """How this plan's inputs are reached."""
        return self.open.fetch

    def located(self, url: str) -> str:
        """Where the input at ``url`` is read from."""
        return url

    def warm_up(self) -> None:  # noqa: B027 - a product whose workers need nothing warmed
        """Import, before workers are forked from this process, what their tasks use."""

    @property
    def concat_dims(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.recipe.pattern.concat_dims)

    @property
    def merge_dim(self) -> str | None:
        merge = self.recipe.pattern.merge_dim
        return merge.name if merge else None

    @cached_property
    def settings(self) -> str:
        """A digest of how inputs are opened and written, whatever they are."""
        recipe = self.recipe
        return ledgers.fingerprint(
            recipe.file_type,
            recipe.opener,
            [p.func for p in recipe.preprocessors],
            recipe.writer,
            self.target.zarr_format,
        )

    @cached_property
    def store_fingerprint(self) -> str:
        """What makes two stores the same: all the pattern's inputs and the settings."""
        pattern_inputs = self.recipe.pattern.inputs()
        return ledgers.fingerprint([(i.url, i.position) for i in pattern_inputs], self.settings)

    @property
    def fingerprint(self) -> str:
        """What makes two runs the same run, so that one resumes the other."""
        return self.store_fingerprint

    def check_ours(self) -> None:
        """Refuse, before anything is written, to bake where something arcoforge did not
        make lies: at the store's name (unless its manifest vouches for it) or at the
        staging name (unless its staging manifest does)."""
        self.ledger.check_store(self.bears)
        self.ledger.check_staging()

    def bears(self, seal: str) -> bool:
        """Whether the store at :attr:`url` is the one a manifest sealed with ``seal``."""
        return ledgers.seal(self.url, self.target.storage_options) == seal

    def seal(self, staged: bool = False) -> str | None:
        """The seal of the published store, or with ``staged`` of the staged one."""
        return ledgers.seal(self.target.url if staged else self.url, self.target.storage_options)

    def claim_staging(self, **extra) -> None:
        """Write the staging manifest that vouches for the staging store, before the store
        is created: a crash between them cannot leave a staging store not known for ours."""
        self.ledger.write(self.manifest("staging", **extra), STAGED)

    def publishing(self) -> bool:
        """Whether a bake stopped while publishing: the published store may be half
        replaced, so it is not up to date whatever its manifest says."""
        staged = self.ledger.read(STAGED)
        return staged is not None and staged["status"] == "complete"

    def clear_staging(self) -> None:
        """Remove what an unfinished bake staged (only what our staging manifest vouches
        for), as a bake that starts afresh does, or one that finds the store up to date
        beside what an interrupted ``--force`` left."""
        self.ledger.clear_staging()

    def up_to_date(self) -> bool:
        """Whether the published store is this recipe's and complete."""
        published = self.ledger.read()
        return (
            published is not None
            and published["fingerprint"] == self.fingerprint
            and published["status"] == "complete"
            and exists(self.url, self.target.storage_options)
        )

    def manifest(self, status: str, **extra) -> dict:
        """A manifest of this bake in ``status``, with ``extra`` fields."""
        return {
            "fingerprint": self.fingerprint,
            "settings": self.settings,
            "status": status,
            **extra,
        }

    def identities(self, state: BakeState, inputs: Iterable[Input]) -> list[dict | None]:
        """The identity of each of ``inputs`` as scanned (None: not scanned, skipped)."""
        return [state.identities.get(self.open.redact(i.url)) for i in inputs]

    def published_manifest(self, doing: str) -> dict | None:
        """The store's manifest, if the store was baked with this plan's settings; None if
        there is no store. ``doing`` names what needs it, for the errors."""
        published = self.ledger.read()
        if published is None:
            if exists(self.url, self.target.storage_options):
                raise AppendError(
                    f"cannot {doing} {self.url}: it has no arcoforge manifest, so which inputs "
                    "it holds is unknown; bake it afresh with arcoforge"
                )
            return None
        if published["settings"] != self.settings:
            raise AppendError(
                f"cannot {doing} {self.url}: the recipe's settings (opener, preprocessing, "
                f"{type(self.recipe.writer).__name__}) differ from those it was baked with; "
                "bake it afresh with --force"
            )
        return published

    def fields(self, **changes) -> dict:
        """This plan's fields as keyword arguments, with ``changes``: to derive a plan."""
        return {**{f: getattr(self, f) for f in Plan.__dataclass_fields__}, **changes}


def nothing(state: BakeState) -> list:
    """The items of a stage that runs on the driver only."""
    return []


def exists(url: str, options: dict | None) -> bool:
    """Whether anything is at ``url``."""
    fs, path = fsspec.core.url_to_fs(url, **(options or {}))
    return fs.exists(path)
