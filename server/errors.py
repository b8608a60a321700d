"""Errors raised by the bridge. Each says what happened and, where one exists, the fix.

* BridgeError
  * ConfigError: a setting the call needs is missing or wrong (e.g. no API key).
  * UpstreamError: the model API (Responses or Chat Completions) could not give an answer.
    * UpstreamHTTPError: a non-2xx reply (status_code, code, type, request_id).
      * AuthenticationError: 401, the key was rejected.
      * PermissionDeniedError: 403, the key may not use this model or route.
      * NotFoundError: 404, no such route (a gateway without /v1/responses) or model.
      * BadRequestError: 400 or 422, the upstream message says why.
      * RateLimitError: 429, too many requests; retried unless the wait is too long.
        * QuotaExceededError: 429 whose code or message says quota; never retried.
      * ServerError: 5xx, or 408/409 after retries.
    * UpstreamTimeout: no reply within the timeout or the time budget.
    * UpstreamConnectionError: the gateway could not be reached, or dropped the connection.
    * MalformedResponseError: the reply is not the wire format (bad JSON, a stream without a
      terminal event or finish_reason, a 200 carrying an error object).
    * StreamError: an ``error`` event arrived mid-stream.
    * NoUsableEndpointError: neither /v1/responses nor /v1/chat/completions serves the model.
    * UnsupportedInputError: the API in use cannot carry an input (a file by URL over chat).
  * StoreError: the conversation database could not be read or written (the path and the fix).

Messages never contain the API key: the one boundary that builds them masks it.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    @property
    def summary(self) -> str:
        """What happened, without the hint."""
        return self.message

    def __str__(self) -> str:
        return f"{self.summary} ({self.hint})" if self.hint else self.summary


class ConfigError(BridgeError):
    """Raised when a setting the call needs is missing or wrong."""


class UpstreamError(BridgeError):
    """Raised when the model API could not give an answer."""

    retryable: bool = False
    #: Set when part of a stream had arrived: the request was billed, so it is never retried.
    stream_started: bool = False


class UpstreamHTTPError(UpstreamError):
    """Raised for a non-2xx reply."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None = None,
        type: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status_code = status_code
        self.code = code
        self.type = type
        self.request_id = request_id
        self.retry_after = retry_after

    @property
    def summary(self) -> str:
        return f"HTTP {self.status_code}: {self.message}" + (f" [code {self.code}]" if self.code else "")


class AuthenticationError(UpstreamHTTPError):
    """Raised on 401: the key was rejected."""

    hint = "check KEY4U_API_KEY: the gateway rejected the key"


class PermissionDeniedError(UpstreamHTTPError):
    """Raised on 403: the key may not use this model, route or region."""

    hint = "the key is valid but not allowed here: check the token's model and IP limits in the gateway console"


class NotFoundError(UpstreamHTTPError):
    """Raised on 404: no such route or model."""

    hint = "check KEY4U_BASE_URL (the gateway's OpenAI-compatible base, usually ending in /v1) and the model name"


class BadRequestError(UpstreamHTTPError):
    """Raised on 400/422: the upstream refused the request."""

    hint = "the gateway refused the request as sent; its message says what to change"


class RateLimitError(UpstreamHTTPError):
    """Raised on 429 once retries are spent or the asked wait is too long."""

    retryable = True
    hint = "rate limited by the gateway: wait and try again"


class QuotaExceededError(RateLimitError):
    """Raised on a 429 that reports exhausted quota; retrying cannot help."""

    retryable = False
    hint = "the account's quota or balance is exhausted: top it up in the gateway console"


class ServerError(UpstreamHTTPError):
    """Raised on 5xx (and 408/409) once retries are spent."""

    retryable = True
    hint = "the gateway or the model behind it failed: try again later"


class UpstreamTimeout(UpstreamError):
    """Raised when no reply came within the timeout or the retry budget."""

    retryable = True
    hint = "the gateway did not answer in time: try again, or raise KEY4U_TIMEOUT"


class UpstreamConnectionError(UpstreamError):
    """Raised when the gateway could not be reached or dropped the connection."""

    retryable = True
    hint = "could not reach the gateway: check KEY4U_BASE_URL and the network"


class MalformedResponseError(UpstreamError):
    """Raised when the reply is not in the Responses wire format."""

    hint = "the gateway's reply was not a valid answer of the model API"


class StreamError(UpstreamError):
    """Raised when the stream carried an ``error`` event."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def summary(self) -> str:
        return f"stream error{f' [code {self.code}]' if self.code else ''}: {self.message}"


class NoUsableEndpointError(UpstreamError):
    """Raised when neither /v1/responses nor /v1/chat/completions serves the model."""

    hint = "check KEY4U_BASE_URL: it must be the gateway's OpenAI-compatible base (e.g. https://api.key4u.shop/v1)"


class UnsupportedInputError(UpstreamError):
    """Raised when the API a conversation uses cannot carry one of its inputs (never sent)."""


class StoreError(BridgeError):
    """Raised when the conversation database could not be read or written; the message names the file and the cause."""

    hint = "check that the directory is writable and has free space, or set KEY4U_DB_PATH to another file"

    def __init__(self, message: str, *, path: str, hint: str | None = None, busy: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.path = path
        #: Another process holds a lock the work needs: the same work may go through later.
        self.busy = busy
