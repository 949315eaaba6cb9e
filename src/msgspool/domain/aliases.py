"""Recipient expansion (MAPI IMAPISupport::ExpandRecips): the aliases table of local domains, in
Postfix's aliases(5) format, and its expansion into the recipients mail is really for. Pure code:
the file's text comes in as a string (spooler/aliases.py reads it, and the `:include:` files).

The format (aliases(5))::

    # a comment; empty lines are ignored
    name: member, member, ...
        member, ...             # a line that starts with white space continues the one above
    "odd name": member          # quoted when the name has white space, '#', ':' or '@'

A name is a local part, folded to lower case; a member is an address (a bare name is a local
address of the domain being expanded), ``:include:/path`` (more members, one or more per line,
read from that file), ``|command`` (run by the aliases' own pipe transport: the command line
split as a shell would, but never given to one), ``/path/`` (a maildir: the trailing slash says so)
or ``/path`` (an mbox file the message is appended to): both written by the aliases' own file
transport (transports/file.py), as Postfix's local(8) delivers to them. Commands and files are
allowed only where the operator's settings allow them (spooler/aliases.py: the aliases file
itself by default, not its ``:include:`` files, as Postfix's allow_mail_to_commands and
allow_mail_to_files).

Expansion, as Postfix's local(8) does it: a member that is itself an alias is expanded in turn
(nested); an alias that reaches itself directly (``bob: bob, bob@elsewhere``) delivers to its own
mailbox; one reached again further down its own chain is a loop (``a: b`` / ``b: a``), and that
member fails (554 5.4.6) instead of being expanded forever; duplicates are delivered once. With
``owner-NAME`` in the table, mail expanded from NAME gets ``owner-NAME@domain`` as its envelope
sender, so bounces from the list's members go to its owner, not to whoever wrote to the list
(Postfix's owner_request_special, sendmail's convention). ``NAME-request`` with no entry of its
own goes to ``owner-NAME`` when NAME has an owner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from msgspool.domain.address import split
from msgspool.domain.outcome import Reply

MAX_DEPTH = 100  # aliases within aliases (Postfix local(8) stops at 100 too)
# The address type of a `|command` member: its address is the command line, and only the built-in
# pipe transport of the aliases takes it. Intake refuses it from any submitter (it would run a command).
ALIAS_COMMAND = "ALIAS-PIPE"
# The address type of a `/path` or `/path/` member: its address is the path, and only the aliases'
# file transport takes it. Intake refuses it from any submitter too (it would write that file).
ALIAS_FILE = "ALIAS-FILE"
ALIAS_ONLY = frozenset({ALIAS_COMMAND, ALIAS_FILE})  # address types only the aliases file gives
OWNER_PREFIX, REQUEST_SUFFIX = "owner-", "-request"


class MemberKind(StrEnum):
    ADDRESS = "address"
    INCLUDE = "include"  # :include:/path
    COMMAND = "command"  # |command: the pipe transport
    FILE = "file"  # /path (an mbox file) or /path/ (a maildir): the aliases' file transport


@dataclass(frozen=True, slots=True)
class Member:
    kind: MemberKind
    value: str  # the address, path or command (without ':include:' or '|')
    source: str = ""  # where it was written: file name and line, for errors and the history
    line: int = 0

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True, slots=True)
class Alias:
    name: str  # the local part, lower case
    members: tuple[Member, ...]
    source: str = ""
    line: int = 0

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True, slots=True)
class Problem:
    """An error in an aliases file, with the line it is on (what `msgspool aliases check` prints)."""

    source: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


def parse_aliases(text: str, source: str = "aliases") -> tuple[list[Alias], list[Problem]]:
    """The entries of an aliases(5) file, in order, and the problems found (an entry with a
    problem is left out). A name given twice is a problem: Postfix's postalias keeps the first."""
    aliases: list[Alias] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for line_no, logical in _logical_lines(text):
        name, rest, error = _split_entry(logical)
        if error:
            problems.append(Problem(source, line_no, error))
            continue
        members, errors = _members(rest, source, line_no)
        problems += errors
        if name in seen:
            problems.append(Problem(source, line_no, f"alias {name!r} already defined on line {seen[name]}"))
            continue
        if not members and not errors:
            problems.append(Problem(source, line_no, f"alias {name!r} has no members"))
        if errors or not members:
            continue
        seen[name] = line_no
        aliases.append(Alias(name, tuple(members), source, line_no))
    return aliases, problems


