"""Orders enrichment in Python, the same contract as examples/orders-enrich/function: an order
{"order_id", "customer_id", ...}; an event id seen before (Redis bucket `dedup`, first attempt
only) → no outputs; otherwise looks up the customer in data source `orders_db` and outputs the
order with a `customer` object to `enriched`, or to `unknown_customer` if there is no such
customer; malformed order or SQL error → `fatal`; database or Redis unavailable → `retryable`
(the SDK's SqlError and KvError carry that class when they escape `handle`)."""

from typing import Any

from fnmill_sdk import Err, Event, Output, fatal, kv, log, output, parse_json, sql
from wit_world import exports

#: The customer fields the lookup returns, in column order.
CUSTOMER_QUERY = "select name, email, tier from customers where id = $1"


def plan(payload: bytes) -> tuple[int, dict]:
    """Parses an order and says which customer to look up."""
    try:
        order: Any = parse_json(payload)
    except Err as e:
        raise fatal("order is not JSON: " + e.value.value.removeprefix("payload is not valid JSON: ")) from None
    if not isinstance(order, dict):
        raise fatal("order is not a JSON object")
    customer_id = order.get("customer_id")
    if not isinstance(customer_id, int) or isinstance(customer_id, bool):
        raise fatal("order has no integer `customer_id`")
    return customer_id, order


class Handler(exports.Handler):
    def handle(self, event: Event) -> list[Output]:
        customer_id, order = plan(event.payload)
        dedup = kv.open("dedup")
        # Seen before (a redelivery after a crash or a producer retry)? A retry of this very
        # event (attempt > 1) is not a duplicate: the earlier attempt failed.
        if event.attempt == 1 and dedup.exists(event.id):
            log.info(f"duplicate event {event.id}; skipped")
            return []
        rows = sql.query("orders_db", CUSTOMER_QUERY, [customer_id])
        if rows:
            c = rows[0]
            order["customer"] = {"name": c["name"], "email": c["email"], "tier": c["tier"]}
            destination, body = "enriched", order
        else:
            destination, body = "unknown_customer", event.payload
        # Marked only once the work succeeded, so a failed attempt is never skipped.
        dedup.set(event.id, "1")
        return [output(destination, body, key=event.key, headers={"content-type": "application/json"})]
