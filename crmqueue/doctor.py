"""``crmqueue doctor``: checks that a deployment can work, one row per check.

Every check ends ``ok``, ``warn`` or ``FAIL`` with a one-line detail; ``FAIL`` means the
deployment cannot work as configured. No detail ever carries a secret: every secret value
of the settings (API keys, passwords, passwords inside URLs) is masked out of every row.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, SecretStr

from crmqueue.config import QUEUE_NAMES, Settings, find_config_file, load_settings, mask_url
from crmqueue.errors import CrmQueueError
from crmqueue.workers.loading import load_bodies

Status = Literal["ok", "warn", "FAIL"]

MAX_CLOCK_SKEW_SECONDS = 2.0
# A clock before this is a host whose clock was never set (an RTC reset to 1970, say).
EARLIEST_SANE_TIME = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
NOT_VERIFIED = "not verified online yet"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "detail": self.detail}


def run_checks(config_file: str | None) -> list[Check]:
    """All checks in order; a configuration that does not load is the only row."""
    try:
        settings = load_settings(config_file)
    except CrmQueueError as exc:
        return [Check("config", "FAIL", str(exc))]
    checks = [_config(settings, config_file), _bodies(settings)]
    checks += _storage(settings)
    checks.append(_writable_dir("files directory", settings.files.dir, required=True))
    outbox = settings.email.outbox_dir
    checks.append(
        _writable_dir("email outbox directory", outbox, settings.email.provider == "outbox")
    )
    checks.append(_email_provider(settings))
    if settings.sms.provider != "none":
        checks.append(_sms_provider(settings))
    checks.append(_database(settings))
    secrets = sorted(_secrets(settings), key=len, reverse=True)
    return [Check(c.name, c.status, _redact(c.detail, secrets)) for c in checks]


# --------------------------------------------------------------------------- checks


def _config(settings: Settings, config_file: str | None) -> Check:
    path = find_config_file(config_file, os.environ)
    source = str(path) if path else "built-in defaults (no config file)"
    return Check("config", "ok", f"valid; from {source}; storage {mask_url(settings.storage.url)}")


def _bodies(settings: Settings) -> Check:
    from crmqueue.engine.queues import bodies_for

    try:
        load_bodies(settings)
    except CrmQueueError as exc:
        return Check("job bodies", "FAIL", str(exc))
    counts = {name: len(bodies_for(name)) for name in QUEUE_NAMES}
    have = ", ".join(f"{name} {count}" for name, count in counts.items() if count)
    missing = ", ".join(name for name, count in counts.items() if not count)
    parts = [have] if have else []
    if missing:
        parts.append(f"none yet for {missing} (their jobs wait)")
    return Check("job bodies", "ok", "; ".join(parts))


def _storage(settings: Settings) -> list[Check]:
    """Reachability of the queue storage, and the clock (against Redis TIME on Redis)."""
    from crmqueue.engine.queues import configure
    from crmqueue.engine.storage import RedisJobStore, SqliteJobStore

    url = mask_url(settings.storage.url)
    clock = _local_clock()
    try:
        store = configure(settings).queue("email").store
        started = time.monotonic()
        store.ping()
        rtt_ms = (time.monotonic() - started) * 1000
    except Exception as exc:
        message = _one_line(exc)
        if url not in message:
            message = f"{url}: {message}"
        if clock.status == "ok" and not url.startswith("sqlite:"):
            clock = Check("clock", "ok", f"{clock.detail} (skew against the storage not checked)")
        return [Check("queue storage", "FAIL", message), clock]
    if isinstance(store, SqliteJobStore):
        return [_sqlite_storage(store.filename, rtt_ms), clock]
    if isinstance(store, RedisJobStore):
        return _redis_storage(store, url, rtt_ms, clock)
    return [Check("queue storage", "ok", f"{url} answers ({rtt_ms:.1f} ms)"), clock]


def _sqlite_storage(filename: str, rtt_ms: float) -> Check:
    path = Path(filename).resolve()
    # WAL mode writes -wal and -shm files next to the database: the directory must be
    # writable as well as the file.
    for target in (path, path.parent):
        if not os.access(target, os.W_OK):
            return Check("queue storage", "FAIL", f"SQLite {path}: {target} is not writable")
    return Check("queue storage", "ok", f"SQLite {path} readable and writable ({rtt_ms:.1f} ms)")


def _redis_storage(store: Any, url: str, rtt_ms: float, clock: Check) -> list[Check]:
    from redis.utils import HIREDIS_AVAILABLE

    parser = "hiredis parser" if HIREDIS_AVAILABLE else "pure-Python parser (hiredis missing)"
    status: Status = "ok" if HIREDIS_AVAILABLE else "warn"
    version = ""
    with contextlib.suppress(Exception):  # INFO may be forbidden by an ACL
        version = f"Redis {store.conn.info('server')['redis_version']}, "
    storage = Check("queue storage", status, f"{url} answers ({version}{rtt_ms:.1f} ms, {parser})")
    if clock.status == "FAIL":
        return [storage, clock]
    try:
        before = time.time()
        seconds, micros = store.conn.time()
        after = time.time()
    except Exception as exc:
        return [storage, Check("clock", "FAIL", f"cannot read Redis TIME: {_one_line(exc)}")]
    skew = seconds + micros / 1e6 - (before + after) / 2
    detail = f"{skew:+.3f} s against Redis TIME (limit ±{MAX_CLOCK_SKEW_SECONDS:.0f} s)"
    if abs(skew) > MAX_CLOCK_SKEW_SECONDS:
        return [storage, Check("clock", "FAIL", detail + ": run NTP (chrony, systemd-timesyncd)")]
    return [storage, Check("clock", "ok", detail)]


def _local_clock() -> Check:
    now = dt.datetime.now(dt.UTC)
    if now < EARLIEST_SANE_TIME:
        return Check("clock", "FAIL", f"the system clock reads {now:%Y-%m-%d %H:%M} UTC")
    return Check("clock", "ok", f"{now:%Y-%m-%d %H:%M:%S} UTC; this host's clock only")


def _writable_dir(name: str, directory: Path, required: bool) -> Check:
    path = directory.resolve()
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".crmqueue-doctor-"):
            pass
    except OSError as exc:
        return Check(name, "FAIL" if required else "warn", f"{path}: {exc.strerror or exc}")
    return Check(name, "ok", f"{path} writable{'' if existed else ' (created)'}")


def _email_provider(settings: Settings) -> Check:
    email = settings.email
    name = f"email provider {email.provider}"
    if email.provider == "outbox":
        return Check(name, "ok", f"writes each message as an .eml file to {email.outbox_dir}")
    if email.provider == "smtp":
        smtp = email.smtp
        where = f"{smtp.host}:{smtp.port} ({smtp.security})"
        if smtp.username and not smtp.password:
            return Check(
                name,
                "FAIL",
                f"{where}: email.smtp.username is set but email.smtp.password is not"
                " (CRMQUEUE_EMAIL__SMTP__PASSWORD)",
            )
        if smtp.password and not smtp.username:
            return Check(name, "warn", f"{where}: a password without email.smtp.username is unused")
        login = "with login" if smtp.username else "without login"
        return Check(name, "ok", f"{where} {login}; {NOT_VERIFIED}")
    required: dict[str, list[tuple[str, Any, str]]] = {
        "sendgrid": [("email.sendgrid.api_key", email.sendgrid.api_key, "SENDGRID_API_KEY")],
        "ses": [
            ("email.ses.access_key_id", email.ses.access_key_id, "AWS_ACCESS_KEY_ID"),
            ("email.ses.secret_access_key", email.ses.secret_access_key, "AWS_SECRET_ACCESS_KEY"),
        ],
        "resend": [("email.resend.api_key", email.resend.api_key, "RESEND_API_KEY")],
        "mailgun": [
            ("email.mailgun.domain", email.mailgun.domain, "MAILGUN_DOMAIN"),
            ("email.mailgun.api_key", email.mailgun.api_key, "MAILGUN_API_KEY"),
        ],
    }
    missing = [f"{key} ({env})" for key, value, env in required[email.provider] if not value]
    if missing:
        return Check(name, "FAIL", "not set: " + ", ".join(missing))
    extra = {"ses": f"region {email.ses.region}; ", "mailgun": f"domain {email.mailgun.domain}; "}
    return Check(name, "ok", f"{extra.get(email.provider, '')}credentials set; {NOT_VERIFIED}")


def _sms_provider(settings: Settings) -> Check:
    from crmqueue.providers.sms.twilio import credentials_problem

    sms = settings.sms
    name = f"sms provider {sms.provider}"
    problem = credentials_problem(os.environ)
    if problem is not None:
        return Check(name, "FAIL", problem)
    sender = sms.messaging_service_sid or sms.from_number
    return Check(name, "ok", f"sender {sender}; credentials set; {NOT_VERIFIED}")


def _database(settings: Settings) -> Check:
    from crmqueue.engine.storage import sqlite_path

    url = settings.database.url
    if not url.startswith("sqlite:"):
        return _postgresql(url)
    try:
        path = Path(sqlite_path(url)).resolve()
    except ValueError as exc:
        return Check("CRM database", "FAIL", str(exc))
    directory = _writable_dir("CRM database", path.parent, required=True)
    if directory.status != "ok":
        return directory
    if path.exists() and not os.access(path, os.W_OK):
        return Check("CRM database", "FAIL", f"SQLite {path} is not writable")
    state = "exists" if path.exists() else "is created on first use"
    return Check("CRM database", "ok", f"SQLite {path} {state}; its directory is writable")


def _postgresql(url: str) -> Check:
    """Connects (3 s at most), reads the server's version and the CRM schema's."""
    import sqlalchemy as sa

    from crmqueue.crm import schema
    from crmqueue.crm.store import create_engine, current_version

    name, where = "CRM database", mask_url(url)
    try:
        engine = create_engine(url, connect_timeout=3)
    except CrmQueueError as exc:
        return Check(name, "FAIL", str(exc))
    try:
        with engine.connect() as conn:
            server = conn.execute(sa.text("SHOW server_version")).scalar()
            version = current_version(conn)
    except sa.exc.SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc  # the driver's own message
        return Check(name, "FAIL", f"{where}: cannot connect: {_one_line(cause)}")
    finally:
        engine.dispose()
    found = f"PostgreSQL {server} at {where}"
    if version == 0:
        return Check(name, "warn", f"{found}; no CRM schema yet: run crmqueue db init")
    if version < schema.SCHEMA_VERSION:
        return Check(
            name,
            "warn",
            f"{found}; schema version {version} of {schema.SCHEMA_VERSION}: upgraded on first"
            " use, or run crmqueue db init",
        )
    if version > schema.SCHEMA_VERSION:
        return Check(
            name,
            "FAIL",
            f"{found}; schema version {version} is newer than this crmqueue"
            f" ({schema.SCHEMA_VERSION}): upgrade crmqueue",
        )
    return Check(name, "ok", f"{found}; schema version {version}")


# --------------------------------------------------------------------------- secrets


def _secrets(settings: Settings) -> set[str]:
    found = {value for value in _secret_values(settings) if value}
    for url in (settings.storage.url, settings.database.url):
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        if password:
            found.update({password, unquote(password)})
    return found


def _secret_values(model: BaseModel) -> Iterator[str]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            yield value.get_secret_value()
        elif isinstance(value, BaseModel):
            yield from _secret_values(value)


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "********")
    return text


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
