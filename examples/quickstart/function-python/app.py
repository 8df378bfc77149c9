"""The quickstart function in Python: validates an order (JSON); malformed → `fatal`, invalid →
`invalid` with `reasons`, valid → `valid` enriched with `item_count`, `subtotal`, `tax`, `total`
(config `tax_rate`, default 0.20). Same contract as examples/quickstart/function."""

from fnmill_sdk import Event, Header, Output, config, fatal, log, output
from order import ProcessError, process
from wit_world import exports


class Handler(exports.Handler):
    def handle(self, event: Event) -> list[Output]:
        try:
            outcome = process(event.payload, config("tax_rate"))
        except ProcessError as e:
            log.debug(f"event {event.id}: {e}")
            # Neither a malformed order nor a bad `tax_rate` gets better by retrying.
            raise fatal(str(e)) from None
        if outcome["valid"]:
            log.debug(f"event {event.id}: order {outcome['order_id']} valid, total {outcome['total']:.2f}")
        else:
            log.debug(f"event {event.id}: order {outcome['order_id']} invalid: {'; '.join(outcome['reasons'])}")
        # Keep the event's headers (e.g. `traceparent`), but the body is now our JSON.
        headers = [h for h in event.headers if h.name.lower() != "content-type"]
        headers.append(Header("content-type", b"application/json"))
        destination = "valid" if outcome["valid"] else "invalid"
        return [output(destination, outcome["body"], key=event.key, headers=headers)]
