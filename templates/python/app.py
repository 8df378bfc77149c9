"""{{name}}: an fnmill function. An event whose payload is {"name": "Ada"} gives one output to
`out`: {"message": "Hello, Ada!"} (the greeting comes from the `greeting` config key). A payload
without a string `name` is `fatal`: fnmill dead-letters the event."""

from fnmill_sdk import Event, Output, config, fatal, output, parse_json
from wit_world import exports


class Handler(exports.Handler):
    def handle(self, event: Event) -> list[Output]:
        request = parse_json(event.payload)
        name = request.get("name") if isinstance(request, dict) else None
        if not isinstance(name, str):
            raise fatal("payload has no string `name`")
        reply = {"message": greet(config("greeting", "Hello"), name)}
        return [output("out", reply, key=event.key)]


def greet(greeting: str, name: str) -> str:
    """The business logic, kept apart from the bindings so it is easy to test."""
    return f"{greeting}, {name}!"
