"""What a turn costs, and what the key has left: the gateway's published prices, a price file, the balance.

``Prices`` answers ``cost(model, input_tokens, output_tokens, cached_tokens)`` synchronously, from
what it has: a ``KEY4U_PRICES`` file (model -> USD per million tokens), which wins, else the price
list a new-api gateway publishes at ``GET <origin>/api/pricing`` (no key; the origin is the base URL
without ``/v1``). That list is fetched off the request path by ``Prices.run``, a background task that
sleeps until the first ``cost`` (or ``want``) asks, then refreshes at most once an hour; until it has
loaded, and for any model it cannot price, ``cost`` answers None and ``why_unpriced`` says why. It
never guesses a price.

new-api's billing, mirrored by ``cost`` (``relay/compatible_handler.go``, ``common/constants.go``):

* by tokens (``quota_type`` 0): quota = ((input - cached) + cached x cache_ratio + output x
  completion_ratio) x model_ratio x group_ratio, rounded to a whole unit; cached tokens cost as
  input where no ``cache_ratio`` is published (its default ratio is 1);
* per call (``quota_type`` 1): quota = model_price x 500,000 x group_ratio;
* 500,000 quota = 1 USD, so a ``model_ratio`` of 1 is $2 per million input tokens ($0.002 / 1K).

``fetch_balance`` reads the key's limit and usage from ``/v1/dashboard/billing/subscription``
(``hard_limit_usd``: used + remaining) and ``/v1/dashboard/billing/usage`` (``total_usage``, in
cents). Every reply here is hostile input: any shape, any size, wrong types. Each is read once,
bounded in size and time, and a reply that cannot be used gives None and a reason, never an
exception, and never the key.

Importing this module loads no HTTP client (the fetchers import theirs when they run), so the
bridge may hold a ``Prices`` without the wire modules.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import anyio

from server.logs import mask
from server.upstream.jsonvalues import is_array, is_object, scrub

if TYPE_CHECKING:
    import httpx

    from server.config import Settings

logger = logging.getLogger(__name__)

QUOTA_PER_USD = 500_000
"""new-api's ``QuotaPerUnit``: quota units per US dollar."""
MILLION = 1_000_000
UNLIMITED_USD = 100_000_000
"""What new-api reports as ``hard_limit_usd`` for a key with unlimited quota."""

REFRESH_EVERY = 3600.0
"""Seconds between fetches of the gateway's prices, at most one an hour."""
RETRY_EVERY = 300.0
"""Seconds before another try after a fetch that failed on the way (timeout, refused, 5xx)."""
PRICING_TIMEOUT = 15.0
PRICING_MAX_BYTES = 8 * 1024 * 1024
LISTING_MAX_BYTES = 8 * 1024 * 1024
BILLING_MAX_BYTES = 64 * 1024
BILLING_TIMEOUT = 10.0
PRICE_FILE_MAX_BYTES = 4 * 1024 * 1024

_MAX_MODELS = 20_000
_MAX_NAME = 200
_MAX_TYPES = 16
_MAX_NUMBER = 1e12


# --- the numbers in a reply ---------------------------------------------------------------------


def number(value: object) -> float | None:
    """A finite, non-negative JSON number (not a bool, not a numeric string), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    result = float(value)
    if not math.isfinite(result) or result < 0 or result > _MAX_NUMBER:
        return None
    return result


def _name(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_NAME:
        return None
    return scrub(value.strip())


def _names(value: object, limit: int = _MAX_TYPES) -> tuple[str, ...]:
    items = value if is_array(value) else []
    return tuple(n for n in (_name(v) for v in items[:limit]) if n is not None)


def _round_half_up(value: float) -> int:
    """As new-api's ``decimal.Round(0)`` on a non-negative quota: halves away from zero."""
    return math.floor(value + 0.5)


