"""Sieve evaluation: a compiled script run against one inbound message, pure (no I/O).

`msgspool.hooks.sieve.compile_script` parses a script (with sievelib) into the plain nodes below;
`evaluate` runs them and returns an `Outcome`: the list of actions for the caller to carry out.
Supported, with where the rules come from:

* RFC 5228 core: ``require``, ``if``/``elsif``/``else``, ``stop``, ``keep``, ``discard``,
  ``redirect``; tests ``address``, ``header``, ``exists``, ``size``, ``allof``, ``anyof``, ``not``,
  ``true``, ``false``; comparators ``i;ascii-casemap`` (the default) and ``i;octet`` (§2.7.3);
  match types ``:is``, ``:contains``, ``:matches`` with ``*``, ``?`` and backslash escapes (§2.7.1);
  address parts ``:all``, ``:localpart``, ``:domain`` (§2.7.4); header values unfolded and their
  RFC 2047 encoded-words decoded before comparison (§2.7.2); numbers with K/M/G (§2.4.1);
  multi-line strings with dot-stuffing (§2.4.2); ``encoded-character`` (§2.4.2.4).
* Implicit keep (§2.10.2): done unless a ``keep``, ``fileinto``, ``redirect``, ``discard`` or
  ``reject`` ran (``:copy`` ones do not cancel it). Duplicate actions collapse (§2.10.3): the same
  folder filed twice is one store (with the union of the flags); ``fileinto "INBOX"`` is ``keep``
  (IMAP's INBOX name is case-insensitive); a second redirect to the same address is dropped.
* Runtime errors (§2.10.6): a bad redirect address, more redirects than ``max_redirects``
  (§10), conflicting actions. The outcome is then the implicit keep alone, with ``error`` set.
* ``fileinto`` (§4.1) and ``envelope`` (§5.4; parts ``from`` and ``to``; the null reverse-path
  is the empty string whatever the address part); ``copy`` (RFC 3894); ``subaddress``
  (RFC 5233: ``:user`` and ``:detail``, separator ``+``).
* ``reject`` and ``ereject`` (RFC 5429): they cancel the implicit keep; a second reject, or a reject
  together with ``vacation`` (§2.1: MUST NOT), ``keep``, ``fileinto`` or ``redirect`` (SHOULD NOT;
  Dovecot Pigeonhole refuses them too) is a runtime error. The caller answers the SMTP transaction
  or sends the DSN (see `msgspool.hooks.sieve.reject_reply`).
* ``imap4flags`` (RFC 5232): ``setflag``/``addflag``/``removeflag`` on the internal variable,
  ``hasflag``, ``:flags`` on ``keep``/``fileinto``; without ``:flags`` a store (the implicit keep
  included) takes the variable's current value (§5). Flags compare without ASCII case.
* ``vacation`` (RFC 5230) and ``vacation-seconds`` (RFC 6131): the action carries its arguments
  and the key for duplicate suppression; whether to answer and the reply itself are in
  `msgspool.domain.vacation`. A second vacation in one run is ignored (one response per message).

Not supported (their ``require`` is a compile error): variables (so no variable names in the
imap4flags commands), relational, regex, body, date, mailbox, enotify, and the rest.
"""

from __future__ import annotations

import functools
import hashlib
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.utils import getaddresses, parseaddr

from msgspool.domain.address import mailbox_key, valid_smtp
from msgspool.domain.content import canonical, header_block

OCTET = "i;octet"
CASEMAP = "i;ascii-casemap"
INBOX = "INBOX"
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def ascii_lower(text: str) -> str:
    """ASCII letters folded, nothing else (i;ascii-casemap, RFC 4790 §9.2)."""
    return text.translate(_ASCII_LOWER)


# -- the message as the tests see it ------------------------------------------------------------------


class SieveRuntimeError(Exception):
    """An error while a script runs (RFC 5228 §2.10.6): the implicit keep is done instead."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope of the message being filtered; ``sender`` is "" for the null reverse-path."""

    sender: str
    recipient: str


