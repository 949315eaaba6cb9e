"""Every setting of msgspool, once, with its default and a sentence (Postfix's mail_params habit).

Settings come from, in rising order of precedence: these defaults, a TOML file (``--config FILE``,
or ``msgspool.toml`` in the data directory when present), the environment (``MSGSPOOL_DATA``,
``MSGSPOOL_STORE``, ``MSGSPOOL_DATABASE_URL``), and the command line. The README's configuration
table is checked against this module by a test.

Extra transports are declared as an array of tables::

    [[transports]]
    name = "hooks"            # unique; shows up as the recipient's `transport`
    type = "http"             # an entry point in the `msgspool.transports` group
    addrtypes = ["HTTP"]      # the address types it takes (MAPI AddressTypes)
    domains = []              # optional domain routes; empty = any
    # any other key is passed to the transport as an option

Webhooks, likewise (checked when loaded: an http(s) URL, a secret, known event types)::

    [[webhooks]]
    url = "https://app.example/hooks/mail"   # receives a signed JSON POST per event; one webhook per URL
    secret = "..."            # HMAC-SHA256 key of the X-Msgspool-Signature header
    types = ["new_mail"]      # optional: the event types it wants; default all
    mailbox = ""              # optional: only events of this local mailbox
    name = "app"              # optional: for logs and the X-Msgspool-Webhook header; default the URL

Fetch accounts (POP3 and IMAP mailboxes polled into a local mailbox), checked when loaded; every key
with its default is in domain/fetch.py::

    [[fetch]]
    name = "work"
    protocol = "imap"         # pop3 | imap
    host = "imap.example.org"
    user = "me@example.org"
    password_file = "/etc/msgspool/work.password"
    mailbox = "me@localhost"  # the local mailbox fetched mail is filed into
"""

from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from msgspool.domain.fetch import FetchAccount, parse_accounts
from msgspool.domain.webhooks import WebhookTarget, parse_targets
from msgspool.errors import ConfigError

DEFAULT_DATA_DIR = "./msgspool-data"
LOG_FORMATS = ("text", "json")
CONFIG_NAME = "msgspool.toml"


