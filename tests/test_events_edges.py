"""Job events: cursors that are not ones this storage wrote are refused with an error
naming the cursor (not a storage traceback, not a silent stream), on SQLite and Redis."""

from __future__ import annotations

import pytest

from crmqueue import events
from crmqueue.engine import Broker
from crmqueue.engine.queues import Enqueue
from crmqueue.errors import CrmQueueError

EMAIL = {"to": "ann@example.com", "template": "welcome", "context": {"firstName": "Ann"}}


@pytest.mark.parametrize(
    "cursor",
    [
        "99999999999999999999999",  # beyond a 64-bit integer (SQLite OverflowError)
        "18446744073709551616-0",  # beyond a Redis stream id's 64-bit milliseconds
        "1-18446744073709551616",
        "\uff15",  # a fullwidth 5: int() reads it, no storage does
        "\u0665-0",  # an Arabic-Indic 5
        "1_0",  # int() reads 10
        " 3",
        "3-",
        "+3",
        "3\x00",
        "\udc80",
    ],
)
def test_a_malformed_cursor_is_refused_naming_it(broker: Broker, cursor: str) -> None:
    with pytest.raises(CrmQueueError, match="not an event cursor"):
        events.subscribe(cursor=cursor, idle_timeout=0.1)


def test_a_cursor_after_the_newest_event_is_refused(broker: Broker) -> None:
    broker.queue("email").enqueue_many(
        [Enqueue("crmqueue.workers.email.send", {**EMAIL, "tenant_id": "t1"})]
    )
    newest = events.latest_cursor()
    first, _, second = newest.partition("-")
    future = str(int(first) + 10**6) + (f"-{second}" if second else "")
    with pytest.raises(CrmQueueError, match="after the newest event"):
        events.subscribe(cursor=future, idle_timeout=0.1)
    # the newest itself and "0" are fine
    assert list(events.subscribe(cursor=newest, idle_timeout=0.1)) == []
    assert len(list(events.subscribe(cursor="0", idle_timeout=0.1))) == 1
