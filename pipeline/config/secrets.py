"""Keeping secrets out of what icetrain prints and records.

Passwords in URIs (``postgresql://user:pw@host``, ``http://user:pw@mlflow``) and secret-looking
query values (``?token=...``) are replaced by ``***`` in every message, banner and failure
icetrain shows; ``scrub`` does it for free text such as a wrapped library's error.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

SECRET_WORDS = (
    "password",
    "passwd",
    "secret",
    "token",
    "access-key",
    "access_key",
    "accesskey",
    "api-key",
    "api_key",
    "apikey",
    "private-key",
    "private_key",
    "credential",
    "signature",
)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@\s/]+)@")
_SECRET_ASSIGNMENT = re.compile(
    r"(?P<name>[A-Za-z0-9_.-]*(?:"
    + "|".join(re.escape(word) for word in SECRET_WORDS)
    + r")[A-Za-z0-9_.-]*)(?P<sep>\s*[=:]\s*)(?P<value>[^\s&,;'\"]+)",
    re.IGNORECASE,
)


def redact(uri: str) -> str:
    """A URI without its password or secret-looking query values, for messages and banners."""
    parts = urlsplit(uri)
    if parts.password is None and not any(word in parts.query.lower() for word in SECRET_WORDS):
        return uri  # unchanged: urlunsplit would also drop the empty authority of sqlite:////path
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    query = "&".join(
        f"{name}=***" if any(word in name.lower() for word in SECRET_WORDS) else f"{name}={value}" if sep else name
        for name, sep, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def scrub(text: str) -> str:
    """Free text with URI passwords and ``secret-word=value`` assignments replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _SECRET_ASSIGNMENT.sub(lambda m: f"{m['name']}{m['sep']}***", text)
