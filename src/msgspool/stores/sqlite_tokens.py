"""The `tokens` table of the SQLite spool (domain/tokens.py says what a token is). Used by the CLI
(`msgspool token ...`) and the daemon (`SQLiteStore.token`), through `SQLiteStore`'s Credentials role."""

from __future__ import annotations

import sqlite3

from msgspool.domain.tokens import NewToken, Token

_COLUMNS = "id, name, scopes, created_at"


def _token(row: tuple[str, str, str, float]) -> Token:
    token_id, name, scopes, created_at = row
    return Token(token_id, name, frozenset(scopes.split()), created_at)


def op_create_token(conn: sqlite3.Connection, new: NewToken) -> None:
    """Store a new token; ValueError when its name is taken."""
    t = new.token
    if conn.execute("SELECT 1 FROM tokens WHERE name = ? OR id = ?", (t.name, t.name)).fetchone():
        raise ValueError(f"a token named {t.name!r} exists")
    conn.execute("INSERT INTO tokens (id, name, scopes, digest, created_at) VALUES (?,?,?,?,?)",
                 (t.id, t.name, " ".join(sorted(t.scopes)), new.digest, t.created_at))


def list_tokens(conn: sqlite3.Connection) -> list[Token]:
    return [_token(row) for row in conn.execute(f"SELECT {_COLUMNS} FROM tokens ORDER BY created_at, id")]


def find_token(conn: sqlite3.Connection, token_id: str) -> tuple[Token, str] | None:
    """The token with this id and the digest of its secret."""
    row = conn.execute(f"SELECT {_COLUMNS}, digest FROM tokens WHERE id = ?", (token_id,)).fetchone()
    return (_token(row[:4]), row[4]) if row else None


def any_token(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM tokens LIMIT 1").fetchone() is not None


def op_revoke_token(conn: sqlite3.Connection, id_or_name: str) -> Token | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM tokens WHERE id = ? OR name = ?", (id_or_name, id_or_name)).fetchone()
    if row is None:
        return None
    conn.execute("DELETE FROM tokens WHERE id = ?", (row[0],))
    return _token(row)
