"""The embedded default provider: each message becomes an .eml file under
email.outbox_dir (written atomically), and is appended to the in-memory `outbox` list
so tests in the same process can read what was sent.

Like Resend's Idempotency-Key, the outbox deduplicates: a message whose idempotency key
was delivered before (a job re-run after a crash between the send and the record of its
completion) is not written again. A marker per key, ``.sent/<sha256 of the key>``, names
the file; it is written right after the file, so only a crash between those two steps
can still write a message twice."""

from __future__ import annotations

import hashlib
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
        marker = None
        if email.idempotency_key:
            digest = hashlib.sha256(email.idempotency_key.encode()).hexdigest()
            marker = directory / ".sent" / digest
            if marker.exists():
                return email.message_id
        stem = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"
        final = directory / f"{stem}.eml"
        partial = directory / f".{stem}.eml.tmp"
        with partial.open("wb") as handle:
            handle.write(email.as_bytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, final)
        if marker is not None:
            marker.parent.mkdir(exist_ok=True)
            marker.write_text(final.name, encoding="utf-8")
        with _guard:
            outbox.append(OutboxEntry(email, final))
        return email.message_id


def clear() -> None:
    with _guard:
        outbox.clear()
