"""Shared fixtures: a real redis-server of our own, both storages, a configured broker.

Tests never sleep a fixed time waiting for work: they poll a condition with a deadline
(``wait_until``). Without a ``redis-server`` binary the Redis tests are skipped locally
and fail when ``CI=true``: CI must never pass without them.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent

# Files whose tests measure a real process's timing (signals, kills, time limits, start-up)
# or build the executable: scripts/test.sh runs them on their own after the rest has run
# in parallel (pytest -m serial / -m "not serial").
SERIAL_FILES = frozenset(
    {
        "test_reliability.py",
        "test_executable.py",
        "test_cli.py",
        "test_import_crash.py",
        "test_huey_run.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SERIAL_FILES:
            item.add_marker(pytest.mark.serial)


if str(ROOT) not in sys.path:
    # Fixture job bodies are named tests.fixture_jobs.<func>: the repository root must be
    # importable whatever the import mode and working directory.
    sys.path.insert(0, str(ROOT))

QUEUES = ("email", "import-export", "report", "webhook", "notification")


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str | Callable[[], str] = "",
) -> Any:
    """Poll `predicate` until it returns something truthy (which is returned); fail the
    test after `timeout` seconds, naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            name = getattr(predicate, "__name__", repr(predicate))
            pytest.fail(f"timed out after {timeout}s waiting for {text or name}")
        time.sleep(interval)


# --------------------------------------------------------------------------- Redis


def find_redis_server() -> str | None:
    """$REDIS_SERVER if set, else redis-server on PATH, else /usr/bin/redis-server."""
    explicit = os.environ.get("REDIS_SERVER")
    candidates = [explicit] if explicit else [shutil.which("redis-server"), "/usr/bin/redis-server"]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_redis_server() -> str:
    """The redis-server binary; skip locally without one, fail in CI."""
    binary = find_redis_server()
    if binary is None:
        where = os.environ.get("REDIS_SERVER") or "PATH and /usr/bin"
        reason = f"redis-server not found in {where} (install it, or set REDIS_SERVER)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}: CI must run the Redis tests", pytrace=False)
        pytest.skip(reason)
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A redis-server process of our own on a free loopback port.

    ``stop()`` and ``start()`` can be called repeatedly (outage tests); the port and the
    data directory stay the same, so with ``appendonly=True`` the data survives a restart.
    """

    def __init__(self, binary: str, directory: Path, appendonly: bool = False) -> None:
        self.binary = binary
        self.directory = directory
        self.appendonly = appendonly
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, db=db, socket_connect_timeout=1, socket_timeout=5
        )

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        log = (self.directory / "redis.log").open("ab")
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no",
            "--dir", str(self.directory),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        probe = redis.Redis(
            host="127.0.0.1", port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5
        )
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server on port {self.port} exited with {self.process.returncode}:"
                        f" {self._log_tail()}"
                    )
                try:
                    if probe.ping():
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() >= deadline:
                    self.kill()
                    raise RuntimeError(
                        f"redis-server on port {self.port} did not answer PING within {timeout}s:"
                        f" {self._log_tail()}"
                    )
                time.sleep(0.01)
        finally:
            probe.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM): with appendonly the data is on disk afterwards."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self.process = None

    def kill(self) -> None:
        """Crash it (SIGKILL): no shutdown work at all."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _log_tail(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-1000:] if path.exists() else "(no log)"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session (appendonly no). Tests that stop it must start it
    again; prefer ``redis_server_aof`` for outage tests."""
    server = RedisServer(require_redis_server(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """redis://127.0.0.1:<port>/0 of the session's server."""
    return redis_server.url


@pytest.fixture
def redis_server_aof(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with appendonly yes, for tests that stop and restart it."""
    server = RedisServer(require_redis_server(), tmp_path / "redis-aof", appendonly=True)
    server.start()
    yield server
    server.kill()


# Redis tests rotate through the server's 16 databases (each flushed before use), so that
# a stopped consumer's last blocking pop from the previous test cannot touch this one.
_redis_dbs = itertools.cycle(range(16))


@pytest.fixture(params=["sqlite", "redis"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both storages: a fresh SQLite file, and an empty database on our redis-server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/queues.db"
    server: RedisServer = request.getfixturevalue("redis_server")
    db = next(_redis_dbs)
    client = server.client(db)
    try:
        client.flushdb()
    finally:
        client.close()
    return server.url_for(db)


# --------------------------------------------------------------------------- broker

FAST_QUEUE_SETTINGS = {"backoff_seconds": 0.01, "backoff_max_seconds": 0.05}


def engine_settings(
    storage_url: str, tmp_path: Path, overrides: dict[str, Any] | None = None
) -> Any:
    """Settings for a test: built-in defaults plus small backoffs and short heartbeats,
    never the developer's environment or config file."""
    from crmqueue.config import load_settings

    base: dict[str, Any] = {
        "storage.url": storage_url,
        "storage.connect_timeout_seconds": 2.0,
        "database.url": f"sqlite:///{tmp_path}/crm.db",
        "files.dir": str(tmp_path / "files"),
        "email.outbox_dir": str(tmp_path / "outbox"),
        "runner.heartbeat_seconds": 0.5,
        "runner.shutdown_grace_seconds": 2.0,
    }
    for queue in QUEUES:
        for key, value in FAST_QUEUE_SETTINGS.items():
            base[f"queues.{queue}.{key}"] = value
    base.update(overrides or {})
    return load_settings(config_file=None, overrides=base, environ={})


@pytest.fixture
def make_broker(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Any]]:
    """make_broker({"queues.email.attempts": 2, ...}) configures the process-wide broker
    on this test's storage and returns it. The previous broker is restored afterwards."""
    import crmqueue.engine
    from crmqueue.engine import queues as engine_queues
    from tests import fixture_jobs  # registers the bodies before any Queue is built

    monkeypatch.chdir(tmp_path)  # no ./crmqueue.toml of the developer's can leak in
    monkeypatch.setattr(engine_queues, "_broker", None)
    fixture_jobs.reset()

    def make(overrides: dict[str, Any] | None = None) -> Any:
        return crmqueue.engine.configure(engine_settings(storage_url, tmp_path, overrides))

    yield make
    fixture_jobs.release_all()


@pytest.fixture
def broker(make_broker: Callable[..., Any]) -> Any:
    """The process-wide broker on this test's storage, with the default test settings."""
    return make_broker()


@pytest.fixture
def start_consumer() -> Iterator[Callable[..., Any]]:
    """start_consumer(broker, ["email"], workers={"email": 2}) starts a Consumer; every
    consumer started this way is stopped at the end of the test."""
    from crmqueue.engine import Consumer
    from tests import fixture_jobs

    started: list[Any] = []

    def start(broker: Any, queues: list[str] | tuple[str, ...] = ("email",), **kwargs: Any) -> Any:
        consumer = Consumer(broker, list(queues), **kwargs)
        consumer.start()
        started.append(consumer)
        return consumer

    yield start
    fixture_jobs.release_all()
    for consumer in started:
        consumer.stop(5.0)