@dataclass(frozen=True, slots=True)
class MessageView:
    """A message's header fields (lower-case name, unfolded value) in order, and its size."""

    fields: tuple[tuple[str, str], ...]
    size: int

    @classmethod
    def parse(cls, content: bytes) -> MessageView:
        content = canonical(content)
        text = header_block(content).decode("utf-8", "replace")  # RFC 6532: UTF-8 header fields
        unfolded = re.sub(r"\r\n(?=[ \t])", "", text)
        fields = [_field(line) for line in unfolded.split("\r\n")]
        return cls(tuple(f for f in fields if f is not None), len(content))

    def raw(self, name: str) -> list[str]:
        """Every value of the field ``name`` (case-insensitive), as written."""
        wanted = name.lower()
        return [value for key, value in self.fields if key == wanted]

    def decoded(self, name: str) -> list[str]:
        """Every value of ``name`` with its RFC 2047 encoded-words decoded."""
        return [decode_words(value) for value in self.raw(name)]

    def first(self, name: str) -> str | None:
        values = self.raw(name)
        return values[0] if values else None

    def addresses(self, name: str) -> list[str]:
        """The addr-specs in every ``name`` field (group names and empty entries left out)."""
        return [address for _name, address in getaddresses(self.raw(name)) if address]


_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 §2.2: printable ASCII but the colon


def _field(line: str) -> tuple[str, str] | None:
    """``name: value``; WSP before the colon is obsolete syntax (RFC 5322 §4.5.3) and allowed."""
    name, colon, value = line.partition(":")
    name = name.rstrip(" \t")
    if not colon or not _FIELD_NAME.fullmatch(name):
        return None  # an mbox "From " line, say
    return name.lower(), value.strip()


def decode_words(value: str) -> str:
    """An unstructured value with its RFC 2047 encoded-words decoded (left as is when malformed)."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (HeaderParseError, LookupError, UnicodeError, ValueError):
        return value


# -- comparators and match types (RFC 5228 §2.7) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Match:
    """A match type (``is``, ``contains``, ``matches``) and a comparator."""

    kind: str = "is"
    comparator: str = CASEMAP

    def any(self, values: Iterable[str], keys: Sequence[str]) -> bool:
        """True when some value matches some key."""
        return any(self.one(value, key) for value in values for key in keys)

    def one(self, value: str, key: str) -> bool:
        if self.comparator == CASEMAP:
            value, key = ascii_lower(value), ascii_lower(key)
        if self.kind == "is":
            return value == key
        if self.kind == "contains":
            return key in value
        return wildcard_match(_pattern(key), value)


_STAR = None  # a pattern item: any run of characters
_ANY = ""  # a pattern item: exactly one character


@functools.lru_cache(maxsize=1024)
def _pattern(key: str) -> tuple[str | None, ...]:
    """A :matches key as items: literal characters, `_ANY` for ``?``, `_STAR` for ``*``; a backslash
    makes the next character literal (§2.7.1)."""
    items: list[str | None] = []
    chars = iter(key)
    for char in chars:
        if char == "\\":
            items.append(next(chars, "\\"))
        else:
            items.append({"*": _STAR, "?": _ANY}.get(char, char))
    return tuple(items)


def wildcard_match(pattern: Sequence[str | None], text: str) -> bool:
    """Glob matching without backtracking blow-up: on a mismatch only the last ``*`` takes one
    more character, so a hostile pattern costs at most len(pattern) * len(text) steps."""
    p = t = 0
    star, mark = -1, 0
    while t < len(text):
        if p < len(pattern) and pattern[p] is not _STAR and pattern[p] in (_ANY, text[t]):
            p, t = p + 1, t + 1
        elif p < len(pattern) and pattern[p] is _STAR:
            star, mark, p = p, t, p + 1
        elif star >= 0:
            mark += 1
            p, t = star + 1, mark
        else:
            return False
    return all(item is _STAR for item in pattern[p:])


def address_part(address: str, part: str) -> str | None:
    """The part of an addr-spec a test compares (RFC 5228 §2.7.4, RFC 5233 §4); None when the
    address has no such part (``:detail`` without a ``+``)."""
    if part == "all":
        return address
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if part == "localpart":
        return local
    if part == "domain":
        return domain
    user, plus, detail = local.partition("+")
    if part == "user":
        return user
    return detail if plus else None


def _parts(addresses: Iterable[str], part: str) -> list[str]:
    return [p for p in (address_part(a, part) for a in addresses) if p is not None]


# -- actions: what an outcome asks the caller to do --------------------------------------------------


def flag_list(strings: Iterable[str]) -> tuple[str, ...]:
    """Flags from space-separated lists, each once (IMAP flags ignore ASCII case: RFC 3501 §2.3.2)."""
    seen: dict[str, str] = {}
    for text in strings:
        for flag in text.split():
            seen.setdefault(ascii_lower(flag), flag)
    return tuple(seen.values())


@dataclass(frozen=True, slots=True)
class Keep:
    """Store the message in the mailbox's receive folder (the inbox), with these flags."""

    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FileInto:
    """Store the message in ``folder``; ``copy``: it came with ``:copy`` (RFC 3894)."""

    folder: str
    flags: tuple[str, ...] = ()
    copy: bool = False


