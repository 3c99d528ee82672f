"""Log lines and warnings a task writes on a worker, written again on the driver, naming
the task: a remote worker's stderr is not the user's terminal, and a line from a local
worker would tear through the progress bars. A worker forked from the driver sends each
line through a :class:`Relay` as it is logged (a retry shows while its task still runs);
others carry their lines back with the task's result."""

from __future__ import annotations

import logging
import os
import select
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

LOGGER = "arcoforge"
WATCHED = (LOGGER, "py.warnings")  # ours, and Python warnings (xarray's, say)
MAX_LINES = 50  # a task that logs more keeps its first lines and a count of the rest
MAX_LINE_BYTES = 4000  # under PIPE_BUF: a line written to a pipe arrives whole


@dataclass(frozen=True)
class Logged:
    """A task's result with the lines (level, text) it logged while it ran."""

    result: Any
    lines: tuple[tuple[int, str], ...]


@dataclass
class _Task:
    """What one running task logged: kept in ``lines``, or sent at once to ``relay`` (a
    pipe's file descriptor) if it has one, up to ``MAX_LINES`` either way."""

    label: str
    relay: int | None = None
    lines: list[tuple[int, str]] = field(default_factory=list)
    sent: int = 0
    dropped: int = 0

    def add(self, level: int, text: str) -> None:
        if self.sent + len(self.lines) >= MAX_LINES:
            self.dropped += 1
        elif self.relay is None or not _send(self.relay, level, _named(text, self.label)):
            self.lines.append((level, text))
        else:
            self.sent += 1


def _send(fd: int, level: int, text: str) -> bool:
    """Write one line to the relay; False if it is gone (the driver closed it)."""
    data = f"{level} {text}".encode(errors="replace")[:MAX_LINE_BYTES] + b"\n"
    try:
        os.write(fd, data)
    except OSError:
        return False
    return True


class _Capture(logging.Filter):
    """Takes the records of threads that run a task; others pass on as usual."""

    def __init__(self):
        super().__init__()
        self.tasks: dict[int, _Task] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        task = self.tasks.get(record.thread)
        if task is None:
            return True
        text = record.getMessage().strip()  # a warning's first line is its message
        task.add(record.levelno, text.splitlines()[0] if text else text)
        return False


_capture = _Capture()
_installed = threading.Lock()


@contextmanager
def captured(label: str = "a task", relay: int | None = None) -> Iterator[_Task]:
    """What this thread logs (to arcoforge's logger, or as a warning) inside, as the
    task ``label``: sent to ``relay`` as it is logged, if given, else kept."""
    with _installed:
        if _capture not in logging.getLogger(LOGGER).filters:
            for name in WATCHED:
                logging.getLogger(name).addFilter(_capture)
        _route_warnings()
    task = _Task(label, relay)
    _capture.tasks[threading.get_ident()] = task
    try:
        yield task
    finally:
        del _capture.tasks[threading.get_ident()]


def _route_warnings() -> None:
    """Send Python warnings to logging, where tasks capture them; again if someone (a
    test runner's ``catch_warnings``, say) has put ``warnings.showwarning`` back since."""
    if getattr(warnings.showwarning, "__module__", None) != "logging":
        logging.captureWarnings(False)
        logging.captureWarnings(True)


def with_lines(result: Any, task: _Task) -> Any:
    """``result``, with the lines ``task`` kept (if any) each naming the task."""
    lines = list(task.lines)
    if task.dropped:
        lines.append((logging.WARNING, f"... and {task.dropped} more log lines"))
    if not lines:
        return result
    return Logged(result, tuple((level, _named(text, task.label)) for level, text in lines))


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


class Relay:
    """A pipe that workers forked from the driver write their log lines into as they log
    them, and a thread here that logs each line as it arrives."""

    def __init__(self):
        self._read, self.fd = os.pipe()
        self._wake, self._woken = os.pipe()
        os.set_blocking(self._read, False)
        self._lock = threading.Lock()
        self._partial = b""
        self._thread = threading.Thread(target=self._run, name="arcoforge log relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self._read, self._wake], [], [])
            self.flush()
            if self._wake in ready:
                return

    def flush(self) -> None:
        """Log the lines that have arrived. The driver calls it before it takes a task's
        result, so that the task's lines come before what follows from its result."""
        with self._lock:
            data = self._partial + _available(self._read)
            *lines, self._partial = data.split(b"\n")
            log = logging.getLogger(LOGGER)
            for line in lines:
                level, _, text = line.decode(errors="replace").partition(" ")
                log.log(int(level) if level.isdigit() else logging.WARNING, "%s", text)

    def close(self) -> None:
        """Log what is left and close the pipe (a worker still writing then keeps its lines
        with its result)."""
        os.write(self._woken, b"x")
        self._thread.join()
        self._partial += b"\n" if self._partial else b""
        self.flush()
        for fd in (self._read, self.fd, self._wake, self._woken):
            os.close(fd)


def _available(fd: int) -> bytes:
    """What can be read from the non-blocking ``fd`` now."""
    parts = []
    while True:
        try:
            part = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not part:
            break
        parts.append(part)
    return b"".join(parts)
