"""What the pipe transport decides, without running anything (Postfix pipe(8)).

The command is an argument vector (never a shell command line) whose ``${name}`` macros are expanded
per run from the envelope:

    ${sender}             the envelope sender; the null sender as `null_sender` (MAILER-DAEMON)
    ${recipient}          the recipient address          } an argument holding one of these becomes
    ${original_recipient} the address as first received  } one argument per recipient of the run
    ${mailbox}            the local part                 } (Postfix: "expands into as many command-
    ${user}               the local part less extension  }  line arguments as there are recipients")
    ${extension}          what follows the delimiter     }
    ${domain}             the recipient domain           }
    ${nexthop}            the destination (the domain, unless the transport names one)
    ${queue_id}           the message id
    ${size}               the message size in octets

The envelope also goes into the environment, with local(8)'s names: SENDER, RECIPIENT,
ORIGINAL_RECIPIENT, LOCAL, EXTENSION, DOMAIN, NEXTHOP, QUEUE_ID, SIZE (several recipients are
separated by spaces there; USER, HOME and LOGNAME are those of the account the command runs as).

Flags, as pipe(8) spells them: ``F`` an mbox ``From `` line first, ``R`` Return-Path, ``O``
X-Original-To, ``D`` Delivered-To (``O`` and ``D`` only one recipient per run), ``B`` a blank line
at the end, ``.`` dot-stuffing, ``>`` ``>From `` quoting, ``h`` the domain in lower case, ``u`` the
local part in lower case, ``q`` an RFC 5321 quoted local part where it needs one, ``X`` final
delivery (a success is reported `delivered`, not `relayed`).

The exit status is read as Postfix reads it (global/pipe_command.c, global/sys_exits.c): 0 is
delivered; a command that prints ``D.S.N text`` and fails gets that status; a <sysexits.h> code gets
its table's status (EX_TEMPFAIL and EX_OSERR are temporary, the others permanent); any other code
fails with 5.3.0; a command killed by a signal is deferred (4.3.0). A command that exceeds its time
limit is deferred (4.3.0) — Postfix bounces it; here a slow command never loses mail.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from msgspool.domain.address import split
from msgspool.domain.outcome import Reply

# <sysexits.h> and the status Postfix gives each (global/sys_exits.c): the class decides.
SYSEXITS: dict[int, tuple[str, str]] = {
    64: ("5.3.0", "command line usage error"),  # EX_USAGE
    65: ("5.6.0", "data format error"),  # EX_DATAERR
    66: ("5.3.0", "cannot open input"),  # EX_NOINPUT
    67: ("5.1.1", "user unknown"),  # EX_NOUSER
    68: ("5.1.2", "host name unknown"),  # EX_NOHOST
    69: ("5.3.0", "service unavailable"),  # EX_UNAVAILABLE
    70: ("5.3.0", "internal software error"),  # EX_SOFTWARE
    71: ("4.3.0", "system resource problem"),  # EX_OSERR
    72: ("5.3.0", "critical OS file missing"),  # EX_OSFILE
    73: ("5.2.0", "can't create user output file"),  # EX_CANTCREAT
    74: ("5.3.0", "input/output error"),  # EX_IOERR
    75: ("4.3.0", "temporary failure"),  # EX_TEMPFAIL
    76: ("5.5.0", "remote error in protocol"),  # EX_PROTOCOL
    77: ("5.7.0", "permission denied"),  # EX_NOPERM
    78: ("5.3.5", "local configuration error"),  # EX_CONFIG
}
EX_TEMPFAIL = 75

PER_RECIPIENT = frozenset({"recipient", "original_recipient", "mailbox", "user", "extension", "domain"})
PER_RUN = frozenset({"sender", "nexthop", "queue_id", "size"})
MACROS = PER_RECIPIENT | PER_RUN
FLAGS = frozenset("FRODB.>huqX")
_MACRO = re.compile(r"\$\{(\w+)\}|\$\((\w+)\)")
_DSN_TEXT = re.compile(r"^([45])\.(\d{1,3})\.(\d{1,3})\s+(.*)$", re.DOTALL)
_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")


def parse_flags(flags: str) -> frozenset[str]:
    """The flags of a ``flags = "..."`` option; ValueError names an unknown one."""
    unknown = sorted(set(flags) - FLAGS)
    if unknown:
        raise ValueError(f"unknown pipe flag(s) {''.join(unknown)!r} (known: {''.join(sorted(FLAGS))})")
    return frozenset(flags)


def macros_in(argv: Sequence[str]) -> set[str]:
    return {a or b for arg in argv for a, b in _MACRO.findall(arg)}


@dataclass(frozen=True, slots=True)
class RecipientParts:
    recipient: str
    original_recipient: str
    mailbox: str
    user: str
    extension: str
    domain: str


def recipient_parts(address: str, original: str, delimiter: str, flags: frozenset[str]) -> RecipientParts:
    """The per-recipient macros of one address; ``h``/``u``/``q`` applied to the addresses."""
    local, domain = split(address)
    user, _, extension = local.partition(delimiter) if delimiter else (local, "", "")
    return RecipientParts(_fold(address, flags), _fold(original or address, flags), local, user, extension, domain)


def _fold(address: str, flags: frozenset[str]) -> str:
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if "u" in flags:
        local = local.lower()
    if "h" in flags:
        domain = domain.lower()
    if "q" in flags and local and not _ATOM.match(local):  # RFC 5321 §4.1.2 Quoted-string
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{local}@{domain}" if at else local


@dataclass(frozen=True, slots=True)
class Envelope:
    """One run of the command: the message's envelope and the recipients it delivers to."""

    sender: str  # already `null_sender` when the message's is empty
    recipients: tuple[RecipientParts, ...]
    nexthop: str
    queue_id: str
    size: int

    def value(self, name: str) -> str:
        return {"sender": self.sender, "nexthop": self.nexthop, "queue_id": self.queue_id,
                "size": str(self.size)}[name]