@dataclass(frozen=True, slots=True)
class Redirect:
    """Send the message on to ``address``, envelope sender unchanged (RFC 5228 §4.2)."""

    address: str
    copy: bool = False


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse the message with ``reason`` (RFC 5429); ``extended``: ``ereject``, which insists on
    refusing it in the SMTP transaction when that is still possible."""

    reason: str
    extended: bool = False


@dataclass(frozen=True, slots=True)
class Discard:
    """The script threw the message away (it only cancels the implicit keep)."""


@dataclass(frozen=True, slots=True)
class Vacation:
    """An auto-reply to ``sender`` (RFC 5230), not yet decided: see `msgspool.domain.vacation`.

    ``recipient`` is the envelope recipient and ``mailbox`` the address whose script ran; with
    ``addresses`` (``:addresses``) they are the user's own addresses. ``seconds`` is the period
    of ``:days`` (default 7, at least 1) or ``:seconds``. ``handle`` is ``:handle`` or a digest
    of the reason, ``:subject``, ``:from`` and ``:mime`` (§4.2), so editing the text starts anew."""

    sender: str
    recipient: str
    mailbox: str
    reason: str
    seconds: int
    handle: str
    subject: str | None = None
    from_address: str | None = None
    addresses: tuple[str, ...] = ()
    mime: bool = False

    @property
    def key(self) -> tuple[str, str]:
        """What the caller keys the last-sent time on: one reply per sender and handle per period."""
        return mailbox_key(self.sender), self.handle


Action = Keep | FileInto | Redirect | Reject | Discard | Vacation


@dataclass(frozen=True, slots=True)
class Outcome:
    """The actions in the order the script took them, the implicit keep last. ``error``: the
    script failed at run time; ``actions`` is then the implicit keep alone."""

    actions: tuple[Action, ...]
    error: str | None = None

    @property
    def stores(self) -> tuple[Keep | FileInto, ...]:
        return tuple(a for a in self.actions if isinstance(a, Keep | FileInto))

    @property
    def redirects(self) -> tuple[Redirect, ...]:
        return tuple(a for a in self.actions if isinstance(a, Redirect))

    @property
    def reject(self) -> Reject | None:
        return next((a for a in self.actions if isinstance(a, Reject)), None)

    @property
    def vacation(self) -> Vacation | None:
        return next((a for a in self.actions if isinstance(a, Vacation)), None)


# -- one run ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Execution:
    """The state of one run: the message, the imap4flags internal variable, the actions so far."""

    message: MessageView
    envelope: Envelope
    mailbox: str
    max_redirects: int
    flags: tuple[str, ...] = ()
    actions: list[Action] = field(default_factory=list)
    implicit_keep: bool = True

    def take(self, action: Action, *, cancels_keep: bool = True) -> None:
        """Record an action: duplicates merge, conflicts raise `SieveRuntimeError`."""
        _check_conflicts(self.actions, action)
        if cancels_keep:
            self.implicit_keep = False
        if isinstance(action, Redirect):
            self._redirect(action)
        elif isinstance(action, Keep | FileInto):
            self._store(action)
        elif not any(type(a) is type(action) for a in self.actions):  # one discard, one vacation
            self.actions.append(action)

    def _redirect(self, action: Redirect) -> None:
        if not valid_smtp(action.address):
            raise SieveRuntimeError(f"redirect: invalid address {action.address!r}")
        done = [a for a in self.actions if isinstance(a, Redirect)]
        if any(mailbox_key(a.address) == mailbox_key(action.address) for a in done):
            return
        if len(done) >= self.max_redirects:
            raise SieveRuntimeError(f"more than {self.max_redirects} redirects")
        self.actions.append(action)

    def _store(self, action: Keep | FileInto) -> None:
        for i, done in enumerate(self.actions):
            if isinstance(done, Keep | FileInto) and _same_folder(done, action):
                self.actions[i] = _merged(done, action)
                return
        self.actions.append(action)

    def outcome(self) -> Outcome:
        if self.implicit_keep:
            self._store(Keep(self.flags))
        return Outcome(tuple(self.actions))


def _same_folder(a: Keep | FileInto, b: Keep | FileInto) -> bool:
    return (isinstance(a, Keep) and isinstance(b, Keep)) or (
        isinstance(a, FileInto) and isinstance(b, FileInto) and a.folder == b.folder)


def _merged(done: Keep | FileInto, new: Keep | FileInto) -> Keep | FileInto:
    flags = flag_list((*done.flags, *new.flags))
    if isinstance(done, FileInto) and isinstance(new, FileInto):
        return FileInto(done.folder, flags, copy=done.copy and new.copy)
    return Keep(flags)


def _check_conflicts(done: Sequence[Action], new: Action) -> None:
    """RFC 5429 §2.1: one reject, never with vacation; and (as Pigeonhole) not with a delivery."""
    rejects = [a for a in (*done, new) if isinstance(a, Reject)]
    if not rejects:
        return
    if len(rejects) > 1:
        raise SieveRuntimeError("more than one reject/ereject")
    others = [a for a in (*done, new) if isinstance(a, Keep | FileInto | Redirect | Vacation)]
    if others:
        name = type(others[0]).__name__.lower()
        raise SieveRuntimeError(f"reject conflicts with {name}: that would also deliver or answer the message")


# -- the script: tests ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Constant:
    """``true`` or ``false`` (§5.6, §5.10)."""

    value: bool

    def check(self, run: Execution) -> bool:
        return self.value


@dataclass(frozen=True, slots=True)
class Not:
    test: Test

    def check(self, run: Execution) -> bool:
        return not self.test.check(run)


@dataclass(frozen=True, slots=True)
class AllOf:
    tests: tuple[Test, ...]

    def check(self, run: Execution) -> bool:
        return all(test.check(run) for test in self.tests)


@dataclass(frozen=True, slots=True)
class AnyOf:
    tests: tuple[Test, ...]

    def check(self, run: Execution) -> bool:
        return any(test.check(run) for test in self.tests)


@dataclass(frozen=True, slots=True)
class Exists:
    """True when every named header field is present (§5.5)."""

    names: tuple[str, ...]

    def check(self, run: Execution) -> bool:
        return all(run.message.raw(name) for name in self.names)


@dataclass(frozen=True, slots=True)
class Size:
    """``size :over`` / ``:under`` the limit in octets, both strict (§5.9)."""

    over: bool
    limit: int

    def check(self, run: Execution) -> bool:
        size = run.message.size
        return size > self.limit if self.over else size < self.limit


@dataclass(frozen=True, slots=True)
class Header:
    """Some decoded value of a named header field matches a key (§5.7)."""

    names: tuple[str, ...]
    keys: tuple[str, ...]
    match: Match = Match()

    def check(self, run: Execution) -> bool:
        values = [value for name in self.names for value in run.message.decoded(name)]
        return self.match.any(values, self.keys)


@dataclass(frozen=True, slots=True)
class Address:
    """Some address in the named header fields, cut to ``part``, matches a key (§5.1)."""

    names: tuple[str, ...]
    keys: tuple[str, ...]
    match: Match = Match()
    part: str = "all"

    def check(self, run: Execution) -> bool:
        addresses = [address for name in self.names for address in run.message.addresses(name)]
        return self.match.any(_parts(addresses, self.part), self.keys)


ENVELOPE_PARTS = ("from", "to")


@dataclass(frozen=True, slots=True)
class EnvelopeTest:
    """The envelope sender (``from``) or recipient (``to``), cut to ``part``, matches a key (§5.4)."""

    parts: tuple[str, ...]
    keys: tuple[str, ...]
    match: Match = Match()
    part: str = "all"

    def check(self, run: Execution) -> bool:
        values: list[str] = []
        for name in self.parts:
            address = run.envelope.sender if name == "from" else run.envelope.recipient
            values += [""] if not address else _parts([address], self.part)  # null path: "" (§5.4)
        return self.match.any(values, self.keys)


@dataclass(frozen=True, slots=True)
class HasFlag:
    """Some flag of the internal variable matches a key (RFC 5232 §4)."""

    flags: tuple[str, ...]
    match: Match = Match()

    def check(self, run: Execution) -> bool:
        return self.match.any(run.flags, flag_list(self.flags))


Test = Constant | Not | AllOf | AnyOf | Exists | Size | Header | Address | EnvelopeTest | HasFlag


# -- the script: commands ------------------------------------------------------------------------------
# `execute` returns True when the script stops.


@dataclass(frozen=True, slots=True)
class Branch:
    """One arm of an if/elsif/else chain; ``test`` is None for ``else``."""

    test: Test | None
    block: tuple[Command, ...]


@dataclass(frozen=True, slots=True)
class If:
    """``if`` with its ``elsif`` and ``else`` arms (§3.1): the first arm whose test holds runs."""

    branches: tuple[Branch, ...]

    def execute(self, run: Execution) -> bool:
        for branch in self.branches:
            if branch.test is None or branch.test.check(run):
                return run_block(branch.block, run)
        return False


@dataclass(frozen=True, slots=True)
class Stop:
    def execute(self, run: Execution) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class KeepCommand:
    """``keep`` (§4.3), with imap4flags' ``:flags`` (None: the internal variable)."""

    flags: tuple[str, ...] | None = None

    def execute(self, run: Execution) -> bool:
        run.take(Keep(_flags_for(self.flags, run)))
        return False


