"""The HTTP side every wire format shares: one gateway's base URL and key, retries, and the error boundary.

``Gateway.post`` sends one JSON request, retries what ``RetryPolicy`` allows, and hands the reply to
the adapter's reader; every failure leaves here as an error of ``server.errors``, with the API key
masked out. The adapters (``responses``, ``chat``) own their request bodies and reply parsers; this
module never looks inside a successful reply.
"""

from __future__ import annotations

import codecs
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import anyio
import httpx
import pydantic_core
from httpx_sse import EventSource, ServerSentEvent, SSEError

from server import errors
from server.logs import mask
from server.upstream.jsonvalues import is_object, scrub

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
class ReplyLimits:
    """Bounds on one reply, whatever the gateway sends: size, silence between events, and total time."""

    max_bytes: int = 32 * 1024 * 1024
    """Largest reply body read; a larger one is refused (memory stays near this bound)."""
    silence: float = 120.0
    """Longest wait for the next stream event; keep-alive comments (``: PING``) do not count as events."""
    total: float = 600.0
    """Longest time for one reply, from sending the request to its last byte."""


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


def encode_body(payload: dict[str, Any]) -> bytes:
    """``payload`` as compact JSON, encoded once for all its attempts with pydantic's writer: a 500 KB
    body of a thousand functions in about 1 ms, against 10 for ``json.dumps`` (what httpx's ``json=``
    uses). A number JSON cannot hold (NaN, infinity) is sent as ``null``. A string UTF-8 cannot hold
    (a lone surrogate; every string is scrubbed before it gets here) raises ``ValueError``, as ``json=``
    did."""
    try:
        return pydantic_core.to_json(payload, inf_nan_mode="null")
    except pydantic_core.PydanticSerializationError as exc:
        raise ValueError(f"the request body cannot be written as JSON: {exc}") from exc


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait as the reply asks: ``retry-after-ms``, then ``retry-after`` (seconds or HTTP date),
    or LiteLLM's ``llm_provider-retry-after`` (the upstream's own header, renamed)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after") or headers.get("llm_provider-retry-after")
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
    """Translate httpx exceptions into ``server.errors``: nothing above this package sees httpx.

    Each kind gets its own plain account: no connection at all, a reply that stalled, a connection
    dropped mid-reply, a body that could not be decoded."""
    try:
        yield
    except httpx.ConnectTimeout as exc:
        raise errors.UpstreamConnectionError(f"could not connect in time ({type(exc).__name__})") from exc
    except httpx.TimeoutException as exc:
        raise errors.UpstreamTimeout(f"the gateway stopped sending: no data in time ({type(exc).__name__})") from exc
    except (httpx.ConnectError, httpx.UnsupportedProtocol) as exc:
        raise errors.UpstreamConnectionError(f"{type(exc).__name__}: {exc}") from exc
    except httpx.TransportError as exc:
        raise errors.UpstreamConnectionError(
            f"the connection was closed mid-reply ({type(exc).__name__}: {exc})",
            hint="the gateway or a proxy dropped the connection; try again",
        ) from exc
    except httpx.DecodingError as exc:
        raise errors.MalformedResponseError(f"the reply could not be decoded ({exc})") from exc


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


class _CountedText:
    """What ``EventSource`` reads of a response (its headers and its text), with the bytes counted so a
    reply larger than the limit is refused before it is held in memory."""

    def __init__(self, response: httpx.Response, limit: int) -> None:
        self.headers = response.headers
        self._response = response
        self._limit = limit

    async def aiter_text(self) -> AsyncIterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        seen = 0
        async for chunk in self._response.aiter_bytes():
            seen += len(chunk)
            if seen > self._limit:
                raise errors.MalformedResponseError(f"the reply is larger than {self._limit} bytes; it was not read")
            yield decoder.decode(chunk)
        yield decoder.decode(b"", final=True)


