"""DKIM signing and verification (hooks/dkim.py): real keys made at test time, real dkimpy
signatures, and a DNS function that serves the public key records (DNS is the one external part)."""

from __future__ import annotations

import base64
import functools
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dkim
import dns.exception
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from msgspool.errors import ConfigError
from msgspool.hooks.dkim import (
    DEFAULT_HEADERS,
    DKIMKey,
    DKIMResult,
    Signer,
    SigningError,
    authentication_results,
    from_domains,
    load_private_key,
    public_key_record,
    signed_fields,
    strip_authentication_results,
    verify,
    verify_signatures,
)

MESSAGE = (b"From: Alice <alice@example.org>\r\n"
           b"To: bob@example.net\r\n"
           b"Subject: a folded\r\n subject line\r\n"
           b"Date: Tue, 25 Nov 2026 10:00:00 +0000\r\n"
           b"Message-ID: <1@example.org>\r\n"
           b"Received: from somewhere\r\n"
           b"X-Extra:   kept   as is  \r\n"
           b"\r\n"
           b"Hello Bob.\r\n"
           b".leading dot and trailing space \r\n")
PEM = serialization.Encoding.PEM
NO_PASSWORD = serialization.NoEncryption()

Zone = Callable[..., bytes | None]


@pytest.fixture(scope="session")
def rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(PEM, serialization.PrivateFormat.TraditionalOpenSSL, NO_PASSWORD)


@pytest.fixture
def ed25519_pem() -> bytes:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, NO_PASSWORD)


def key_file(directory: Path, data: bytes, mode: int = 0o600, name: str = "example.org.key") -> Path:
    path = directory / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


def rsa_key(tmp_path: Path, pem: bytes, **options: object) -> DKIMKey:
    return DKIMKey.from_table({"domain": "example.org", "selector": "sel",
                               "key_file": str(key_file(tmp_path, pem)), **options})


def zone_for(records: dict[str, str]) -> Zone:
    """A DNS function serving these TXT records ({"sel._domainkey.example.org": "v=DKIM1; ..."})."""
    def lookup(name: bytes, timeout: float = 5.0) -> bytes | None:
        record = records.get(name.decode("ascii").rstrip("."))
        return record.encode("ascii") if record is not None else None
    return lookup


def zone_of(*keys: DKIMKey) -> Zone:
    return zone_for({f"{k.selector}._domainkey.{k.domain}": public_key_record(
        load_private_key(k.key_file, k.algorithm), k.algorithm) for k in keys})


def signature_tags(signed: bytes, index: int = 0) -> dict[str, str]:
    fields = [v for n, v in dkim.rfc822_parse(signed)[0] if n.lower() == b"dkim-signature"]
    return {k.decode(): re.sub(r"\s+", "", v.decode()) for k, v in dkim.util.parse_tag_value(fields[index]).items()}


def sign(key: DKIMKey, content: bytes = MESSAGE, sender: str = "alice@example.org") -> bytes:
    signed = Signer([key]).sign(content, sender)
    assert signed is not None
    return signed


# --- signing ---


def test_a_signed_message_verifies_with_dkimpy_against_the_public_key(tmp_path: Path, rsa_pem: bytes) -> None:
    key = rsa_key(tmp_path, rsa_pem)
    signed = sign(key)
    assert dkim.verify(signed, dnsfunc=zone_of(key))
    tags = signature_tags(signed)
    assert (tags["d"], tags["s"], tags["a"], tags["c"]) == ("example.org", "sel", "rsa-sha256", "relaxed/relaxed")


def test_signing_keeps_the_message_byte_for_byte_after_the_new_crlf_field(tmp_path: Path, rsa_pem: bytes) -> None:
    signed = sign(rsa_key(tmp_path, rsa_pem))
    field = signed[: len(signed) - len(MESSAGE)]
    assert signed.endswith(MESSAGE)
    assert field.startswith(b"DKIM-Signature: v=1; ") and field.endswith(b"\r\n")
    assert field.count(b"\n") == field.count(b"\r\n")
    assert all(line.startswith((b" ", b"\t")) for line in field.split(b"\r\n")[1:-1])  # folded, one field


