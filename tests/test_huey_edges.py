"""Edge cases of Huey's API on crmqueue's queues found by attacking it: arguments that
look like the serializer's own tags."""

from __future__ import annotations

from typing import Any

import pytest
from huey.registry import Message

from crmqueue.engine.huey_api import HueyMessages

LOOKALIKES = [
    {"~skipped": 1},
    {"~exc": ["os.system", "text", "repr"]},
    {"~err": {"error": "x"}},
    {"~exc": 5},
    {"~lit": "already escaped?"},
]


@pytest.mark.parametrize("arg", LOOKALIKES)
def test_dict_arguments_that_look_like_tags_arrive_as_given(arg: Any) -> None:
    """A task called with a plain dict whose only key is one of the serializer's tags
    (at the top level or inside a list) gets that dict, not a SKIPPED, an Error, a
    made-up exception or a crash on dequeue."""
    serializer = HueyMessages()
    for args in ((1, arg), ([arg, 2],)):
        message = Message(id="ab12", name="m.f", args=args, kwargs={"tenant_id": "t1"})
        back = serializer.deserialize(serializer.serialize(message))
        assert back.args == args
        assert back.kwargs == {"tenant_id": "t1"}
