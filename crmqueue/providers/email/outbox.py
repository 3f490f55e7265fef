"""The embedded default provider: each message becomes an .eml file under
email.outbox_dir (written atomically), and is appended to the in-memory `outbox` list
so tests in the same process can read what was sent."""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from crmqueue.providers.email.base import EmailProvider
from crmqueue.providers.email.message import OutgoingEmail


@dataclass(frozen=True)
class OutboxEntry:
    email: OutgoingEmail
    path: Path


outbox: list[OutboxEntry] = []
_guard = threading.Lock()


class OutboxProvider(EmailProvider):
    name = "outbox"

    def deliver(self, email: OutgoingEmail) -> str:
        directory = Path(self.settings.outbox_dir)
        directory.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"
        final = directory / f"{stem}.eml"
        partial = directory / f".{stem}.eml.tmp"
        with partial.open("wb") as handle:
            handle.write(email.as_bytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, final)
        with _guard:
            outbox.append(OutboxEntry(email, final))
        return email.message_id


def clear() -> None:
    with _guard:
        outbox.clear()