class EventStream:
    """The events of an SSE reply, bounded: in size (``ReplyLimits.max_bytes``) and in silence between
    events (``ReplyLimits.silence``: keep-alive comments are not events). ``count`` events so far."""

    def __init__(self, response: httpx.Response, limits: ReplyLimits) -> None:
        source = EventSource(cast(httpx.Response, _CountedText(response, limits.max_bytes)))
        self._events = source.aiter_sse()
        self._silence = limits.silence
        self.count = 0

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> ServerSentEvent:
        event: ServerSentEvent | None = None
        with anyio.move_on_after(self._silence):
            try:
                event = await self._events.__anext__()
            except SSEError as exc:
                raise errors.MalformedResponseError(f"the stream is not valid SSE: {exc}") from exc
        if event is None:
            await self._events.aclose()
            raise errors.UpstreamTimeout(
                f"the stream stalled: no event for {self._silence:g} s after {self.count} event(s)"
            )
        self.count += 1
        return event

    async def aclose(self) -> None:
        await self._events.aclose()


#: The most a GET (a model listing) reads: a gateway's whole catalogue is well under it.
GET_MAX_BYTES = 8 * 1024 * 1024


async def read_body(response: httpx.Response, limit: int) -> bytes:
    """The whole body of a non-stream reply, refused beyond ``limit`` bytes."""
    parts: list[bytes] = []
    seen = 0
    async for chunk in response.aiter_bytes():
        seen += len(chunk)
        if seen > limit:
            raise errors.MalformedResponseError(f"the reply is larger than {limit} bytes; it was not read")
        parts.append(chunk)
    return b"".join(parts)


def loads(data: str | bytes, what: str) -> object:
    """JSON from the gateway, or ``MalformedResponseError`` (also for nesting too deep to decode)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        preview = data[:80] if isinstance(data, str) else data[:80].decode("utf-8", "replace")
        raise errors.MalformedResponseError(f"{what} is not JSON ({type(exc).__name__}; starts {preview!r})") from exc


def tokens(value: object) -> int:
    """A token count as gateways send it: an int, a float (some send 12.0), a numeric string; else 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int | float):
        return max(0, int(value)) if value == value and abs(value) < 1e15 else 0  # NaN and inf are 0
    if isinstance(value, str):
        try:
            return tokens(float(value))
        except ValueError:
            return 0
    return 0