@dataclass(frozen=True, slots=True)
class FileIntoCommand:
    """``fileinto`` (§4.1); ``fileinto "INBOX"`` is a keep."""

    folder: str
    copy: bool = False
    flags: tuple[str, ...] | None = None

    def execute(self, run: Execution) -> bool:
        flags = _flags_for(self.flags, run)
        if not self.folder:
            raise SieveRuntimeError("fileinto: empty folder name")
        action = Keep(flags) if self.folder.upper() == INBOX else FileInto(self.folder, flags, self.copy)
        run.take(action, cancels_keep=not self.copy)
        return False


def _flags_for(flags: tuple[str, ...] | None, run: Execution) -> tuple[str, ...]:
    return run.flags if flags is None else flag_list(flags)


@dataclass(frozen=True, slots=True)
class RedirectCommand:
    address: str
    copy: bool = False

    def execute(self, run: Execution) -> bool:
        run.take(Redirect(self.address, self.copy), cancels_keep=not self.copy)
        return False


@dataclass(frozen=True, slots=True)
class DiscardCommand:
    def execute(self, run: Execution) -> bool:
        run.take(Discard())
        return False


@dataclass(frozen=True, slots=True)
class RejectCommand:
    reason: str
    extended: bool = False

    def execute(self, run: Execution) -> bool:
        run.take(Reject(self.reason, self.extended))
        return False


