"""Progress reports: rich bars in a terminal, plain lines when piped, JSON lines for
machines, or nothing. Log lines (the workers' too, as they log them) are shown by the
reporter, one line each."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape  # a message's [brackets] are not markup
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from arcoforge.sources.secrets import redact_remembered


class Reporter:
    """Receives a bake's events; the base class ignores them."""

    def stage_started(self, name: str, total: int, description: str) -> None: ...

    def advanced(self, name: str) -> None: ...

    def stage_done(self, name: str, seconds: float) -> None: ...

    def event(self, kind: str, **fields: Any) -> None: ...

    def error(self, message: str) -> None:
        """The bake failed with ``message``, the one line the user sees."""
        self.event("error", message=message)

    def close(self) -> None: ...


class JsonReporter(Reporter):
    """One JSON object a line on ``stream``, each with the time (seconds since the epoch)
    and ``run``, the id of the run it belongs to (see :mod:`arcoforge.core.runs`)."""

    def __init__(self, stream=None, run: str | None = None):
        self.stream = stream or sys.stdout
        self.run = run
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()  # log lines arrive from a thread too

    def event(self, kind: str, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "run": self.run, "event": kind, **fields}
        with self._lock:
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


class PlainReporter(Reporter):
    """Plain lines on ``stream`` (stderr piped to a file, say): a stage's progress at most
    every ``interval`` seconds and when it ends, log lines as they come; no bars, no
    colours, no line wrapped."""

    def __init__(self, stream=None, interval: float = 5.0):
        self.stream = stream or sys.stderr
        self.interval = interval
        self.totals: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.shown = 0.0
        self._lock = threading.Lock()

    def stage_started(self, name: str, total: int, description: str) -> None:
        self.totals[name], self.counts[name] = total, 0
        self.shown = time.monotonic()

    def advanced(self, name: str) -> None:
        self.counts[name] += 1
        if time.monotonic() - self.shown >= self.interval:
            self._line(self._progress(name))

    def stage_done(self, name: str, seconds: float) -> None:
        done = self._progress(name) if self.totals[name] else f"{name} done"
        self._line(f"{done}, {seconds:.1f} s")

    def event(self, kind: str, **fields: Any) -> None:
        if kind == "log":
            self._line(f"{fields['level'].lower()}: {fields['message']}")

    def _progress(self, name: str) -> str:
        return f"{name} {self.counts[name]}/{self.totals[name]} tasks"

    def _line(self, text: str) -> None:
        with self._lock:
            self.shown = time.monotonic()
            self.stream.write(" ".join(text.split()) + "\n")
            self.stream.flush()


class RichReporter(Reporter):
    """A progress bar per stage on the terminal, cleared when the bake ends (the summary
    table, or the one-line error, takes its place)."""

    def __init__(self, console=None):

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
                f"{level}: {escape(fields['message'])}",
                markup=True,
                highlight=False,
                soft_wrap=True,  # one line, which the terminal folds if it must
            )

    def close(self) -> None:
        self.progress.stop()


def console_reporter() -> Reporter:
    """For people: bars if stderr is a terminal, plain lines if not (a log file, say)."""
    if sys.stderr.isatty():
        return RichReporter(Console(stderr=True, highlight=False))
    return PlainReporter()


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
