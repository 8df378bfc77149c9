"""One output to `out` with the event's key, payload and headers unchanged: the benchmark
baseline (no SDK, no host calls)."""

from wit_world import exports
from wit_world.imports.types import Event, Output


class Handler(exports.Handler):
    def handle(self, event: Event) -> list[Output]:
        return [Output(destination="out", key=event.key, payload=event.payload, headers=event.headers)]
