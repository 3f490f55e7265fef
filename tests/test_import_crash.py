"""Issue 5: kill the consumer in the middle of a 20,000-row import; after a restart the
import completes with exactly 20,000 rows.

The consumer is a real ``crmqueue worker import-export`` subprocess in a session of its
own, killed with SIGKILL to its whole process group (no shutdown work at all). Its job
stays ``active`` under a lease that nobody renews; a new consumer becomes the leader once
the dead one's leader lock expires, its reaper returns the job to ``waiting`` when the
lease expires, and the retried import skips the batches committed before the kill (each
batch commits its rows and its checkpoint in one transaction).

Both queue storages (SQLite, Redis) and both CRM databases (SQLite, PostgreSQL). Waiting is
always a condition polled with a deadline.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import crm_db
import pytest
import sqlalchemy as sa
from conftest import ROOT, wait_until

from crmqueue import tasks
from crmqueue.crm import schema
from crmqueue.crm.store import create_engine

CRMQUEUE = str(Path(sys.executable).parent / "crmqueue")
QUEUE = "import-export"
ROWS = 20_000
BATCH = 100
LEASE = 2.0  # seconds: the killed consumer's job comes back this long after its last renewal
HEARTBEAT = 0.3  # the killed consumer's leader lock expires after 3 heartbeats
KILL_AFTER_ROWS = ROWS // 10  # kill once at least 10 % are committed
TENANT = "t1"

# the CRM database fixtures: a fresh SQLite file, and a fresh PostgreSQL database
crm_url = crm_db.crm_url
pg_url = crm_db.pg_url


def subprocess_env() -> dict[str, str]:
    """The environment without the developer's crmqueue settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRMQUEUE_", "REDIS_"))}
    env.pop("EMAIL_PROVIDER", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def write_config(path: Path, storage_url: str, crm_url: str, files_dir: Path) -> Path:
    sections: dict[str, dict[str, Any]] = {
        "storage": {"url": storage_url, "connect_timeout_seconds": 2.0},
        "database": {"url": crm_url},
        "files": {"dir": str(files_dir)},
        "email": {"outbox_dir": str(path.parent / "outbox")},
        "runner": {"heartbeat_seconds": HEARTBEAT, "shutdown_grace_seconds": 2.0},
        f"queues.{QUEUE}": {
            "lease_seconds": LEASE,
            "backoff_seconds": 0.01,
            "backoff_max_seconds": 0.05,
        },
    }
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class Worker:
    """``crmqueue worker import-export`` in a new session (its own process group), its
    output in a log file of its own."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [CRMQUEUE, "worker", QUEUE, "--workers", "1", "--config", str(config)],
                cwd=config.parent,
                env=subprocess_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill_group(self) -> None:
        """SIGKILL to the whole process group: the consumer and anything it started."""
        if self.alive:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout)

    def tail(self, chars: int = 3000) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return f"\n--- log of consumer pid {self.popen.pid}:\n{text[-chars:]}"


@pytest.fixture
def spawn(tmp_path: Path, crm_url: str) -> Iterator[Callable[[Path], Worker]]:
    """spawn(config) starts a consumer; any still running at the end is killed (before the
    CRM database fixture drops a PostgreSQL database)."""
    started: list[Worker] = []
    numbers = itertools.count(1)

    def start(config: Path) -> Worker:
        worker = Worker(config, tmp_path / f"consumer-{next(numbers)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill_group()


def write_contacts_csv(path: Path, rows: int) -> set[str]:
    emails = set()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "first_name", "last_name", "city"])
        for n in range(rows):
            email = f"person{n:05d}@example.com"
            emails.add(email)
            writer.writerow([email, f"First{n}", f"Last{n}", ("Oslo", "Lyon", "Graz")[n % 3]])
    return emails


def crm_state(engine: Any) -> tuple[int, int | None]:
    """(contact rows of the tenant, last committed batch of the import or None)."""
    c, cp = schema.contacts.c, schema.import_checkpoints.c
    with engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count()).select_from(schema.contacts).where(c.tenant_id == TENANT)
        ).scalar_one()
        last = conn.execute(sa.select(cp.last_batch).where(cp.tenant_id == TENANT)).scalar()
    return count, last


def test_sigkill_mid_import_then_restart_completes_with_exactly_all_rows(
    make_broker: Callable[..., Any],
    storage_url: str,
    crm_url: str,
    tmp_path: Path,
    spawn: Callable[[Path], Worker],
) -> None:
    files_dir = tmp_path / "files"
    broker = make_broker(
        {
            "database.url": crm_url,
            "files.dir": str(files_dir),
            f"queues.{QUEUE}.lease_seconds": LEASE,
            "runner.heartbeat_seconds": HEARTBEAT,
        }
    )
    store = broker.queue(QUEUE).store
    expected = write_contacts_csv(files_dir / "imports" / "contacts-20k.csv", ROWS)
    config = write_config(tmp_path / "crmqueue.toml", storage_url, crm_url, files_dir)

    init = subprocess.run(
        [CRMQUEUE, "db", "init", "--config", str(config)],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    assert "schema version" in init.stdout

    engine = create_engine(crm_url)
    try:
        first = spawn(config)
        job = tasks.import_records(
            tenant_id=TENANT, user_id="u1", file_url="imports/contacts-20k.csv",
            file_type="csv", entity_type="contacts", batch_size=BATCH,
        )  # fmt: skip

        def enough_committed() -> bool:
            if not first.alive:
                pytest.fail(f"consumer exited with {first.popen.returncode}{first.tail()}")
            return crm_state(engine)[0] >= KILL_AFTER_ROWS

        wait_until(
            enough_committed,
            120,
            interval=0.005,
            message=lambda: f"{KILL_AFTER_ROWS} rows committed{first.tail()}",
        )
        first.kill_group()
        killed = time.monotonic()

        count_at_kill, last_batch = crm_state(engine)
        assert 0 < count_at_kill < ROWS, "the kill must land in the middle of the import"
        # every batch commits its rows and its checkpoint together, nothing in between
        assert last_batch is not None
        assert count_at_kill == (last_batch + 1) * BATCH
        info = job.info()
        assert info.state == "active", info  # still leased to the dead consumer
        assert 0 < info.progress < 100

        second = spawn(config)
        done = job.wait(180)
        assert done.state == "completed", f"{done.errors}{second.tail()}"
        print(
            f"\nimport crash [{storage_url.split(':')[0]} queues, {crm_url.split(':')[0]} CRM]:"
            f" killed at {count_at_kill} rows (batch {last_batch}),"
            f" completed {time.monotonic() - killed:.1f}s after the kill"
        )
        assert second.alive, second.tail()

        result = done.result
        assert result["counts"] == {"new": ROWS, "updated": 0, "skipped": 0, "invalid": 0}
        assert result["rows"] == ROWS
        assert result["resumed_after_batch"] == last_batch
        assert result["errors"] == [] and result["error_file"] is None
        assert done.progress == 100
        assert (done.attempts, done.errors) == (1, [])  # a stall is not a failed attempt
        record = store.get_job(job.id)
        assert record is not None and record["stalls"] == 1

        c = schema.contacts.c
        with engine.connect() as conn:
            emails = list(conn.execute(sa.select(c.email).where(c.tenant_id == TENANT)).scalars())
            distinct = conn.execute(
                sa.select(sa.func.count(sa.distinct(sa.func.lower(c.email))))
            ).scalar_one()
            total = conn.execute(sa.select(sa.func.count()).select_from(schema.contacts))
            total_rows = total.scalar_one()
        assert len(emails) == ROWS
        assert distinct == ROWS
        assert total_rows == ROWS
        assert set(emails) == expected
        assert crm_state(engine) == (ROWS, ROWS // BATCH - 1)
        assert second.terminate() == 0, second.tail()
    finally:
        engine.dispose()