@dataclass(frozen=True, slots=True)
class FlagCommand:
    """``setflag``, ``addflag`` or ``removeflag`` on the internal variable (RFC 5232 §3)."""

    op: str
    flags: tuple[str, ...]

    def execute(self, run: Execution) -> bool:
        given = flag_list(self.flags)
        if self.op == "setflag":
            run.flags = given
        elif self.op == "addflag":
            run.flags = flag_list((*run.flags, *given))
        else:
            gone = {ascii_lower(flag) for flag in given}
            run.flags = tuple(flag for flag in run.flags if ascii_lower(flag) not in gone)
        return False


DAY = 86400


@dataclass(frozen=True, slots=True)
class VacationCommand:
    """``vacation`` (RFC 5230 §4); ``seconds`` already holds ``:days`` (clamped to ≥ 1 day, §4.1)
    or ``:seconds`` (RFC 6131 §2, ≥ 0)."""

    reason: str
    seconds: int = 7 * DAY
    subject: str | None = None
    from_address: str | None = None
    addresses: tuple[str, ...] = ()
    mime: bool = False
    handle: str | None = None

    def execute(self, run: Execution) -> bool:
        env = run.envelope
        run.take(Vacation(env.sender, env.recipient, run.mailbox, self.reason, self.seconds, self.derived_handle(),
                          self.subject, self.from_address, self.addresses, self.mime), cancels_keep=False)
        return False

    def derived_handle(self) -> str:
        if self.handle is not None:
            return self.handle
        parts = (self.reason, self.subject or "", self.from_address or "", "mime" if self.mime else "")
        return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:32]


Command = (If | Stop | KeepCommand | FileIntoCommand | RedirectCommand | DiscardCommand | RejectCommand
           | FlagCommand | VacationCommand)


@dataclass(frozen=True, slots=True)
class Script:
    """A compiled script: its commands and the extensions it required."""

    commands: tuple[Command, ...]
    extensions: frozenset[str] = frozenset()


def run_block(block: Sequence[Command], run: Execution) -> bool:
    return any(command.execute(run) for command in block)  # any() stops at the first True: `stop`


def evaluate(script: Script, message: bytes, envelope: Envelope, *, mailbox: str,
             max_redirects: int = 4) -> Outcome:
    """Run ``script`` for ``mailbox`` over ``message`` as it arrived with ``envelope``."""
    run = Execution(MessageView.parse(message), envelope, mailbox, max_redirects)
    try:
        run_block(script.commands, run)
    except SieveRuntimeError as error:
        return Outcome((Keep(),), error=str(error))
    return run.outcome()


def own_address(value: str) -> str:
    """The addr-spec of an address a script names (``:from``, ``:addresses``), display name dropped."""
    return parseaddr(value)[1] or value.strip()
