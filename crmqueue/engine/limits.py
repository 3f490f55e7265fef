"""Time limits for thread workers (the Dramatiq approach).

A watchdog thread raises TimeLimitExceeded inside a worker thread whose job ran past
its deadline, using CPython's asynchronous exceptions. The exception arrives at the next
Python bytecode the thread runs, so it unwinds `with` blocks and transactions like any
other error; a thread blocked inside a C call (a socket read, a sleep) receives it when
that call returns, which is why every outbound call carries its own timeout.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from crmqueue.errors import TimeLimitExceeded


def _raise_in_thread(ident: int, exc_type: type[BaseException] | None) -> int:
    target = ctypes.py_object(exc_type) if exc_type is not None else None
    return int(ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), target))


@dataclass
class _Deadline:
    at: float
    fired: bool = False


class TimeLimiter:
    """One watchdog per consumer; `limit(seconds)` guards the body run inside it."""

    def __init__(self, interval: float = 0.05) -> None:
        self._interval = interval
        self._deadlines: dict[int, _Deadline] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, name="crmqueue-time-limits", daemon=True
        )
        self._thread.start()

    @contextmanager
    def limit(self, seconds: float) -> Iterator[None]:
        ident = threading.get_ident()
        with self._lock:
            self._deadlines[ident] = _Deadline(time.monotonic() + seconds)
        try:
            yield
        finally:
            with self._lock:
                deadline = self._deadlines.pop(ident)
                if deadline.fired:
                    # The body may have finished just as the watchdog fired: drop the
                    # exception if it is still pending so it cannot hit the caller.
                    _raise_in_thread(ident, None)
            if deadline.fired:
                raise TimeLimitExceeded(f"job ran past its time limit of {seconds:g}s")

    def _watch(self) -> None:
        while True:
            time.sleep(self._interval)
            now = time.monotonic()
            with self._lock:
                for ident, deadline in self._deadlines.items():
                    if not deadline.fired and now >= deadline.at:
                        deadline.fired = True
                        _raise_in_thread(ident, TimeLimitExceeded)
