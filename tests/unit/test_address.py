"""Addresses: the domain compares case-insensitively, the local part is kept; a cheap syntax check."""

from __future__ import annotations

import pytest

from msgspool.domain.address import domain_of, mailbox_key, split, valid_recipient, valid_smtp


def test_split_lowers_the_domain_and_keeps_the_local_part() -> None:
    assert split("John.Doe@Example.ORG.") == ("John.Doe", "example.org")


def test_split_uses_the_last_at_sign() -> None:
    assert split('"a@b"@example.org') == ('"a@b"', "example.org")


def test_address_without_at_sign_has_no_domain() -> None:
    assert split("postmaster") == ("postmaster", "")
    assert domain_of("postmaster") == ""


def test_mailbox_key_folds_the_whole_address_to_lower_case() -> None:
    assert mailbox_key("Alice@Example.org") == "alice@example.org"
    assert mailbox_key("PostMaster") == "postmaster"


@pytest.mark.parametrize("address", ["user@example.org", "a.b+tag@sub.example.org", "x@[192.0.2.1]"])
def test_valid_smtp_accepts_ordinary_addresses(address: str) -> None:
    assert valid_smtp(address)


@pytest.mark.parametrize("address", [
    "no-domain", "@example.org", "user@", "a b@example.org", "a@example..org", "a\r\nb@example.org",
    "<a@example.org>", "a@" + "x" * 64 + ".org", "a" * 300 + "@" + "b" * 30 + ".org",
])
def test_valid_smtp_refuses_malformed_addresses(address: str) -> None:
    assert not valid_smtp(address)


@pytest.mark.parametrize(("address", "addrtype", "valid"), [
    ("user@example.org", "SMTP", True), ("PostMaster", "smtp", True), ("no-domain", "SMTP", False),
    ("+1 555 0100", "FAX", True), ("+1 555\r\n0100", "FAX", False), ("x\x00", "FAX", False),
])
def test_valid_recipient_checks_smtp_syntax_and_keeps_line_breaks_out_of_other_types(
        address: str, addrtype: str, valid: bool) -> None:
    assert valid_recipient(address, addrtype) is valid


@pytest.mark.parametrize("address", ["a\x7fb@example.com", "a\x85@example.com", "a@exa\x1bmple.com", "a\tb@example.com",
                                     "a\ud800@example.com", "a@example.com\x00"])
def test_a_control_character_or_lone_surrogate_makes_any_address_invalid(address: str) -> None:
    assert not valid_smtp(address)
    assert not valid_recipient(address, "SMTP")
    assert not valid_recipient(address, "HTTP")
