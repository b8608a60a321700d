"""The HTTP side every wire format shares: one gateway's base URL and key, retries, and the error boundary.

``Gateway.post`` sends one JSON request, retries what ``RetryPolicy`` allows, and hands the reply to
the adapter's reader; every failure leaves here as an error of ``server.errors``, with the API key
masked out. The adapters (``responses``, ``chat``) own their request bodies and reply parsers; this
module never looks inside a successful reply.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Generator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import httpx

from server import errors
from server.logs import mask
from server.upstream.jsonvalues import is_object

logger = logging.getLogger(__name__)

T = TypeVar("T")

_QUOTA_WORDS = ("quota", "insufficient", "balance", "余额", "额度")
#: What a gateway says when a route exists but cannot serve this model (new-api's non-OpenAI channels on
#: /v1/responses), or when the route does not exist at all.
_NOT_SERVED_CODES = {"convert_request_failed"}
_NOT_SERVED_WORDS = re.compile(
    r"not implemented|invalid url|unsupported endpoint|not supported on this endpoint|"
    r"only supported (in|on|by|via) /?v1/chat/completions|no route|unknown (url|route|endpoint)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed request is tried again: how many times, the longest Retry-After honoured, and a time budget."""

    max_retries: int = 2
    """Retries after the first attempt (so 3 attempts by default)."""
    max_wait: float = 30.0
    """Longest Retry-After honoured, in seconds; a longer one is not waited for."""
    budget: float = 120.0
    """Total seconds for all attempts and waits of one request."""

    def backoff(self, retry: int) -> float:
        return min(0.5 * 2**retry, 8.0) * (1 - 0.25 * random.random())


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait as the reply asks: ``retry-after-ms``, then ``retry-after`` (seconds or HTTP date)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return email.utils.mktime_tz(parsed) - time.time()