def test_a_message_with_lf_line_ends_gets_an_lf_field(tmp_path: Path, rsa_pem: bytes) -> None:
    key = rsa_key(tmp_path, rsa_pem)
    content = MESSAGE.replace(b"\r\n", b"\n")
    signed = sign(key, content)
    assert signed.endswith(content) and b"\r" not in signed
    assert dkim.verify(signed.replace(b"\n", b"\r\n"), dnsfunc=zone_of(key))


def test_signing_is_deterministic_apart_from_the_timestamp(tmp_path: Path, rsa_pem: bytes,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    key = rsa_key(tmp_path, rsa_pem)
    monkeypatch.setattr("time.time", lambda: 1_795_000_000.0)
    first, second = sign(key), sign(key)
    assert first == second
    assert signature_tags(first)["t"] == "1795000000"


def test_the_signed_fields_are_those_present_with_from_oversigned(tmp_path: Path, rsa_pem: bytes) -> None:
    signed = sign(rsa_key(tmp_path, rsa_pem))
    assert signature_tags(signed)["h"].split(":") == ["from", "to", "subject", "date", "message-id", "from"]


def test_adding_a_second_from_after_signing_breaks_the_signature(tmp_path: Path, rsa_pem: bytes) -> None:
    key = rsa_key(tmp_path, rsa_pem)
    signed = sign(key)
    forged = signed.replace(b"To: bob@", b"From: ceo@example.org\r\nTo: bob@", 1)
    assert dkim.verify(signed, dnsfunc=zone_of(key))
    assert not dkim.verify(forged, dnsfunc=zone_of(key))
    assert "dkim=fail" in verify(forged, authserv_id="mx.test", dnsfunc=zone_of(key))


def test_signed_fields_count_each_occurrence_and_oversign_even_an_absent_field() -> None:
    key = DKIMKey("example.org", "sel", "unused", oversign=("from", "reply-to"))
    names = [b"Received", b"From", b"To", b"X-Other", b"To", b"DKIM-Signature"]
    assert signed_fields(names, key) == [b"from", b"to", b"to", b"from", b"reply-to"]


def test_an_ed25519_signature_verifies(tmp_path: Path, ed25519_pem: bytes) -> None:
    key = DKIMKey("example.org", "ed", str(key_file(tmp_path, ed25519_pem)), algorithm="ed25519-sha256")
    signed = sign(key)
    assert signature_tags(signed)["a"] == "ed25519-sha256"
    assert dkim.verify(signed, dnsfunc=zone_of(key))
    assert verify(signed, authserv_id="mx.test", dnsfunc=zone_of(key)).startswith(
        "Authentication-Results: mx.test; dkim=pass header.d=example.org header.s=ed header.a=ed25519-sha256")


def test_a_domain_with_an_rsa_and_an_ed25519_key_gets_both_signatures(tmp_path: Path, rsa_pem: bytes,
                                                                       ed25519_pem: bytes) -> None:
    keys = [rsa_key(tmp_path, rsa_pem),
            DKIMKey("example.org", "ed", str(key_file(tmp_path, ed25519_pem, name="ed")), "ed25519-sha256")]
    signed = Signer(keys).sign(MESSAGE, "alice@example.org")
    assert signed is not None and signed.count(b"DKIM-Signature:") == 2
    results = verify_signatures(signed, dnsfunc=zone_of(*keys))
    assert [(r.result, r.selector) for r in results] == [("pass", "sel"), ("pass", "ed")]


def test_the_signing_domain_is_the_from_domain(tmp_path: Path, rsa_pem: bytes) -> None:
    signer = Signer([rsa_key(tmp_path, rsa_pem)])
    assert signer.signing_domain(MESSAGE.replace(b"alice@example.org", b"alice@EXAMPLE.org"), "x@other.net") \
        == "example.org"
    assert signer.signing_domain(MESSAGE.replace(b"alice@example.org", b"alice@other.net"), "a@example.org") is None
    assert signer.sign(MESSAGE.replace(b"alice@example.org", b"alice@other.net"), "a@example.org") is None


def test_the_envelope_sender_domain_signs_only_when_configured(tmp_path: Path, rsa_pem: bytes) -> None:
    content = MESSAGE.replace(b"alice@example.org", b"alice@other.net")
    signer = Signer([rsa_key(tmp_path, rsa_pem)], sender_fallback=True)
    signed = signer.sign(content, "bounces@example.org")
    assert signed is not None and signature_tags(signed)["d"] == "example.org"


def test_from_domains_reads_every_from_address() -> None:
    content = (b"From: a@One.example, \"B\" <b@two.example>,\r\n c@one.example\r\nTo: d@three.example\r\n"
               b"\r\nFrom: x@y\r\n")
    assert from_domains(content) == ["one.example", "two.example"]


def test_a_from_with_two_domains_is_not_signed(tmp_path: Path, rsa_pem: bytes) -> None:
    content = MESSAGE.replace(b"<alice@example.org>", b"<alice@example.org>, eve@evil.example")
    assert Signer([rsa_key(tmp_path, rsa_pem)]).sign(content, "alice@example.org") is None


def test_a_header_section_dkimpy_cannot_parse_is_a_signing_error(tmp_path: Path, rsa_pem: bytes) -> None:
    with pytest.raises(SigningError, match=r"example\.org"):
        Signer([rsa_key(tmp_path, rsa_pem)]).sign(b"From: a@example.org\r\nno colon here\r\n\r\nbody\r\n", "")


# --- key files ---


def test_a_private_key_file_readable_by_others_is_refused_with_the_fix(tmp_path: Path, rsa_pem: bytes) -> None:
    path = key_file(tmp_path, rsa_pem, 0o644)
    with pytest.raises(ConfigError) as caught:
        load_private_key(path)
    assert str(path) in str(caught.value) and "0644" in str(caught.value)
    assert f"chmod 600 {path}" in str(caught.value)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602])
