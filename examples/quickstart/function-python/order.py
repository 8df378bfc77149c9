"""Order validation and enrichment: pure logic, independent of the host. The same rules,
numbers and messages as the Rust function (examples/quickstart/function/src/order.rs), so both
write the same bytes for the same events."""

import math
import re
from typing import Any, Optional

from fnmill_sdk import parse_json, Err

#: Currencies this shop accepts.
CURRENCIES = ["EUR", "USD", "GBP"]

#: Tax rate used when the `tax_rate` config key is absent.
DEFAULT_TAX_RATE = "0.20"

#: Value of `processed_by` on enriched orders.
PROCESSED_BY = "quickstart-orders"


class ProcessError(Exception):
    """Why an event cannot be processed at all; the message reads like the Rust function's."""

    def __init__(self, kind: str, detail: str) -> None:
        prefix = "malformed order" if kind == "malformed" else "bad config"
        super().__init__(f"{prefix}: {detail}")
        self.kind = kind


def process(payload: bytes, tax_rate: Optional[str]) -> dict:
    """Validates and, if valid, enriches one order payload. Returns ``{"valid", "order_id",
    "total"?, "reasons"?, "body"}`` where ``body`` is the output JSON value."""
    try:
        fields = parse_json(payload)
    except Err as e:
        raise ProcessError("malformed", e.value.value.removeprefix("payload is not valid JSON: ")) from None
    order = check_order(fields)
    reasons = validate(order)
    if reasons:
        fields["reasons"] = reasons
        return {"valid": False, "order_id": order["order_id"], "reasons": reasons, "body": fields}
    rate = parse_tax_rate(tax_rate)
    item_count, subtotal, tax, total = totals(order, rate)
    fields["item_count"] = item_count
    fields["subtotal"] = subtotal
    fields["tax"] = tax
    fields["total"] = total
    fields["processed_by"] = PROCESSED_BY
    return {"valid": True, "order_id": order["order_id"], "total": total, "body": fields}


def check_order(value: Any) -> dict:
    """The fields an order must have, with their types; other fields are allowed and kept."""
    if not isinstance(value, dict):
        raise ProcessError("malformed", "expected an object")
    for field in ("order_id", "customer_id", "currency"):
        if field not in value:
            raise ProcessError("malformed", f"missing field `{field}`")
        if not isinstance(value[field], str):
            raise ProcessError("malformed", f"`{field}` must be a string")
    if "items" not in value:
        raise ProcessError("malformed", "missing field `items`")
    if not isinstance(value["items"], list):
        raise ProcessError("malformed", "`items` must be an array")
    for i, item in enumerate(value["items"]):
        if not isinstance(item, dict):
            raise ProcessError("malformed", f"item {i} must be an object")
        if not isinstance(item.get("sku"), str):
            raise ProcessError("malformed", f"item {i}: `sku` must be a string")
        qty = item.get("qty")
        if not isinstance(qty, int) or isinstance(qty, bool) or not -2**63 <= qty < 2**63:
            raise ProcessError("malformed", f"item {i}: `qty` must be an integer")
        price = item.get("unit_price")
        if not isinstance(price, (int, float)) or isinstance(price, bool):
            raise ProcessError("malformed", f"item {i}: `unit_price` must be a number")
    return value


def validate(order: dict) -> list:
    """Business rules; returns every violated rule, empty if the order is valid."""
    reasons = []
    if order["currency"] not in CURRENCIES:
        reasons.append(f"unknown currency {rust_debug(order['currency'])} (allowed: {', '.join(CURRENCIES)})")
    if not order["items"]:
        reasons.append("order has no items")
    for i, item in enumerate(order["items"]):
        if item["qty"] <= 0:
            reasons.append(f"item {i} ({item['sku']}): qty must be positive, got {item['qty']}")
        if item["unit_price"] < 0:
            reasons.append(
                f"item {i} ({item['sku']}): unit_price must not be negative, got {rust_display(float(item['unit_price']))}")
    return reasons


def totals(order: dict, tax_rate: float) -> tuple:
    """Totals of a valid order at ``tax_rate`` (0.20 = 20 %), each rounded to 2 decimals."""
    item_count = sum(item["qty"] for item in order["items"])
    subtotal = 0.0
    for item in order["items"]:
        subtotal += item["qty"] * float(item["unit_price"])
    subtotal = round2(subtotal)
    tax = round2(subtotal * tax_rate)
    total = round2(subtotal + tax)
    return item_count, subtotal, tax, total


_F64 = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_tax_rate(raw: Optional[str]) -> float:
    """Parses the `tax_rate` config value (default DEFAULT_TAX_RATE), as Rust parses an f64."""
    text = DEFAULT_TAX_RATE if raw is None else raw
    trimmed = text.strip()
    rate = float(trimmed) if _F64.fullmatch(trimmed) else math.nan
    if math.isfinite(rate) and rate >= 0:
        return rate
    raise ProcessError(
        "config", f'tax_rate must be a non-negative decimal number such as "0.20", got {rust_debug(text)}')


def round2(x: float) -> float:
    """Rounds to 2 decimals, half away from zero (as Rust's f64::round; Python's round() rounds
    half to even)."""
    v = x * 100
    a = abs(v)
    f = math.floor(a)
    r = f + 1 if a - f >= 0.5 else f
    return (-r if v < 0 else r) / 100


def rust_display(x: float) -> str:
    """A float as Rust's `{}` prints it: no `.0` on integral values."""
    return str(int(x)) if x.is_integer() else repr(x)


def rust_debug(s: str) -> str:
    """A string as Rust's `{:?}` prints it (quotes, with `"` and `\\` escaped)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
