"""Keep secrets out of every string arcoforge writes: logs, errors, metadata, run records."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

MASK = "***"
_SECRET_KEYS = re.compile(r"pass|secret|token|key|auth|credential|signature", re.IGNORECASE)
_USERINFO = re.compile(r"(?<=://)([^/@:\s]+):([^/@\s]+)@")


def with_query_secrets(url: str, secrets: Mapping[str, str] | None) -> str:
    """Append ``secrets`` to the query string of ``url``; the result must never be logged."""
    if not secrets:
        return url
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(secrets.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def secret_values(
    query_secrets: Mapping[str, str] | None = None, open_kwargs: Mapping | None = None
) -> list[str]:
    """Collect the secret strings held by a pattern's query secrets and fsspec options."""
    found = [str(v) for v in (query_secrets or {}).values()]
    found += [v for k, v in _walk(open_kwargs or {}) if _SECRET_KEYS.search(k)]
    return [s for s in found if len(s) >= 3]


def _walk(obj, key: str = "") -> Iterable[tuple[str, str]]:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _walk(v, str(k))
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
