"""Feedstocks: a folder with ``meta.yaml`` (what and who) and ``recipe.py`` (how)."""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path
from typing import Literal

import cloudpickle
from pydantic import BaseModel, ConfigDict, Field, field_validator

from arcoforge.errors import FeedstockError, one_line
from arcoforge.recipe.config import read_model
from arcoforge.recipe.steps import Recipe


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecipeRef(_Strict):
    """One recipe of the feedstock: its id and the object in recipe.py that builds it."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    object: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*:[A-Za-z_][A-Za-z0-9_]*$")


class Provider(_Strict):
    """Who made, licensed, processed or hosts the data."""

    name: str
    description: str | None = None
    roles: list[Literal["producer", "licensor", "processor", "host"]] = Field(min_length=1)
    url: str | None = None


class Provenance(_Strict):
    """Where the data comes from and under which license."""

    providers: list[Provider] = Field(min_length=1)
    license: str


class Maintainer(_Strict):
    """A person who looks after the feedstock."""

    name: str
    github: str
    orcid: str | None = None


class Meta(_Strict):
    """The schema of ``meta.yaml``."""

    title: str = Field(min_length=1)
    description: str = Field(min_length=1)
    recipes: list[RecipeRef] = Field(min_length=1)
    provenance: Provenance
    maintainers: list[Maintainer] = Field(min_length=1)
    tags: list[str] = []

    @field_validator("recipes")
    @classmethod
    def _unique_ids(cls, recipes: list[RecipeRef]) -> list[RecipeRef]:
        ids = [r.id for r in recipes]
        dup = next((i for i in ids if ids.count(i) > 1), None)
        if dup:
            raise ValueError(f"recipe id {dup!r} is used twice")
        return recipes


def read_meta(folder: Path) -> Meta:
    """Parse and check ``folder/meta.yaml``; errors name the field or line."""
    path = folder / "meta.yaml"
    if not path.is_file():
        raise FeedstockError(f"{path}: missing (a feedstock needs meta.yaml and recipe.py)")
    return read_model(path, Meta, FeedstockError)


def load_module(folder: Path, module: str):
    """Import ``folder/MODULE.py`` under a name private to this feedstock."""
    path = folder / f"{module}.py"
    if not path.is_file():
        raise FeedstockError(f"{path}: missing")
    name = f"arcoforge_feedstock_{abs(hash(str(folder.resolve())))}_{module}"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as exc:
        del sys.modules[name]
        raise FeedstockError(f"{path}{_line_of(exc, path)}: {one_line(exc)}") from exc
    cloudpickle.register_pickle_by_value(mod)
    return mod


def _line_of(exc: BaseException, path: Path) -> str:
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f" line {exc.lineno}"
    here = path.resolve()
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == here]
    return f" line {frames[-1].lineno}" if frames else ""


def load_recipes(folder: str | Path, only: str | None = None) -> dict[str, Recipe]:
    """The recipes of a feedstock by id, each checked to be a complete :class:`Recipe`."""
    folder = Path(folder)
    meta = read_meta(folder)
    refs = [r for r in meta.recipes if only is None or r.id == only]
    if not refs:
        ids = ", ".join(r.id for r in meta.recipes)
        raise FeedstockError(f"{folder}: no recipe {only!r} in meta.yaml (ids: {ids})")
    recipes = {}
    for ref in refs:
        module, attr = ref.object.split(":")
        mod = load_module(folder, module)
        if not hasattr(mod, attr):
            raise FeedstockError(
                f"{folder / module}.py: no object {attr!r} (named by recipe {ref.id!r})"
            )
        recipe = getattr(mod, attr)
        if not isinstance(recipe, Recipe):
            raise FeedstockError(
                f"{folder / module}.py: {attr} is a {type(recipe).__name__}, not a recipe "
                "(pattern | OpenURLWithFSSpec() | OpenWithXarray() | StoreToZarr(...))"
            )
        try:
            recipes[ref.id] = recipe.check()
        except Exception as exc:
            raise FeedstockError(
                f"{folder / module}.py: recipe {ref.id!r}: {one_line(exc)}"
            ) from exc
    return recipes


def lint(folder: str | Path) -> list[str]:
    """Check meta.yaml and every recipe, each input's URL made by the pattern's format
    function; return what was checked (raise on the first problem)."""
    folder = Path(folder)
    meta = read_meta(folder)
    recipes = load_recipes(folder)
    return [f"meta.yaml: {meta.title!r}, {len(meta.maintainers)} maintainer(s)"] + [
        f"recipe {rid}: {len(tuple(r.pattern.inputs()))} inputs -> {r.writer.store_name}"
        for rid, r in recipes.items()
    ]
