"""Outbound TLS and smarthost AUTH policy: what the SMTP client must secure before it sends.

Levels (`smtp_tls_security_level`, per transport `tls_security_level`), with Postfix's meanings:

    none     no TLS: STARTTLS is never sent
    may      opportunistic (the default): STARTTLS when the server offers it, certificate not
             checked; a failed handshake is retried at once in clear on a new connection, and a
             refused STARTTLS goes on in clear (Postfix does the same at this level)
    encrypt  TLS or nothing: a server without STARTTLS, a refused STARTTLS or a failed handshake
             is a deferral (454 4.7.5), and no mail is sent; the certificate is not checked
    verify   as encrypt, and the certificate chain must lead to a trusted CA (the system store,
             or only `smtp_tls_ca_file` when set) and name the host connected to (the relay's
             name, or the MX host's name from DNS): a wrong name is a 454 4.7.5 deferral

Every TLS session has a TLS 1.2 floor and no compression. Implicit TLS (RFC 8314, port 465) is
asked for by the relay's scheme: ``relay = "smtps://smtp.example.org:465"``; it always encrypts,
and checks the certificate at `verify`.

Smarthost AUTH (RFC 4954): a relay with `relay_user` and `relay_password_file` (per transport
`user`, `password_file`) authenticates after TLS with PLAIN, or LOGIN when only that is offered.
The password is never sent in clear, unless the level is `none` and `smtp_auth_without_tls` says
so (a loopback test relay); it is read from its file for each new connection and never appears in
a log, a reply or a repr.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from msgspool.errors import ConfigError

SMTPS_SCHEME = "smtps://"


class TLSLevel(StrEnum):
    NONE = "none"
    MAY = "may"
    ENCRYPT = "encrypt"
    VERIFY = "verify"

    @property
    def required(self) -> bool:
        return self in (TLSLevel.ENCRYPT, TLSLevel.VERIFY)

    @classmethod
    def parse(cls, value: str, source: str) -> TLSLevel:
        try:
            return cls(value.strip().lower())
        except ValueError:
            known = ", ".join(level.value for level in cls)
            raise ConfigError(f"{source}: TLS security level {value!r} is none of {known}") from None


@dataclass(frozen=True)
class Credentials:
    """A smarthost account. The password stays in its file until a session needs it: read for each
    new connection (a rotated password is used without a restart), by the process that delivers —
    not by `msgspool sendmail` or `queue`, whose user may not be allowed to read it."""

    user: str
    password_file: str

    @classmethod
    def configured(cls, user: str, password_file: str, source: str) -> Credentials | None:
        if not user and not password_file:
            return None
        if not (user and password_file):
            raise ConfigError(f"{source}: a user and a password file go together: set both or neither")
        return cls(user, password_file)

    def password(self) -> str:
        """The password; OSError or ValueError (with the file's name, never its content) when unusable."""
        try:
            password = Path(self.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise ValueError(f"the password file {self.password_file} is not UTF-8") from None
        if not password:
            raise ValueError(f"the password file {self.password_file} is empty")
        return password

    def check(self, source: str) -> None:
        """At start, so that `serve` stops at once (exit 2) on a password it cannot use."""
        try:
            self.password()
        except (OSError, ValueError) as err:
            raise ConfigError(f"{source}: cannot use the password file of {self.user}: {err}") from None


@dataclass(frozen=True)
class SessionSecurity:
    """What one outbound session must secure: TLS level and context, implicit TLS, AUTH."""

    level: TLSLevel = TLSLevel.NONE
    context: ssl.SSLContext | None = None  # None at level none (without implicit TLS)
    implicit_tls: bool = False
    credentials: Credentials | None = None
    auth_without_tls: bool = False  # only honoured at level none
    auth_soft_bounce: bool = True  # a 5xx to AUTH defers (Postfix smtp_sasl_auth_soft_bounce)
    required_by: str = ""  # what raised the level, for replies: e.g. "MTA-STS policy of example.org"

    @property
    def reason(self) -> str:
        return self.required_by or f"smtp_tls_security_level={self.level}"

    @property
    def tries_tls(self) -> bool:
        return self.implicit_tls or self.level is not TLSLevel.NONE

    @property
    def verifies(self) -> bool:
        return self.level is TLSLevel.VERIFY

    def auth_allowed_in_clear(self) -> bool:
        return self.level is TLSLevel.NONE and self.auth_without_tls


CLEAR = SessionSecurity()  # no TLS, no AUTH: the client's default


def client_context(level: TLSLevel, ca_file: str = "", *, implicit_tls: bool = False) -> ssl.SSLContext | None:
    """The client's SSL context for a level: verifying at `verify`, encrypting only below it."""
    if level is TLSLevel.NONE and not implicit_tls:
        return None
    if level is TLSLevel.VERIFY:
        try:
            context = ssl.create_default_context(cafile=ca_file or None)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"cannot load the CA file {ca_file}: {err}") from None
    else:
        # Opportunistic and encrypt-only TLS protect against passive listeners, not against an
        # active one: an unchecked certificate is their definition (RFC 7435).
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def split_scheme(relay: str) -> tuple[str, bool]:
    """``smtps://host:465`` -> ("host:465", True); ``host:587`` -> ("host:587", False)."""
    relay = relay.strip()
    if relay.lower().startswith(SMTPS_SCHEME):
        return relay[len(SMTPS_SCHEME):], True
    if "://" in relay:
        raise ConfigError(f"relay {relay!r}: the only scheme is smtps:// (implicit TLS); plain is HOST:PORT")
    return relay, False
