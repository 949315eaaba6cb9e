"""Reading the aliases table (the `aliases` setting): the one place that opens the aliases file and
its ``:include:`` files; domain/aliases.py parses and expands. Read when a process starts and
again on SIGHUP, with the rest of the configuration; a bad file stops `serve` (exit 2) or leaves
the running table as it was (a reload), and `msgspool aliases check` prints every problem.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

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


def check_aliases(path: str) -> tuple[AliasTable, list[Problem]]:
    """The table in `path` (members of :include: files inlined) and every problem found, loops too."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return AliasTable(), [Problem(path, 0, f"cannot read aliases file: {err}")]
    aliases, problems = parse_aliases(text, path)
    resolved: list[Alias] = []
    for alias in aliases:
        members, errors = _resolve(alias.members, 0, (path,))
        problems += errors
        resolved.append(Alias(alias.name, tuple(members), alias.source, alias.line))
    table = AliasTable.of(resolved)
    problems += find_loops(table)
    # the file's own lines in order, then those of its :include: files
    return table, sorted(problems, key=lambda p: (p.source != path, p.source, p.line))


def load_aliases(path: str) -> AliasTable:
    """The table of the `aliases` setting; ConfigError naming every problem but loops (a loop
    fails only the mail that runs into it, 554 5.4.6, as in Postfix)."""
    if not path:
        return AliasTable()
    table, problems = check_aliases(path)
    problems = [p for p in problems if "alias loop" not in p.message]
    if problems:
        raise ConfigError("aliases: " + "; ".join(str(p) for p in problems))
    return table


def _resolve(members: tuple[Member, ...] | list[Member], depth: int,
             files: tuple[str, ...]) -> tuple[list[Member], list[Problem]]:
    out: list[Member] = []
    problems: list[Problem] = []
    for member in members:
        if member.kind is MemberKind.ADDRESS:
            out.append(member)
        elif member.kind is MemberKind.COMMAND:
            error = _command_problem(member.value)
            if error:
                problems.append(Problem(member.source, member.line, error))
            else:
                out.append(member)
        elif member.kind is MemberKind.INCLUDE:
            found, errors = _include(member, depth, files)
            out += found
            problems += errors
        else:
            problems.append(Problem(member.source, member.line, _unsupported(member)))
    return out, problems


def _include(member: Member, depth: int, files: tuple[str, ...]) -> tuple[list[Member], list[Problem]]:
    if member.value in files or depth >= MAX_INCLUDE_DEPTH:
        return [], [Problem(member.source, member.line, f":include:{member.value} includes itself")]
    try:
        text = Path(member.value).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return [], [Problem(member.source, member.line, f"cannot read :include:{member.value}: {err}")]
    found, problems = parse_include(text, member.value)
    resolved, errors = _resolve(found, depth + 1, (*files, member.value))
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


def _unsupported(member: Member) -> str:
    # local(8) appends to a file or writes a maildir named in an alias; msgspool's maildir transport
    # delivers by mailbox (its path template), not to a path an alias names.
    return (f"{member.value}: file and maildir members are not supported; give the alias a mailbox and route it"
            " to a maildir transport")
