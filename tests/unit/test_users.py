"""Submission accounts (domain/users.py): password hashes and the senders an account owns."""

from __future__ import annotations

import pytest

from msgspool.domain.users import (
    User,
    check_name,
    check_password,
    check_senders,
    hash_password,
    owned_senders,
    sender_allowed,
    verify_password,
)

FAST = {"n": 2**10, "r": 8, "p": 1}  # the default parameters cost 32 MiB and a quarter second


def test_a_hash_carries_its_scrypt_parameters_and_a_random_salt() -> None:
    first, second = hash_password("s3cret", **FAST), hash_password("s3cret", **FAST)
    assert first.startswith("scrypt$1024$8$1$") and first != second  # salted
    assert "s3cret" not in first


def test_the_default_parameters_are_memory_hard() -> None:
    assert hash_password("x").startswith("scrypt$32768$8$1$")


def test_verify_accepts_the_password_and_refuses_others_and_unreadable_hashes() -> None:
    stored = hash_password("correct horse", **FAST)
    assert verify_password("correct horse", stored)
    assert verify_password(b"correct horse", stored)
    assert not verify_password("correct hors", stored)
    assert not verify_password("", stored)
    assert not verify_password("correct horse", "md5$abc")
    assert not verify_password("correct horse", "scrypt$x$8$1$AA==$AA==")


def test_names_passwords_and_sender_patterns_are_checked() -> None:
    assert check_name("alice@example.org") == "alice@example.org"
    for bad in ("", "a b", "-x", "a\nb", "x" * 200):
        with pytest.raises(ValueError):
            check_name(bad)
    with pytest.raises(ValueError):
        check_password("")
    with pytest.raises(ValueError):
        check_password("x" * 2000)
    assert check_senders(["A@Example.org", "@example.net", "*"]) == ("a@example.org", "@example.net", "*")
    with pytest.raises(ValueError):
        check_senders(["not an address"])


def test_an_address_login_owns_itself_and_its_domain_by_default() -> None:
    alice = User("alice@example.org", (), 0.0)
    assert sender_allowed(owned_senders(alice, ["localhost"]), "alice@example.org")
    assert sender_allowed(owned_senders(alice, ["localhost"]), "Billing@EXAMPLE.org")
    assert not sender_allowed(owned_senders(alice, ["localhost"]), "alice@example.com")
    assert not sender_allowed(owned_senders(alice, ["localhost"]), "ceo@sub.example.org")
    assert sender_allowed(owned_senders(alice, ["localhost"]), "")  # the null sender: bounces are always allowed


def test_a_plain_login_owns_its_name_in_each_local_domain() -> None:
    bob = User("bob", (), 0.0)
    assert owned_senders(bob, ["example.org", "example.net"]) == ("bob@example.org", "bob@example.net")
    assert sender_allowed(owned_senders(bob, ["example.org", "example.net"]), "bob@example.net")
    assert not sender_allowed(owned_senders(bob, ["example.org"]), "alice@example.org")


def test_listed_senders_replace_the_default() -> None:
    app = User("app@example.org", ("noreply@example.com", "@example.net"), 0.0)
    assert sender_allowed(owned_senders(app, []), "noreply@example.com")
    assert sender_allowed(owned_senders(app, []), "x@example.net")
    assert not sender_allowed(owned_senders(app, []), "app@example.org")
    assert sender_allowed(owned_senders(User("relay", ("*",), 0.0), []), "anyone@anywhere.test")
