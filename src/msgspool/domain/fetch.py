"""Fetch accounts, the pure part: what a ``[[fetch]]`` table of the settings means, which messages of
a remote maildrop are new, and what a fetched message gets on top before it is filed (MAPI: the
transport provider receives a message from its messaging system; fetchmail and getmail do the same
job as programs of their own).

An account is one ``[[fetch]]`` table, checked when the configuration is loaded::

    [[fetch]]
    name = "work"               # unique; in logs, `status` and the fetched messages' history
    protocol = "imap"           # pop3 (RFC 1939) or imap (RFC 3501)
    host = "imap.example.org"
    port = 993                  # default: 995/993 with security = "tls", else 110/143
    security = "tls"            # tls (implicit), starttls, or none (loopback tests only)
    ca_file = ""                # PEM CA certificates instead of the system's; verify = false: unchecked
    user = "me@example.org"
    password_file = "/etc/msgspool/work.password"   # one line; read for each session, never logged
    mailbox = "me@localhost"    # the local mailbox the messages are filed into
    folder = "INBOX"            # IMAP: the folder fetched from
    interval = 60               # seconds between polls (IMAP IDLE wakes a fetch at once)
    after = "delete"            # POP3: delete | keep; IMAP: delete | flag | move:FOLDER
    idle = true                 # IMAP: wait with IDLE (RFC 2177) when offered
    timeout = 60                # seconds a server may stay silent

A message is new while its unique id is not among those recorded for the account: the POP3 UIDL
(RFC 1939 §7), or ``UIDVALIDITY:UID`` for IMAP (RFC 3501 §2.3.1.1). The id is recorded in the same
commit as the message, and the message is deleted, flagged or moved on the server only after it, so
a crash in between fetches it again, finds its id, and files nothing twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from msgspool.domain.address import valid_smtp

POP3, IMAP = "pop3", "imap"
SECURITIES = ("tls", "starttls", "none")
PORTS = {(POP3, True): 995, (POP3, False): 110, (IMAP, True): 993, (IMAP, False): 143}
AFTER = {POP3: ("delete", "keep"), IMAP: ("delete", "flag", "move:FOLDER")}
DEFAULT_INTERVAL = 60.0
DEFAULT_TIMEOUT = 60.0
# The submission's meta keys that make the store record the id with the message (stores/ops.py).
FETCH_ACCOUNT, FETCH_UID, FETCH_SOURCE = "fetch_account", "fetch_uid", "fetch_source"
_REQUIRED = ("name", "protocol", "host", "user", "password_file", "mailbox")
_OPTIONAL: dict[str, Any] = {"port": 0, "security": "tls", "ca_file": "", "verify": True, "folder": "INBOX",
                             "interval": DEFAULT_INTERVAL, "after": "delete", "timeout": DEFAULT_TIMEOUT,
                             "idle": True}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_RETURN_PATH = re.compile(rb"^Return-Path:[ \t]*<([^>\r\n]*)>", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class FetchAccount:
    name: str
    protocol: str
    host: str
    port: int
    security: str
    user: str
    password_file: str
    mailbox: str
    folder: str = "INBOX"
    interval: float = DEFAULT_INTERVAL
    after: str = "delete"
    ca_file: str = ""
    verify: bool = True
    timeout: float = DEFAULT_TIMEOUT
    idle: bool = True  # IMAP: wait with IDLE (RFC 2177) when the server offers it

    @property
    def move_to(self) -> str | None:
        """The folder of ``after = "move:FOLDER"``, else None."""
        return self.after[len("move:"):] if self.after.startswith("move:") else None

    @property
    def source(self) -> str:
        """Where it fetches from, for logs and history: ``imap://user@host:port/INBOX``."""
        folder = f"/{self.folder}" if self.protocol == IMAP else ""
        return f"{self.protocol}://{self.user}@{self.host}:{self.port}{folder}"


def parse_accounts(raw: Iterable[Mapping[str, Any]]) -> list[FetchAccount]:
    """The accounts of the `fetch` setting; ValueError names the first bad one and why."""
    accounts: list[FetchAccount] = []
    for position, table in enumerate(raw, 1):
        account = _parse_account(table, position)
        if any(a.name == account.name for a in accounts):
            raise ValueError(f"fetch {position}: name {account.name!r} is given twice")
        accounts.append(account)
    return accounts


