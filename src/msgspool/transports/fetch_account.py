"""What the POP3 and IMAP fetchers (pop3.py, imap.py) share: the account's TLS context and its
password. TLS verifies the server's certificate and name by default (the system's CA store, or the
account's ca_file); ``verify = false`` encrypts without checking, for a server with a self-signed
certificate one trusts by other means. The password stays in its file until a session logs in
(a rotated one is used without a restart) and appears in no log, status or error."""

from __future__ import annotations

import ssl

from msgspool.domain.fetch import FetchAccount
from msgspool.errors import ConfigError
from msgspool.transports.smtp_security import Credentials


def tls_context(account: FetchAccount) -> ssl.SSLContext | None:
    """The context of `security = "tls"` or `"starttls"`; None at `"none"`."""
    if account.security == "none":
        return None
    try:
        context = ssl.create_default_context(cafile=account.ca_file or None)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"fetch {account.name}: cannot load the CA file {account.ca_file}: {err}") from None
    if not account.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def credentials(account: FetchAccount) -> Credentials:
    return Credentials(account.user, account.password_file)


def check(account: FetchAccount) -> None:
    """At `serve` start: the password file must be readable, and the CA file loadable."""
    credentials(account).check(f"fetch {account.name}")
    tls_context(account)