def unique_ids(call_ids: Iterable[str]) -> None:
    """Refuse a turn whose calls share an id: their outputs could not be told apart."""
    seen: set[str] = set()
    for call_id in call_ids:
        if call_id in seen:
            raise errors.MalformedResponseError(f"two function calls in one reply share the id {call_id[:80]!r}")
        seen.add(call_id)


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

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str,
        retry: RetryPolicy | None = None,
        limits: ReplyLimits | None = None,
    ) -> None:
        self._http = http
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.retry = retry or RetryPolicy()
        self.limits = limits or ReplyLimits()

    def __repr__(self) -> str:  # never the key
        return f"Gateway(base_url={self.base_url!r})"

    def mask(self, text: str) -> str:
        return mask(text, [self._api_key])

    def clean(self, text: str) -> str:
        """Gateway-written text made safe to store and show: the key masked, lone surrogates replaced."""
        return scrub(mask(text, [self._api_key]))

    def stream_error(self, detail: Mapping[str, Any]) -> errors.StreamError:
        """An error the gateway sent inside a stream: its message cleaned (then cut) and its code."""
        code: object = detail.get("code")
        message = self.clean(str(detail.get("message") or "unknown error"))[:2000]
        return errors.StreamError(message, code=str(code)[:100] if code not in (None, "") else None)

    @staticmethod
    def cut_stream(account: str) -> errors.MalformedResponseError:
        """A stream that ended before the reply did (``account`` says how): billed, so never retried."""
        error = errors.MalformedResponseError(
            f"the stream ended {account}",
            hint="the gateway cut the stream, often a gateway timeout or content filter; try again",
        )
        error.stream_started = True
        return error

    def events(self, response: httpx.Response) -> EventStream:
        return EventStream(response, self.limits)

    async def body(self, response: httpx.Response) -> bytes:
        return await read_body(response, self.limits.max_bytes)

    async def post(
        self, path: str, payload: dict[str, Any], read: Callable[[httpx.Response], Awaitable[T]], *, stream: bool
    ) -> T:
        """POST ``payload`` and return what ``read`` makes of a 2xx reply, retrying what the policy allows."""
        started = time.monotonic()
        attempt = 0
        body = encode_body(payload)
        while True:
            try:
                with map_http_errors():
                    return await self._attempt(path, body, read, stream)
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
        """GET ``{base_url}{path}`` once (no retries) and return its JSON, read within ``GET_MAX_BYTES``;
        errors as ``server.errors``."""
        with map_http_errors():
            async with self._http.stream("GET", self.base_url + path, headers=self._headers(stream=False)) as response:
                if response.status_code >= 400:
                    raise self.http_error(response, await read_body(response, 64 * 1024))
                body = await read_body(response, GET_MAX_BYTES)
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise errors.MalformedResponseError(f"GET {path} did not answer JSON") from exc

    def _headers(self, *, stream: bool) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"}
        if stream:
            headers["Accept"] = "text/event-stream"
        return headers

    async def _attempt(self, path: str, body: bytes, read: Callable[[httpx.Response], Awaitable[T]], stream: bool) -> T:
        url = self.base_url + path
        with anyio.move_on_after(self.limits.total) as bounded:
            async with self._http.stream("POST", url, content=body, headers=self._headers(stream=stream)) as response:
                if response.status_code >= 400:
                    raise self.http_error(response, await read_body(response, 1024 * 1024))
                return await read(response)
        assert bounded.cancelled_caught
        error = errors.UpstreamTimeout(f"the reply took longer than {self.limits.total:g} s (KEY4U_TURN_TIMEOUT)")
        error.stream_started = True  # it may have been billed: not retried
        raise error

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
        text = self.clean(
            f"the gateway answered HTTP {status} with an error: {message}" + (f" [code {code}]" if code else "")
        )
        if is_quota(str(code or ""), str(message or "")):
            return errors.QuotaExceededError(text, status_code=429, code=str(code) if code else None)
        return errors.MalformedResponseError(text)

    def http_error(self, response: httpx.Response, body: bytes | None = None) -> errors.UpstreamHTTPError:
        """The error for a non-2xx reply, from its status, headers and ``body`` (default: the read content)."""
        status = response.status_code
        content = response.content if body is None else body
        raw = self.clean(content.decode("utf-8", "replace"))  # masked before anything is cut
        message, code, type_ = raw.strip()[:500] or response.reason_phrase, None, None
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            data = None
        if is_object(data) and is_object(err := data.get("error")):
            message = str(err.get("message") or message)
            code = str(err["code"]) if err.get("code") not in (None, "") else None
            type_ = str(err["type"]) if err.get("type") else None
        elif is_object(data) and isinstance(data_message := data.get("message"), str):
            message = data_message
        message, request_id = _strip_request_id(self.clean(message)[:2000])
        request_id = request_id or response.headers.get("x-request-id")
        kwargs: dict[str, Any] = {
            "status_code": status,
            "code": code,
            "type": type_,
            "request_id": request_id,
            "retry_after": parse_retry_after(response.headers),
        }
        cls: type[errors.UpstreamHTTPError]
        if status == 400 and "no connected db" in message.lower():
            # LiteLLM without a database answers a wrong key this way.
            cls = errors.AuthenticationError
            kwargs["hint"] = "LiteLLM (without a database) rejected the key: check KEY4U_API_KEY"
        elif status == 400 and re.search(r"invalid model name|model .* (does not exist|not found)", message, re.I):
            cls = errors.NotFoundError
            kwargs["hint"] = "the gateway does not offer this model: check the model name (key4u-mcp doctor)"
        elif status == 401:
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
        if _gateway_retried(response.headers):
            error.retryable = False  # the gateway already retried: ours would multiply its attempts
        if status == 429 and re.search(r"no deployments available|cooldown", message, re.IGNORECASE):
            error.hint = "the gateway's model group is cooling down after upstream failures: wait a minute"
        return error


def _gateway_retried(headers: httpx.Headers) -> bool:
    """Whether the gateway retried this request itself before answering: LiteLLM's proxy does (three
    times by default, even for quota errors), and marks its replies with ``x-litellm-*`` headers."""
    value = headers.get("x-litellm-attempted-retries")
    if value is not None:
        try:
            return int(value) > 0
        except ValueError:
            return True
    return any(name.lower().startswith("x-litellm-") for name in headers)


__all__ = [
    "EventStream",
    "Gateway",
    "ReplyLimits",
    "RetryPolicy",
    "is_quota",
    "loads",
    "map_http_errors",
    "parse_retry_after",
    "read_body",
    "route_not_served",
    "scrub",
    "tokens",
    "unique_ids",
]