def _doc(default: Any, doc: str) -> Any:
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class Settings:
    data_dir: str = _doc(DEFAULT_DATA_DIR, "Spool directory: the SQLite store, the lock and control socket.")
    store: str = _doc(
        "sqlite", "Message store: an entry point of the `msgspool.stores` group: sqlite, postgresql,"
        " memory (nothing kept).")
    database_url: str = _doc(
        "", "The PostgreSQL spool of store = \"postgresql\", a libpq URL (postgresql://user@host:port/db); every"
        " node of one spool names the same database.")
    delivery_process: bool = _doc(True, "serve delivers from a second process: intake and delivery get a core each.")
    smtp_listen: str = _doc("127.0.0.1:2525", "SMTP listener HOST:PORT; empty disables it.")
    smtps_listen: str = _doc(
        "", "SMTP listener with implicit TLS (RFC 8314, port 465 style) HOST:PORT; needs tls_cert_file.")
    submission_listen: str = _doc(
        "", "Submission listener (RFC 6409) HOST:PORT, e.g. 127.0.0.1:587: MAIL needs AUTH first; empty disables it.")
    tls_cert_file: str = _doc(
        "", "PEM certificate (chain) of the SMTP listeners; with tls_key_file they offer STARTTLS.")
    tls_key_file: str = _doc("", "PEM private key of tls_cert_file. Both are read again on SIGHUP.")
    http_listen: str = _doc("127.0.0.1:8025", "HTTP API HOST:PORT; empty disables it.")
    http_hosts: list[str] = _doc(
        [], "Host names the HTTP API also answers to (Host and Origin headers), e.g. its DNS name behind a proxy.")
    relay: str = _doc(
        "", "Smarthost HOST:PORT for every non-local SMTP recipient, smtps://HOST:PORT for implicit TLS (port 465);"
        " empty = MX lookup.")
    relay_user: str = _doc("", "Account at the relay for AUTH PLAIN/LOGIN (RFC 4954), sent only over TLS.")
    relay_password_file: str = _doc(
        "", "File holding relay_user's password (one line); read for each connection, checked when serve starts.")
    smtp_tls_security_level: str = _doc(
        "may", "Outbound TLS: none, may (opportunistic STARTTLS), encrypt (no mail in clear), verify (certificate"
        " and host name checked too); as Postfix's.")
    smtp_tls_ca_file: str = _doc("", "PEM CA certificates trusted at level verify instead of the system store.")
    smtp_mta_sts: bool = _doc(
        False, "MX delivery honours MTA-STS (RFC 8461): an enforced policy allows only its MX hosts, verified.")
    smtp_auth_without_tls: bool = _doc(
        False, "Let the SMTP client send a relay password without TLS, at level none only (a loopback test relay).")
    smtp_auth_soft_bounce: bool = _doc(
        True, "A 5xx reply to outbound AUTH defers the mail (fix the password, it goes); false: it bounces.")
    local_domains: list[str] = _doc(["localhost"], "Domains whose mail is filed into local mailboxes.")
    mailboxes: list[str] = _doc([], "Local mailboxes that exist; empty = any address in a local domain.")
    maildir: str = _doc(
        "", "Deliver the mail of every local domain into maildirs at this path (%d domain, %u local part,"
        " %m user@domain), not the store: a built-in transport maildir; [[transports]] of type maildir for more.")
    aliases: str = _doc(
        "", "Aliases file of the local domains, Postfix aliases(5) format (name: member, ...; :include:/path;"
        " owner-NAME); expanded at submission, read again on SIGHUP; empty = none.")
    aliases_user: str = _doc(
        "", "Account the aliases' command, file and maildir members run and are written as (Postfix's"
        " default_privs); needed when msgspool runs as root; empty = msgspool's own.")
    allow_mail_to_commands: list[str] = _doc(
        ["alias"], "Where the aliases' |command members may be written (Postfix's allow_mail_to_commands): \"alias\""
        " the aliases file, \"include\" its :include: files too; [] = nowhere.")
    allow_mail_to_files: list[str] = _doc(
        ["alias"], "Where the aliases' /file (mbox) and /maildir/ members may be written (Postfix's"
        " allow_mail_to_files): \"alias\" the aliases file, \"include\" its :include: files too; [] = nowhere.")
    postmaster: str = _doc("", "Where a report about mail from the null sender goes (double bounce); empty: dropped.")
    hostname: str = _doc("", "Name used in the greeting, EHLO and Received:; empty = this host's name.")
    trusted_networks: list[str] = _doc(
        ["127.0.0.0/8", "::1/128"], "Clients in these networks may relay to non-local domains."
    )
    message_size_limit: int = _doc(10_240_000, "Largest message accepted, in bytes (SMTP SIZE).")
    queue_minfree: int = _doc(
        0, "Bytes that must stay free on the spool's file system for SMTP to take a message: MAIL is answered "
        "452 4.3.1 below it, or when its SIZE would not fit (Postfix's name); 0 = only the SIZE check.")
    recipient_limit: int = _doc(1000, "Most recipients accepted in one SMTP transaction.")
    hopcount_limit: int = _doc(50, "More Received: headers than this is a loop: 554 5.4.6.")
    smtpd_timeout: float = _doc(300.0, "Seconds an SMTP client may stay silent (RFC 5321 §4.5.3.2.7).")
    smtpd_data_timeout: float = _doc(
        600.0, "Seconds an SMTP client has for a whole DATA phase, however often it sends a byte; then 421 4.4.2.")
    smtpd_connection_limit: int = _doc(
        200, "Most SMTP sessions open at once from clients outside trusted_networks; more get 421 4.7.0. 0 = no limit.")
    smtpd_client_connection_limit: int = _doc(
        20, "Most SMTP sessions open at once from one client address outside trusted_networks; 0 = no limit.")
    smtpd_client_message_rate_limit: int = _doc(
        1000, "MAIL commands per minute from one client address outside trusted_networks; more get 450 4.7.1.")
    smtpd_client_recipient_rate_limit: int = _doc(
        10000, "RCPT commands per minute from one client address outside trusted_networks; more get 450 4.7.1.")
    smtpd_auth_allow_plaintext_loopback: bool = _doc(
        False, "Offer AUTH in clear to loopback clients too (tests, make run); otherwise only after TLS.")
    smtpd_auth_failure_limit: int = _doc(
        10, "Failed logins from one client address within smtpd_auth_failure_window that lock it out; 0 = no lockout.")
    smtpd_auth_failure_window: float = _doc(
        600.0, "Seconds failed logins are counted over, and how long a client that reached the limit stays locked out.")
    smtpd_auth_failure_delay: float = _doc(
        1.0, "Seconds the 535 after a failed login waits, times the client's failures so far in the window.")
    min_backoff: float = _doc(300.0, "First retry delay after a temporary failure, seconds.")
    max_backoff: float = _doc(4000.0, "Longest retry delay, seconds.")
    max_lifetime: float = _doc(
        432000.0, "Seconds before an undelivered recipient expires (5 days), counted from its release.")
    max_attempts: int = _doc(0, "Attempts per recipient before a temporary failure is final (554 5.4.7); 0 = no cap.")
    future_release_max: int = _doc(
        604800, "Longest SMTP FUTURERELEASE hold (RFC 4865 HOLDFOR/HOLDUNTIL), seconds; 0 disables it.")
    suppression_time: float = _doc(
        2592000.0, "Seconds an address that hard-bounced (a remote's 5xx about the address: 5.1.x, 5.2.0, 5.2.1)"
        " stays on the suppression list: new mail to it fails at once (550 5.1.1); 30 days; 0 = none added.")
    delay_warning_time: float = _doc(
        0.0, "Seconds after arrival before a still-deferred recipient's sender gets one delay notice; 0 = none.")
    probe_min: float = _doc(0.5, "First probe of a down destination after this many seconds.")
    probe_max: float = _doc(3.0, "Longest interval between probes of a down destination, seconds.")
    destination_concurrency: int = _doc(20, "Parallel connections per destination.")
    destination_recipient_limit: int = _doc(50, "Most recipients per SMTP transaction.")
    connection_idle_time: float = _doc(2.0, "Seconds an idle outbound connection is kept for reuse.")
    connection_reuse_limit: int = _doc(1000, "Transactions per outbound connection before it is closed.")
    active_limit: int = _doc(
        20000, "Most recipients in memory at once; retries and backlog fill at most half, fresh mail the rest.")
    smtp_connect_timeout: float = _doc(30.0, "Outbound TCP connect timeout, seconds.")
    smtp_mx_address_limit: int = _doc(
        5, "MX delivery: the most addresses (of the MX hosts, in preference order) one attempt connects to before"
        " the destination counts as down (Postfix smtp_mx_address_limit); 0: no limit.")
    smtp_mx_session_limit: int = _doc(
        2, "MX delivery: the most sessions (MX addresses) one message goes to when a session leaves recipients"
        " with a 4xx or is lost (Postfix smtp_mx_session_limit); 0: no limit.")
    smtp_greeting_timeout: float = _doc(300.0, "Outbound wait for the 220 greeting (RFC 5321 §4.5.3.2.1).")
    smtp_mail_timeout: float = _doc(300.0, "Outbound MAIL reply timeout (§4.5.3.2.2).")
    smtp_rcpt_timeout: float = _doc(300.0, "Outbound RCPT reply timeout (§4.5.3.2.3).")
    smtp_data_init_timeout: float = _doc(120.0, "Outbound DATA 354 timeout (§4.5.3.2.4).")
    smtp_data_block_timeout: float = _doc(180.0, "Outbound timeout per data block sent (§4.5.3.2.5).")
    smtp_data_done_timeout: float = _doc(600.0, "Outbound wait for the reply after <CRLF>.<CRLF> (§4.5.3.2.6).")
    commit_batch: int = _doc(512, "Most writes that share one commit (group commit).")
    log_format: str = _doc(
        "text", "serve's log on stderr: text (Postfix-style lines) or json (one JSON object per line per event, the"
        " delivery line's fields as members).")
    transports: list[dict[str, Any]] = _doc([], "Extra transports, in order; see [[transports]].")
    hooks: list[dict[str, Any]] = _doc([], "Outbound hooks (preprocessors), in order; see [[hooks]].")
    hook_timeout: float = _doc(30.0, "Seconds a hook may take before its message is held with the error.")
    crash_limit: int = _doc(3, "Attempts that crash a transport before the message is held.")
    shutdown_timeout: float = _doc(
        10.0, "Seconds an orderly stop (SIGTERM) waits for sessions and transactions in flight to finish.")
    lease_time: float = _doc(
        10.0, "Seconds a delivery node's lease on the recipients it holds lasts; its heartbeat renews it every quarter"
        " of that, and work of a node silent for longer is taken over by another.")
    poll_interval: float = _doc(
        5.0, "On a spool shared by several nodes (PostgreSQL): the longest a node goes without looking for due work,"
        " so a lost wakeup between nodes costs at most this; one machine alone is woken locally and waits for"
        " the next due time.")
    watchdog_interval: float = _doc(
        60.0, "Seconds between the watchdog's looks for active recipients no delivery holds (two looks return one).")
    webhooks: list[dict[str, Any]] = _doc([], "URLs that get a signed JSON POST per event; see [[webhooks]].")
    fetch: list[dict[str, Any]] = _doc(
        [], "POP3/IMAP accounts polled by serve, each message filed into a local mailbox; see [[fetch]].")

    @property
    def spool_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def webhook_targets(self) -> list[WebhookTarget]:
        try:
            return parse_targets(self.webhooks)
        except ValueError as err:
            raise ConfigError(str(err)) from err

    @property
    def fetch_accounts(self) -> list[FetchAccount]:
        try:
            return parse_accounts(self.fetch)
        except ValueError as err:
            raise ConfigError(str(err)) from err

    @property
    def host_name(self) -> str:
        return self.hostname or socket.gethostname() or "localhost"

    def merge(self, values: dict[str, Any], source: str) -> None:
        known = {f.name: f for f in fields(self)}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown setting {key!r}")
            current = getattr(self, key)
            # bool is an int subclass: `true` must not pass for a number, nor 1 for a flag.
            if isinstance(value, bool) != isinstance(current, bool) or not isinstance(value, type(current)):
                if not (isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool)):
                    raise ConfigError(f"{source}: {key} must be {type(current).__name__}, not {value!r}")
                value = float(value)
            if key == "webhooks":
                _check_webhooks(value, source)
            if key == "log_format" and value not in LOG_FORMATS:
                raise ConfigError(f"{source}: log_format must be one of {', '.join(LOG_FORMATS)}, not {value!r}")
            if key == "fetch":
                _check_fetch(value, source)
            if key in ("allow_mail_to_commands", "allow_mail_to_files") and not set(value) <= {"alias", "include"}:
                raise ConfigError(f"{source}: {key} may hold only \"alias\" and \"include\", not {value!r}")
            setattr(self, key, value)


