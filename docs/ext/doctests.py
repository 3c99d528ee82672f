"""Griffe extensions for the API reference.

- ``Doctests``: the ``>>>`` examples of a docstring become fenced ``pycon`` blocks, so that
  Markdown shows them as code instead of reading their brackets as links; Sphinx roles
  (``:class:`~a.B```) become code (`` `B` ``), which Markdown has no roles for.
- ``PublicNames``: a public name of a package that is also the name of one of its
  submodules (``arcoforge.bake``, the function, and the module it comes from) names the
  public object, as it does in Python once the package is imported.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|exc|obj|data):`(~?)([^`]+)`")


def fence_doctests(text: str) -> str:
    """``text`` with each run of doctest lines (a ``>>>`` line and the lines up to the next
    blank line) inside a ```` ```pycon ```` fence."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        if not inside and line.lstrip().startswith(">>>"):
            out.append("```pycon")
            inside = True
        elif inside and not line.strip():
            out.append("```")
            inside = False
        out.append(line)
    if inside:
        out.append("```")
    return "\n".join(out)


def plain_roles(text: str) -> str:
    """``text`` with each Sphinx role as inline code of the name it refers to (its last
    part, when written with ``~``)."""

    def code(match: re.Match) -> str:
        short, name = match.groups()
        return f"`{name.rsplit('.', 1)[-1] if short else name}`"

    return ROLE.sub(code, text)


class Doctests(griffe.Extension):
    """Fence the doctest examples of every docstring griffe loads; plain its roles."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(fence_doctests(obj.docstring.value))


class PublicNames(griffe.Extension):
    """In a package's ``__all__``, a name held by a submodule of that name becomes an alias
    of the object the submodule defines under it."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        shadowed = {
            str(name): pkg.members[str(name)]
            for name in pkg.exports or ()
            if str(name) in pkg.members and pkg.members[str(name)].is_module
        }
        if not shadowed:
            return
        for member in pkg.members.values():  # resolved now, while their paths still lead there
            if member.is_alias:
                with contextlib.suppress(griffe.AliasResolutionError, griffe.CyclicAliasError):
                    member.final_target  # noqa: B018
        for name, module in shadowed.items():
            if name in module.members:
                pkg.members[name] = griffe.Alias(name, module.members[name], parent=pkg)