def parse_include(text: str, source: str) -> tuple[list[Member], list[Problem]]:
    """The members of an ``:include:`` file: separated by commas or new lines; comments allowed."""
    members: list[Member] = []
    problems: list[Problem] = []
    for line_no, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        found, errors = _members(raw, source, line_no)
        members += found
        problems += errors
    return members, problems


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each logical line: continuation lines joined, comments gone."""
    lines: list[tuple[int, str]] = []
    for line_no, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0] in " \t" and lines:
            first, before = lines[-1]
            lines[-1] = (first, f"{before} {stripped}")
        else:
            lines.append((line_no, raw.rstrip()))
    return lines


def _split_entry(logical: str) -> tuple[str, str, str]:
    """(name, members text, error) of ``name: members``; a quoted name may hold ':' itself."""
    if logical[0] in " \t":
        return "", "", "continuation line before any alias"
    if logical.startswith('"'):
        end = logical.find('"', 1)
        if end < 0:
            return "", "", "unterminated quoted name"
        name, rest = logical[1:end], logical[end + 1:].lstrip()
        if not rest.startswith(":"):
            return "", "", f"expected ':' after the name \"{name}\""
        rest = rest[1:]
    else:
        name, colon, rest = logical.partition(":")
        if not colon:
            return "", "", "expected 'name: member, ...'"
        if not name.strip() or any(c in name.strip() for c in ' \t"@#'):
            return "", "", f"bad alias name {name.strip()!r} (quote a name with spaces, '#', ':' or '@')"
    name = name.strip().lower()
    if not name:
        return "", "", "empty alias name"
    return name, rest, ""


def _members(text: str, source: str, line_no: int) -> tuple[list[Member], list[Problem]]:
    members: list[Member] = []
    problems: list[Problem] = []
    if text.count('"') % 2:
        return [], [Problem(source, line_no, "unterminated quote")]
    for item in _split_commas(text):
        value = item.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].strip()
        if not value:
            continue
        member, error = _member(value, source, line_no)
        if error:
            problems.append(Problem(source, line_no, error))
        else:
            members.append(member)
    return members, problems


def _split_commas(text: str) -> list[str]:
    """Split on commas outside double quotes (a quoted command or address may hold commas)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _member(value: str, source: str, line_no: int) -> tuple[Member, str]:
    if value.lower().startswith(":include:"):
        path = value[len(":include:"):].strip()
        if not path.startswith("/"):
            return Member(MemberKind.INCLUDE, path), f":include: needs an absolute path, not {path!r}"
        return Member(MemberKind.INCLUDE, path, source, line_no), ""
    if value.startswith("|"):
        command = value[1:].strip()
        return Member(MemberKind.COMMAND, command, source, line_no), "" if command else "empty |command"
    if value.startswith("/"):
        if value.strip("/") == "" or "\0" in value:
            return Member(MemberKind.FILE, value), f"{value!r} names no file or maildir"
        return Member(MemberKind.FILE, value, source, line_no), ""
    local, domain = split(value)
    if not local or any(c.isspace() for c in value) or (("@" in value) and not domain):
        return Member(MemberKind.ADDRESS, value), f"bad member address {value!r}"
    return Member(MemberKind.ADDRESS, value, source, line_no), ""


# -- the table and its expansion ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expanded:
    """One recipient an address expanded to."""

    address: str
    chain: tuple[str, ...]  # the aliases it came through, outermost first (addresses)
    where: str = ""  # the file and line of the member that named it
    owner: str | None = None  # owner-NAME@domain of the innermost list with an owner: its envelope sender
    refusal: Reply | None = None  # a loop (or too deep): it fails with this instead of being delivered
    addrtype: str = "SMTP"  # ALIAS_COMMAND for a |command member (`address` is the command line),
    # ALIAS_FILE for a /path or /path/ member (`address` is the path)

    def describe(self) -> str:
        via = " -> ".join(self.chain)
        return f"{self.address}: expanded from {via} ({self.where})" if self.where else f"{self.address}: {via}"


