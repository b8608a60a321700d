"""Logging to stderr only, with secrets masked in every record.

stdout of the stdio server is the protocol wire, so no handler ever points there.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def mask(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret in ``text``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Masks the given secrets in a record's message, arguments and traceback."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            record.msg = mask(record.getMessage(), self._secrets)
            record.args = None
            if record.exc_info:
                formatted = logging.Formatter().formatException(record.exc_info)
                record.exc_text = mask(formatted, self._secrets)
                record.exc_info = None
        return True


#: A libpq ``key=value`` string's password: the setting, its value (quoted or not), the quoted value's inside.
_PASSWORD = re.compile(r"(password\s*=\s*)('([^']*)'|\S+)")


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (URL or ``key=value`` form)."""
    parts = urlsplit(url)
    if parts.scheme and parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    return _PASSWORD.sub(r"\1***", url)


def url_password(url: str) -> str | None:
    """The password in ``url``, to mask wherever the URL or an error might show it."""
    parts = urlsplit(url)
    if parts.scheme and parts.password:
        return parts.password
    match = _PASSWORD.search(url)
    return (match.group(3) or match.group(2)) if match else None


def configure_logging(level: str, secrets: Iterable[str] = ()) -> None:
    """Send all logs to stderr at ``level``, masking ``secrets``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Request-level chatter from the HTTP stack is noise at INFO.
    for name in ("httpx", "httpcore", "httpx2"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
