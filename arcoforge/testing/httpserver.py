"""A real loopback HTTP file server with authentication and seeded fault injection.

It serves the files under a folder on 127.0.0.1 with GET, HEAD and single byte ranges,
as fsspec's HTTP filesystem expects, with an ETag (of the file's mtime and size) and a
Last-Modified header, from a background thread of the standard library's threading
server.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import random
import socket
import struct
import sys
import threading
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, unquote, urlsplit

MAX_STALL_SECONDS = 10.0
_IDLE_TIMEOUT_SECONDS = 30.0
_COPY_BUFFER = 1 << 20


@dataclass
class Faults:
    """Share of requests to fail, by kind; seeded so runs repeat.

    ``error_rate`` answers 500 or 503, ``reset_rate`` resets the connection without an
    answer, ``truncate_rate`` sends the full Content-Length but only half the body and
    closes. ``stall_seconds`` (capped at ``MAX_STALL_SECONDS``) delays every request that
    may still fail. After ``max_faults_per_path`` faulty answers on one path (a stall
    counts as one), that path is always answered correctly and at once.
    """

    error_rate: float = 0.0
    reset_rate: float = 0.0
    truncate_rate: float = 0.0
    stall_seconds: float = 0.0
    seed: int = 0
    max_faults_per_path: int | None = None

    def __post_init__(self):
        rates = (self.error_rate, self.reset_rate, self.truncate_rate)
        if any(rate < 0 for rate in rates) or sum(rates) > 1:
            raise ValueError(f"fault rates must be >= 0 and sum to at most 1, got {rates}")
        if self.stall_seconds < 0:
            raise ValueError(f"stall_seconds must be >= 0, got {self.stall_seconds}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, owner: FileServer):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.owner = owner

    def handle_error(self, request, client_address):
        """Stay quiet when a client goes away; report real bugs as usual."""
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class FileServer:
    """Serve ``root`` over HTTP on an ephemeral loopback port; use as a context manager.

    ``auth`` requires HTTP Basic credentials, ``bearer`` an ``Authorization: Bearer``
    token, ``cookies`` these cookie values (as a ``Cookie`` header carries them, quoted
    or not), ``token`` a ``token=...`` query parameter and ``required_headers`` exact
    header values; ``faults`` injects seeded failures.
    ``requests`` lists every request target (path and query) in arrival order, ``calls``
    every request as its method and target (``("HEAD", "/a.nc")``).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        auth: tuple[str, str] | None = None,
        bearer: str | None = None,
        cookies: dict[str, str] | None = None,
        token: str | None = None,
        required_headers: dict[str, str] | None = None,
        faults: Faults | None = None,
    ):
        self.root = Path(root).resolve()
        self.auth = auth
        self.token = token
        self.required_headers = dict(required_headers or {})
        if bearer is not None:
            self.required_headers["Authorization"] = f"Bearer {bearer}"
        self.cookies = dict(cookies or {})
        self.faults = faults or Faults()
        self.requests: list[str] = []
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._random = random.Random(self.faults.seed)
        self._faults_by_path: dict[str, int] = {}
        self._connections: set[socket.socket] = set()
        self._active = 0
        self._max_active = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, such as ``http://127.0.0.1:54321``."""
        if self._server is None:
            raise RuntimeError("FileServer is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FileServer:
        """Bind a port and serve from a daemon thread; return ``self``."""
        if self._server is not None:
            raise RuntimeError("FileServer is already started")
        self._stopping.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FileServer {self.url}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving, drop open connections and wait up to ``timeout`` for handlers."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._idle:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self._stopping.set()  # wakes stalled handlers, whose answers now fail
            self._idle.wait_for(lambda: not self._connections, timeout)
        assert self._thread is not None
        self._thread.join(timeout)
        self._server = self._thread = None

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def max_concurrent(self) -> int:
        """Highest number of requests that were being served at the same time."""
        with self._lock:
            return self._max_active

    def faults_by_path(self) -> dict[str, int]:
        """How many faults (or stalls) each path has been served so far."""
        with self._lock:
            return dict(self._faults_by_path)

    def _connected(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _disconnected(self, connection: socket.socket) -> None:
        with self._idle:
            self._connections.discard(connection)
            self._idle.notify_all()

    def _begin(self, method: str, target: str) -> None:
        with self._lock:
            self.requests.append(target)
            self.calls.append((method, target))
            self._active += 1
            self._max_active = max(self._max_active, self._active)

    def _end(self) -> None:
        with self._lock:
            self._active -= 1

    def _draw_fault(self, path: str) -> tuple[str | None, float]:
        """Pick this request's fault kind (or None) and stall, counting it against ``path``."""
        faults = self.faults
        with self._lock:
            used = self._faults_by_path.get(path, 0)
            if faults.max_faults_per_path is not None and used >= faults.max_faults_per_path:
                return None, 0.0
            draw = self._random.random()
            kind = None
            for name, rate in (
                ("error", faults.error_rate),
                ("reset", faults.reset_rate),
                ("truncate", faults.truncate_rate),
            ):
                if draw < rate:
                    kind = name
                    break
                draw -= rate
            if kind == "error":
                kind = self._random.choice(("500", "503"))
            stall = min(faults.stall_seconds, MAX_STALL_SECONDS)
            if kind or stall:
                self._faults_by_path[path] = used + 1
            return kind, stall

    def _authorized(self, handler: _Handler, query: str) -> HTTPStatus | None:
        """Return the status refusing this request, or None when it may proceed."""
        if self.auth is not None:
            expected = base64.b64encode(":".join(self.auth).encode()).decode()
            given = handler.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Basic {expected}".encode()):
                return HTTPStatus.UNAUTHORIZED
        if self.token is not None and self.token not in parse_qs(query).get("token", []):
            return HTTPStatus.FORBIDDEN
        for name, value in self.required_headers.items():
            if handler.headers.get(name) != value:
                return HTTPStatus.FORBIDDEN
        if self.cookies:
            sent = SimpleCookie(handler.headers.get("Cookie", ""))
            if any(name not in sent or sent[name].value != v for name, v in self.cookies.items()):
                return HTTPStatus.FORBIDDEN
        return None

    def _resolve(self, path: str) -> Path | None:
        candidate = (self.root / unquote(path).lstrip("/")).resolve()
        if candidate.is_relative_to(self.root) and candidate.is_file():
            return candidate
        return None


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Return the inclusive ``(first, last)`` byte of a single ``bytes=`` range, or None."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash or not (first_text + last_text).isdigit():
        return None
    if not first_text:
        length = int(last_text)
        return (max(size - length, 0), size - 1) if length and size else None
    first = int(first_text)
    last = min(int(last_text), size - 1) if last_text else size - 1
    return (first, last) if first <= last else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "arcoforge-testing"
    timeout = _IDLE_TIMEOUT_SECONDS
    server: _Server

    def setup(self):
        super().setup()
        self.server.owner._connected(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.owner._disconnected(self.connection)

    def log_message(self, format, *args):
        """Keep the test output clean: no access log."""

    def do_GET(self):
        self._serve(body=True)

    def do_HEAD(self):
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        owner = self.server.owner
        owner._begin(self.command, self.path)
        try:
            self._answer(owner, body)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        finally:
            owner._end()

    def _answer(self, owner: FileServer, body: bool) -> None:
        target = urlsplit(self.path)
        path = target.path
        refused = owner._authorized(self, target.query)
        if refused is not None:
            challenge = refused == HTTPStatus.UNAUTHORIZED
            headers = {"WWW-Authenticate": 'Basic realm="arcoforge"'} if challenge else {}
            self._reply_status(refused, body, headers)
            return
        fault, stall = owner._draw_fault(path)
        if stall:
            owner._stopping.wait(stall)
        if fault == "reset":
            self._reset()
            return
        if fault in ("500", "503"):
            self._reply_status(HTTPStatus(int(fault)), body)
            return
        file = owner._resolve(path)
        if file is None:
            self._reply_status(HTTPStatus.NOT_FOUND, body)
            return
        self._send_file(file, body, truncate=fault == "truncate")

    def _send_file(self, file: Path, body: bool, truncate: bool) -> None:
        stat = file.stat()
        size = stat.st_size
        first, last, status = 0, size - 1, HTTPStatus.OK
        if "Range" in self.headers:
            span = _parse_range(self.headers["Range"], size)
            if span is None:
                self._reply_status(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                    body,
                    {"Content-Range": f"bytes */{size}"},
                )
                return
            first, last = span
            status = HTTPStatus.PARTIAL_CONTENT
        length = last - first + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{stat.st_mtime_ns:x}-{size:x}"')
        self.send_header("Last-Modified", formatdate(stat.st_mtime, usegmt=True))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if not body:
            return
        remaining = length // 2 if truncate else length
        with file.open("rb") as stream:
            stream.seek(first)
            while remaining > 0:
                chunk = stream.read(min(remaining, _COPY_BUFFER))
                if not chunk:  # the file shrank while being sent
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)
        if truncate:
            self.close_connection = True

    def _reply_status(
        self, status: HTTPStatus, body: bool, headers: dict[str, str] | None = None
    ) -> None:
        content = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if body:
            self.wfile.write(content)

    def _reset(self) -> None:
        """Abort the connection with a TCP reset instead of an answer."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.rfile.close()  # the socket closes for real only once its files are closed
        self.connection.close()


def urls_on(server: FileServer, paths) -> list[str]:
    """The URL of each file of ``paths`` (by its name) on ``server``."""
    return [f"{server.url}/{Path(p).name}" for p in paths]
