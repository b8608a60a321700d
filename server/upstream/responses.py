"""The only module that knows URLs, headers and the wire: ``POST {base_url}/responses``.

One ``httpx.AsyncClient`` for the process is passed in. Replies are read as SSE (the
default) or plain JSON, parsed leniently, and every failure is mapped here, at one
boundary, to the hierarchy in ``server.errors``, with the API key masked out.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Generator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from httpx_sse import EventSource, SSEError

from server import errors
from server.logs import mask
from server.upstream.wire import ResponseObject, is_object, parse_response

logger = logging.getLogger(__name__)

EventCallback = Callable[[str, dict[str, Any]], Awaitable[None]]

_QUOTA_WORDS = ("quota", "insufficient", "balance", "余额", "额度")
_TERMINAL = {"response.completed", "response.incomplete", "response.failed"}


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
    """Translate httpx exceptions into ``server.errors``: nothing above this file sees httpx."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise errors.UpstreamTimeout(f"no reply in time ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise errors.UpstreamConnectionError(f"{type(exc).__name__}: {exc}") from exc


def _strip_request_id(message: str) -> tuple[str, str | None]:
    marker = " (request id: "
    if marker in message and message.endswith(")"):
        head, _, rid = message.rpartition(marker)
        return head, rid[:-1]
    return message, None


