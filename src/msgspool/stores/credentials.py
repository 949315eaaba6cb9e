"""The SQL stores' `tokens` and `users` tables (domain/tokens.py and domain/users.py say what a
token and a user are): the steps behind the Credentials role, over a `Tx` as in stores/ops.py.
Used by the CLI (`msgspool token ...`, `msgspool user ...`) and the daemon (`store.token`,
`store.user`)."""

from __future__ import annotations

from msgspool.domain.tokens import NewToken, Token
from msgspool.domain.users import User
from msgspool.stores.ops import Tx


def _token(row: tuple[str, str, str, float]) -> Token:
    token_id, name, scopes, created_at = row
    return Token(token_id, name, frozenset(scopes.split()), created_at)


def op_create_token(tx: Tx, new: NewToken) -> None:
    """Store a new token; ValueError when its name is taken."""
    t = new.token
    if tx.execute(tx.q.token_name_taken, {"name": t.name}).fetchone():
        raise ValueError(f"a token named {t.name!r} exists")
    tx.execute(tx.q.insert_token, {"id": t.id, "name": t.name, "scopes": " ".join(sorted(t.scopes)),
                                   "digest": new.digest, "created_at": t.created_at})


def list_tokens(tx: Tx) -> list[Token]:
    return [_token(row) for row in tx.execute(tx.q.list_tokens)]


def find_token(tx: Tx, token_id: str) -> tuple[Token, str] | None:
    """The token with this id and the digest of its secret."""
    row = tx.execute(tx.q.find_token, {"id": token_id}).fetchone()
    return (_token(row[:4]), row[4]) if row else None


def any_token(tx: Tx) -> bool:
    return tx.execute(tx.q.any_token).fetchone() is not None


def op_revoke_token(tx: Tx, id_or_name: str) -> Token | None:
    row = tx.execute(tx.q.token_by_id_or_name, {"key": id_or_name}).fetchone()
    if row is None:
        return None
    tx.execute(tx.q.delete_token, {"id": row[0]})
    return _token(row)


def _user(row: tuple[str, str, float]) -> User:
    name, senders, created_at = row
    return User(name, tuple(senders.split()), created_at)


def op_add_user(tx: Tx, user: User, password_hash: str, *, replace: bool = False) -> bool:
    """Store a user; True when it replaced one (only with `replace`), ValueError when the name is
    taken. A name is one account whatever its case (queries.sql says how)."""
    exists = tx.execute(tx.q.user_exists, {"name": user.name}).fetchone() is not None
    if exists and not replace:
        raise ValueError(f"a user named {user.name!r} exists (--update changes its password)")
    tx.execute(tx.q.delete_user, {"name": user.name})
    tx.execute(tx.q.insert_user, {"name": user.name, "password": password_hash, "senders": " ".join(user.senders),
                                  "created_at": user.created_at})
    return exists


def list_users(tx: Tx) -> list[User]:
    return [_user(row) for row in tx.execute(tx.q.list_users)]


def find_user(tx: Tx, name: str) -> tuple[User, str] | None:
    """The user with this name (case-insensitively) and its password hash. A name with a NUL (an
    AUTH LOGIN payload may carry one) is nobody's: no account can have it, and PostgreSQL's text
    cannot even hold it."""
    if "\x00" in name:
        return None
    row = tx.execute(tx.q.find_user, {"name": name}).fetchone()
    return (_user(row[:3]), row[3]) if row else None


def op_delete_user(tx: Tx, name: str) -> bool:
    return tx.execute(tx.q.delete_user, {"name": name}).rowcount > 0
