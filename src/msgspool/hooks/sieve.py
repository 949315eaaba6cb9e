"""Sieve filtering of inbound mail, per mailbox (issue 4): compile a script, run it on a message.

    compile_script(text) -> Script                       sievelib parses; SieveError(message, line)
    evaluate(script, message, envelope, *, mailbox) -> Outcome           (msgspool.domain.sieve)
    vacation_due(vacation, original, *, last_sent, now) -> bool          (msgspool.domain.vacation)
    vacation_reply(vacation, original, *, now, last_sent) -> bytes | None
    reject_reply(reject) -> Reply                        the SMTP answer for a reject at DATA time

What the language covers, with RFC citations, is in `msgspool.domain.sieve`'s docstring; this module
is the boundary with sievelib, which has no type hints: its command objects stay `Any` in here and
only the plain nodes of `msgspool.domain.sieve` leave it.

Where sievelib (1.6) falls short, and what is done here instead of forking it:

* ``require`` accepts any name, and anywhere: checked against `SUPPORTED`, and a ``require`` after
  another command is refused (RFC 5228 §3.2).
* Its commands carry no line numbers: the script is scanned again with sievelib's own `Lexer`; every
  identifier token starts one command or test, in the order `Command.walk()` visits them.
* No ``ereject`` (RFC 5429): registered with `sievelib.commands.add_commands`.
* No subaddress (RFC 5233): ``:user`` and ``:detail`` are added to its address-part values, behind
  the ``subaddress`` extension like its own extension values.
* Strings come back quoted, multi-line strings raw, numbers with their K/M/G suffix: decoded here
  (RFC 5228 §2.4), as is ``encoded-character`` (§2.4.2.4), which it does not know.
* Envelope parts are not checked (only ``from`` and ``to`` exist here), nor the variable-name
  arguments of the imap4flags commands, which need the (unsupported) variables extension.
"""

from __future__ import annotations

import bisect
import re
from typing import Any

from sievelib import commands as sieve_commands
from sievelib.parser import Lexer, Parser

from msgspool.domain.address import valid_smtp
from msgspool.domain.outcome import Reply
from msgspool.domain.sieve import (
    CASEMAP,
    DAY,
    ENVELOPE_PARTS,
    Address,
    AllOf,
    AnyOf,
    Branch,
    Command,
    Constant,
    Discard,
    DiscardCommand,
    Envelope,
    EnvelopeTest,
    Exists,
    FileInto,
    FileIntoCommand,
    FlagCommand,
    HasFlag,
    Header,
    If,
    Keep,
    KeepCommand,
    Match,
    Not,
    Outcome,
    Redirect,
    RedirectCommand,
    Reject,
    RejectCommand,
    Script,
    Size,
    Stop,
    Test,
    Vacation,
    VacationCommand,
    evaluate,
    own_address,
)
from msgspool.domain.vacation import compose_vacation, vacation_due, vacation_reply, vacation_skip_reason
from msgspool.errors import MsgspoolError

__all__ = [
    "SUPPORTED", "Discard", "Envelope", "FileInto", "Keep", "Outcome", "Redirect", "Reject", "Script", "SieveError",
    "Vacation", "compile_script", "compose_vacation", "evaluate", "reject_reply", "vacation_due", "vacation_reply",
    "vacation_skip_reason",
]

SUPPORTED = frozenset({
    "fileinto", "envelope", "reject", "ereject", "copy", "imap4flags", "vacation", "vacation-seconds",
    "subaddress", "encoded-character", "comparator-i;octet", "comparator-i;ascii-casemap",
})

_Node = Any  # a sievelib command object: untyped, never leaves this module