# --- what a model costs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPrice:
    """One model's entry in the gateway's price list, as published (before the group ratio)."""

    model: str
    model_ratio: float | None = None
    completion_ratio: float | None = None
    cache_ratio: float | None = None
    """None where the gateway publishes none: cached tokens then cost as input (new-api's ratio 1)."""
    per_call_usd: float | None = None
    """``model_price`` for a per-call model (``quota_type`` 1), in USD before the group ratio."""
    endpoint_types: tuple[str, ...] = ()
    """new-api's ``supported_endpoint_types``: ``openai`` (Chat Completions), ``openai-response``, ..."""
    vendor: str | None = None
    groups: tuple[str, ...] = ()
    problem: str | None = None
    """Why this entry cannot be priced (tiered pricing, a number that is not one); None when it can."""


@dataclass(frozen=True)
class PriceTable:
    """The gateway's price list: each model's entry and each group's ratio."""

    models: Mapping[str, ModelPrice]
    group_ratios: Mapping[str, float]
    fetched_at: float = 0.0


@dataclass(frozen=True)
class Rate:
    """USD prices for one model, as the key pays them (the group ratio applied)."""

    input: float | None = None
    """Per million input tokens."""
    output: float | None = None
    """Per million output tokens."""
    cached: float | None = None
    """Per million cached input tokens."""
    per_call: float | None = None
    """Per request, for a model billed per call (its tokens are then not counted)."""
    source: Literal["gateway", "file"] = "gateway"

    def summary(self) -> str:
        """``$2/$8 (cached $0.5)`` (USD per million input/output tokens), or ``$0.04/call``."""
        if self.per_call is not None:
            return f"{usd(self.per_call)}/call"
        if self.input is None or self.output is None:
            return "price unknown"
        cached = f" (cached {usd(self.cached)})" if self.cached is not None and self.cached != self.input else ""
        return f"{usd(self.input)}/{usd(self.output)}{cached}"


def usd(value: float) -> str:
    """A price, short: ``$2``, ``$0.275``, ``$1,250``."""
    return f"${value:,.0f}" if value >= 100 else f"${value:.4g}"


@dataclass(frozen=True)
class Cost:
    """What one model turn (one request) cost."""

    usd: float
    source: Literal["gateway", "file"]
    """``gateway``: from its published prices; ``file``: from ``KEY4U_PRICES``."""
    per_call: bool = False
    quota: int | None = None
    """new-api quota units charged (gateway prices only); ``usd`` is ``quota / 500,000``."""
    group: str | None = None
    group_ratio: float | None = None


