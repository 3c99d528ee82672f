"""Keep secrets out of every string arcoforge writes: logs, errors, metadata, run records.

An input's password in its URL (``https://user:password@host/...``) is replaced by ``***``
as soon as the pattern makes the input (:func:`hide_userinfo`), so every URL arcoforge
writes or prints is already masked; the fetch puts it back (:func:`show_userinfo`) only
for the request. Every other credential (query-string secrets, fsspec options: passwords,
tokens, ``Authorization`` and ``Cookie`` headers, cookies) is collected by
:func:`secret_values` and masked by :func:`redact` wherever text might carry it.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlencode, urlsplit, urlunsplit

from arcoforge.errors import Traced, traced

MASK = "***"
_SECRET_KEYS = re.compile(
    r"pass|secret|token|key|auth|credential|signature|cookie|connection", re.IGNORECASE
)
_USERINFO = re.compile(r"(?<=://)([^/@:\s]+):([^/@\s]+)@")
_SCHEMES = {"basic", "bearer", "token", "digest"}
_REMEMBERED: set[str] = set()


def remember(values: Iterable[str]) -> None:
    """Keep the secrets of a bake this process runs, for :func:`redact_remembered`."""
    _REMEMBERED.update(values)


def redact_remembered(text: str) -> str:
    """``text`` with every remembered secret masked: what the command line prints of an
    error (a ``--debug`` traceback's chained causes too) passes through it."""
    return redact(text, _REMEMBERED)


def masked_cause(exc: BaseException, secrets: Iterable[str] = ()) -> Traced:
    """``exc`` as the cause to chain an arcoforge error to (``raise ... from``) when its
    messages may hold a secret (a library's error naming the URL it requested): its type,
    messages and traceback as text, with ``secrets``, the remembered ones and any
    ``user:password@`` masked."""
    return traced(exc, lambda text: redact(text, (*secrets, *_REMEMBERED)))


def hide_userinfo(url: str) -> tuple[str, dict[str, str]]:
    """``url`` with the password of its ``user:password@`` masked, and what masked it:
    ``{"user:***@host": "user:password@host"}`` (empty when it has none)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc or ":" not in parts.netloc.rpartition("@")[0]:
        return url, {}
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    masked = f"{user}:{MASK}@{host}"
    return urlunsplit(parts._replace(netloc=masked)), {masked: parts.netloc}


def show_userinfo(url: str, userinfo: Mapping[str, str]) -> str:
    """``url`` as :func:`hide_userinfo` found it, for the request only: never log it."""
    parts = urlsplit(url)
    real = userinfo.get(parts.netloc)
    return url if real is None else urlunsplit(parts._replace(netloc=real))


def without_userinfo(url: str) -> str:
    """``url`` without its ``user:password@`` (what references name an input by)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def basic_credentials(url: str, userinfo: Mapping[str, str]) -> tuple[str, str] | None:
    """The user and password :func:`hide_userinfo` took from ``url``, if any."""
    real = userinfo.get(urlsplit(url).netloc)
    if real is None:
        return None
    user, _, password = real.rpartition("@")[0].partition(":")
    return unquote(user), unquote(password)


def with_query_secrets(url: str, secrets: Mapping[str, str] | None) -> str:
    """Append ``secrets`` to the query string of ``url``; the result must never be logged."""
    if not secrets:
        return url
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(secrets.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def secret_values(
    query_secrets: Mapping[str, str] | None = None,
    open_kwargs: Mapping | None = None,
    userinfo: Mapping[str, str] | None = None,
) -> list[str]:
    """Collect the secret strings held by a pattern's query secrets, fsspec options (any
    value under a key naming a password, token, key, auth, cookie or connection (string), and the token of an
    ``Authorization`` value or the values of a ``Cookie`` one) and URL passwords; with
    the base64 ``user:password`` of each basic credential, as an ``Authorization`` header
    carries it."""
    found = [str(v) for v in (query_secrets or {}).values()]
    found += [v for k, v in _walk(open_kwargs or {}) if _SECRET_KEYS.search(k)]
    found += [part for value in found for part in _parts(value)]
    pairs = [_pair(open_kwargs or {}), *_auth_objects(open_kwargs or {})]
    for real in (userinfo or {}).values():
        user, _, password = real.rpartition("@")[0].partition(":")
        found.append(password)
        pairs.append((unquote(user), unquote(password)))
    for user, password in filter(None, pairs):
        found += [password, base64.b64encode(f"{user}:{password}".encode()).decode()]
    return list(dict.fromkeys(s for s in found if len(s) >= 3))


def _parts(value: str) -> list[str]:
    """The pieces of a header value that are secrets alone: ``Bearer TOKEN``'s token,
    ``a=1; b=2``'s values."""
    pieces = []
    for part in re.split(r"[\s;,]+", value):
        _, eq, rest = part.partition("=")
        pieces += [rest] if eq and rest.strip("=") else []
        pieces += [part] if part.lower() not in _SCHEMES else []
    return [piece for piece in pieces if piece != value]


def _pair(options: Mapping) -> tuple[str, str] | None:
    user, password = options.get("username"), options.get("password")
    return (str(user), str(password)) if user is not None and password is not None else None


def _auth_objects(obj) -> Iterable[tuple[str, str]]:
    """``(login, password)`` of every ``aiohttp.BasicAuth`` (or alike) in ``obj``."""
    if isinstance(obj, Mapping):
        for v in obj.values():
            yield from _auth_objects(v)
    elif isinstance(getattr(obj, "password", None), str) and hasattr(obj, "login"):
        yield str(obj.login), obj.password


def _walk(obj, key: str = "") -> Iterable[tuple[str, str]]:
    """``(dotted key, value)`` of every string in ``obj``: a value under ``cookies`` is
    found as ``cookies.session``, so the key that makes it a secret is kept."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif hasattr(obj, "password") and isinstance(obj.password, str):
        yield "password", obj.password
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _walk(v, key)
    elif isinstance(obj, str):
        yield key, obj


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace every secret value and any ``user:password@`` in ``text`` with ``***``."""
    text = _USERINFO.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
    forms = {
        form for value in secrets for form in (value, quote_plus(value), quote(value, safe=""))
    }
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text