class SieveError(MsgspoolError):
    """A script that does not compile: its syntax, or a ``require`` of an unsupported extension."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(f"line {line}: {message}")
        self.message = message
        self.line = line


class ErejectCommand(sieve_commands.ActionCommand):  # type: ignore[misc]  # sievelib is untyped
    """``ereject <reason>`` (RFC 5429 §2.2): what sievelib lacks, declared as its ``reject`` is."""

    extension = "ereject"
    args_definition = [{"name": "text", "type": ["string"], "required": True}]


sieve_commands.add_commands(ErejectCommand)
sieve_commands.address_part.setdefault("extension_values", {}).update(
    {":user": "subaddress", ":detail": "subaddress"})


def compile_script(text: str) -> Script:
    """Parse and check a script; raises `SieveError` with the line of the first problem."""
    source = text.encode("utf-8")
    parser = Parser()
    if not parser.parse(source):
        raise SieveError(_parse_message(str(parser.error)), int(parser.error_pos[0]))
    tokens = _tokens(source)
    _check_complete(tokens)
    return _Compiler(_command_lines(tokens, parser.result)).script(parser.result)


def reject_reply(reject: Reject) -> Reply:
    """The SMTP reply that refuses a rejected message (RFC 5429 §2.1.1: 550 5.7.1 with the reason),
    in printable ASCII, a line per line of the reason."""
    lines = [re.sub(r"[^\x20-\x7e]", "?", line.strip())[:400] for line in reject.reason.splitlines()]
    text = "\n".join(line for line in lines if line)[:2000]
    return Reply(550, "5.7.1", text or "message rejected by the recipient's filter")


def _parse_message(error: str) -> str:
    """sievelib's ``line N: parsing error: ...`` without the line (`SieveError` carries it)."""
    message = re.sub(r"^line \d+: ", "", error)
    return message.removeprefix("parsing error: ")


def _tokens(source: bytes) -> list[tuple[str, int]]:
    """The script's tokens as sievelib's lexer reads them, comments left out: (kind, line)."""
    newlines = [m.start() for m in re.finditer(rb"\n", source)]
    lexer = Lexer(Parser.lrules)
    tokens = [(str(kind), bisect.bisect(newlines, lexer.pos) + 1) for kind, _value in lexer.scan(source)]
    return [token for token in tokens if not token[0].endswith("_comment")]


def _check_complete(tokens: list[tuple[str, int]]) -> None:
    """A script ends with ``;`` or ``}``: sievelib silently drops a last command without arguments
    and without its semicolon (``keep; stop``), and an ``else`` without its block."""
    if tokens and tokens[-1][0] not in ("semicolon", "right_cbracket"):
        raise SieveError("end of script reached while semicolon or block expected", tokens[-1][1])


def _command_lines(tokens: list[tuple[str, int]], roots: list[_Node]) -> dict[int, int]:
    """The line of every command and test, by id: each starts with an identifier token, in the
    order `walk()` yields them."""
    lines = [line for kind, line in tokens if kind == "identifier"]
    nodes = [node for root in roots for node in root.walk()]
    return {id(node): line for node, line in zip(nodes, lines, strict=False)}


_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_ENCODED = re.compile(r"\$\{(hex|unicode):([0-9a-fA-F \t\r\n]*)\}", re.IGNORECASE)


