"""`msgspool user add|delete|list` as an operator runs them: the password from stdin or a
terminal prompt (asked twice), only its scrypt hash in the spool."""

from __future__ import annotations

import json
import os
import pty
import sqlite3
import subprocess
import time
from pathlib import Path

from msgspool.domain.users import verify_password
from tests.support.daemon import cli_env, msgspool_command, run_cli

PASSWORD = "tr0ub4dor&3-horse"


def stored_hash(data: Path, name: str) -> str:
    with sqlite3.connect(data / "spool.db") as conn:
        return str(conn.execute("SELECT password FROM users WHERE name = ?", (name,)).fetchone()[0])


def test_user_add_reads_the_password_from_stdin_and_stores_only_a_scrypt_hash(tmp_path: Path) -> None:
    data = tmp_path / "spool"
    added = run_cli("user", "add", "alice@example.org", data=data, stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in added.stdout + added.stderr
    stored = stored_hash(data, "alice@example.org")
    assert stored.startswith("scrypt$32768$8$1$") and verify_password(PASSWORD, stored)
    raw = b"".join(p.read_bytes() for p in data.glob("spool.db*"))
    assert PASSWORD.encode() not in raw
    assert run_cli("user", "add", "alice@example.org", data=data, stdin="other\n").returncode == 1  # taken
    updated = run_cli("user", "add", "alice@example.org", "--update", data=data, stdin="other\n")
    assert updated.returncode == 0 and verify_password("other", stored_hash(data, "alice@example.org"))


def test_user_list_and_delete(tmp_path: Path) -> None:
    data = tmp_path / "spool"
    assert run_cli("user", "add", "bob", "--sender", "@example.net", data=data, stdin="pw\n").returncode == 0
    assert run_cli("user", "add", "alice@example.org", data=data, stdin="pw2\n").returncode == 0
    listed = run_cli("user", "list", data=data)
    assert listed.stdout.splitlines()[0].startswith("alice@example.org") and "@example.net" in listed.stdout
    rows = [json.loads(line) for line in run_cli("user", "list", "--json", data=data).stdout.splitlines()]
    assert [r["name"] for r in rows] == ["alice@example.org", "bob"]
    assert rows[1]["senders"] == ["@example.net"] and rows[0]["senders"] == []
    assert all("password" not in r for r in rows)
    deleted = run_cli("user", "delete", "bob", data=data)
    assert deleted.returncode == 0 and "deleted" in deleted.stdout
    assert [json.loads(x)["name"] for x in run_cli("user", "list", "--json", data=data).stdout.splitlines()] == [
        "alice@example.org"]
    assert run_cli("user", "delete", "bob", data=data).returncode == 1


def test_user_add_refuses_bad_input(tmp_path: Path) -> None:
    data = tmp_path / "spool"
    assert run_cli("user", "add", "bad name", data=data, stdin="pw\n").returncode == 2
    assert run_cli("user", "add", "carol", data=data, stdin="\n").returncode == 2  # empty password
    assert run_cli("user", "add", "carol", "--sender", "no way", data=data, stdin="pw\n").returncode == 2


def _answer_prompts(fd: int, answers: list[str], deadline: float) -> bytes:
    seen = b""
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
        if answers and seen.rstrip().endswith(b":"):
            os.write(fd, answers.pop(0).encode() + b"\n")
            seen += b"<answered>"
    return seen


def run_on_terminal(args: list[str], answers: list[str]) -> tuple[int, bytes]:
    """The command with a terminal as its stdin, typing `answers` at its prompts."""
    main, child = pty.openpty()
    proc = subprocess.Popen([*msgspool_command(), *args], stdin=child, stdout=child, stderr=child,
                            env=cli_env(), close_fds=True)
    os.close(child)
    try:
        seen = _answer_prompts(main, answers, time.monotonic() + 20)
        return proc.wait(timeout=20), seen
    finally:
        os.close(main)


def test_on_a_terminal_the_password_is_asked_twice_without_echo(tmp_path: Path) -> None:
    data = tmp_path / "spool"
    code, seen = run_on_terminal(["user", "add", "dave", "--data", str(data)], [PASSWORD, PASSWORD])
    assert code == 0, seen
    assert b"Password:" in seen and b"Again:" in seen and PASSWORD.encode() not in seen
    assert verify_password(PASSWORD, stored_hash(data, "dave"))
    code, seen = run_on_terminal(["user", "add", "erin", "--data", str(data)], [PASSWORD, "typo"])
    assert code == 2 and b"differ" in seen
