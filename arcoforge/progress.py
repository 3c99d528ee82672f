"""Progress reports: rich bars in a terminal, JSON lines for machines, or nothing."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .secrets import redact_remembered


class Reporter:
    """Receives a bake's events; the base class ignores them."""

    def stage_started(self, name: str, total: int, description: str) -> None: ...

    def advanced(self, name: str) -> None: ...

    def stage_done(self, name: str, seconds: float) -> None: ...

    def event(self, kind: str, **fields: Any) -> None: ...

    def close(self) -> None: ...


class JsonReporter(Reporter):
    """One JSON object a line on ``stream``."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.counts: dict[str, int] = {}

    def event(self, kind: str, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "event": kind, **fields}
        self.stream.write(json.dumps(record, default=str) + "\n")
        self.stream.flush()

    def stage_started(self, name: str, total: int, description: str) -> None:
        self.counts[name] = 0
        self.event("stage_started", stage=name, tasks=total, description=description)

    def advanced(self, name: str) -> None:
        self.counts[name] += 1
        self.event("task_done", stage=name, done=self.counts[name])

    def stage_done(self, name: str, seconds: float) -> None:
        self.event("stage_done", stage=name, seconds=round(seconds, 3))


class RichReporter(Reporter):
    """A progress bar per stage on the terminal, cleared when the bake ends (the summary
    table, or the one-line error, takes its place)."""

    def __init__(self, console=None):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.tasks: dict[str, Any] = {}
        self.progress.start()

    def stage_started(self, name: str, total: int, description: str) -> None:
        self.tasks[name] = self.progress.add_task(name, total=max(total, 1))
        if total == 0:
            self.progress.update(self.tasks[name], completed=1)

    def advanced(self, name: str) -> None:
        self.progress.advance(self.tasks[name])

    def event(self, kind: str, **fields: Any) -> None:
        if kind == "log":
            style = "red" if fields["level"] in ("ERROR", "CRITICAL") else "yellow"
            level = f"[{style}]{fields['level'].lower()}[/{style}]"
            self.progress.console.print(
                f"{level}: {fields['message']}", markup=True, highlight=False
            )

    def close(self) -> None:
        self.progress.stop()


class _ToReporter(logging.Handler):
    def __init__(self, reporter: Reporter):
        super().__init__(logging.WARNING)
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        message = redact_remembered(record.getMessage())
        self.reporter.event("log", level=record.levelname, message=message)


@contextmanager
def logs_to(reporter: Reporter) -> Iterator[None]:
    """Inside, arcoforge's log lines (the workers' too) are ``reporter`` events, printed
    above the bars or written as JSON lines, instead of bare lines on stderr."""
    logger, handler = logging.getLogger("arcoforge"), _ToReporter(reporter)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