class _Compiler:
    """sievelib's command tree to `msgspool.domain.sieve` nodes. Commands and tests dispatch by name
    to ``cmd_<name>`` and ``test_<name>``."""

    def __init__(self, lines: dict[int, int]) -> None:
        self.lines = lines
        self.extensions: set[str] = set()
        self.line = 0

    def error(self, message: str, node: _Node = None) -> SieveError:
        return SieveError(message, self.lines.get(id(node), self.line) if node is not None else self.line)

    def script(self, roots: list[_Node]) -> Script:
        count = 0
        while count < len(roots) and roots[count].name == "require":
            self.require(roots[count])
            count += 1
        return Script(self.block(roots[count:]), frozenset(self.extensions))

    def require(self, node: _Node) -> None:
        self.line = self.lines.get(id(node), 0)
        for name in self.strings(node.arguments["capabilities"]):
            if name not in SUPPORTED:
                raise self.error(f'unsupported extension "{name}" in require', node)
            self.extensions.add(name)

    def block(self, nodes: list[_Node]) -> tuple[Command, ...]:
        out: list[Command] = []
        for node in nodes:
            if node.name in ("elsif", "else") and out and isinstance(out[-1], If):  # sievelib checked the order
                out[-1] = If((*out[-1].branches, self.branch(node)))
            else:
                out.append(self.command(node))
        return tuple(out)

    def branch(self, node: _Node) -> Branch:
        test = None if node.name == "else" else self.test(node.arguments["test"])
        return Branch(test, self.block(node.children))

    def command(self, node: _Node) -> Command:
        self.line = self.lines.get(id(node), self.line)
        build = getattr(self, f"cmd_{node.name}", None)
        if build is None:
            raise self.error(f"{node.name} is not supported", node)
        command: Command = build(node)
        return command

    def test(self, node: _Node) -> Test:
        self.line = self.lines.get(id(node), self.line)
        build = getattr(self, f"test_{node.name}", None)
        if build is None:
            raise self.error(f"the {node.name} test is not supported", node)
        test: Test = build(node)
        return test

    # -- values --------------------------------------------------------------------------------------

    def string(self, value: str) -> str:
        text = _multiline(value) if value.startswith("text:") else _unquote(value)
        return self.encoded_characters(text) if "encoded-character" in self.extensions else text

    def strings(self, value: str | list[str]) -> tuple[str, ...]:
        return tuple(self.string(v) for v in (value if isinstance(value, list) else [value]))

    def encoded_characters(self, text: str) -> str:
        """RFC 5228 §2.4.2.4: ``${hex:...}`` (UTF-8 octets) and ``${unicode:...}`` (code points)."""
        try:
            return _ENCODED.sub(_decode_encoded, text)
        except ValueError as error:
            raise self.error(f"encoded-character: {error}") from None

    def match(self, node: _Node) -> Match:
        kind = str(node.arguments.get("match-type", ":is")).lower().lstrip(":")
        comparator = self.string(node.extra_arguments["comparator"]) if "comparator" in node.arguments else CASEMAP
        return Match(kind, comparator)

    def flags(self, node: _Node) -> tuple[str, ...] | None:
        return self.strings(node.extra_arguments["flags"]) if "flags" in node.arguments else None

    # -- commands ------------------------------------------------------------------------------------

    def cmd_require(self, node: _Node) -> Command:
        raise self.error("require must come before any other command (RFC 5228 §3.2)", node)

    def cmd_if(self, node: _Node) -> Command:
        return If((self.branch(node),))

    def cmd_stop(self, node: _Node) -> Command:
        return Stop()

    def cmd_keep(self, node: _Node) -> Command:
        return KeepCommand(self.flags(node))

    def cmd_discard(self, node: _Node) -> Command:
        return DiscardCommand()

    def cmd_fileinto(self, node: _Node) -> Command:
        return FileIntoCommand(self.string(node.arguments["mailbox"]), "copy" in node.arguments, self.flags(node))

    def cmd_redirect(self, node: _Node) -> Command:
        return RedirectCommand(self.string(node.arguments["address"]), "copy" in node.arguments)

    def cmd_reject(self, node: _Node) -> Command:
        return RejectCommand(self.string(node.arguments["text"]))

    def cmd_ereject(self, node: _Node) -> Command:
        return RejectCommand(self.string(node.arguments["text"]), extended=True)

    def cmd_setflag(self, node: _Node) -> Command:
        if "variable-name" in node.arguments:
            raise self.error(f"{node.name} with a variable name needs the variables extension (not supported)", node)
        return FlagCommand(node.name, self.strings(node.arguments["list-of-flags"]))

    cmd_addflag = cmd_setflag
    cmd_removeflag = cmd_setflag

    def cmd_vacation(self, node: _Node) -> Command:
        args, extra = node.arguments, node.extra_arguments
        text = {name: self.string(extra[name]) for name in ("subject", "from", "handle") if name in args}
        if "from" in text and not valid_smtp(own_address(text["from"])):
            raise self.error(f"vacation :from is not an address: {text['from']!r}", node)
        return VacationCommand(self.string(args["reason"]), self.period(node), text.get("subject"), text.get("from"),
                               self.strings(extra["addresses"]) if "addresses" in args else (), "mime" in args,
                               text.get("handle"))

    def period(self, node: _Node) -> int:
        """``:days`` (RFC 5230 §4.1: default 7, at least 1) or ``:seconds`` (RFC 6131 §2: at least 0)."""
        args, extra = node.arguments, node.extra_arguments
        if "days" in args and "seconds" in args:
            raise self.error("vacation takes :days or :seconds, not both (RFC 6131 §2)", node)
        if "seconds" in args:
            return max(0, _number(extra["seconds"]))
        return max(1, _number(extra["days"])) * DAY if "days" in args else 7 * DAY

    # -- tests ---------------------------------------------------------------------------------------

    def test_true(self, node: _Node) -> Test:
        return Constant(True)

    def test_false(self, node: _Node) -> Test:
        return Constant(False)

    def test_not(self, node: _Node) -> Test:
        return Not(self.test(node.arguments["test"]))

    def test_allof(self, node: _Node) -> Test:
        return AllOf(tuple(self.test(t) for t in node.arguments["tests"]))

    def test_anyof(self, node: _Node) -> Test:
        return AnyOf(tuple(self.test(t) for t in node.arguments["tests"]))

    def test_exists(self, node: _Node) -> Test:
        return Exists(self.strings(node.arguments["header-names"]))

    def test_size(self, node: _Node) -> Test:
        return Size(str(node.arguments["comparator"]).lower() == ":over", _number(node.arguments["limit"]))

    def test_header(self, node: _Node) -> Test:
        args = node.arguments
        return Header(self.strings(args["header-names"]), self.strings(args["key-list"]), self.match(node))

    def test_address(self, node: _Node) -> Test:
        args = node.arguments
        return Address(self.strings(args["header-list"]), self.strings(args["key-list"]), self.match(node),
                       _part(node))

    def test_envelope(self, node: _Node) -> Test:
        args = node.arguments
        parts = tuple(part.lower() for part in self.strings(args["header-list"]))
        unknown = [part for part in parts if part not in ENVELOPE_PARTS]
        if unknown:
            raise self.error(f'envelope part "{unknown[0]}" is not supported (only "from" and "to")', node)
        return EnvelopeTest(parts, self.strings(args["key-list"]), self.match(node), _part(node))

    def test_hasflag(self, node: _Node) -> Test:
        if "variable-list" in node.arguments:
            raise self.error("hasflag with variable names needs the variables extension (not supported)", node)
        return HasFlag(self.strings(node.arguments["list-of-flags"]), self.match(node))