def expand_argv(argv: Sequence[str], envelope: Envelope) -> list[str]:
    """The command line of one run: macros replaced; an argument with a per-recipient macro is
    repeated for each recipient (pipe(8)). Nothing is ever split on whitespace or given to a shell."""
    out: list[str] = []
    for arg in argv:
        names = macros_in([arg])
        if names & PER_RECIPIENT:
            out.extend(_substitute(arg, envelope, r) for r in envelope.recipients)
        else:
            out.append(_substitute(arg, envelope, None))
    return out


def _substitute(arg: str, envelope: Envelope, recipient: RecipientParts | None) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in PER_RECIPIENT:
            assert recipient is not None
            return str(getattr(recipient, name))
        return envelope.value(name)

    return _MACRO.sub(one, arg)


def environment(envelope: Envelope) -> dict[str, str]:
    """The envelope as environment variables (local(8)'s names)."""
    def joined(name: str) -> str:
        return " ".join(str(getattr(r, name)) for r in envelope.recipients)

    return {"SENDER": envelope.sender, "RECIPIENT": joined("recipient"),
            "ORIGINAL_RECIPIENT": joined("original_recipient"), "LOCAL": joined("mailbox"),
            "EXTENSION": joined("extension"), "DOMAIN": joined("domain"), "NEXTHOP": envelope.nexthop,
            "QUEUE_ID": envelope.queue_id, "SIZE": str(envelope.size)}


def command_input(content: bytes, envelope: Envelope, flags: frozenset[str], *, return_path: str,
                  eol: bytes = b"\n", now: float | None = None) -> bytes:
    """What the command reads on stdin: the prepended lines the flags ask for (in mail_copy.c's
    order), then the message with `eol` line ends, ``>From``/dot quoted, a blank line after (``B``)."""
    head: list[str] = []
    if "F" in flags:  # the mbox From_ line: sender and asctime(), two spaces between
        head.append(f"From {return_path or 'MAILER-DAEMON'}  {time.asctime(time.localtime(now))}")
    if "R" in flags:
        head.append(f"Return-Path: <{return_path}>")
    if "O" in flags:
        head.extend(f"X-Original-To: {r.original_recipient}" for r in envelope.recipients)
    if "D" in flags:
        head.extend(f"Delivered-To: {r.recipient}" for r in envelope.recipients)
    body = content.replace(b"\r\n", b"\n")
    if ">" in flags:
        body = re.sub(rb"(?m)^(>*From )", rb">\1", body)
    if "." in flags:
        body = re.sub(rb"(?m)^\.", b"..", body)
    if body and not body.endswith(b"\n"):
        body += b"\n"
    if "B" in flags:
        body += b"\n"
    data = "".join(line + "\n" for line in head).encode("utf-8", "surrogateescape") + body
    return data.replace(b"\n", eol) if eol != b"\n" else data


def printable(output: bytes, limit: int) -> str:
    """Command output for a reply: at most `limit` octets, tabs and newlines as spaces, other
    control characters as ``_`` (Postfix's translit + printable)."""
    text = output[:limit].decode("utf-8", "replace")
    text = re.sub(r"[\t\r\n]+", " ", text)
    return re.sub(r"[\x00-\x1f\x7f]", "_", text).strip()


def exit_reply(command: str, returncode: int | None, output: str, *, timed_out: bool = False,
               time_limit: float = 0.0) -> Reply:
    """The outcome of one run, as a reply (module docstring): None as returncode: it never ran to an end."""
    said = f"; output: {output}" if output else ""
    if timed_out:
        return Reply(451, "4.3.0", f"command {command} exceeded its time limit of {time_limit:g} s{said}")
    if returncode is None:
        return Reply(451, "4.3.0", f"command {command} did not finish{said}")
    if returncode == 0:
        return Reply(250, "2.0.0", f"delivered to command {command}{said}")
    if returncode < 0:
        return Reply(451, "4.3.0", f"command {command} died with signal {-returncode}{said}")
    stated = _DSN_TEXT.match(output)
    if stated:  # the command said which status, as "D.S.N text"
        dsn = ".".join(stated.group(i) for i in (1, 2, 3))
        return Reply(451 if dsn[0] == "4" else 550, dsn, f"{stated.group(4)} (command {command} exit {returncode})")
    dsn, meaning = SYSEXITS.get(returncode, ("5.3.0", f"unknown mail system error {returncode}"))
    return Reply(451 if dsn[0] == "4" else 550, dsn, f"command {command} exit {returncode}: {meaning}{said}")
