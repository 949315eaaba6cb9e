"""The `users` table of the SQLite spool (domain/users.py says what a user is). Used by the CLI
(`msgspool user ...`) and the daemon (`SQLiteStore.user`), through `SQLiteStore`'s Credentials role."""

from __future__ import annotations

import sqlite3

from msgspool.domain.users import User

_COLUMNS = "name, senders, created_at"


def _user(row: tuple[str, str, float]) -> User:
    name, senders, created_at = row
    return User(name, tuple(senders.split()), created_at)


# A name is one account whatever its case (RFC 5321 §2.4: the local part is the server's to fold;
# msgspool folds it). Spelled with lower() on both sides, not SQLite's NOCASE collation, so that
# the same statements serve every SQL store (stores/postgresql.py runs them too).
_SAME_NAME = "lower(name) = lower(?)"


def op_add_user(conn: sqlite3.Connection, user: User, password_hash: str, *, replace: bool = False) -> bool:
    """Store a user; True when it replaced one (only with `replace`), ValueError when the name is taken."""
    exists = conn.execute(f"SELECT 1 FROM users WHERE {_SAME_NAME}", (user.name,)).fetchone() is not None
    if exists and not replace:
        raise ValueError(f"a user named {user.name!r} exists (--update changes its password)")
    conn.execute(f"DELETE FROM users WHERE {_SAME_NAME}", (user.name,))
    conn.execute("INSERT INTO users (name, password, senders, created_at) VALUES (?,?,?,?)",
                 (user.name, password_hash, " ".join(user.senders), user.created_at))
    return exists


def list_users(conn: sqlite3.Connection) -> list[User]:
    return [_user(row) for row in conn.execute(f"SELECT {_COLUMNS} FROM users ORDER BY name")]


def find_user(conn: sqlite3.Connection, name: str) -> tuple[User, str] | None:
    """The user with this name (case-insensitively) and its password hash. A name with a NUL (an
    AUTH LOGIN payload may carry one) is nobody's: no account can have it, and PostgreSQL's text
    cannot even hold it."""
    if "\x00" in name:
        return None
    row = conn.execute(f"SELECT {_COLUMNS}, password FROM users WHERE {_SAME_NAME}", (name,)).fetchone()
    return (_user(row[:3]), row[3]) if row else None


def op_delete_user(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute(f"DELETE FROM users WHERE {_SAME_NAME}", (name,)).rowcount > 0
