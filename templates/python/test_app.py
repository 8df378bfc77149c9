import json

import pytest

from app import Handler
from fnmill_sdk import Err, Event, FakeHost


def event(payload: object) -> Event:
    return Event(id="e1", source="test", key=b"k", payload=json.dumps(payload).encode(),
                 headers=[], timestamp_ms=None, attempt=1)


def test_greets_with_the_configured_greeting() -> None:
    with FakeHost(config={"greeting": "Hi"}):
        outputs = Handler().handle(event({"name": "Ada"}))
    assert len(outputs) == 1
    assert outputs[0].destination == "out"
    assert outputs[0].payload == b'{"message":"Hi, Ada!"}'


def test_a_payload_without_a_name_is_fatal() -> None:
    with FakeHost(), pytest.raises(Err) as failure:
        Handler().handle(event({"nom": "Ada"}))
    assert type(failure.value.value).__name__ == "Error_Fatal"
