"""Reading the aliases file (spooler/aliases.py): :include: files inlined (nested, a cycle and an
unreadable one reported with the line that names them), command and file members checked when read
and taken only from where allow_mail_to_commands / allow_mail_to_files allow them, every problem at
once with its file and line, and `load_aliases` refusing a file with any but loops."""

from __future__ import annotations

from pathlib import Path

import pytest

from msgspool.domain.aliases import ALIAS_COMMAND, ALIAS_FILE
from msgspool.errors import ConfigError
from msgspool.spooler.aliases import Trust, check_aliases, load_aliases


def local(address: str) -> bool:
    return address.endswith("@localhost")


def test_include_files_are_inlined_nested_with_their_own_lines(tmp_path: Path) -> None:
    inner = tmp_path / "inner.list"
    inner.write_text("# the inner list\ncarol\n")
    outer = tmp_path / "outer.list"
    outer.write_text(f"ann, ben@example.org\n:include:{inner}\n")
    aliases = tmp_path / "aliases"
    aliases.write_text(f"staff: :include:{outer}, dave\n")
    table, problems = check_aliases(str(aliases))
    assert problems == []
    expanded = table.expand("staff@localhost", local) or []
    assert [(e.address, e.where) for e in expanded] == [
        ("ann@localhost", f"{outer}:1"), ("ben@example.org", f"{outer}:1"), ("carol@localhost", f"{inner}:2"),
        ("dave@localhost", f"{aliases}:1")]


def test_every_problem_is_reported_with_the_line_that_names_it(tmp_path: Path) -> None:
    loop = tmp_path / "loop.list"
    loop.write_text(f":include:{loop}\n")
    aliases = tmp_path / "aliases"
    aliases.write_text(f"a: :include:{tmp_path}/missing.list\nb: :include:{loop}\nc: :include:relative.list\n"
                       f"d: \"|{tmp_path}/not-there --x\", \"|sh -c x\", \"|'unclosed\"\ne: {aliases}/, {tmp_path}\n"
                       "f: g\ng: f\n")
    _table, problems = check_aliases(str(aliases))
    assert [str(p).split(": ", 1)[0] for p in problems] == [f"{aliases}:{n}" for n in (1, 3, 4, 4, 4, 5, 5, 6, 7)] + [
        f"{loop}:1"]
    text = "\n".join(str(p) for p in problems)
    assert f"{aliases}:1: cannot read :include:{tmp_path}/missing.list" in text
    assert f"{loop}:1: :include:{loop} includes itself" in text
    assert f"{aliases}:3: :include: needs an absolute path, not 'relative.list'" in text
    assert f"{aliases}:4: |{tmp_path}/not-there --x: {tmp_path}/not-there is not an executable file" in text
    assert f"{aliases}:4: |sh -c x: the command needs an absolute path" in text
    assert f"{aliases}:4: |'unclosed: No closing quotation" in text
    assert f"{aliases}:5: {aliases}/: not a directory (a maildir member ends in '/'" in text
    assert f"{aliases}:5: {tmp_path}: is a directory (write {tmp_path}/ to deliver into it as a maildir)" in text
    assert f"{aliases}:6: alias loop: f@localhost -> g@localhost -> f@localhost" in text
    with pytest.raises(ConfigError) as refused:
        load_aliases(str(aliases))
    assert "alias loop" not in str(refused.value) and "not-there" in str(refused.value)


def test_a_command_member_is_kept_when_its_program_is_there(tmp_path: Path) -> None:
    aliases = tmp_path / "aliases"
    aliases.write_text('tickets: "|/bin/cat -u", ann\n')
    table = load_aliases(str(aliases))
    assert table.has_commands
    assert [(e.address, e.addrtype) for e in table.expand("tickets@localhost", local) or []] == [
        ("/bin/cat -u", ALIAS_COMMAND), ("ann@localhost", "SMTP")]
    assert len(load_aliases("")) == 0  # no file: no aliases
    with pytest.raises(ConfigError, match="cannot read aliases file"):
        load_aliases(str(tmp_path / "nope"))


def test_file_and_maildir_members_expand_to_their_paths(tmp_path: Path) -> None:
    aliases = tmp_path / "aliases"
    aliases.write_text(f"archive: {tmp_path}/box/, {tmp_path}/Archive.mbox, ann, {tmp_path}/archive.mbox\n"
                       f"all: archive, {tmp_path}/box/\n")
    table = load_aliases(str(aliases))
    assert table.has_files and not table.has_commands
    # paths keep their case (two files here), and one named twice is written once
    assert [(e.address, e.addrtype) for e in table.expand("all@localhost", local) or []] == [
        (f"{tmp_path}/box/", ALIAS_FILE), (f"{tmp_path}/Archive.mbox", ALIAS_FILE), ("ann@localhost", "SMTP"),
        (f"{tmp_path}/archive.mbox", ALIAS_FILE)]


def test_commands_and_files_in_include_files_need_the_settings_to_allow_them(tmp_path: Path) -> None:
    listed = tmp_path / "owned-by-the-list-owner.list"
    listed.write_text(f"ann\n{tmp_path}/box/\n\"|/bin/cat\"\n")
    aliases = tmp_path / "aliases"
    aliases.write_text(f"list: :include:{listed}\nmine: {tmp_path}/mine/, \"|/bin/cat -u\"\n")
    _table, problems = check_aliases(str(aliases))  # the default: the aliases file only (Postfix's, no .forward)
    assert [str(p) for p in problems] == [
        f"{listed}:2: {tmp_path}/box/: files and maildirs are not allowed in :include: files (add \"include\" to"
        " allow_mail_to_files to allow them)",
        f"{listed}:3: |/bin/cat: commands are not allowed in :include: files (add \"include\" to"
        " allow_mail_to_commands to allow them)"]
    table, problems = check_aliases(str(aliases), Trust(commands=frozenset({"alias", "include"}),
                                                        files=frozenset({"alias", "include"})))
    assert problems == []
    assert [e.addrtype for e in table.expand("list@localhost", local) or []] == ["SMTP", ALIAS_FILE, ALIAS_COMMAND]
    _table, problems = check_aliases(str(aliases), Trust(commands=frozenset(), files=frozenset({"include"})))
    assert [str(p) for p in problems] == [
        f"{aliases}:2: {tmp_path}/mine/: files and maildirs are not allowed in the aliases file (add \"alias\" to"
        " allow_mail_to_files to allow them)",
        f"{aliases}:2: |/bin/cat -u: commands are not allowed in the aliases file (add \"alias\" to"
        " allow_mail_to_commands to allow them)",
        f"{listed}:3: |/bin/cat: commands are not allowed in :include: files (add \"include\" to"
        " allow_mail_to_commands to allow them)"]