class PricingUnavailable(Exception):
    """The gateway's price list could not be had; ``transient`` when trying again soon may help."""

    def __init__(self, reason: str, *, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


def parse_pricing(reply: object, *, fetched_at: float = 0.0) -> PriceTable:
    """The price list in a ``GET /api/pricing`` reply, read defensively: any entry that is not a usable
    price is kept with its ``problem`` (or skipped when it has no name); ``PricingUnavailable`` when the
    reply is not a price list at all."""
    if not is_object(reply):
        raise PricingUnavailable(f"the reply is a JSON {type(reply).__name__}, not an object")
    if reply.get("success") is False:
        message = reply.get("message")
        # Not cut here: the reason is masked (``Prices``) before anything cuts it.
        said = scrub(message[:10_000]) if isinstance(message, str) and message else "no reason given"
        raise PricingUnavailable(f"the gateway refused: {said}")
    data: object = reply.get("data")
    if is_object(data):  # a fork keyed by model name
        data = [({"model_name": k} | v) if is_object(v) else None for k, v in list(data.items())[:_MAX_MODELS]]
    if not is_array(data):
        raise PricingUnavailable("the reply has no list of models in 'data'")
    vendors = _vendors(reply.get("vendors"))
    models: dict[str, ModelPrice] = {}
    for entry in data[:_MAX_MODELS]:
        price = _model_price(entry, vendors)
        if price is not None and price.model not in models:
            models[price.model] = price
    ratios: dict[str, float] = {}
    raw_ratios: object = reply.get("group_ratio")
    if is_object(raw_ratios):
        for group, ratio in list(raw_ratios.items())[:1000]:
            value = number(ratio)
            if (name := _name(group)) is not None and value is not None:
                ratios[name] = value
    return PriceTable(models=models, group_ratios=ratios, fetched_at=fetched_at)


def _vendors(value: object) -> dict[int, str]:
    vendors: dict[int, str] = {}
    for vendor in value[:1000] if is_array(value) else []:
        if not is_object(vendor):
            continue
        vendor_id: object = vendor.get("id")
        name = _name(vendor.get("name"))
        if isinstance(vendor_id, int) and not isinstance(vendor_id, bool) and name is not None:
            vendors[vendor_id] = name
    return vendors


def _model_price(entry: object, vendors: Mapping[int, str]) -> ModelPrice | None:
    if not is_object(entry) or (model := _name(entry.get("model_name"))) is None:
        return None
    vendor_id: object = entry.get("vendor_id")
    vendor = vendors.get(vendor_id) if isinstance(vendor_id, int) and not isinstance(vendor_id, bool) else None
    common: dict[str, Any] = {
        "model": model,
        "endpoint_types": _names(entry.get("supported_endpoint_types")),
        "vendor": vendor or _name(entry.get("owner_by")),
        "groups": _names(entry.get("enable_groups"), 100),
    }
    quota_type: object = entry.get("quota_type")
    if entry.get("billing_mode") == "tiered_expr":
        return ModelPrice(**common, problem="the gateway prices it by tiers (billing_expr), not computed here")
    if quota_type == 1 and not isinstance(quota_type, bool):
        per_call = number(entry.get("model_price"))
        if per_call is None:
            return ModelPrice(**common, problem="its published model_price is not a usable number")
        return ModelPrice(**common, per_call_usd=per_call)
    if quota_type != 0 or isinstance(quota_type, bool):
        return ModelPrice(**common, problem="its quota_type is neither 0 (by tokens) nor 1 (per call)")
    model_ratio, completion_ratio = number(entry.get("model_ratio")), number(entry.get("completion_ratio"))
    raw_cache: object = entry.get("cache_ratio")
    cache_ratio = number(raw_cache)
    if model_ratio is None or completion_ratio is None or (raw_cache is not None and cache_ratio is None):
        return ModelPrice(**common, problem="its published ratios are not usable numbers")
    return ModelPrice(**common, model_ratio=model_ratio, completion_ratio=completion_ratio, cache_ratio=cache_ratio)


def gateway_rate(price: ModelPrice, group_ratio: float) -> Rate | None:
    """USD per million tokens (or per call) for ``price`` in a group of ``group_ratio``."""
    if price.problem is not None:
        return None
    if price.per_call_usd is not None:
        return Rate(per_call=price.per_call_usd * group_ratio)
    if price.model_ratio is None or price.completion_ratio is None:
        return None
    per_million = price.model_ratio * group_ratio * MILLION / QUOTA_PER_USD
    cache = price.cache_ratio if price.cache_ratio is not None else 1.0
    return Rate(input=per_million, output=per_million * price.completion_ratio, cached=per_million * cache)


def gateway_quota(price: ModelPrice, group_ratio: float, input_tokens: int, output_tokens: int, cached: int) -> int:
    """The quota new-api charges for one request: ``cached`` is part of ``input_tokens``."""
    if input_tokens + output_tokens == 0:
        return 0  # new-api charges nothing for a request that reported no tokens
    if price.per_call_usd is not None:
        return _round_half_up(price.per_call_usd * QUOTA_PER_USD * group_ratio)
    assert price.model_ratio is not None and price.completion_ratio is not None
    cache_ratio = price.cache_ratio if price.cache_ratio is not None else 1.0
    prompt = (input_tokens - cached) + cached * cache_ratio
    ratio = price.model_ratio * group_ratio
    quota = _round_half_up((prompt + output_tokens * price.completion_ratio) * ratio)
    return 1 if quota == 0 and ratio > 0 else quota  # at least one unit for a priced request


# --- a price file (KEY4U_PRICES) -----------------------------------------------------------------


def load_price_file(path: Path) -> dict[str, Rate]:
    """Model -> ``Rate`` from a JSON or TOML file (by its suffix: ``.toml`` is TOML, anything else
    JSON) of ``{model: {input, output, cached, per_call}}`` in USD per million tokens (``per_call`` in
    USD per request). ``cached`` defaults to ``input``. ``ValueError`` says what is wrong and where."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(PRICE_FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(raw) > PRICE_FILE_MAX_BYTES:
        raise ValueError(f"{path} is larger than {PRICE_FILE_MAX_BYTES} bytes")
    data: object
    if path.suffix.lower() == ".toml":
        if sys.version_info < (3, 11):
            raise ValueError(f"{path}: TOML price files need Python 3.11 or later; write it as JSON")
        import tomllib

        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path} is not valid TOML: {exc}") from exc
    else:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not is_object(data):
        raise ValueError(f'{path} must map model names to prices, e.g. {{"gpt-4.1": {{"input": 2, "output": 8}}}}')
    rates: dict[str, Rate] = {}
    for model, entry in data.items():
        rates[model] = _file_rate(path, model, entry)
    return rates


def _file_rate(path: Path, model: str, entry: object) -> Rate:
    where = f"{path}: model {model!r}"
    if not is_object(entry):
        raise ValueError(f"{where} must be a table of input, output, cached (USD per million tokens)")
    unknown = set(entry) - {"input", "output", "cached", "per_call"}
    if unknown:
        raise ValueError(f"{where} has unknown keys {sorted(unknown)}; use input, output, cached, per_call")
    values: dict[str, float | None] = {}
    for key in ("input", "output", "cached", "per_call"):
        raw: object = entry.get(key)
        value = number(raw)
        if raw is not None and value is None:
            raise ValueError(f"{where}: {key} must be a non-negative number, got {str(raw)[:40]!r}")
        values[key] = value
    if values["per_call"] is not None:
        return Rate(per_call=values["per_call"], source="file")
    if values["input"] is None or values["output"] is None:
        raise ValueError(f"{where} needs input and output (USD per million tokens), or per_call")
    cached = values["cached"] if values["cached"] is not None else values["input"]
    return Rate(input=values["input"], output=values["output"], cached=cached, source="file")


def file_cost(rate: Rate, input_tokens: int, output_tokens: int, cached: int) -> float:
    if rate.per_call is not None:
        return rate.per_call
    assert rate.input is not None and rate.output is not None and rate.cached is not None
    return ((input_tokens - cached) * rate.input + cached * rate.cached + output_tokens * rate.output) / MILLION


# --- the shared price book ------------------------------------------------------------------------

PriceSource = Callable[[], Awaitable[PriceTable]]


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0
    return max(0, min(int(value), 10**15))


class Prices:
    """What models cost, from ``file`` (``KEY4U_PRICES``: it wins) and the gateway's list (``source``).

    ``cost`` and ``rate`` never wait: they answer from what is loaded and, when the gateway's list is
    missing or older than ``refresh_every``, ask ``run`` (the background refresher) to fetch it.
    """

    def __init__(
        self,
        source: PriceSource | None = None,
        *,
        group: str = "default",
        file: Mapping[str, Rate] | None = None,
        secrets: Iterable[str] = (),
        refresh_every: float = REFRESH_EVERY,
        retry_every: float = RETRY_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.group = group
        self.file: Mapping[str, Rate] = dict(file or {})
        self.refresh_every = refresh_every
        self.retry_every = retry_every
        self.fetches = 0
        """Fetches of the gateway's list so far."""
        self._secrets = [s for s in secrets if s]
        self._clock = clock
        self._table: PriceTable | None = None
        self._failure: str | None = None
        self._next_at = float("-inf")
        self._asked = False
        self._fetching = False
        self._wake: anyio.Event | None = None
        self._settled: anyio.Event | None = None

    def __repr__(self) -> str:  # never a secret
        models = len(self._table.models) if self._table is not None else None
        return f"Prices(group={self.group!r}, file={len(self.file)} models, gateway={models} models)"

    @classmethod
    def for_settings(cls, settings: Settings, http: Callable[[], httpx.AsyncClient]) -> Prices:
        """The price book for ``settings``: its price file (``ValueError`` if unusable), its group,
        and the gateway's list fetched with the client ``http()`` returns (called only when a fetch runs)."""
        file = load_price_file(settings.prices) if settings.prices is not None else {}
        secrets = settings.secrets()

        async def fetch() -> PriceTable:
            return await fetch_pricing(http(), settings.base_url, secrets=secrets)

        return cls(fetch, group=settings.group, file=file, secrets=secrets)

    # --- answers, at once ---

    @property
    def loaded(self) -> bool:
        """Whether the gateway's price list has been loaded (a price file needs no loading)."""
        return self._table is not None

    @property
    def table(self) -> PriceTable | None:
        return self._table

    def cost(self, model: str, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> Cost | None:
        """What one request to ``model`` with this usage cost, or None when its price is not known
        (``why_unpriced`` says why). ``cached_tokens`` are part of ``input_tokens``, as both APIs
        report them. Call it once per model turn: the gateway bills, and rounds, each request."""
        inputs, outputs = _count(input_tokens), _count(output_tokens)
        cached = min(_count(cached_tokens), inputs)
        if (rate := self.file.get(model)) is not None:
            return Cost(usd=file_cost(rate, inputs, outputs, cached), source="file", per_call=rate.per_call is not None)
        self.want()
        found = self._gateway_price(model)
        if found is None:
            return None
        price, group_ratio = found
        quota = gateway_quota(price, group_ratio, inputs, outputs, cached)
        return Cost(
            usd=quota / QUOTA_PER_USD,
            source="gateway",
            per_call=price.per_call_usd is not None,
            quota=quota,
            group=self.group,
            group_ratio=group_ratio,
        )

    def rate(self, model: str) -> Rate | None:
        """USD per million tokens (or per call) for ``model``, or None when not known."""
        if (rate := self.file.get(model)) is not None:
            return rate
        self.want()
        found = self._gateway_price(model)
        return gateway_rate(*found) if found is not None else None

    def entry(self, model: str) -> ModelPrice | None:
        """The gateway's entry for ``model`` (endpoint types, vendor), whether or not it is priced."""
        return self._table.models.get(model) if self._table is not None else None

    def why_unpriced(self, model: str) -> str | None:
        """Why ``cost`` gives None for ``model``; None when it gives a cost."""
        reason = self._why_unpriced(model)
        return mask(reason, self._secrets) if reason is not None else None

    def _why_unpriced(self, model: str) -> str | None:
        if model in self.file:
            return None
        table = self._table
        if table is None:
            if self._failure is not None:
                return f"the gateway's prices are unavailable ({self._failure})"
            return "the gateway's prices are not loaded yet" if self.source else "no prices are configured"
        price = table.models.get(model)
        if price is None:
            return f"the gateway's price list has no model {model[:_MAX_NAME]!r}"
        if price.problem is not None:
            return f"{model[:_MAX_NAME]}: {price.problem}"
        if self.group not in table.group_ratios:
            known = ", ".join(sorted(table.group_ratios)[:10]) or "none"
            return f"the gateway publishes no ratio for group {self.group!r} (KEY4U_GROUP); it has: {known}"
        return None

    def _gateway_price(self, model: str) -> tuple[ModelPrice, float] | None:
        table = self._table
        if table is None or (price := table.models.get(model)) is None or price.problem is not None:
            return None
        group_ratio = table.group_ratios.get(self.group)
        return None if group_ratio is None else (price, group_ratio)

    # --- the refresher ---

    def want(self) -> None:
        """Ask the refresher to fetch the gateway's list when it is missing or stale; never waits."""
        if self.source is None or self._fetching or self._clock() < self._next_at:
            return
        self._asked = True
        if self._wake is not None:
            self._wake.set()

    async def run(self, warm_after: float | None = None) -> None:
        """The background refresher: sleeps until asked (``want``), fetches, and again; until cancelled.
        Start it once in a task group that lives as long as the ``Prices``. With ``warm_after``, it also
        fetches that many seconds after it starts (once start-up is over), so that the first call's
        turns find the prices loaded."""
        if self.source is None:
            return
        if warm_after is not None and not self._asked:
            with anyio.move_on_after(warm_after):
                self._wake = anyio.Event()
                await self._wake.wait()  # asked earlier: go at once
            self._asked = self._asked or self._table is None
        while True:
            if not self._asked:
                self._wake = anyio.Event()
                await self._wake.wait()
            self._asked = False
            await self.refresh()

    async def ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the gateway's list (asking for it); True once loaded."""
        if self._table is None and self.source is not None:
            settled = self._settled_event()
            self.want()
            if self._asked or self._fetching:
                with anyio.move_on_after(timeout):
                    await settled.wait()
        return self._table is not None

    async def refresh(self) -> bool:
        """Fetch the gateway's list now, once; True when loaded. Never raises (cancellation aside): a
        failed fetch keeps the list loaded before, if any, and says why in ``why_unpriced``."""
        if self.source is None:
            return False
        self._fetching = True
        self.fetches += 1
        wait = self.refresh_every
        try:
            table = await self.source()
        except PricingUnavailable as exc:
            self._failure = mask(exc.reason, self._secrets)[:300]
            wait = self.retry_every if exc.transient else self.refresh_every
            logger.info("no prices from the gateway: %s", self._failure)
            return False
        except Exception as exc:  # a reply that broke the parser must not break the server
            self._failure = f"{type(exc).__name__}"
            logger.warning("reading the gateway's prices failed (%s)", type(exc).__name__)
            return False
        else:
            self._table, self._failure = table, None
            logger.debug("loaded the gateway's prices for %d models", len(table.models))
            return True
        finally:
            self._fetching = False
            self._next_at = self._clock() + wait
            if self._settled is not None:
                self._settled.set()
                self._settled = None

    def _settled_event(self) -> anyio.Event:
        if self._settled is None:
            self._settled = anyio.Event()
        return self._settled


# --- fetching (each import of the HTTP stack happens here, when a fetch runs) -------------------------


def origin_of(base_url: str) -> str:
    """The gateway's site root: the base URL without its trailing ``/v1`` (new-api serves ``/api`` there)."""
    parts = urlsplit(base_url.rstrip("/"))
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


async def get_json(
    http: httpx.AsyncClient,
    url: str,
    *,
    api_key: str | None = None,
    max_bytes: int,
    timeout: float,
    secrets: Iterable[str] = (),
) -> object:
    """GET ``url`` once and return its JSON, read within ``max_bytes`` and ``timeout`` seconds;
    failures raise ``server.errors.UpstreamError`` with every secret (and ``api_key``) masked."""
    from server import errors
    from server.upstream.gateway import Gateway, map_http_errors, read_body

    hidden = [s for s in (api_key, *secrets) if s]
    # The gateway's error boundary, for its reading of error replies: it masks the key before it cuts.
    gateway = Gateway(http, base_url=url, api_key=hidden[0] if hidden else "")
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        with anyio.move_on_after(timeout):
            with map_http_errors():
                async with http.stream("GET", url, headers=headers) as response:
                    if response.status_code >= 400:
                        raise gateway.http_error(response, await read_body(response, 64 * 1024))
                    body = await read_body(response, max_bytes)
            try:
                return json.loads(body)
            except (ValueError, RecursionError) as exc:  # no preview of the body: it may hold anything
                raise errors.MalformedResponseError(f"the reply is not JSON ({type(exc).__name__})") from exc
        raise errors.UpstreamTimeout(f"the reply took longer than {timeout:g} s")
    except errors.UpstreamError as exc:
        exc.message = mask(exc.message, hidden)
        raise


async def fetch_pricing(
    http: httpx.AsyncClient,
    base_url: str,
    *,
    secrets: Iterable[str] = (),
    max_bytes: int = PRICING_MAX_BYTES,
    timeout: float = PRICING_TIMEOUT,
) -> PriceTable:
    """The price list at ``<origin>/api/pricing`` (sent no key), or ``PricingUnavailable``."""
    from server import errors

    url = origin_of(base_url) + "/api/pricing"
    try:
        reply = await get_json(http, url, max_bytes=max_bytes, timeout=timeout, secrets=secrets)
    except errors.UpstreamHTTPError as exc:
        transient = exc.status_code == 429 or exc.status_code >= 500
        raise PricingUnavailable(f"GET /api/pricing: HTTP {exc.status_code}", transient=transient) from exc
    except errors.UpstreamError as exc:
        transient = isinstance(exc, errors.UpstreamTimeout | errors.UpstreamConnectionError)
        raise PricingUnavailable(f"GET /api/pricing: {exc.summary[:200]}", transient=transient) from exc
    return parse_pricing(reply, fetched_at=time.time())


@dataclass(frozen=True)
class Balance:
    """The key's limit and usage in USD, where the gateway exposes them (None where it does not)."""

    limit_usd: float | None = None
    """``hard_limit_usd``: what the key may spend in all (used + remaining, on new-api)."""
    used_usd: float | None = None
    """``total_usage`` / 100 (the gateway reports cents)."""
    unlimited: bool = False
    note: str | None = None
    """Why a figure is missing."""

    @property
    def remaining_usd(self) -> float | None:
        if self.unlimited or self.limit_usd is None or self.used_usd is None:
            return None
        return max(0.0, self.limit_usd - self.used_usd)

    @property
    def known(self) -> bool:
        return self.unlimited or self.limit_usd is not None or self.used_usd is not None

    def summary(self) -> str:
        used = f"used ${self.used_usd:,.2f}" if self.used_usd is not None else None
        if self.unlimited:
            return "unlimited" + (f" ({used})" if used else "")
        if (left := self.remaining_usd) is not None:
            return f"${left:,.2f} left of ${self.limit_usd:,.2f} ({used})"
        if self.limit_usd is not None:
            return f"limit ${self.limit_usd:,.2f}"
        if used:
            return used
        return f"not exposed by this gateway ({self.note})" if self.note else "not exposed by this gateway"


async def fetch_balance(
    http: httpx.AsyncClient, base_url: str, api_key: str, *, timeout: float = BILLING_TIMEOUT
) -> Balance:
    """The key's balance from ``/dashboard/billing/subscription`` and ``/usage`` (OpenAI's old billing
    shape, which new-api serves per key), both asked at once; never raises (cancellation aside)."""
    from server import errors

    base = base_url.rstrip("/")
    replies: dict[str, object] = {}
    problems: list[str] = []

    async def ask(name: str) -> None:
        try:
            replies[name] = await get_json(
                http, f"{base}/dashboard/billing/{name}", api_key=api_key, max_bytes=BILLING_MAX_BYTES, timeout=timeout
            )
        except errors.UpstreamHTTPError as exc:
            problems.append(f"{name}: HTTP {exc.status_code}")
        except errors.UpstreamError as exc:
            problems.append(f"{name}: {mask(exc.summary, [api_key])[:120]}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "subscription")
        tg.start_soon(ask, "usage")
    limit = _billing_figure(replies.get("subscription"), "hard_limit_usd", problems, "subscription")
    cents = _billing_figure(replies.get("usage"), "total_usage", problems, "usage")
    used = cents / 100 if cents is not None else None
    unlimited = limit is not None and limit >= UNLIMITED_USD
    note = "; ".join(sorted(problems)) or None
    return Balance(limit_usd=None if unlimited else limit, used_usd=used, unlimited=unlimited, note=note)


def _billing_figure(reply: object, key: str, problems: list[str], name: str) -> float | None:
    if reply is None:
        return None
    if not is_object(reply):
        problems.append(f"{name}: not an object")
        return None
    if "error" in reply:  # new-api answers its own failures here with HTTP 200
        problems.append(f"{name}: the gateway answered an error")
        return None
    value = number(reply.get(key))
    if value is None:
        problems.append(f"{name}: no usable {key}")
    return value


__all__ = [
    "QUOTA_PER_USD",
    "Balance",
    "Cost",
    "ModelPrice",
    "PriceTable",
    "Prices",
    "PricingUnavailable",
    "Rate",
    "fetch_balance",
    "fetch_pricing",
    "gateway_quota",
    "gateway_rate",
    "get_json",
    "load_price_file",
    "number",
    "origin_of",
    "parse_pricing",
    "usd",
]
