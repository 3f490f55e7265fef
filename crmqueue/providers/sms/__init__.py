"""SMS providers, one module per vendor behind base.SmsProvider, listed here explicitly
(no discovery: a frozen executable cannot find modules at run time)."""

from __future__ import annotations

from crmqueue.config import OutboundSettings, SmsSettings
from crmqueue.errors import ConfigError
from crmqueue.providers.sms.base import OutgoingSms, SmsProvider, SmsResult, sms_text
from crmqueue.providers.sms.twilio import TwilioProvider

PROVIDERS: dict[str, type[SmsProvider]] = {
    "twilio": TwilioProvider,
}

__all__ = ["PROVIDERS", "OutgoingSms", "SmsProvider", "SmsResult", "get_provider", "sms_text"]


def get_provider(settings: SmsSettings, outbound: OutboundSettings | None = None) -> SmsProvider:
    """The provider named by sms.provider. Raises ConfigError when SMS is off ("none")
    or the name is unknown."""
    cls = PROVIDERS.get(settings.provider)
    if cls is None:
        raise ConfigError(f"sms.provider: no SMS provider {settings.provider!r}")
    return cls(settings, outbound)
