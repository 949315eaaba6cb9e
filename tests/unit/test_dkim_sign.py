"""The `dkim_sign` outbound hook (hooks/dkim_sign.py): its options, where it finds its keys, and
what it answers for a message it signs, cannot sign, or has no key for."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from msgspool.config import Settings
from msgspool.domain.hooks import Draft, DraftRecipient
from msgspool.errors import ConfigError
from msgspool.hooks.dkim import load_private_key, public_key_record
from msgspool.hooks.dkim_sign import DKIMSign
from tests.unit.test_dkim import MESSAGE, key_file, rsa_pem_of, zone_for


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory holding dkim/example.org.key (RSA) and dkim/example.org.ed (ed25519)."""
    (tmp_path / "dkim").mkdir()
    key_file(tmp_path / "dkim", rsa_pem_of(2048))
    seed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key_file(tmp_path / "dkim", seed, name="example.org.ed")
    return tmp_path


def hook(data_dir: Path, **options: Any) -> DKIMSign:
    options.setdefault("keys", [{"domain": "example.org", "selector": "sel", "key_file": "dkim/example.org.key"}])
    return DKIMSign("dkim", Settings(data_dir=str(data_dir)), options)


def draft(content: bytes = MESSAGE, sender: str = "alice@example.org") -> Draft:
    return Draft("01TESTMESSAGE", sender, [DraftRecipient("bob@example.net", index=0)], content)


def zone(data_dir: Path) -> Any:
    return zone_for({
        "sel._domainkey.example.org": public_key_record(load_private_key(data_dir / "dkim/example.org.key")),
        "ed._domainkey.example.org": public_key_record(
            load_private_key(data_dir / "dkim/example.org.ed", "ed25519-sha256"), "ed25519-sha256")})


def test_a_relative_key_file_is_found_in_the_data_directory_and_the_draft_comes_back_signed(data_dir: Path) -> None:
    signed = hook(data_dir).preprocess(draft())
    assert signed is not None and signed.content.endswith(MESSAGE)
    assert signed.content.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert dkim.verify(signed.content, dnsfunc=zone(data_dir))


def test_an_absolute_key_file_is_used_as_it_is(data_dir: Path, tmp_path: Path) -> None:
    keys = [{"domain": "example.org", "selector": "sel", "key_file": str(data_dir / "dkim/example.org.key")}]
    signed = hook(tmp_path / "elsewhere", keys=keys).preprocess(draft())
    assert signed is not None and dkim.verify(signed.content, dnsfunc=zone(data_dir))


def test_an_rsa_and_an_ed25519_key_give_two_signatures(data_dir: Path) -> None:
    keys = [{"domain": "example.org", "selector": "sel", "key_file": "dkim/example.org.key"},
            {"domain": "example.org", "selector": "ed", "key_file": "dkim/example.org.ed",
             "algorithm": "ed25519-sha256", "oversign": ["from", "subject"]}]
    signed = hook(data_dir, keys=keys).preprocess(draft())
    assert signed is not None and signed.content.count(b"DKIM-Signature:") == 2
    assert dkim.verify(signed.content, dnsfunc=zone(data_dir))  # the top one, rsa-sha256
    assert dkim.DKIM(signed.content).verify(idx=1, dnsfunc=zone(data_dir))  # and the ed25519 one


def test_a_from_domain_without_a_key_is_sent_as_it_is(data_dir: Path) -> None:
    other = MESSAGE.replace(b"alice@example.org", b"alice@other.example")
    assert hook(data_dir).preprocess(draft(other)) is None


def test_sender_fallback_signs_with_the_envelope_sender_s_domain(data_dir: Path) -> None:
    other = MESSAGE.replace(b"alice@example.org", b"alice@other.example")
    signed = hook(data_dir, sender_fallback=True).preprocess(draft(other, sender="bounces@example.org"))
    assert signed is not None and b"d=example.org;" in signed.content


def test_a_header_section_dkimpy_cannot_parse_is_sent_unsigned_with_a_log_line(
        data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = b"From: a@example.org\r\nno colon here\r\n\r\nbody\r\n"
    with caplog.at_level(logging.WARNING, "msgspool.hooks"):
        assert hook(data_dir).preprocess(draft(broken)) is None
    assert "01TESTMESSAGE: hook dkim: cannot sign for example.org" in caplog.text
    assert "sent unsigned" in caplog.text


@pytest.mark.parametrize(("options", "problem"), [
    ({"colour": "blue"}, "hook dkim: unknown options colour"),
    ({"keys": []}, "keys must be a list of key tables"),
    ({"keys": "dkim/example.org.key"}, "keys must be a list of key tables"),
    ({"keys": None}, "keys must be a list of key tables"),
    ({"sender_fallback": "yes"}, "sender_fallback must be true or false"),
    ({"keys": [{"domain": "example.org", "selector": "sel", "key_file": "k", "size": 1}]},
     "hook dkim: unknown dkim setting 'size'"),
    ({"keys": [{"domain": "example.org", "selector": "sel", "key_file": "dkim/nosuch"}]}, "nosuch does not exist"),
])
def test_bad_options_are_a_config_error(data_dir: Path, options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        hook(data_dir, **options)


def test_a_key_file_others_may_read_is_a_config_error_naming_it(data_dir: Path) -> None:
    (data_dir / "dkim/example.org.key").chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        hook(data_dir)
    assert f"{data_dir / 'dkim/example.org.key'} has mode 0644" in str(caught.value)