def test_any_group_or_other_permission_is_refused(tmp_path: Path, rsa_pem: bytes, mode: int) -> None:
    with pytest.raises(ConfigError, match="chmod 600"):
        load_private_key(key_file(tmp_path, rsa_pem, mode))


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_key_file_is_accepted(tmp_path: Path, rsa_pem: bytes, mode: int) -> None:
    assert load_private_key(key_file(tmp_path, rsa_pem, mode)) == rsa_pem


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.key does not exist"):
        load_private_key(tmp_path / "missing.key")


def test_a_directory_or_fifo_is_not_a_key_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    for path in (tmp_path, fifo):
        with pytest.raises(ConfigError, match="not a regular file"):
            load_private_key(path)


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_a_garbage_key_is_refused_when_loaded(tmp_path: Path, algorithm: str) -> None:
    with pytest.raises(ConfigError, match="not an"):
        load_private_key(key_file(tmp_path, b"-----BEGIN RSA PRIVATE KEY-----\nnonsense\n-----END RSA"), algorithm)


def test_an_rsa_key_is_not_an_ed25519_key(tmp_path: Path, rsa_pem: bytes) -> None:
    with pytest.raises(ConfigError, match="not an ed25519 private key"):
        load_private_key(key_file(tmp_path, rsa_pem), "ed25519-sha256")


def test_a_signer_loads_its_keys_when_made(tmp_path: Path) -> None:
    key = DKIMKey("example.org", "sel", str(key_file(tmp_path, b"garbage")))
    with pytest.raises(ConfigError, match="not an RSA private key"):
        Signer([key])


def test_a_pkcs8_and_a_crlf_pem_rsa_key_both_load(tmp_path: Path, rsa_pem: bytes) -> None:
    pkcs8 = serialization.load_pem_private_key(rsa_pem, None).private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, NO_PASSWORD)
    for data in (pkcs8, rsa_pem.replace(b"\n", b"\r\n")):
        key = rsa_key(tmp_path, data)
        assert dkim.verify(sign(key), dnsfunc=zone_of(key))


def test_an_ed25519_key_loads_from_a_base64_seed(tmp_path: Path) -> None:
    seed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, NO_PASSWORD)
    key = DKIMKey("example.org", "ed", str(key_file(tmp_path, base64.b64encode(seed) + b"\n")), "ed25519-sha256")
    assert dkim.verify(sign(key), dnsfunc=zone_of(key))


