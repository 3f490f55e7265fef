"""Typed settings: built-in defaults < TOML file < environment < command-line flags.

Every section rejects unknown keys, and every error names its key path
(``queues.email.workers: Input should be greater than 0``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from crmqueue.errors import ConfigError
from crmqueue.fields import ConfiguredMailbox
from crmqueue.zones import time_zone_problem

QUEUE_NAMES = ("email", "import-export", "report", "webhook", "notification")
ENV_PREFIX = "CRMQUEUE_"
CONFIG_ENV = "CRMQUEUE_CONFIG"
DEFAULT_CONFIG_FILE = "crmqueue.toml"

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True)


class StorageSettings(Section):
    url: str = "sqlite:///crmqueue-data/queues.db"
    connect_timeout_seconds: PositiveFloat = 5.0

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "redis://", "rediss://", "unix://")):
            raise ValueError("must start with sqlite://, redis://, rediss:// or unix://")
        return value


class DatabaseSettings(Section):
    url: str = "sqlite:///crmqueue-data/crm.db"


class FilesSettings(Section):
    dir: Path = Path("crmqueue-data/files")
    # Where the CRM serves the files directory; export-ready and report-ready emails (and
    # their in-app notifications) link to download_base_url + the file's path. Empty: the
    # email gives the path on disk, which no mail client opens: set it in production.
    download_base_url: str = ""
    # Largest PDF export in cells (rows x fields): xhtml2pdf takes about 1 ms of CPU a
    # cell here (13-18 ms a row of all 16 contact fields), so 80,000 cells stay inside
    # the import-export job timeout (crmqueue.formats.pdf has the figures).
    max_pdf_cells: PositiveInt = 80_000
    # Longest whole download of an http(s) import source, in seconds, however slowly the
    # server sends (each read's own timeout restarts with every byte); also kept inside the
    # import-export queue's timeout_seconds, with a margin for the import itself.
    download_timeout_seconds: PositiveFloat = 120.0


# The original system's contact lifecycle; `crm.contact_statuses` replaces it.
DEFAULT_CONTACT_STATUSES = ("lead", "prospect", "customer", "churned")
# The width of contacts.status in the CRM schema.
MAX_STATUS_CHARS = 20


class CrmSettings(Section):
    # A contact's lifecycle states. Input matches case-insensitively and is stored in the
    # spelling given here, so renaming a status here does not rename stored contacts.
    contact_statuses: list[str] = Field(default_factory=lambda: list(DEFAULT_CONTACT_STATUSES))

    @field_validator("contact_statuses", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("contact_statuses")
    @classmethod
    def _valid_statuses(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must list at least one status")
        seen: set[str] = set()
        for status in value:
            if status != status.strip() or not status or len(status) > MAX_STATUS_CHARS:
                raise ValueError(
                    f"{status!r}: a status is 1-{MAX_STATUS_CHARS} characters"
                    " without surrounding spaces"
                )
            if status.casefold() in seen:
                raise ValueError(f"{status!r} is listed twice (statuses ignore case)")
            seen.add(status.casefold())
        return value


class QueueSettings(Section):
    workers: PositiveInt
    attempts: PositiveInt
    backoff_seconds: Annotated[float, Field(ge=0)] = 2.0
    backoff_max_seconds: Annotated[float, Field(ge=0)] = 3600.0
    timeout_seconds: PositiveFloat
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 50
    keep_completed_seconds: Annotated[int, Field(ge=0)] = 3600
    keep_failed_seconds: Annotated[int, Field(ge=0)] = 86400
    lease_seconds: PositiveFloat = 30.0
    max_stalls: Annotated[int, Field(ge=0)] = 3
    # Huey tasks may pickle what JSON cannot carry; off: unpickling runs code (see README).
    huey_pickle: bool = False
    # Jobs a consumer claims ahead of its free workers (held leased, renewed, handed back
    # at shutdown); 0 for long jobs, whose queue other consumers should share.
    prefetch: Annotated[int, Field(ge=0, le=1000)] = 0


def _queue(workers: int, attempts: int, timeout: float, priority: int = 50, **more: Any) -> Any:
    return Field(
        default_factory=lambda: QueueSettings(
            workers=workers, attempts=attempts, timeout_seconds=timeout, priority=priority, **more
        )
    )


class QueuesSettings(Section):
    email: QueueSettings = _queue(10, 5, 30, priority=100, prefetch=10)
    import_export: QueueSettings = Field(
        alias="import-export",
        default_factory=lambda: QueueSettings(workers=3, attempts=2, timeout_seconds=300),
    )
    report: QueueSettings = _queue(2, 3, 600)
    # A receiver may be down for hours: its 9 retries back off from 1 minute to at most 6
    # hours apart (full jitter: about 4 hours in all on average, 8.5 at most).
    webhook: QueueSettings = _queue(
        5, 10, 30, backoff_seconds=60.0, backoff_max_seconds=21600.0, prefetch=5
    )
    notification: QueueSettings = _queue(20, 3, 30, priority=150, prefetch=20)

    def get(self, queue: str) -> QueueSettings:
        if queue not in QUEUE_NAMES:
            raise ConfigError(f"unknown queue {queue!r}; queues are {', '.join(QUEUE_NAMES)}")
        settings: QueueSettings = getattr(self, queue.replace("-", "_"))
        return settings


class SendgridSettings(Section):
    api_key: SecretStr | None = None
    base_url: str = "https://api.sendgrid.com"
    rate_per_second: NonNegativeFloat = 0.0


class SesSettings(Section):
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    base_url: str | None = None
    rate_per_second: NonNegativeFloat = 0.0


class ResendSettings(Section):
    api_key: SecretStr | None = None
    base_url: str = "https://api.resend.com"
    rate_per_second: NonNegativeFloat = 2.0


class MailgunSettings(Section):
    domain: str | None = None
    api_key: SecretStr | None = None
    base_url: str = "https://api.mailgun.net"
    rate_per_second: NonNegativeFloat = 0.0


class SmtpSettings(Section):
    host: str = "localhost"
    port: Annotated[int, Field(gt=0, lt=65536)] = 25
    username: str | None = None
    password: SecretStr | None = None
    security: Literal["none", "starttls", "ssl"] = "none"
    timeout_seconds: PositiveFloat = 10.0
    rate_per_second: NonNegativeFloat = 0.0


class EmailSettings(Section):
    provider: Literal["outbox", "sendgrid", "ses", "resend", "mailgun", "smtp"] = "outbox"
    # The same address rules as a payload's `from` (crmqueue.fields); a local domain too.
    from_address: ConfiguredMailbox = "CRM <noreply@localhost>"
    outbox_dir: Path = Path("crmqueue-data/outbox")
    # Budgets of a tenant template's render (at registration and each send): characters
    # of output per part (HTML, text, subject) and CPU seconds for the whole render.
    template_max_chars: PositiveInt = 1_000_000
    template_cpu_seconds: PositiveFloat = 2.0
    sendgrid: SendgridSettings = Field(default_factory=SendgridSettings)
    ses: SesSettings = Field(default_factory=SesSettings)
    resend: ResendSettings = Field(default_factory=ResendSettings)
    mailgun: MailgunSettings = Field(default_factory=MailgunSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)


# Notification channels (issue #14); push and sms arrive as their own provider modules.
NOTIFICATION_CHANNELS = ("in-app", "email", "push", "sms")
NotificationChannel = Literal["in-app", "email", "push", "sms"]
# A notification category: dotted lowercase words (lead.assigned, import.completed).
_CATEGORY = r"[a-z][a-z0-9_-]*(?:\.[a-z][a-z0-9_-]*)*"
CATEGORY_PATTERN = f"^{_CATEGORY}$"
_TENANT = r"[A-Za-z0-9_.-]{1,64}"
# "[tenant/]category=channel+channel": category "*" is every category of that tenant.
_CHANNEL_RULE = re.compile(rf"(?:({_TENANT})/)?(\*|{_CATEGORY})=([a-z+-]*)")


def _in_app() -> list[NotificationChannel]:
    return ["in-app"]


class NotificationSettings(Section):
    # Days a stored in-app notification is kept (listed, counted) before it expires;
    # at most 36500 (100 years): a date past year 9999 cannot be stored.
    keep_days: Annotated[int, Field(gt=0, le=36_500)] = 90
    # Channels on for a category nobody chose channels for.
    default_channels: list[NotificationChannel] = Field(default_factory=lambda: _in_app())
    # Defaults per category, for every tenant ("lead.assigned=in-app+email") or one
    # tenant ("acme/lead.assigned=in-app", "acme/*=in-app+email"); a user's own choice
    # goes first (crmqueue.notifications.channels_for).
    channels: list[str] = Field(default_factory=list)
    # The CRM app's address (https://crm.example.com): an action URL given as a path
    # ("/leads/7") is joined to it in emails; without it such an email has no button.
    app_base_url: str | None = None
    # Seconds a consumer reuses a user's preferences it read (a burst for one user reads
    # them once); a change made elsewhere applies within this. 0 reads them every job.
    preferences_cache_seconds: Annotated[float, Field(ge=0, le=60)] = 2.0

    @field_validator("app_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        from urllib.parse import urlsplit

        if value is None:
            return None
        parts = urlsplit(value)
        if (
            parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc
            or parts.query or parts.fragment or any(ch.isspace() for ch in value)
        ):  # fmt: skip
            raise ValueError(
                f"{value!r}: expected an http(s) URL without user info, query or fragment"
                " (https://crm.example.com)"
            )
        return value.rstrip("/")

    @field_validator("default_channels", "channels", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("channels")
    @classmethod
    def _valid_rules(cls, value: list[str]) -> list[str]:
        for rule in value:
            match = _CHANNEL_RULE.fullmatch(rule)
            names = match.group(3).split("+") if match and match.group(3) else []
            if match is None or any(name not in NOTIFICATION_CHANNELS for name in names):
                raise ValueError(
                    f"{rule!r}: expected [tenant/]category=channel+channel (category a"
                    f" dotted lowercase name or *; channels {', '.join(NOTIFICATION_CHANNELS)})"
                )
        return value

    def default_for(self, tenant_id: str, category: str) -> tuple[tuple[str, ...], str]:
        """(channels on, the rule that says so) for a category of `tenant_id` when its
        user chose nothing: the tenant's rule for the category, else the tenant's "*",
        else the rule for every tenant, else its "*", else default_channels."""
        found: dict[tuple[bool, str], tuple[tuple[str, ...], str]] = {}
        for rule in self.channels:
            match = _CHANNEL_RULE.fullmatch(rule)
            assert match is not None  # checked by _valid_rules
            tenant, name, names = match.groups()
            if tenant in (None, tenant_id) and name in (category, "*"):
                found[(tenant is not None, name)] = (
                    tuple(names.split("+")) if names else (),
                    f"notifications.channels {rule!r}",
                )
        for key in ((True, category), (True, "*"), (False, category), (False, "*")):
            if key in found:
                return found[key]
        return tuple(self.default_channels), "notifications.default_channels"


class RunnerSettings(Section):
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 30.0
    health_interval_seconds: PositiveFloat = 60.0
    sweep_interval_seconds: PositiveFloat = 60.0
    heartbeat_seconds: PositiveFloat = 5.0
    imports: list[str] = Field(default_factory=list)
    # Recurring schedules (crmqueue.schedules): "crmqueue run" runs the scheduler; it
    # re-reads the schedules at least this often (ones added by other processes).
    scheduler: bool = True
    schedules_refresh_seconds: PositiveFloat = 10.0
    # An occurrence found due later than this is "missed" (its catch-up policy decides).
    schedules_grace_seconds: PositiveFloat = 60.0

    @field_validator("imports", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class HealthSettings(Section):
    window_seconds: PositiveInt = 300
    failure_rate_threshold: Annotated[float, Field(gt=0, le=1)] = 0.10


class EventsSettings(Section):
    # Job events (crmqueue.events): the stream in the queue storage keeps about this many
    # of the newest events (Redis XADD MAXLEN ~; SQLite trims the same, amortised); 0
    # writes none.
    max_len: Annotated[int, Field(ge=0, le=100_000_000)] = 10_000
    # In-process listeners (events.on): events waiting for the listener thread; when it
    # is full, newer ones are dropped for the listeners and counted in a warning.
    listener_queue: PositiveInt = 10_000


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class OutboundSettings(Section):
    allowed_networks: list[str] = Field(default_factory=list)

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_networks")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        normalized = []
        for text in value:
            try:
                normalized.append(str(ipaddress.ip_network(text, strict=True)))
            except ValueError as exc:
                # strict: "10.1.2.3/8" is more likely a typo than a wish to allow 10/8.
                raise ValueError(f"{text!r} is not a network in CIDR notation ({exc})") from None
        return normalized

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(text) for text in self.allowed_networks)


# The browser push services (REFERENCE "Web push"): Chrome/Edge (FCM), Firefox (Mozilla
# autopush), Edge/Windows (WNS), Safari (Apple). "*.example" matches any subdomain.
DEFAULT_PUSH_HOSTS = (
    "fcm.googleapis.com",
    "updates.push.services.mozilla.com",
    "*.push.services.mozilla.com",
    "*.notify.windows.com",
    "web.push.apple.com",
    "*.push.apple.com",
)
# RFC 8030 section 5.2: a push service may cap TTL; 28 days is the common ceiling.
MAX_PUSH_TTL = 28 * 24 * 3600
_PUSH_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


class PushSettings(Section):
    """Web push (issue #14, RFC 8030/8291/8292). The VAPID private key is a secret: it
    comes only from $CRMQUEUE_PUSH__VAPID_PRIVATE_KEY or the file `vapid_private_key_file`
    names (load_settings refuses it in a config file), and never prints."""

    # Who runs this application server, told to the push services in every VAPID JWT
    # (`sub`, RFC 8292 section 2.1): a mailto: or https: URI.
    vapid_subject: str | None = None
    # The VAPID public key, base64url of the uncompressed P-256 point (65 bytes): the
    # browser's applicationServerKey. Optional: derived from the private key when unset,
    # and checked against it when set.
    vapid_public_key: str | None = None
    # The private key as PEM or base64url (32 raw bytes): environment only.
    vapid_private_key: SecretStr | None = None
    # A file holding the private key (PEM or base64url), e.g. a mounted secret.
    vapid_private_key_file: Path | None = None
    # Hosts a subscription endpoint may name ("*.notify.windows.com" for subdomains);
    # empty allows any public host. The SSRF guard applies either way.
    allowed_hosts: list[str] = Field(default_factory=lambda: list(DEFAULT_PUSH_HOSTS))
    # How long the push service keeps an undelivered message (TTL header), in seconds.
    ttl_seconds: Annotated[int, Field(ge=0, le=MAX_PUSH_TTL)] = 86_400
    # Lifetime of a VAPID JWT (`exp`); RFC 8292 allows at most 24 hours.
    jwt_expiry_seconds: Annotated[int, Field(ge=60, le=86_400)] = 43_200
    # A notification job of at least this priority goes out with `Urgency: high`.
    high_urgency_priority: Annotated[int, Field(ge=0)] = 150
    # Topic (collapse key): "notification" (retries of one notification replace each
    # other) or "category" (a newer notification of a category replaces an older one the
    # device has not fetched yet).
    topic: Literal["notification", "category"] = "notification"
    # Subscriptions one user may hold (browsers and devices); subscribing more refuses.
    max_subscriptions_per_user: PositiveInt = 20
    connect_timeout_seconds: PositiveFloat = 5.0
    read_timeout_seconds: PositiveFloat = 10.0

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _valid_hosts(cls, value: list[str]) -> list[str]:
        hosts = [host.strip().lower().rstrip(".") for host in value]
        for host in hosts:
            literal = host.strip("[]")
            try:
                ipaddress.ip_address(literal)
                continue
            except ValueError:
                pass
            if len(host) > 253 or not _PUSH_HOST.fullmatch(host):
                raise ValueError(f"{host!r} is not a host name, *.domain or address")
        return hosts

    @field_validator("vapid_subject", "vapid_private_key", "vapid_private_key_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # CRMQUEUE_PUSH__VAPID_PRIVATE_KEY= (set but empty) means no key, not a bad one.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("vapid_subject")
    @classmethod
    def _valid_subject(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not re.fullmatch(r"mailto:[^@\s]+@[^@\s]+|https://[^\s/]+(/\S*)?", value):
            raise ValueError(
                f"{value!r}: expected a mailto: or https: URI (mailto:ops@example.com),"
                " RFC 8292 section 2.1"
            )
        return value

    @field_validator("vapid_public_key")
    @classmethod
    def _valid_public_key(cls, value: str | None) -> str | None:
        import base64
        import binascii

        if value is None or not value.strip():
            return None
        text = value.strip()
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 65 or raw[0] != 4:
            raise ValueError(
                "expected base64url of an uncompressed P-256 point (65 bytes), as"
                " 'crmqueue push keys' prints it"
            )
        return text.rstrip("=")

    def host_allowed(self, host: str) -> bool:
        """Whether `host` (lower-case, as a URL gives it) is one of allowed_hosts (empty:
        any)."""
        if not self.allowed_hosts:
            return True
        host = host.lower().rstrip(".")
        for allowed in self.allowed_hosts:
            if allowed.startswith("*."):
                if host.endswith(allowed[1:]) and len(host) > len(allowed) - 1:
                    return True
            elif host == allowed or host.strip("[]") == allowed.strip("[]"):
                return True
        return False


# Twilio's identifiers (REFERENCE "SMS"): a Messaging Service SID is MG and 32 hex digits.
_MESSAGING_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")
_E164_NUMBER = re.compile(r"\+[1-9][0-9]{1,14}")


class SmsSettings(Section):
    """The SMS notification channel (issue #14; REFERENCE "SMS (Twilio Programmable
    Messaging)"). The account SID and auth token are read from the environment only
    (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN; crmqueue.providers.sms.twilio), never from
    this file, and never printed."""

    # "none": SMS is off (an sms channel is skipped, saying so); "twilio".
    provider: Literal["none", "twilio"] = "none"
    # The sender: a Twilio number in E.164, or a Messaging Service (MG...); one of them
    # is needed for twilio (the service wins when both are set).
    from_number: str | None = None
    messaging_service_sid: str | None = Field(default=None, validate_default=True)
    # Twilio's API origin; tests point it at a loopback emulator (a loopback or private
    # address must be in outbound.allowed_networks: the request takes the guarded path).
    base_url: str = "https://api.twilio.com"
    # Longest message body in characters (title, message and link are trimmed to fit);
    # Twilio takes at most 1600. 320 is two GSM-7 segments.
    max_chars: Annotated[int, Field(ge=20, le=1600)] = 320
    timeout_seconds: PositiveFloat = 10.0

    @field_validator("from_number")
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        if value is not None and not _E164_NUMBER.fullmatch(value):
            raise ValueError(f"{value!r} is not an E.164 number (e.g. +14155550100)")
        return value

    @field_validator("messaging_service_sid")
    @classmethod
    def _service_sid(cls, value: str | None, info: Any) -> str | None:
        if value is not None and not _MESSAGING_SERVICE_SID.fullmatch(value):
            raise ValueError(f"{value!r} is not a Messaging Service SID (MG and 32 hex digits)")
        provider = info.data.get("provider", "none")
        if value is None and provider != "none" and not info.data.get("from_number"):
            raise ValueError(f"sms.provider {provider} needs from_number or messaging_service_sid")
        return value

    @field_validator("base_url")
    @classmethod
    def _origin(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            raise ValueError(f"{value!r}: expected an http(s) origin without user info")
        return value.rstrip("/")


# The original system's deal stages in pipeline order, each with the chance that a deal in
# it is won: `reports.stage_probabilities` replaces it.
DEFAULT_STAGE_PROBABILITIES = (
    "prospecting=0.1",
    "qualification=0.25",
    "proposal=0.5",
    "negotiation=0.75",
)


def _pairs(value: Any) -> Any:
    """A list of "key=value" texts: a list, one comma-separated text (environment), or a
    TOML table (its keys in order)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, Mapping):
        return [f"{key}={item}" for key, item in value.items()]
    return value