def _parse_account(table: Mapping[str, Any], position: int) -> FetchAccount:
    where = f"fetch {position}"
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: must be a table with {', '.join(_REQUIRED)}")
    unknown = set(table) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    for key in _REQUIRED:
        if not isinstance(table.get(key), str) or not table[key]:
            raise ValueError(f"{where}: {key} must be a non-empty string")
    where = f"fetch {table['name']}"
    values = {**_OPTIONAL, **table}
    for key, default in _OPTIONAL.items():
        _check_type(where, key, values[key], default)
    return _checked(where, values)


def _check_type(where: str, key: str, value: Any, default: Any) -> None:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int | float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"{where}: {key} must be {type(default).__name__}, not {value!r}")


def _checked(where: str, v: dict[str, Any]) -> FetchAccount:
    if not _NAME.match(v["name"]):
        raise ValueError(f"{where}: name must be letters, digits, '.', '_' or '-'")
    protocol = v["protocol"].lower()
    if protocol not in (POP3, IMAP):
        raise ValueError(f"{where}: protocol must be pop3 or imap, not {v['protocol']!r}")
    security = v["security"].lower()
    if security not in SECURITIES:
        raise ValueError(f"{where}: security must be one of {', '.join(SECURITIES)}, not {v['security']!r}")
    port = int(v["port"]) or PORTS[protocol, security == "tls"]
    if not 0 < port < 65536 or (v["port"] and port != v["port"]):
        raise ValueError(f"{where}: port must be 1 to 65535, not {v['port']!r}")
    if not valid_smtp(v["mailbox"]):
        raise ValueError(f"{where}: mailbox must be a local address (user@domain), not {v['mailbox']!r}")
    if not v["interval"] > 0 or not v["timeout"] > 0:
        raise ValueError(f"{where}: interval and timeout must be more than 0 seconds")
    after = v["after"]
    allowed = AFTER[protocol]
    if after not in allowed and not (protocol == IMAP and after.startswith("move:") and after[5:].strip()):
        raise ValueError(f"{where}: after must be {' | '.join(allowed)} for {protocol}, not {after!r}")
    if protocol == POP3 and v["folder"] != "INBOX":
        raise ValueError(f"{where}: folder is for imap only (a POP3 maildrop has none)")
    return FetchAccount(
        name=v["name"], protocol=protocol, host=v["host"], port=port, security=security, user=v["user"],
        password_file=v["password_file"], mailbox=v["mailbox"], folder=v["folder"], interval=float(v["interval"]),
        after=after, ca_file=v["ca_file"], verify=v["verify"], timeout=float(v["timeout"]), idle=v["idle"])


def new_uids(present: Sequence[str], seen: Iterable[str]) -> list[str]:
    """The ids of `present` (in the server's order) not yet fetched."""
    known = set(seen)
    return [uid for uid in present if uid not in known]


def gone_uids(present: Iterable[str], seen: Iterable[str]) -> list[str]:
    """Recorded ids the server no longer lists: forgotten, so the record is as large as the maildrop."""
    listed = set(present)
    return sorted(uid for uid in seen if uid not in listed)


def envelope_sender(content: bytes) -> str:
    """The envelope sender a fetched message had: its first Return-Path (RFC 5321 §4.4, added by
    the final delivery), when it is a valid address; else the null sender, so a report about it goes
    to nobody (the remote side delivered it already)."""
    head = content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n", b"\n")
    for line in head.split(b"\n"):
        match = _RETURN_PATH.match(line)
        if match:
            sender = match.group(1).decode("utf-8", "replace").strip()
            return sender if valid_smtp(sender) else ""
    return ""


def received_header(account: FetchAccount, uid: str, hostname: str, now: float) -> bytes:
    """The trace line a fetched message gets on top (RFC 5321 §4.4; fetchmail adds one too): which
    server, protocol and account it came from, so `hopcount_limit` and readers see the hop."""
    protocol = "POP3" if account.protocol == POP3 else "IMAP"
    if account.security != "none":
        protocol += "S"
    uid_text = re.sub(r"[^\x21-\x7e]", "?", uid)[:100]
    return (f"Received: from {account.host} by {hostname} with {protocol} id {uid_text}\r\n"
            f"\tfor <{account.mailbox}> (fetch {account.name}); {formatdate(now)}\r\n").encode()
