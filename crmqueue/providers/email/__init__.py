"""Email providers, one module per vendor behind base.EmailProvider. They are listed
here explicitly (no discovery: a frozen executable cannot find modules at run time)."""

from __future__ import annotations

from crmqueue.config import EmailSettings
from crmqueue.errors import ConfigError
from crmqueue.providers.email.base import EmailProvider, SendResult
from crmqueue.providers.email.mailgun import MailgunProvider
from crmqueue.providers.email.message import OutgoingEmail
from crmqueue.providers.email.outbox import OutboxProvider
from crmqueue.providers.email.resend import ResendProvider
from crmqueue.providers.email.sendgrid import SendgridProvider
from crmqueue.providers.email.ses import SesProvider
from crmqueue.providers.email.smtp import SmtpProvider

PROVIDERS: dict[str, type[EmailProvider]] = {
    "outbox": OutboxProvider,
    "smtp": SmtpProvider,
    "sendgrid": SendgridProvider,
    "ses": SesProvider,
    "resend": ResendProvider,
    "mailgun": MailgunProvider,
}

__all__ = ["PROVIDERS", "EmailProvider", "OutgoingEmail", "SendResult", "get_provider"]


def get_provider(settings: EmailSettings) -> EmailProvider:
    """The provider named by email.provider."""
    cls = PROVIDERS.get(settings.provider)
    if cls is None:
        raise ConfigError(f"email.provider: unknown provider {settings.provider!r}")
    return cls(settings)