def test_the_public_key_record_carries_the_subject_public_key_info(tmp_path: Path, rsa_pem: bytes) -> None:
    public = serialization.load_pem_private_key(rsa_pem, None).public_key()
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert public_key_record(rsa_pem) == f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def test_the_ed25519_record_carries_the_raw_public_key(tmp_path: Path, ed25519_pem: bytes) -> None:
    private = serialization.load_pem_private_key(ed25519_pem, None)
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    loaded = load_private_key(key_file(tmp_path, ed25519_pem), "ed25519-sha256")
    assert public_key_record(loaded, "ed25519-sha256") == f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


# --- key settings ---


@pytest.mark.parametrize(("table", "problem"), [
    ({"algorithm": "rsa-sha1"}, "algorithm"),
    ({"canonicalization": "relaxed"}, "canonicalization"),
    ({"headers": ["to", "subject"]}, "must include from"),
    ({"headers": ["from", "bcc"]}, "bcc"),
    ({"oversign": ["received"]}, "received"),
    ({"selector": "bad selector"}, "selector"),
    ({"domain": "-example.org"}, "domain"),
    ({"headers": "from"}, "list of strings"),
    ({"colour": "blue"}, "unknown dkim setting"),
])
def test_a_bad_key_setting_is_a_config_error(table: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        DKIMKey.from_table({"domain": "example.org", "selector": "sel", "key_file": "k", **table})


def test_a_key_table_needs_domain_selector_and_key_file() -> None:
    with pytest.raises(ConfigError, match="needs selector, key_file"):
        DKIMKey.from_table({"domain": "example.org"})


def test_key_settings_default_to_rfc_6376_headers_and_relaxed_canonicalization() -> None:
    key = DKIMKey.from_table({"domain": "Example.ORG.", "selector": "Sel", "key_file": "k"})
    assert (key.domain, key.selector, key.algorithm, key.canonicalization) == (
        "example.org", "sel", "rsa-sha256", "relaxed/relaxed")
    assert key.headers == DEFAULT_HEADERS and key.oversign == ("from",)
    assert {"list-unsubscribe", "list-unsubscribe-post", "mime-version", "references"} <= set(key.headers)


def test_a_selector_twice_for_a_domain_is_refused(tmp_path: Path, rsa_pem: bytes) -> None:
    with pytest.raises(ConfigError, match="configured twice"):
        Signer([rsa_key(tmp_path, rsa_pem), rsa_key(tmp_path, rsa_pem)])


# --- verification ---


def test_verify_records_pass_with_domain_selector_and_signature_prefix(tmp_path: Path, rsa_pem: bytes) -> None:
    key = rsa_key(tmp_path, rsa_pem)
    signed = sign(key)
    b = signature_tags(signed)["b"][:8]
    quoted = b if re.fullmatch(r"[A-Za-z0-9+]+", b) else f'"{b}"'
    assert verify(signed, authserv_id="mx.test", dnsfunc=zone_of(key)) == (
        f"Authentication-Results: mx.test; dkim=pass header.d=example.org header.s=sel header.a=rsa-sha256 "
        f"header.b={quoted}")


def test_a_tampered_body_fails(tmp_path: Path, rsa_pem: bytes) -> None:
    key = rsa_key(tmp_path, rsa_pem)
    tampered = sign(key).replace(b"Hello Bob.", b"Hello Bib.")
    [result] = verify_signatures(tampered, dnsfunc=zone_of(key))
    assert (result.result, result.reason, result.domain) == ("fail", "body hash mismatch", "example.org")


def test_a_tampered_signed_header_fails(tmp_path: Path, rsa_pem: bytes) -> None:
    key = rsa_key(tmp_path, rsa_pem)
    tampered = sign(key).replace(b"Subject: a folded", b"Subject: a forged")
    assert [r.result for r in verify_signatures(tampered, dnsfunc=zone_of(key))] == ["fail"]


def test_an_unsigned_message_is_dkim_none() -> None:
    assert verify(MESSAGE, authserv_id="mx.test", dnsfunc=zone_for({})) == "Authentication-Results: mx.test; dkim=none"


def test_a_dns_failure_is_a_temperror(tmp_path: Path, rsa_pem: bytes) -> None:
    def timeout(name: bytes, timeout: float = 5.0) -> bytes | None:
        raise dns.exception.Timeout()

    [result] = verify_signatures(sign(rsa_key(tmp_path, rsa_pem)), dnsfunc=timeout)
    assert (result.result, result.reason, result.selector) == ("temperror", "key lookup failed", "sel")


def test_no_key_record_is_a_permerror(tmp_path: Path, rsa_pem: bytes) -> None:
    [result] = verify_signatures(sign(rsa_key(tmp_path, rsa_pem)), dnsfunc=zone_for({}))
    assert (result.result, result.reason) == ("permerror", "no key for signature")


def test_a_broken_key_record_is_a_permerror(tmp_path: Path, rsa_pem: bytes) -> None:
    zone = zone_for({"sel._domainkey.example.org": "v=DKIM1; k=rsa; p=bm90IGEga2V5"})
    assert [r.result for r in verify_signatures(sign(rsa_key(tmp_path, rsa_pem)), dnsfunc=zone)] == ["permerror"]


def test_the_wrong_public_key_fails(tmp_path: Path, rsa_pem: bytes, ed25519_pem: bytes) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        PEM, serialization.PrivateFormat.TraditionalOpenSSL, NO_PASSWORD)
    zone = zone_for({"sel._domainkey.example.org": public_key_record(other)})
    [result] = verify_signatures(sign(rsa_key(tmp_path, rsa_pem)), dnsfunc=zone)
    assert (result.result, result.reason) == ("fail", "signature did not verify")


