"""SMTP through the standard library: plain, STARTTLS or implicit TLS, optional auth.
Bcc recipients go in the envelope only (the MIME has no Bcc header)."""

from __future__ import annotations

import smtplib
import ssl

from crmqueue.config import EmailSettings
from crmqueue.errors import PermanentError, RetryableError
from crmqueue.providers.email.base import EmailProvider
from crmqueue.providers.email.message import OutgoingEmail


class SmtpProvider(EmailProvider):
    name = "smtp"

    def __init__(self, settings: EmailSettings, *, ssl_context: ssl.SSLContext | None = None):
        super().__init__(settings)
        self._ssl_context = ssl_context

    def _context(self) -> ssl.SSLContext:
        return self._ssl_context or ssl.create_default_context()

    def _connect(self) -> smtplib.SMTP:
        cfg = self.settings.smtp
        if cfg.security == "ssl":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(
                cfg.host, cfg.port, timeout=cfg.timeout_seconds, context=self._context()
            )
        else:
            conn = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_seconds)
        try:
            conn.ehlo()
            if cfg.security == "starttls":
                conn.starttls(context=self._context())
                conn.ehlo()
            if cfg.username:
                password = cfg.password.get_secret_value() if cfg.password else ""
                conn.login(cfg.username, password)
        except BaseException:
            conn.close()
            raise
        return conn

    def deliver(self, email: OutgoingEmail) -> str:
        cfg = self.settings.smtp
        where = f"smtp {cfg.host}:{cfg.port}"
        try:
            with self._connect() as conn:
                # Our own bytes (headers folded by message.py), not send_message's
                # re-serialisation; every address is ASCII (IDN domains as A-labels).
                refused = conn.sendmail(email.from_address, email.recipients, email.as_bytes())
        except smtplib.SMTPAuthenticationError as exc:
            raise PermanentError(f"{where}: authentication failed ({exc.smtp_code})") from exc
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            detail = "; ".join(
                f"{rcpt}: {code} {_text(msg)}" for rcpt, (code, msg) in exc.recipients.items()
            )
            if all(400 <= code < 500 for code in codes):
                raise RetryableError(f"{where}: recipients deferred: {detail}") from exc
            raise PermanentError(f"{where}: recipients refused: {detail}") from exc
        except smtplib.SMTPResponseException as exc:
            text = f"{where}: {exc.smtp_code} {_text(exc.smtp_error)}"
            if 400 <= exc.smtp_code < 500:
                raise RetryableError(text) from exc
            raise PermanentError(text) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise PermanentError(f"{where}: {exc}") from exc
        except ssl.SSLCertVerificationError as exc:
            raise PermanentError(
                f"{where}: TLS certificate not trusted: {exc.verify_message}"
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise RetryableError(f"{where}: {type(exc).__name__}: {exc}") from exc
        # A partly refused send (`refused` non-empty) still counts as sent: retrying would
        # deliver twice to the recipients that accepted it.
        del refused
        return email.message_id


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
