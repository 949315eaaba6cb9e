"""Reading the aliases file (spooler/aliases.py): :include: files inlined (nested, a cycle and an
unreadable one reported with the line that names them), command members checked when read, every
problem at once with its file and line, and `load_aliases` refusing a file with any but loops."""

from __future__ import annotations

from pathlib import Path

import pytest

from msgspool.domain.aliases import ALIAS_COMMAND
from msgspool.errors import ConfigError
from msgspool.spooler.aliases import check_aliases, load_aliases


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
                       f"d: \"|{tmp_path}/not-there --x\", \"|sh -c x\", \"|'unclosed\"\ne: /var/mail/e/\n"
                       "f: g\ng: f\n")
    _table, problems = check_aliases(str(aliases))
    assert [str(p).split(": ", 1)[0] for p in problems] == [f"{aliases}:{n}" for n in (1, 3, 4, 4, 4, 5, 6, 7)] + [
        f"{loop}:1"]
    text = "\n".join(str(p) for p in problems)
    assert f"{aliases}:1: cannot read :include:{tmp_path}/missing.list" in text
    assert f"{loop}:1: :include:{loop} includes itself" in text
    assert f"{aliases}:3: :include: needs an absolute path, not 'relative.list'" in text
    assert f"{aliases}:4: |{tmp_path}/not-there --x: {tmp_path}/not-there is not an executable file" in text
    assert f"{aliases}:4: |sh -c x: the command needs an absolute path" in text
    assert f"{aliases}:4: |'unclosed: No closing quotation" in text
    assert f"{aliases}:5: /var/mail/e/: file and maildir members are not supported" in text
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