def test_a_malformed_signature_is_neutral() -> None:
    content = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel\r\n" + MESSAGE
    [result] = verify_signatures(content, dnsfunc=zone_for({}))
    assert (result.result, result.reason, result.domain, result.selector) == (
        "neutral", "missing b=", "example.org", "sel")


def test_a_signed_message_dkimpy_cannot_parse_is_neutral() -> None:
    content = b"DKIM-Signature: v=1; d=example.org\r\nno colon here\r\n\r\nbody\r\n"
    assert verify(content, authserv_id="mx.test", dnsfunc=zone_for({})) == \
        "Authentication-Results: mx.test; dkim=neutral (Unexpected characters in RFC822 header)"


def test_a_hostile_signature_cannot_inject_into_our_field() -> None:
    content = b"DKIM-Signature: v=1; d=ex\xc3\xa9mple.org\r\n \"; dkim=pass; s=a(b)c; b=x\"y\r\n" + MESSAGE
    [result] = verify_signatures(content, dnsfunc=zone_for({}))
    assert result.resinfo() == 'dkim=neutral (missing a=) header.d="exmple.org\\"" header.s="a(b)c" header.b="x\\"y"'


def test_every_signature_is_verified_and_reported(tmp_path: Path, rsa_pem: bytes) -> None:
    good = rsa_key(tmp_path, rsa_pem)
    stale = DKIMKey("example.org", "old", good.key_file)
    signed = Signer([good, stale]).sign(MESSAGE, "alice@example.org")
    assert signed is not None
    zone = zone_for({"sel._domainkey.example.org": public_key_record(load_private_key(good.key_file))})
    field = verify(signed, authserv_id="mx.test", dnsfunc=zone)
    assert re.fullmatch(r"Authentication-Results: mx\.test;\r\n\tdkim=pass header\.d=example\.org header\.s=sel "
                        r"header\.a=rsa-sha256 header\.b=\S+;\r\n\tdkim=permerror \(no key for signature\) "
                        r"header\.d=example\.org header\.s=old header\.a=rsa-sha256 header\.b=\S+", field)


def test_header_b_is_quoted_when_it_holds_a_tspecial() -> None:
    assert DKIMResult("pass", "example.org", "sel", "rsa-sha256", "ab/cd+ef").resinfo() == \
        'dkim=pass header.d=example.org header.s=sel header.a=rsa-sha256 header.b="ab/cd+ef"'


def test_a_short_field_stays_on_one_line_and_the_authserv_id_is_checked() -> None:
    assert authentication_results("mx.test", [DKIMResult("temperror", reason="x")]) == \
        "Authentication-Results: mx.test; dkim=temperror (x)"
    with pytest.raises(ValueError, match="authserv-id"):
        authentication_results("mx test; dkim=pass", [])


# --- forged Authentication-Results ---


