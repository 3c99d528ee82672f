"""The catalog's output folder: files written only when their bytes change, and a manifest
of what the catalog wrote, so that a re-run touches only what changed and removes only
files it made.

The manifest (``.arcoforge-catalog.json``) maps each file the catalog wrote, by its path
relative to the folder, to the SHA-256 of its bytes. A folder that is neither empty nor
holds a manifest is refused: it is someone else's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from arcoforge.errors import ArcoforgeError

MANIFEST = ".arcoforge-catalog.json"
FORMAT = "arcoforge-catalog/1"

log = logging.getLogger(__name__)


class CatalogFolderError(ArcoforgeError):
    """The output folder of a catalog cannot be used as it is."""


@dataclass
class Published:
    """What a build did to the output folder, by relative path."""

    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # no longer built, but changed since written


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safe_path(path: str) -> bool:
    """Whether ``path`` is a plain relative path that stays inside the folder."""
    parts = PurePosixPath(path).parts
    return bool(parts) and not path.startswith("/") and ".." not in parts and "\\" not in path


def read_manifest(out: Path) -> dict[str, str | None]:
    """The files the catalog wrote in ``out`` ({} for a new or empty folder); refuses a
    folder of something else."""
    if out.exists() and not out.is_dir():
        raise CatalogFolderError(f"--out {out}: is a file, not a folder")
    path = out / MANIFEST
    if not path.exists():
        if out.exists() and any(out.iterdir()):
            raise CatalogFolderError(
                f"--out {out}: not empty and not a catalog (no {MANIFEST}); "
                "give a new or empty folder"
            )
        return {}
    try:
        data = json.loads(path.read_text())
        files = data["files"] if data.get("format") == FORMAT else None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CatalogFolderError(f"{path}: not a catalog manifest ({exc})") from exc
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and safe_path(k) and (v is None or isinstance(v, str))
        for k, v in files.items()
    ):
        raise CatalogFolderError(f"{path}: not a catalog manifest (format {FORMAT} expected)")
    return files


def publish(out: Path, files: Mapping[str, bytes]) -> Published:
    """Make ``out`` hold ``files`` (relative path -> bytes): write those whose bytes
    changed, leave the rest, and remove files of an earlier build that are no longer built,
    unless they were changed since (those are kept and reported)."""
    for path in files:
        if not safe_path(path) or path == MANIFEST:
            raise ValueError(f"catalog file path {path!r} is not inside the folder")
    old = read_manifest(out)
    for path in files:
        if path not in old and (out / path).exists():
            raise CatalogFolderError(
                f"{out / path}: exists and the catalog did not write it; move it away"
            )
    new = {path: digest(data) for path, data in files.items()}
    result = Published()
    changed = [p for p in files if old.get(p) != new[p] or not (out / p).is_file()]
    # claim what is about to be written first: an interrupted build leaves those paths
    # the catalog's (and to be written again), never a stranger's
    if changed:
        _write_manifest(out, {**old, **dict.fromkeys(changed)})
    for path in files:
        if path in changed:
            _write_atomic(out / path, files[path])
            result.written.append(path)
        else:
            result.unchanged.append(path)
    for path in sorted(set(old) - set(files)):
        if _remove_if_ours(out, path, old[path]):
            result.removed.append(path)
        elif (out / path).exists():
            result.kept.append(path)
    if new != old:
        _write_manifest(out, new)
    return result


def _remove_if_ours(out: Path, path: str, expected: str | None) -> bool:
    """Remove ``out/path`` if it holds what the catalog wrote there (any bytes, for a file
    claimed by an interrupted build), then the folders it leaves empty. A path through a
    symbolic link is never followed: what it leads to is not the catalog's, so it stays,
    with a warning."""
    target = out / path
    why = _not_plainly_inside(out, PurePosixPath(path))
    if why:
        log.warning(f"{target}: left in place, not removed ({why})")
        return False
    if not target.is_file():
        return False
    if expected is not None and digest(target.read_bytes()) != expected:
        return False
    target.unlink()
    parent = target.parent
    while parent != out and not parent.is_symlink() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    return True


def _not_plainly_inside(out: Path, path: PurePosixPath) -> str | None:
    """Why ``out/path`` may lead outside ``out`` (a symbolic link on the way, ``path``
    included), or None."""
    step = out
    for part in path.parts:
        step = step / part
        if step.is_symlink():
            return f"{step} is a symbolic link"
    if not step.resolve().is_relative_to(out.resolve()):
        return f"it resolves outside {out}"
    return None


def _write_manifest(out: Path, files: Mapping[str, str | None]) -> None:
    body = {"format": FORMAT, "files": dict(sorted(files.items()))}
    _write_atomic(out / MANIFEST, (json.dumps(body, indent=1) + "\n").encode())


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it, so that a reader
    (or an interrupted build) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
