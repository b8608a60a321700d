"""The stand-in's prices and balance, in new-api's shapes: ``GET /api/pricing`` (no key) and the
key's ``GET /v1/dashboard/billing/subscription`` and ``/usage``. Deterministic: the same figures on
every run, so tests and the demo can check them by hand.

The figures follow new-api's conventions: a ``model_ratio`` of 1 is $2 per million input tokens,
``completion_ratio`` multiplies it for output, ``cache_ratio`` for cached input, and a per-call model
(``quota_type`` 1) costs ``model_price`` USD per request; every price is then multiplied by the
key's group ratio. ``hard_limit_usd`` is what the key may spend in all (used + remaining) and
``total_usage`` is in cents.
"""

from __future__ import annotations

from typing import Any

from server.standin.common import Faults

#: (model_ratio, completion_ratio, cache_ratio or None, vendor id): $ per 1M input = model_ratio x 2.
TOKEN_PRICED: dict[str, tuple[float, float, float | None, int]] = {
    "gpt-4.1": (1.0, 4.0, 0.25, 1),  # $2 in, $8 out, $0.50 cached
    "gpt-4.1-mini": (0.2, 4.0, 0.25, 1),  # $0.40 in, $1.60 out
    "gpt-5": (0.625, 8.0, 0.1, 1),  # $1.25 in, $10 out, $0.125 cached
    "o4-mini": (0.55, 4.0, 0.25, 1),  # $1.10 in, $4.40 out
    "claude-sonnet-4-5": (1.5, 5.0, 0.1, 2),  # $3 in, $15 out
    "gemini-2.5-pro": (0.625, 8.0, None, 3),  # $1.25 in, $10 out; no cache ratio published
    "deepseek-chat": (0.135, 4.0, None, 4),  # $0.27 in, $1.08 out
}
#: Per-call models: USD per request.
CALL_PRICED: dict[str, float] = {"dall-e-3": 0.04}
#: Listed by /v1/models but not priced (the gateway's list need not cover every model).
UNPRICED = ("gpt-5-mini",)
VENDORS = [
    {"id": 1, "name": "OpenAI"},
    {"id": 2, "name": "Anthropic"},
    {"id": 3, "name": "Google"},
    {"id": 4, "name": "DeepSeek"},
]
GROUP_RATIO = {"default": 1.0, "vip": 0.8}

#: The key's balance: what it has left and what it used, in USD.
REMAINING_USD = 87.5
USED_USD = 12.5


def _endpoint_types(model: str, chat_only: bool) -> list[str]:
    if model in CALL_PRICED:
        return ["image-generation"]
    native = ["anthropic"] if model.startswith("claude") else ["gemini"] if model.startswith("gemini") else []
    return ["openai", *native] if chat_only else ["openai", "openai-response", *native]


def pricing(faults: Faults, chat_only: Any) -> dict[str, Any]:
    """The ``/api/pricing`` reply; ``chat_only(model, faults)`` tells which models lack Responses."""
    data: list[dict[str, Any]] = []
    for model, (ratio, completion, cache, vendor) in TOKEN_PRICED.items():
        entry: dict[str, Any] = {
            "model_name": model,
            "vendor_id": vendor,
            "quota_type": 0,
            "model_ratio": ratio,
            "model_price": 0,
            "owner_by": "",
            "completion_ratio": completion,
            "enable_groups": ["default", "vip"],
            "supported_endpoint_types": _endpoint_types(model, bool(chat_only(model, faults))),
            "wallet_available": True,
            "subscription_available": True,
        }
        if cache is not None:
            entry["cache_ratio"] = cache
        data.append(entry)
    for model, price in CALL_PRICED.items():
        data.append(
            {
                "model_name": model,
                "vendor_id": 1,
                "quota_type": 1,
                "model_ratio": 0,
                "model_price": price,
                "owner_by": "",
                "completion_ratio": 0,
                "enable_groups": ["default"],
                "supported_endpoint_types": _endpoint_types(model, False),
                "wallet_available": True,
                "subscription_available": True,
            }
        )
    data[0]["pricing_version"] = "offline-stand-in"
    return {
        "success": True,
        "data": data,
        "vendors": VENDORS,
        "group_ratio": GROUP_RATIO,
        "usable_group": {"default": "default group", "vip": "VIP"},
        "supported_endpoint": {
            "openai": {"path": "/v1/chat/completions", "method": "POST"},
            "openai-response": {"path": "/v1/responses", "method": "POST"},
            "anthropic": {"path": "/v1/messages", "method": "POST"},
            "gemini": {"path": "/v1beta/models/{model}:generateContent", "method": "POST"},
            "image-generation": {"path": "/v1/images/generations", "method": "POST"},
        },
        "auto_groups": [],
        "pricing_version": "offline-stand-in",
    }


def subscription() -> dict[str, Any]:
    total = REMAINING_USD + USED_USD
    return {
        "object": "billing_subscription",
        "has_payment_method": True,
        "soft_limit_usd": total,
        "hard_limit_usd": total,
        "system_hard_limit_usd": total,
        "access_until": 0,
    }


def usage() -> dict[str, Any]:
    return {"object": "list", "total_usage": USED_USD * 100}