def loop_reply(chain: tuple[str, ...]) -> Reply:
    return Reply(554, "5.4.6", f"alias loop: {' -> '.join(chain)}")


TOO_DEEP = Reply(554, "5.4.6", f"aliases nested more than {MAX_DEPTH} deep")


@dataclass(slots=True)
class AliasTable:
    """The aliases of the local domains, by name (a local part, lower case): every member an
    address, a command or a file by now (the loader inlines :include: files and refuses the
    commands and files its settings do not allow)."""

    aliases: dict[str, Alias] = field(default_factory=dict)

    @classmethod
    def of(cls, aliases: list[Alias]) -> AliasTable:
        return cls({a.name: a for a in aliases})

    def __len__(self) -> int:
        return len(self.aliases)

    @property
    def has_commands(self) -> bool:
        return any(m.kind is MemberKind.COMMAND for a in self.aliases.values() for m in a.members)

    @property
    def has_files(self) -> bool:
        return any(m.kind is MemberKind.FILE for a in self.aliases.values() for m in a.members)

    def lookup(self, address: str) -> Alias | None:
        """The alias a local address names (its local part), NAME-request falling back to owner-NAME."""
        local = split(address)[0].lower()
        alias = self.aliases.get(local)
        if alias is None and local.endswith(REQUEST_SUFFIX):
            alias = self.aliases.get(OWNER_PREFIX + local[: -len(REQUEST_SUFFIX)])
        return alias

    def owner_of(self, name: str, domain: str) -> str | None:
        owner = OWNER_PREFIX + name
        return f"{owner}@{domain}" if owner in self.aliases and not name.startswith(OWNER_PREFIX) else None

    def expand(self, address: str, is_local: Callable[[str], bool]) -> list[Expanded] | None:
        """What `address` expands to, duplicates removed, in order; None when it is no alias (a
        mailbox, or a remote address). `is_local` says whether an address is in a local domain:
        only those are looked up."""
        if not is_local(address) or self.lookup(address) is None:
            return None
        out: list[Expanded] = []
        seen: set[str] = set()
        self._expand(address, (), "", None, is_local, out, seen)
        return out

    def _expand(self, address: str, chain: tuple[str, ...], where: str, owner: str | None,
                is_local: Callable[[str], bool], out: list[Expanded], seen: set[str]) -> None:
        key = address.lower()
        alias = self.lookup(address) if is_local(address) else None
        chain_keys = [c.lower() for c in chain]
        if alias is None or (chain_keys and chain_keys[-1] == key):  # a mailbox, or an alias naming itself
            if key not in seen:
                seen.add(key)
                out.append(Expanded(address, chain, where, owner))
            return
        if key in chain_keys or len(chain) >= MAX_DEPTH:
            if key not in seen:
                seen.add(key)
                reply = loop_reply((*chain, address)) if key in chain_keys else TOO_DEEP
                out.append(Expanded(address, chain, where, owner, refusal=reply))
            return
        domain = split(address)[1]
        owner = self.owner_of(alias.name, domain) or owner
        for member in alias.members:
            if member.kind in _SPECIAL:  # run or written by the aliases' own pipe or file transport
                key = f"{_SPECIAL[member.kind]}:{member.value}"  # paths and commands are case-sensitive
                if key not in seen:
                    seen.add(key)
                    out.append(Expanded(member.value, (*chain, address), member.where, owner,
                                        addrtype=_SPECIAL[member.kind]))
                continue
            target = member.value if "@" in member.value else f"{member.value}@{domain}"
            self._expand(target, (*chain, address), member.where, owner, is_local, out, seen)


_SPECIAL = {MemberKind.COMMAND: ALIAS_COMMAND, MemberKind.FILE: ALIAS_FILE}


def find_loops(table: AliasTable, domain: str = "localhost") -> list[Problem]:
    """The aliases whose expansion runs into a loop, one problem each (at the alias's line)."""
    problems = []
    for alias in table.aliases.values():
        expanded = table.expand(f"{alias.name}@{domain}", lambda a: split(a)[1] == domain) or []
        for e in expanded:
            if e.refusal is not None and e.address.lower() == f"{alias.name}@{domain}":
                problems.append(Problem(alias.source, alias.line, e.refusal.text))
    return problems
