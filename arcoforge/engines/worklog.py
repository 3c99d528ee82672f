"""Log lines and warnings a task writes on a worker, carried back with its result and
written again on the driver, naming the task: a remote worker's stderr is not the user's
terminal, and a line from a local worker would tear through the progress bars."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

LOGGER = "arcoforge"
WATCHED = (LOGGER, "py.warnings")  # ours, and Python warnings (xarray's, say)
MAX_LINES = 50  # a task that logs more keeps its first lines and a count of the rest


@dataclass(frozen=True)
class Logged:
    """A task's result with the lines (level, text) it logged while it ran."""

    result: Any
    lines: tuple[tuple[int, str], ...]


class _Capture(logging.Filter):
    """Takes the records of threads that run a task; others pass on as usual."""

    def __init__(self):
        super().__init__()
        self.tasks: dict[int, list[tuple[int, str]]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        lines = self.tasks.get(record.thread)
        if lines is None:
            return True
        text = record.getMessage().strip()  # a warning's first line is its message
        lines.append((record.levelno, text.splitlines()[0] if text else text))
        return False


_capture = _Capture()
_installed = threading.Lock()


@contextmanager
def captured() -> Iterator[list[tuple[int, str]]]:
    """The lines this thread logs (to arcoforge's logger, or as a warning) inside."""
    with _installed:
        if _capture not in logging.getLogger(LOGGER).filters:
            logging.captureWarnings(True)
            for name in WATCHED:
                logging.getLogger(name).addFilter(_capture)
    lines: list[tuple[int, str]] = []
    _capture.tasks[threading.get_ident()] = lines
    try:
        yield lines
    finally:
        del _capture.tasks[threading.get_ident()]


def with_lines(result: Any, lines: list[tuple[int, str]], label: str) -> Any:
    """``result``, with ``lines`` (if any) each naming the task (``label``) that wrote it."""
    if not lines:
        return result
    if len(lines) > MAX_LINES:
        more = len(lines) - MAX_LINES
        lines = [*lines[:MAX_LINES], (logging.WARNING, f"... and {more} more log lines")]
    return Logged(result, tuple((level, _named(text, label)) for level, text in lines))


def _named(text: str, label: str) -> str:
    """``text`` naming its task; ``scan of URL: why`` when it names the task's URL first."""
    verb, _, subject = label.partition(" of ")
    if subject and text.startswith(f"{subject}: "):
        return f"{verb} of {text}"
    return f"{label}: {text}"


def replay(result: Any) -> Any:
    """Log a task's lines here; its result."""
    if not isinstance(result, Logged):
        return result
    log = logging.getLogger(LOGGER)
    for level, text in result.lines:
        log.log(level, "%s", text)
    return result.result
