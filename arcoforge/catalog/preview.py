"""``arcoforge catalog --serve``: the built site on loopback, for a look before publishing."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from arcoforge.errors import ArcoforgeError

HOST = "127.0.0.1"


class PreviewError(ArcoforgeError):
    """The preview server could not start."""


class _Handler(SimpleHTTPRequestHandler):
    """Files of the site, without a log line per request."""

    def log_message(self, format, *args):
        pass


def serve(folder: Path, port: int, ready: Callable[[str], None]) -> None:
    """Serve ``folder`` on ``127.0.0.1:port`` (0: any free port) until Ctrl-C; ``ready``
    is given the site's URL once the server listens."""
    try:
        server = ThreadingHTTPServer((HOST, port), partial(_Handler, directory=str(folder)))
    except OSError as exc:
        raise PreviewError(
            f"--port {port}: cannot listen on {HOST}: {exc.strerror or exc} "
            "(choose another port, or 0 for any free one)"
        ) from exc
    with server:
        ready(f"http://{HOST}:{server.server_port}/")
        with suppress(KeyboardInterrupt):  # Ctrl-C is how a preview ends
            server.serve_forever()