def _part(node: _Node) -> str:
    return str(node.arguments.get("address-part", ":all")).lower().lstrip(":")


def _number(value: str) -> int:
    """A number with an optional K, M or G (RFC 5228 §2.4.1)."""
    unit = _UNITS.get(value[-1:].lower(), 1)
    return int(value[:-1] if unit > 1 else value) * unit


def _unquote(value: str) -> str:
    """A quoted string's content: a backslash makes the next character literal (RFC 5228 §2.4.2)."""
    return re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.DOTALL)


def _multiline(value: str) -> str:
    """A ``text:`` string's lines, the first (``text:`` and any comment) and the closing dot left
    out, dot-stuffing undone (RFC 5228 §2.4.2); lines end with LF."""
    lines = [line.removesuffix("\r") for line in value.split("\n")[1:-1]]
    return "".join((line[1:] if line.startswith(".") else line) + "\n" for line in lines)


def _decode_encoded(found: re.Match[str]) -> str:
    kind, digits = found.group(1).lower(), found.group(2).split()
    if any(len(d) > (2 if kind == "hex" else 6) for d in digits):
        return found.group(0)  # not an encoded-character sequence: left as written
    if kind == "hex":
        return bytes(int(d, 16) for d in digits).decode("utf-8")  # invalid UTF-8: ValueError
    points = [int(d, 16) for d in digits]
    if any(0xD800 <= p <= 0xDFFF or p > 0x10FFFF for p in points):
        raise ValueError("not a Unicode scalar value")
    return "".join(chr(p) for p in points)
