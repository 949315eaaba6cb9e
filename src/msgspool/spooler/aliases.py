"""Reading the aliases table (the `aliases` setting): the one place that opens the aliases file and
its ``:include:`` files; domain/aliases.py parses and expands. Read when a process starts and
again on SIGHUP, with the rest of the configuration; a bad file stops `serve` (exit 2) or leaves
the running table as it was (a reload), and `msgspool aliases check` prints every problem.

The trust boundary (Postfix's allow_mail_to_commands and allow_mail_to_files): a ``|command``
member runs a program and a ``/path`` or ``/path/`` member writes a file, so they are taken only
from where the settings `allow_mail_to_commands` and `allow_mail_to_files` allow them: "alias"
(the aliases file itself, which the operator writes) and "include" (``:include:`` files, which
may belong to a list's owner). The default is ["alias"] for both, Postfix's default without the
.forward files msgspool does not read; anywhere else such a member is a problem on its line.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msgspool.domain.aliases import (
    Alias,
    AliasTable,
    Member,
    MemberKind,
    Problem,
    find_loops,
    parse_aliases,
    parse_include,
)
from msgspool.errors import ConfigError

MAX_INCLUDE_DEPTH = 10
ALIAS, INCLUDE = "alias", "include"  # where a command or file member may be written
TRUST_PLACES = (ALIAS, INCLUDE)


@dataclass(frozen=True, slots=True)
class Trust:
    """Where |command and /file members are taken from (the allow_mail_to_* settings)."""

    commands: frozenset[str] = frozenset({ALIAS})
    files: frozenset[str] = frozenset({ALIAS})

    @classmethod
    def of(cls, settings: Any) -> Trust:
        return cls(frozenset(settings.allow_mail_to_commands), frozenset(settings.allow_mail_to_files))


def check_aliases(path: str, trust: Trust = Trust()) -> tuple[AliasTable, list[Problem]]:
    """The table in `path` (members of :include: files inlined) and every problem found, loops too."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return AliasTable(), [Problem(path, 0, f"cannot read aliases file: {err}")]
    aliases, problems = parse_aliases(text, path)
    resolved: list[Alias] = []
    for alias in aliases:
        members, errors = _resolve(alias.members, 0, (path,), trust)
        problems += errors
        resolved.append(Alias(alias.name, tuple(members), alias.source, alias.line))
    table = AliasTable.of(resolved)
    problems += find_loops(table)
    # the file's own lines in order, then those of its :include: files
    return table, sorted(problems, key=lambda p: (p.source != path, p.source, p.line))


def configured_aliases(settings: Any) -> AliasTable:
    """The table of the `aliases` setting, with the trust its allow_mail_to_* settings give."""
    return load_aliases(settings.aliases, Trust.of(settings))


def load_aliases(path: str, trust: Trust = Trust()) -> AliasTable:
    """The table of the `aliases` setting; ConfigError naming every problem but loops (a loop
    fails only the mail that runs into it, 554 5.4.6, as in Postfix)."""
    if not path:
        return AliasTable()
    table, problems = check_aliases(path, trust)
    problems = [p for p in problems if "alias loop" not in p.message]
    if problems:
        raise ConfigError("aliases: " + "; ".join(str(p) for p in problems))
    return table


def _resolve(members: tuple[Member, ...] | list[Member], depth: int, files: tuple[str, ...],
             trust: Trust) -> tuple[list[Member], list[Problem]]:
    out: list[Member] = []
    problems: list[Problem] = []
    place = ALIAS if depth == 0 else INCLUDE
    for member in members:
        if member.kind is MemberKind.INCLUDE:
            found, errors = _include(member, depth, files, trust)
            out += found
            problems += errors
            continue
        error = ""
        if member.kind is MemberKind.COMMAND:
            error = (_untrusted(member, place, trust.commands, "allow_mail_to_commands")
                     or _command_problem(member.value))
        elif member.kind is MemberKind.FILE:
            error = _untrusted(member, place, trust.files, "allow_mail_to_files") or _file_problem(member.value)
        if error:
            problems.append(Problem(member.source, member.line, error))
        else:
            out.append(member)
    return out, problems


def _untrusted(member: Member, place: str, allowed: frozenset[str], setting: str) -> str:
    if place in allowed:
        return ""
    where = "the aliases file" if place == ALIAS else ":include: files"
    what = "commands" if member.kind is MemberKind.COMMAND else "files and maildirs"
    shown = f"|{member.value}" if member.kind is MemberKind.COMMAND else member.value
    return f"{shown}: {what} are not allowed in {where} (add \"{place}\" to {setting} to allow them)"


def _file_problem(path: str) -> str:
    """Why a /file or /maildir/ member cannot be written, as far as reading the file can tell: a
    maildir where a file is, or the other way round (a file is made when it is not there yet)."""
    if path.endswith("/") and os.path.lexists(path.rstrip("/")) and not os.path.isdir(path):
        return f"{path}: not a directory (a maildir member ends in '/'; a file member does not)"
    if not path.endswith("/") and os.path.isdir(path):
        return f"{path}: is a directory (write {path}/ to deliver into it as a maildir)"
    return ""


def _include(member: Member, depth: int, files: tuple[str, ...], trust: Trust) -> tuple[list[Member], list[Problem]]:
    if member.value in files or depth >= MAX_INCLUDE_DEPTH:
        return [], [Problem(member.source, member.line, f":include:{member.value} includes itself")]
    try:
        text = Path(member.value).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return [], [Problem(member.source, member.line, f"cannot read :include:{member.value}: {err}")]
    found, problems = parse_include(text, member.value)
    resolved, errors = _resolve(found, depth + 1, (*files, member.value), trust)
    return resolved, problems + errors


def _command_problem(command: str) -> str:
    """Why a |command cannot run (checked when the file is read, so a typo stops `serve`)."""
    try:
        argv = shlex.split(command)
    except ValueError as err:
        return f"|{command}: {err}"
    if not argv or not argv[0].startswith("/"):
        return f"|{command}: the command needs an absolute path (it is run without a shell or PATH search)"
    if not os.access(argv[0], os.X_OK) or os.path.isdir(argv[0]):
        return f"|{command}: {argv[0]} is not an executable file"
    return ""