def check_tenant_zones(entries: list[str]) -> list[str]:
    """`entries` unchanged when each is tenant=Area/City with a known zone and no tenant is
    listed twice; ValueError naming the entry otherwise."""
    seen: set[str] = set()
    for entry in entries:
        tenant, sep, zone = (part.strip() for part in entry.partition("="))
        if not sep or not tenant or not zone:
            raise ValueError(f"{entry!r}: expected tenant=Area/City")
        if tenant in seen:
            raise ValueError(f"tenant {tenant!r} is listed twice")
        seen.add(tenant)
        check_time_zone(zone)
    return entries


class ReportsSettings(Section):
    # Longest date range of a report, in days (inclusive of both ends).
    max_range_days: PositiveInt = 3660
    # IANA time zone of report periods for tenants not in tenant_time_zones.
    time_zone: str = "UTC"
    # "tenant=Area/City" entries: a tenant's own time zone (a payload's time_zone wins).
    tenant_time_zones: list[str] = Field(default_factory=list)
    # "stage=probability" entries in pipeline order: the stages of the conversion funnel
    # and each stage's weight in the weighted pipeline value (an unlisted stage weighs 0).
    stage_probabilities: list[str] = Field(
        default_factory=lambda: list(DEFAULT_STAGE_PROBABILITIES)
    )
    # Deals listed in a sales report's top deals, per currency.
    top_deals: PositiveInt = 10

    @field_validator("tenant_time_zones", "stage_probabilities", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        return _pairs(value)

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return check_time_zone(value)

    @field_validator("tenant_time_zones")
    @classmethod
    def _tenant_zones(cls, value: list[str]) -> list[str]:
        return check_tenant_zones(value)

    @field_validator("stage_probabilities")
    @classmethod
    def _probabilities(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for entry in value:
            stage, sep, text = (part.strip() for part in entry.rpartition("="))
            try:
                probability = Decimal(text)
            except ArithmeticError:
                probability = Decimal(-1)
            if not sep or not stage or not Decimal(0) <= probability <= Decimal(1):
                raise ValueError(f"{entry!r}: expected stage=probability, 0 to 1")
            if stage.casefold() in seen:
                raise ValueError(f"stage {stage!r} is listed twice")
            seen.add(stage.casefold())
        return value

    def zone_for(self, tenant_id: str) -> str:
        """The tenant's time zone: its tenant_time_zones entry, else time_zone."""
        for entry in self.tenant_time_zones:
            tenant, _, zone = (part.strip() for part in entry.partition("="))
            if tenant == tenant_id:
                return zone
        return self.time_zone

    def probabilities(self) -> dict[str, Decimal]:
        """Stage -> probability, in pipeline order."""
        pairs = (entry.rpartition("=") for entry in self.stage_probabilities)
        return {stage.strip(): Decimal(text.strip()) for stage, _, text in pairs}


def _queue_counts(value: Any, where: str) -> dict[str, int]:
    """{queue: jobs a day} from "queue=n" entries, checked."""
    counts: dict[str, int] = {}
    for entry in value:
        queue, sep, text = (part.strip() for part in str(entry).partition("="))
        if not sep:
            raise ValueError(f"{where}: {entry!r}: expected queue=jobs_a_day")
        if queue not in QUEUE_NAMES:
            raise ValueError(f"{where}.{queue}: unknown queue; queues are {', '.join(QUEUE_NAMES)}")
        if not text.isdigit():
            raise ValueError(f"{where}.{queue}: must be a whole number of jobs a day, 0 or more")
        if queue in counts:
            raise ValueError(f"{where}.{queue}: listed twice")
        counts[queue] = int(text)
    return counts


class TenantsSettings(Section):
    """Per-tenant rules of the engine (issue #17): daily quotas and tenants' time zones."""

    # IANA time zone of a tenant's day (quotas) when neither time_zones nor
    # [reports] tenant_time_zones lists the tenant.
    time_zone: str = "UTC"
    # "tenant=Area/City" entries or a table: a tenant's own time zone.
    time_zones: list[str] = Field(default_factory=list)
    # "queue=n" entries or a table {email = 10000}: jobs a tenant may enqueue per queue
    # and local day; a queue not listed (or 0) has no quota.
    daily_quota: list[str] = Field(default_factory=list)
    # "tenant:queue=n" entries or a table {acme = {email = 50000}}: per-tenant overrides;
    # 0 lifts the quota for that tenant and queue.
    daily_quota_overrides: list[str] = Field(default_factory=list)
    _quota: dict[str, int] = PrivateAttr(default_factory=dict)
    _overrides: dict[str, dict[str, int]] = PrivateAttr(default_factory=dict)

    @field_validator("time_zones", "daily_quota", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        return _pairs(value)

    @field_validator("daily_quota_overrides", mode="before")
    @classmethod
    def _flatten(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return [
                f"{tenant}:{entry}"
                for tenant, counts in value.items()
                for entry in _pairs(counts if isinstance(counts, Mapping | str) else [])
            ]
        return _pairs(value)

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return check_time_zone(value)

    @field_validator("time_zones")
    @classmethod
    def _tenant_zones(cls, value: list[str]) -> list[str]:
        return check_tenant_zones(value)

    @field_validator("daily_quota")
    @classmethod
    def _quota_entries(cls, value: list[str]) -> list[str]:
        _queue_counts(value, "daily_quota")
        return value

    @field_validator("daily_quota_overrides")
    @classmethod
    def _override_entries(cls, value: list[str]) -> list[str]:
        from crmqueue.tenancy import tenant_problem

        by_tenant: dict[str, list[str]] = {}
        for entry in value:
            tenant, sep, rest = (part.strip() for part in entry.partition(":"))
            problem = tenant_problem(tenant)
            if not sep or problem is not None:
                raise ValueError(f"{entry!r}: expected tenant:queue=n ({problem or 'no tenant'})")
            by_tenant.setdefault(tenant, []).append(rest)
        for tenant, entries in by_tenant.items():
            _queue_counts(entries, f"daily_quota_overrides.{tenant}")
        return value

    def model_post_init(self, context: Any, /) -> None:
        self._quota = _queue_counts(self.daily_quota, "daily_quota")
        by_tenant: dict[str, list[str]] = {}
        for entry in self.daily_quota_overrides:
            tenant, _, rest = (part.strip() for part in entry.partition(":"))
            by_tenant.setdefault(tenant, []).append(rest)
        self._overrides = {t: _queue_counts(e, t) for t, e in by_tenant.items()}

    def zone_for(self, tenant_id: str, reports: ReportsSettings | None = None) -> str:
        """The tenant's time zone: its time_zones entry, else its [reports]
        tenant_time_zones entry (when `reports` is given), else time_zone."""
        for entries in (self.time_zones, reports.tenant_time_zones if reports else []):
            for entry in entries:
                tenant, _, zone = (part.strip() for part in entry.partition("="))
                if tenant == tenant_id:
                    return zone
        return self.time_zone

    def quota_for(self, queue: str, tenant_id: str) -> int | None:
        """The tenant's daily cap on `queue` (jobs a day), or None when it has none."""
        override = self._overrides.get(tenant_id, {})
        limit = override.get(queue, self._quota.get(queue, 0))
        return limit or None

    def has_quota(self, queue: str) -> bool:
        """Whether any tenant has a daily cap on `queue` (else enqueue skips quotas)."""
        if self._quota.get(queue):
            return True
        return any(counts.get(queue) for counts in self._overrides.values())


def check_time_zone(name: str) -> str:
    """`name` if it is a time zone by crmqueue.zones' rule (IANA Area/Location or UTC);
    ValueError saying why otherwise."""
    problem = time_zone_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


class WebhookSettings(Section):
    """The webhook queue's delivery rules (issue #12, REFERENCE "Standard Webhooks"); the
    queue's workers, attempts and job timeout stay in [queues.webhook]."""

    # Largest event payload (its JSON) accepted at enqueue, in bytes.
    max_payload_bytes: PositiveInt = 262_144
    connect_timeout_seconds: PositiveFloat = 5.0
    read_timeout_seconds: PositiveFloat = 30.0
    # "exponential" (the queue's backoff, full jitter), "svix" (Svix's fixed schedule) or
    # the delays in seconds after each failed attempt (the last one repeats).
    schedule: Literal["exponential", "svix"] | list[NonNegativeFloat] = "exponential"
    # Non-2xx answers worth retrying besides 5xx; every other non-2xx is permanent.
    retry_statuses: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=lambda: [408, 429]
    )
    # Hours the previous secret keeps signing (beside the new one) after a rotation.
    rotation_grace_hours: NonNegativeFloat = 24.0
    # Days delivery log rows and stored messages are kept.
    keep_days: PositiveFloat = 30.0
    # Consecutive failed attempts that open an endpoint's circuit breaker.
    breaker_failures: PositiveInt = 5
    # Seconds an open breaker waits before one probe delivery is let through.
    breaker_probe_seconds: PositiveFloat = 30.0
    # Days of nothing but failures after which an endpoint is disabled.
    disable_after_days: PositiveFloat = 5.0
    # Random bytes of a new endpoint secret (the Standard Webhooks range is 24-64).
    secret_bytes: Annotated[int, Field(ge=24, le=64)] = 32

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_list(cls, value: Any) -> Any:
        # CRMQUEUE_WEBHOOKS__SCHEDULE="1,5,30": the environment spells a list with commas.
        if isinstance(value, str) and value.strip().lower() not in ("exponential", "svix"):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("schedule")
    @classmethod
    def _schedule_not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("must list at least one delay")
        return value

    @field_validator("retry_statuses", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class ScheduleSettings(Section):
    """An operator's recurring job (``[[schedules]]``), run like a tenant's schedule
    (crmqueue.schedules): `cron` (5 fields, in `time_zone`) or `interval_seconds`, one of
    them. The payload is validated when the scheduler loads it."""

    name: Annotated[str, Field(min_length=1, max_length=100)]
    tenant_id: str
    cron: str | None = None
    interval_seconds: Annotated[int, Field(gt=0, le=366 * 86400)] | None = None  # a year
    time_zone: str = "UTC"
    queue: str
    kind: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    catch_up: Literal["skip", "run-once"] = "skip"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip() or not value.isprintable():
            raise ValueError("must be printable text on one line (no control characters)")
        return value

    @field_validator("tenant_id")
    @classmethod
    def _tenant(cls, value: str) -> str:
        from crmqueue.tenancy import tenant_problem

        problem = tenant_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_time_zone(value)

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str) -> str:
        if value not in QUEUE_NAMES:
            raise ValueError(f"unknown queue {value!r}; queues are {', '.join(QUEUE_NAMES)}")
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from crmqueue.schedule_rules import cron_problem

            problem = cron_problem(value)
            if problem is not None:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleSettings:
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError("give cron or interval_seconds, one of them")
        return self


class ApiSettings(Section):
    """The admin HTTP API (issue #15): where it listens and who may call it."""

    # `crmqueue run` serves it in a separate process beside the consumers.
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8765
    # Bearer tokens as ROLE=sha256:HEX (the hash `crmqueue api token create` prints; the
    # token itself is never stored). ROLE: admin, tenant:<id> or tenant:<id>:user:<id>.
    tokens: list[str] = Field(default_factory=list)
    # Failed token checks allowed per client address and minute before 429.
    auth_failures_per_minute: PositiveInt = 20
    # /metrics needs an admin token too (false: open to whoever reaches the port).
    metrics_require_token: bool = True
    # Seconds between the server's looks at a user's inbox, per notification stream.
    stream_poll_seconds: Annotated[float, Field(gt=0, le=5)] = 0.5
    # Largest request body read, in bytes; a larger one is answered 413 unread.
    max_body_bytes: PositiveInt = 1_048_576
    # Proxies (IPs or networks) whose X-Forwarded-For/-Proto are believed; [] believes none.
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_addresses(cls, value: list[str]) -> list[str]:
        import ipaddress

        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
        return value

    @field_validator("tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        # CRMQUEUE_API__TOKENS="admin=sha256:...,tenant:t1=sha256:...": commas or spaces.
        if isinstance(value, str):
            return [part for part in re.split(r"[,\s]+", value) if part]
        return value


class Settings(Section):
    storage: StorageSettings = Field(default_factory=StorageSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    files: FilesSettings = Field(default_factory=FilesSettings)
    crm: CrmSettings = Field(default_factory=CrmSettings)
    reports: ReportsSettings = Field(default_factory=ReportsSettings)
    tenants: TenantsSettings = Field(default_factory=TenantsSettings)
    queues: QueuesSettings = Field(default_factory=QueuesSettings)
    email: EmailSettings = Field(default_factory=EmailSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    outbound: OutboundSettings = Field(default_factory=OutboundSettings)
    push: PushSettings = Field(default_factory=PushSettings)
    sms: SmsSettings = Field(default_factory=SmsSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    events: EventsSettings = Field(default_factory=EventsSettings)
    schedules: list[ScheduleSettings] = Field(default_factory=list)
    api: ApiSettings = Field(default_factory=ApiSettings)

    @field_validator("schedules")
    @classmethod
    def _unique_schedules(cls, value: list[ScheduleSettings]) -> list[ScheduleSettings]:
        seen: set[tuple[str, str]] = set()
        for entry in value:  # the scheduler stores them by tenant and name: one would go
            key = (entry.tenant_id, entry.name.strip())
            if key in seen:
                raise ValueError(f"two schedules of tenant {key[0]!r} are named {key[1]!r}")
            seen.add(key)
        return value

    def public_dict(self) -> dict[str, Any]:
        """The effective settings as JSON-ready data, secrets masked."""
        data = self.model_dump(mode="json", by_alias=True)
        data["storage"]["url"] = mask_url(self.storage.url)
        data["database"]["url"] = mask_url(self.database.url)
        return data


# The original system's variable names, mapped onto key paths.
_ORIGINAL_ENV: dict[str, tuple[str, ...]] = {
    "REDIS_URL": ("storage", "url"),
    "EMAIL_PROVIDER": ("email", "provider"),
    "EMAIL_FROM": ("email", "from_address"),
    "SENDGRID_API_KEY": ("email", "sendgrid", "api_key"),
    "AWS_REGION": ("email", "ses", "region"),
    "AWS_ACCESS_KEY_ID": ("email", "ses", "access_key_id"),
    "AWS_SECRET_ACCESS_KEY": ("email", "ses", "secret_access_key"),
    "AWS_SESSION_TOKEN": ("email", "ses", "session_token"),
    "RESEND_API_KEY": ("email", "resend", "api_key"),
    "MAILGUN_DOMAIN": ("email", "mailgun", "domain"),
    "MAILGUN_API_KEY": ("email", "mailgun", "api_key"),
}


def mask_url(url: str) -> str:
    """Hide the password of a URL such as redis://:secret@host:6379/0."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    # The last "@" ends the userinfo, as in urllib and redis-py, so an unescaped "@"
    # inside the password cannot leak its tail into the host part.
    userinfo, at, hostpart = netloc.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:********@{hostpart}{slash}{path}"


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path)}: {key} is not a section")
        node = child
    node[path[-1]] = value


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def environment_overrides(
    environ: Mapping[str, str], sources: dict[tuple[str, ...], str] | None = None
) -> dict[str, Any]:
    """Key paths set by CRMQUEUE_<SECTION>__<KEY> and the original variable names;
    ``sources``, when given, receives each key path with the variable that set it."""
    tree: dict[str, Any] = {}
    named = {} if sources is None else sources
    for name, path in _ORIGINAL_ENV.items():
        if environ.get(name):
            _set_path(tree, path, environ[name])
            named[path] = name
    if environ.get("REDIS_HOST") and not environ.get("REDIS_URL"):
        password = environ.get("REDIS_PASSWORD", "")
        auth = f":{quote(password, safe='')}@" if password else ""
        url = (
            f"redis://{auth}{environ['REDIS_HOST']}:{environ.get('REDIS_PORT', '6379')}"
            f"/{environ.get('REDIS_DB', '0')}"
        )
        _set_path(tree, ("storage", "url"), url)
        named[("storage", "url")] = "REDIS_HOST"
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        parts = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"{name}: expected {ENV_PREFIX}<SECTION>__<KEY>")
        if parts[0] == "queues":
            parts = (parts[0], parts[1].replace("_", "-"), *parts[2:])
        _set_path(tree, parts, value)
        named[parts] = name
    return tree


def find_config_file(
    explicit: str | os.PathLike[str] | None, environ: Mapping[str, str]
) -> Path | None:
    """--config, else $CRMQUEUE_CONFIG, else ./crmqueue.toml if present, else none."""
    if explicit:
        return Path(explicit)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    local = Path(DEFAULT_CONFIG_FILE)
    return local if local.is_file() else None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _normalize_queue_names(tree: dict[str, Any]) -> dict[str, Any]:
    """Accept ``import_export`` for ``import-export`` in every source (file, env, flags)."""
    queues = tree.get("queues")
    if isinstance(queues, dict):
        tree["queues"] = {key.replace("_", "-"): value for key, value in queues.items()}
    return tree


def _format_errors(exc: ValidationError, origin: Callable[[tuple[str, ...]], str]) -> str:
    lines = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        path = ".".join(loc) or "(root)"
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        lines.append(f"{path}: {message}{origin(loc)}")
    return "; ".join(lines)


def _has_path(tree: Mapping[str, Any], loc: tuple[str, ...]) -> bool:
    node: Any = tree
    for key in loc:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the effective settings; raises ConfigError naming every bad key path.

    ``overrides`` maps dotted key paths (``queues.email.workers``) to values from flags.
    """
    env = os.environ if environ is None else environ
    path = find_config_file(config_file, env)
    file_tree = _normalize_queue_names(read_toml(path) if path else {})
    env_sources: dict[tuple[str, ...], str] = {}
    tree = _deep_merge(file_tree, environment_overrides(env, env_sources))
    flag_tree: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        _set_path(flag_tree, tuple(dotted.split(".")), value)
    flag_tree = _normalize_queue_names(flag_tree)
    tree = _deep_merge(tree, flag_tree)

    def origin(loc: tuple[str, ...]) -> str:
        """Where the value at ``loc`` came from: a flag, a variable, the file or neither."""
        for end in range(len(loc), 0, -1):
            if _has_path(flag_tree, loc[:end]):
                return " (from a command-line option)"
            if loc[:end] in env_sources:
                return f" (from ${env_sources[loc[:end]]})"
            if path and _has_path(file_tree, loc[:end]):
                return f" (from {path})"
        return ""

    queues = tree.get("queues")
    if isinstance(queues, dict):
        unknown = sorted(set(queues) - set(QUEUE_NAMES))
        if unknown:
            raise ConfigError(
                f"queues.{unknown[0]}: unknown queue; queues are {', '.join(QUEUE_NAMES)}"
            )
        defaults = QueuesSettings()
        merged: dict[str, Any] = {}
        for name in QUEUE_NAMES:
            given = queues.get(name, {})
            # A partial section keeps the queue's own defaults; a non-table is left for
            # validation to reject with its key path.
            merged[name] = (
                _deep_merge(defaults.get(name).model_dump(), given)
                if isinstance(given, Mapping)
                else given
            )
        tree["queues"] = merged
    if _has_path(file_tree, ("push", "vapid_private_key")):
        raise ConfigError(
            f"push.vapid_private_key: a secret, not read from {path}: set"
            " CRMQUEUE_PUSH__VAPID_PRIVATE_KEY or push.vapid_private_key_file"
        )
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origin)) from None