@contextmanager
def map_http_errors() -> Generator[None]:
    """Translate httpx exceptions into ``server.errors``: nothing above this package sees httpx."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise errors.UpstreamTimeout(f"no reply in time ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise errors.UpstreamConnectionError(f"{type(exc).__name__}: {exc}") from exc


def is_quota(code: str, message: str) -> bool:
    text = f"{code} {message}".lower()
    return any(word in text for word in _QUOTA_WORDS)


def route_not_served(exc: errors.UpstreamError) -> bool:
    """True when the gateway says this endpoint cannot serve the request at all, so another endpoint may:
    a missing route (404, 405, 501) or a conversion it has not implemented. Never for auth, quota or
    rate limits, and not for a model the gateway does not know."""
    if not isinstance(exc, errors.UpstreamHTTPError):
        return False
    if isinstance(exc, errors.AuthenticationError | errors.PermissionDeniedError | errors.RateLimitError):
        return False
    if exc.code == "model_not_found":
        return False
    if exc.status_code in (404, 405, 501):
        return True
    return exc.code in _NOT_SERVED_CODES or bool(_NOT_SERVED_WORDS.search(exc.message))


def _strip_request_id(message: str) -> tuple[str, str | None]:
    marker = " (request id: "
    if marker in message and message.endswith(")"):
        head, _, rid = message.rpartition(marker)
        return head, rid[:-1]
    return message, None


class Gateway:
    """One OpenAI-compatible gateway: POSTs JSON to ``{base_url}{path}`` with the key, retrying as allowed.

    It never parses a successful reply (the adapter's reader does) and never lets the key into an
    error message.
    """

    def __init__(self, http: httpx.AsyncClient, *, base_url: str, api_key: str, retry: RetryPolicy | None = None):
        self._http = http
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.retry = retry or RetryPolicy()

    def __repr__(self) -> str:  # never the key
        return f"Gateway(base_url={self.base_url!r})"

    def mask(self, text: str) -> str:
        return mask(text, [self._api_key])

    async def post(
        self, path: str, payload: dict[str, Any], read: Callable[[httpx.Response], Awaitable[T]], *, stream: bool
    ) -> T:
        """POST ``payload`` and return what ``read`` makes of a 2xx reply, retrying what the policy allows."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                with map_http_errors():
                    return await self._attempt(path, payload, read, stream)
            except errors.UpstreamError as exc:
                wait = self._retry_wait(exc, attempt, time.monotonic() - started)
                if wait is None:
                    raise
                attempt += 1
                logger.warning(
                    "upstream %s; retry %d/%d in %.2fs", type(exc).__name__, attempt, self.retry.max_retries, wait
                )
                await anyio.sleep(wait)

    async def get_json(self, path: str) -> Any:
        """GET ``{base_url}{path}`` once (no retries) and return its JSON; errors as ``server.errors``."""
        with map_http_errors():
            response = await self._http.get(self.base_url + path, headers=self._headers(stream=False))
        if response.status_code >= 400:
            raise self.http_error(response)
        try:
            return response.json()
        except ValueError as exc:
            raise errors.MalformedResponseError(f"GET {path} did not answer JSON") from exc

    def _headers(self, *, stream: bool) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"}
        if stream:
            headers["Accept"] = "text/event-stream"
        return headers

    async def _attempt(
        self, path: str, payload: dict[str, Any], read: Callable[[httpx.Response], Awaitable[T]], stream: bool
    ) -> T:
        url = self.base_url + path
        async with self._http.stream("POST", url, json=payload, headers=self._headers(stream=stream)) as response:
            if response.status_code >= 400:
                await response.aread()
                raise self.http_error(response)
            return await read(response)

    def _retry_wait(self, exc: errors.UpstreamError, attempt: int, elapsed: float) -> float | None:
        if not exc.retryable or exc.stream_started or attempt >= self.retry.max_retries:
            return None
        asked = exc.retry_after if isinstance(exc, errors.UpstreamHTTPError) else None
        if asked is not None and asked > self.retry.max_wait:
            return None  # the gateway asks for longer than we may wait: report it instead
        wait = asked if asked is not None and asked > 0 else self.retry.backoff(attempt)
        if elapsed + wait > self.retry.budget:
            return None
        return wait

    # --- the error boundary ---------------------------------------------------------------

    def error_in_body(self, error: Any, status: int) -> errors.UpstreamError:
        """A 2xx reply that carries an error object instead of an answer (a gateway habit)."""
        message: Any = error.get("message") if is_object(error) else str(error)
        code: Any = error.get("code") if is_object(error) else None
        text = self.mask(
            f"the gateway answered HTTP {status} with an error: {message}" + (f" [code {code}]" if code else "")
        )
        if is_quota(str(code or ""), str(message or "")):
            return errors.QuotaExceededError(text, status_code=429, code=str(code) if code else None)
        return errors.MalformedResponseError(text)

    def http_error(self, response: httpx.Response) -> errors.UpstreamHTTPError:
        status = response.status_code
        raw = response.text
        message, code, type_ = raw.strip()[:500] or response.reason_phrase, None, None
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if is_object(data) and is_object(err := data.get("error")):
            message = str(err.get("message") or message)
            code = str(err["code"]) if err.get("code") not in (None, "") else None
            type_ = str(err["type"]) if err.get("type") else None
        elif is_object(data) and isinstance(data_message := data.get("message"), str):
            message = data_message
        message, request_id = _strip_request_id(self.mask(message))
        request_id = request_id or response.headers.get("x-request-id")
        kwargs: dict[str, Any] = {
            "status_code": status,
            "code": code,
            "type": type_,
            "request_id": request_id,
            "retry_after": parse_retry_after(response.headers),
        }
        cls: type[errors.UpstreamHTTPError]
        if status == 401:
            cls = errors.AuthenticationError
        elif status == 403:
            cls = errors.PermissionDeniedError
        elif status == 404:
            cls = errors.NotFoundError
        elif status == 429:
            cls = errors.QuotaExceededError if is_quota(code or "", message) else errors.RateLimitError
        elif status in (408, 409) or status >= 500:
            cls = errors.ServerError
        else:
            cls = errors.BadRequestError
        error = cls(message, **kwargs)
        should_retry = response.headers.get("x-should-retry")
        if should_retry in ("true", "false"):
            error.retryable = should_retry == "true"
        if route_not_served(error):
            error.retryable = False  # the same request cannot succeed here: another endpoint may
        return error


__all__ = ["Gateway", "RetryPolicy", "is_quota", "map_http_errors", "parse_retry_after", "route_not_served"]