class ResponsesClient:
    """Sends requests to ``POST {base_url}/responses`` and returns parsed responses, retrying as ``retry`` allows.

    Every failure is raised as a ``server.errors`` error with the API key masked; a stream that has
    already started is never retried.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str,
        stream: bool = True,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + "/responses"
        self._api_key = api_key
        self.stream = stream
        self.retry = retry or RetryPolicy()

    def __repr__(self) -> str:  # never the key
        return f"ResponsesClient(url={self._url!r}, stream={self.stream})"

    # --- the public call ------------------------------------------------------------------

    async def create(
        self, body: dict[str, Any], *, stream: bool | None = None, on_event: EventCallback | None = None
    ) -> ResponseObject:
        """POST ``body`` and return the parsed response, retrying what the policy allows."""
        use_stream = self.stream if stream is None else stream
        payload = {**body, "stream": use_stream}
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                with map_http_errors():
                    return await self._attempt(payload, use_stream, on_event)
            except errors.UpstreamError as exc:
                wait = self._retry_wait(exc, attempt, time.monotonic() - started)
                if wait is None:
                    raise
                attempt += 1
                logger.warning(
                    "upstream %s; retry %d/%d in %.2fs", type(exc).__name__, attempt, self.retry.max_retries, wait
                )
                await anyio.sleep(wait)

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

    # --- one attempt ----------------------------------------------------------------------

    async def _attempt(self, payload: dict[str, Any], stream: bool, on_event: EventCallback | None) -> ResponseObject:
        headers = {"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"}
        if stream:
            headers["Accept"] = "text/event-stream"
        async with self._http.stream("POST", self._url, json=payload, headers=headers) as response:
            if response.status_code >= 400:
                await response.aread()
                raise self._http_error(response)
            content_type = response.headers.get("content-type", "")
            if stream and "text/event-stream" in content_type:
                return await self._read_stream(response, on_event)
            await response.aread()
            return self._read_json(response)

    def _read_json(self, response: httpx.Response) -> ResponseObject:
        try:
            data = response.json()
        except ValueError as exc:
            raise errors.MalformedResponseError(
                f"the reply is not JSON (HTTP {response.status_code}, starts {response.text[:80]!r})"
            ) from exc
        if is_object(data) and "error" in data and data["error"] and "output" not in data:
            raise self._error_in_body(data["error"], response.status_code)
        return parse_response(data)

    def _error_in_body(self, error: Any, status: int) -> errors.UpstreamError:
        message: Any = error.get("message") if is_object(error) else str(error)
        code: Any = error.get("code") if is_object(error) else None
        text = f"the gateway answered HTTP {status} with an error: {message}" + (f" [code {code}]" if code else "")
        if self._is_quota(str(code or ""), str(message or "")):
            return errors.QuotaExceededError(text, status_code=429, code=str(code) if code else None)
        return errors.MalformedResponseError(text)

    async def _read_stream(self, response: httpx.Response, on_event: EventCallback | None) -> ResponseObject:
        items: dict[int, dict[str, Any]] = {}
        final: ResponseObject | None = None
        events = 0
        try:
            async for sse in EventSource(response).aiter_sse():
                data_text = sse.data.strip()
                if not data_text or data_text == "[DONE]":
                    continue
                if final is not None:
                    continue  # read past the terminal event so the connection can be reused
                if sse.event == "response.output_text.delta":
                    # The most frequent event, and the final text arrives whole later: not parsed.
                    events += 1
                    if on_event is not None:
                        await on_event(sse.event, {})
                    continue
                try:
                    data = json.loads(data_text)
                except ValueError as exc:
                    raise errors.MalformedResponseError(f"a stream event is not JSON: {data_text[:80]!r}") from exc
                if not is_object(data):
                    raise errors.MalformedResponseError("a stream event is not a JSON object")
                kind: Any = data.get("type") or (sse.event if sse.event != "message" else None)
                events += 1
                if kind == "error" or (kind is None and "error" in data):
                    error_field = data.get("error")
                    detail = error_field if is_object(error_field) else data
                    raise errors.StreamError(str(detail.get("message") or "unknown error"), code=detail.get("code"))
                if kind in _TERMINAL:
                    final = parse_response(data.get("response"))
                    if not final.output and items:
                        final.output = [items[i] for i in sorted(items)]
                    continue
                self._accumulate(kind, data, items)
                if on_event is not None:
                    await on_event(str(kind), data)
        except errors.UpstreamError as exc:
            exc.stream_started = events > 0
            raise
        except (httpx.TransportError, SSEError) as exc:
            # Never retry a stream that already started: the request was billed.
            error = errors.UpstreamConnectionError(f"the stream broke after {events} event(s): {exc}")
            error.stream_started = events > 0
            raise error from exc
        if final is None:
            error = errors.MalformedResponseError(
                f"the stream ended after {events} event(s) without a terminal event (response.completed)",
                hint="the gateway cut the stream, often a gateway timeout or content filter; try again",
            )
            error.stream_started = True
            raise error
        return final

    @staticmethod
    def _accumulate(kind: Any, data: dict[str, Any], items: dict[int, dict[str, Any]]) -> None:
        index = data.get("output_index")
        if not isinstance(index, int):
            return
        if (
            kind == "response.output_item.added"
            and isinstance(data.get("item"), dict)
            or kind == "response.output_item.done"
            and isinstance(data.get("item"), dict)
        ):
            items[index] = dict(data["item"])
        elif kind == "response.function_call_arguments.delta" and index in items:
            items[index]["arguments"] = str(items[index].get("arguments") or "") + str(data.get("delta") or "")
        elif kind == "response.function_call_arguments.done" and index in items:
            items[index]["arguments"] = data.get("arguments", items[index].get("arguments"))

    # --- the error boundary ---------------------------------------------------------------

    @staticmethod
    def _is_quota(code: str, message: str) -> bool:
        text = f"{code} {message}".lower()
        return any(word in text for word in _QUOTA_WORDS)

    def _http_error(self, response: httpx.Response) -> errors.UpstreamHTTPError:
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
        message, request_id = _strip_request_id(mask(message, [self._api_key]))
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
            cls = errors.QuotaExceededError if self._is_quota(code or "", message) else errors.RateLimitError
        elif status in (408, 409) or status >= 500:
            cls = errors.ServerError
        else:
            cls = errors.BadRequestError
        error = cls(message, **kwargs)
        should_retry = response.headers.get("x-should-retry")
        if should_retry in ("true", "false"):
            error.retryable = should_retry == "true"
        return error