def _check_webhooks(value: list[Any], source: str) -> None:
    """Checked when loaded, so that a bad webhook stops `serve` at once (exit 2), not at delivery."""
    try:
        parse_targets(value)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from err


def _check_fetch(value: list[Any], source: str) -> None:
    try:
        parse_accounts(value)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from err


def settings_doc() -> list[tuple[str, Any, str]]:
    """(key, default, sentence) for every setting: the source of the README table."""
    s = Settings()
    return [(f.name, getattr(s, f.name), f.metadata["doc"]) for f in fields(Settings)]


ENVIRONMENT = {"store": "MSGSPOOL_STORE", "database_url": "MSGSPOOL_DATABASE_URL"}


def load(config_file: str | None = None, data_dir: str | None = None, **overrides: Any) -> Settings:
    """Defaults, then the TOML file, then the environment, then explicit overrides (the CLI)."""
    settings = Settings()
    data = data_dir or os.environ.get("MSGSPOOL_DATA")
    path = Path(config_file) if config_file else None
    if path is None:
        candidate = Path(data or DEFAULT_DATA_DIR) / CONFIG_NAME
        path = candidate if candidate.exists() else None
    if path is not None:
        try:
            with path.open("rb") as f:
                settings.merge(tomllib.load(f), str(path))
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"cannot read config {path}: {err}") from err
    if data:
        settings.data_dir = data
    # The store may come from the environment too: a database URL often carries a password that
    # belongs in a secret, not in a file, and every node of one spool is then started the same way.
    settings.merge({key: os.environ[var] for key, var in ENVIRONMENT.items() if os.environ.get(var)}, "environment")
    settings.merge({k: v for k, v in overrides.items() if v is not None}, "command line")
    return settings