def test_forged_authentication_results_with_our_id_are_removed_and_others_kept() -> None:
    content = (b"Authentication-Results: MX.test; dkim=pass\r\n header.d=bank.example\r\n"
               b"Authentication-Results: other.example; dkim=fail\r\n"
               b"authentication-results: (a comment (nested)) mx.test; spf=pass\r\n"
               b"Authentication-Results: mx.test.evil.example; dkim=pass\r\n"
               b"From: a@example.org\r\n\r\n"
               b"Authentication-Results: mx.test; in the body stays\r\n")
    assert strip_authentication_results(content, "mx.test") == (
        b"Authentication-Results: other.example; dkim=fail\r\n"
        b"Authentication-Results: mx.test.evil.example; dkim=pass\r\n"
        b"From: a@example.org\r\n\r\n"
        b"Authentication-Results: mx.test; in the body stays\r\n")


def test_a_message_without_authentication_results_is_unchanged() -> None:
    assert strip_authentication_results(MESSAGE, "mx.test") is not None
    assert strip_authentication_results(MESSAGE, "mx.test") == MESSAGE


# --- RSA through OpenSSL ---


@contextmanager
def dkimpy_rsa() -> Iterator[None]:
    """dkimpy's own PEM parse and pure-Python RSA, put back for the duration."""
    ours = dkim.parse_pem_private_key, dkim.RSASSA_PKCS1_v1_5_sign
    dkim.parse_pem_private_key = dkim.crypto.parse_pem_private_key
    dkim.RSASSA_PKCS1_v1_5_sign = dkim.crypto.RSASSA_PKCS1_v1_5_sign
    try:
        yield
    finally:
        dkim.parse_pem_private_key, dkim.RSASSA_PKCS1_v1_5_sign = ours


@functools.cache
def rsa_pem_of(bits: int) -> bytes:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits).private_bytes(
        PEM, serialization.PrivateFormat.TraditionalOpenSSL, NO_PASSWORD)


@pytest.mark.parametrize("bits", [1024, 2048, 3072])
@pytest.mark.parametrize("content", [MESSAGE, MESSAGE.replace(b"\r\n", b"\n"), b"From: a@example.org\r\n\r\n"],
                         ids=["crlf", "lf", "empty-body"])
def test_openssl_signatures_are_byte_identical_to_dkimpy_s_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               bits: int, content: bytes) -> None:
    key = rsa_key(tmp_path, rsa_pem_of(bits))
    monkeypatch.setattr("time.time", lambda: 1_795_000_000.0)
    signer = Signer([key])
    ours = signer.sign(content, "alice@example.org")
    with dkimpy_rsa():
        theirs = signer.sign(content, "alice@example.org")
    assert ours is not None and ours == theirs
    assert dkim.verify(ours.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), dnsfunc=zone_of(key))


@pytest.mark.parametrize("form", ["pkcs1", "pkcs8", "pkcs1-crlf"])
def test_a_signer_s_key_never_reaches_dkimpy_s_pure_python_rsa(tmp_path: Path, rsa_pem: bytes,
                                                                monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    pem = {"pkcs1": rsa_pem, "pkcs1-crlf": rsa_pem.replace(b"\n", b"\r\n"),
           "pkcs8": serialization.load_pem_private_key(rsa_pem, None).private_bytes(
               PEM, serialization.PrivateFormat.PKCS8, NO_PASSWORD)}[form]
    key = rsa_key(tmp_path, pem)
    signer, zone = Signer([key]), zone_of(key)

    def slow(*args: object) -> None:
        raise AssertionError("dkimpy's pure-Python RSA or PEM parse ran")

    monkeypatch.setattr(dkim.crypto, "rsa_decrypt", slow)
    monkeypatch.setattr(dkim.crypto, "parse_private_key", slow)
    signed = signer.sign(MESSAGE, "")
    monkeypatch.undo()
    assert signed is not None and dkim.verify(signed, dnsfunc=zone)


def test_a_key_no_signer_registered_is_still_signed_by_dkimpy(rsa_pem: bytes) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        PEM, serialization.PrivateFormat.TraditionalOpenSSL, NO_PASSWORD)
    signed = dkim.sign(MESSAGE, b"sel", b"example.org", other) + MESSAGE
    assert dkim.verify(signed, dnsfunc=zone_for({"sel._domainkey.example.org": public_key_record(other)}))
