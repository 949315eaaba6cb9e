"""DKIM: signing outbound mail and verifying inbound mail (RFC 6376), with dkimpy.

Outbound (a preprocessor: the `dkim_sign` hook, hooks/dkim_sign.py): `Signer.sign` adds one
DKIM-Signature per key of the signing domain, which is the domain of the From: address (RFC 6376
§3.5 d=; aligned with From: for DMARC, RFC 7489 §3.1.1), or the envelope sender's only when the
signer is told to fall back to it. The signature covers the header fields of `DEFAULT_HEADERS`
that the message has (RFC 6376 §5.4.1; List-Unsubscribe-Post too, RFC 8058 §4), each as often as
present, and those of `oversign` once more (as OpenDKIM's OversignHeaders and rspamd's "(o)" do),
so that no second From: can be added without breaking it (RFC 6376 §8.15). The new field is
prepended; the message's own bytes are left exactly as they were, line ends included.

Keys (RFC 8301: rsa-sha256 with at least 1024 bits; RFC 8463: ed25519-sha256) are read once, by
`load_private_key`, which refuses a file that group or others may read or write (OpenSSH's and
OpenDKIM's RequireSafeKeys habit) and a key dkimpy cannot use. `public_key_record` gives the TXT
record to publish at ``SELECTOR._domainkey.DOMAIN`` (RFC 6376 §3.6.1).

Inbound (a postprocessor): `verify` checks every DKIM-Signature and returns the
Authentication-Results: field that records the outcome (RFC 8601 §2.7.1: pass, fail, neutral,
permerror, temperror, none), with header.d, header.s, header.a and header.b (RFC 6008) per
signature. `strip_authentication_results` removes fields that claim to come from us
(RFC 8601 §5) before ours is added.

dkimpy has no type hints: every call into it is in the "dkimpy boundary" section below. Its RSA
step (and its per-message PEM parse) is replaced by OpenSSL's for the keys a Signer loaded, for
speed, with byte-identical signatures: see "RSA through OpenSSL".
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from email.utils import getaddresses
from typing import Any, Protocol

import dkim
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import nacl.encoding
import nacl.exceptions
import nacl.signing
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from msgspool.domain.content import header_block
from msgspool.errors import ConfigError, MsgspoolError

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
CANONICALIZATIONS = ("relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple")
DEFAULT_HEADERS = (
    "from", "sender", "reply-to", "subject", "date", "to", "cc", "message-id", "in-reply-to", "references",
    "mime-version", "content-type", "content-transfer-encoding", "content-id", "content-description",
    "resent-date", "resent-from", "resent-sender", "resent-to", "resent-cc", "resent-message-id",
    "list-id", "list-help", "list-unsubscribe", "list-unsubscribe-post", "list-subscribe", "list-post",
    "list-owner", "list-archive",
)
DEFAULT_OVERSIGN = ("from",)
# RFC 6376 §5.4: fields a signer SHOULD NOT sign (dkimpy refuses them).
NEVER_SIGNED = ("return-path", "received", "comments", "keywords", "bcc", "resent-bcc", "dkim-signature")
MIN_RSA_BITS = 1024  # RFC 8301 §3.2
MAX_KEY_FILE = 64 * 1024

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_FIELD_NAME = re.compile(r"^[!-9;-~]+$")
_TOKEN = re.compile(r"^[!#-'*+.0-9A-Z^-~-]+$")  # RFC 2045 token: no tspecials
_FROM_FIELD = re.compile(rb"^from:(.*?)\r?\n(?![ \t])", re.IGNORECASE | re.MULTILINE | re.DOTALL)
_AR_FIELD = re.compile(rb"^authentication-results:(.*?)\r?\n(?![ \t])", re.IGNORECASE | re.MULTILINE | re.DOTALL)
_COMMENT = re.compile(rb"\([^()]*\)")
_REASON_END = re.compile(r"[(:]")
_ED25519_PKCS8 = bytes.fromhex("302e020100300506032b657004220420")  # RFC 8410 §7, then the 32-byte seed
_RSA_OID = bytes.fromhex("2a864886f70d010101")


class SigningError(MsgspoolError):
    """dkimpy refused to sign a message (a header section it cannot parse)."""


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DKIMKey:
    """One signing key: a table of the `dkim_sign` hook's `keys` (hooks/dkim_sign.py). A domain may
    have two (rsa-sha256 and ed25519-sha256, RFC 8463 §6): the message then carries both signatures."""

    domain: str
    selector: str
    key_file: str
    algorithm: str = "rsa-sha256"
    headers: tuple[str, ...] = DEFAULT_HEADERS
    oversign: tuple[str, ...] = DEFAULT_OVERSIGN
    canonicalization: str = "relaxed/relaxed"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "domain", _a_label(self.domain))
        set_(self, "selector", self.selector.lower())
        set_(self, "headers", tuple(h.lower() for h in self.headers))
        set_(self, "oversign", tuple(h.lower() for h in self.oversign))
        problem = _key_problem(self)
        if problem:
            raise ConfigError(f"dkim key for {self.domain or '?'}: {problem}")

    @classmethod
    def from_table(cls, table: Mapping[str, Any], source: str = "dkim") -> DKIMKey:
        """A key from a TOML table; an unknown key or a value of the wrong type is a ConfigError."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, value in table.items():
            if name not in known:
                raise ConfigError(f"{source}: unknown dkim setting {name!r}")
            values[name] = _table_value(source, name, value)
        missing = [n for n in ("domain", "selector", "key_file") if n not in values]
        if missing:
            raise ConfigError(f"{source}: dkim key needs {', '.join(missing)}")
        return cls(**values)


def _table_value(source: str, name: str, value: Any) -> Any:
    if name in ("headers", "oversign"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: dkim {name} must be a list of strings, not {value!r}")
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(f"{source}: dkim {name} must be a string, not {value!r}")
    return value


def _key_problem(key: DKIMKey) -> str:
    if not _DOMAIN.match(key.domain):
        return f"domain {key.domain!r} is not a domain name"
    if not _DOMAIN.match(key.selector):
        return f"selector {key.selector!r} is not a valid selector (RFC 6376 §3.1)"
    if key.algorithm not in ALGORITHMS:
        return f"algorithm {key.algorithm!r} is not one of {', '.join(ALGORITHMS)}"
    if key.canonicalization not in CANONICALIZATIONS:
        return f"canonicalization {key.canonicalization!r} is not one of {', '.join(CANONICALIZATIONS)}"
    if "from" not in key.headers:
        return "headers must include from (RFC 6376 §5.4)"
    bad = [h for h in (*key.headers, *key.oversign) if h in NEVER_SIGNED or not _FIELD_NAME.match(h)]
    return f"these header fields cannot be signed: {', '.join(bad)}" if bad else ""


def _a_label(domain: str) -> str:
    """A domain in the ASCII form d= needs (RFC 6376 §3.5, RFC 8616 §4); '' when it has none."""
    domain = domain.strip().rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


# --- key files -----------------------------------------------------------------------------------


def load_private_key(path: str | os.PathLike[str], algorithm: str = "rsa-sha256") -> bytes:
    """The private key in the form dkimpy signs with: PEM (PKCS#1 or PKCS#8) for rsa-sha256; for
    ed25519-sha256 the base64 seed dknewkey writes, or a PKCS#8 PEM (``openssl genpkey``).

    The file must be a regular file that neither group nor others may read or write
    (mode & 0o077 == 0), and hold a key dkimpy can use; otherwise a ConfigError says why and how
    to fix it."""
    data = _read_safely(os.fspath(path))
    key = _ed25519_seed(data) if algorithm == "ed25519-sha256" else data.replace(b"\r\n", b"\n")
    problem = _rsa_problem(key) if algorithm == "rsa-sha256" else _ed25519_problem(key)
    if problem:
        raise ConfigError(f"DKIM key {os.fspath(path)}: {problem}")
    return key


def _read_safely(path: str) -> bytes:
    try:  # O_NONBLOCK: a FIFO must not hang the check; fstat after open: no window for a swap
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"DKIM key {path} does not exist") from None
    except OSError as err:
        raise ConfigError(f"DKIM key {path} cannot be opened: {err.strerror}") from err
    try:
        _check_safe(path, os.fstat(fd))
        return os.read(fd, MAX_KEY_FILE)
    finally:
        os.close(fd)


def _check_safe(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"DKIM key {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(f"DKIM key {path} has mode {mode:04o}: group and others may read or write it; "
                          f"make it private to its owner with `chmod 600 {path}`")
    if st.st_size > MAX_KEY_FILE:
        raise ConfigError(f"DKIM key {path} is {st.st_size} bytes: too large for a key")


def _ed25519_seed(data: bytes) -> bytes:
    """A PKCS#8 PEM ed25519 key as the base64 seed dkimpy takes; anything else unchanged."""
    if b"-----BEGIN PRIVATE KEY-----" not in data:
        return data.strip()
    body = b"".join(line for line in data.splitlines() if line and not line.startswith(b"-----"))
    try:
        der = base64.b64decode(body, validate=True)
    except binascii.Error:
        return data
    if len(der) != len(_ED25519_PKCS8) + 32 or not der.startswith(_ED25519_PKCS8):
        return data
    return base64.b64encode(der[len(_ED25519_PKCS8):])


def public_key_record(private_key: bytes, algorithm: str = "rsa-sha256") -> str:
    """The TXT record value to publish for a key from `load_private_key` (RFC 6376 §3.6.1)."""
    if algorithm == "ed25519-sha256":
        public = _ed25519_signing_key(private_key).verify_key.encode()
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode('ascii')}"
    modulus, exponent = _rsa_public_numbers(private_key)
    der = _der(0x30, _der(0x30, _der(0x06, _RSA_OID) + _der(0x05, b""))
               + _der(0x03, b"\x00" + _der(0x30, _der_int(modulus) + _der_int(exponent))))
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + body


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))  # a leading 0 keeps it positive


def _ed25519_problem(key: bytes) -> str:
    try:
        _ed25519_signing_key(key)
    except (ValueError, TypeError, nacl.exceptions.CryptoError):
        return "not an ed25519 private key (base64 seed, or PKCS#8 PEM)"
    return ""


def _ed25519_signing_key(key: bytes) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(key, encoder=nacl.encoding.Base64Encoder)


# --- signing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LoadedKey:
    key: DKIMKey
    private: bytes = field(repr=False)


class Signer:
    """Signs outbound messages with the keys of their From: domain. Keys are read and checked
    when the signer is made, so a bad key stops the daemon at start, not at the first send."""

    def __init__(self, keys: Iterable[DKIMKey], *, sender_fallback: bool = False) -> None:
        self.sender_fallback = sender_fallback
        self._keys: dict[str, list[_LoadedKey]] = {}
        for key in keys:
            loaded = self._keys.setdefault(key.domain, [])
            if any(k.key.selector == key.selector for k in loaded):
                raise ConfigError(f"dkim: selector {key.selector} of {key.domain} is configured twice")
            private = load_private_key(key.key_file, key.algorithm)
            if key.algorithm == "rsa-sha256":
                openssl_rsa_register(private)
            loaded.append(_LoadedKey(key, private))

    @property
    def domains(self) -> list[str]:
        return sorted(self._keys)

    def signing_domain(self, content: bytes, sender: str) -> str | None:
        """The d= for a message: its From: domain, else (with sender_fallback) the envelope
        sender's; None when that domain has no key or From: names several domains."""
        domains = from_domains(content)
        if len(domains) == 1 and domains[0] in self._keys:
            return domains[0]
        fallback = _a_label(sender.rpartition("@")[2]) if self.sender_fallback else ""
        return fallback if fallback in self._keys else None

    def sign(self, content: bytes, sender: str) -> bytes | None:
        """The message with a DKIM-Signature prepended per key of its signing domain, or None
        when there is no key for it (send the message as it is). CPU-bound: run it off the event
        loop. Raises SigningError for a header section dkimpy cannot parse."""
        domain = self.signing_domain(content, sender)
        if domain is None:
            return None
        linesep = b"\n" if b"\n" in content and b"\r\n" not in content else b"\r\n"
        return b"".join(_dkimpy_sign(content, k.key, k.private, linesep) for k in self._keys[domain]) + content


def from_domains(content: bytes) -> list[str]:
    """The distinct domains of the From: addresses, in order (RFC 5322 §3.6.2)."""
    values = [m.group(1).decode("utf-8", "replace") for m in _FROM_FIELD.finditer(header_block(content))]
    domains: list[str] = []
    for _name, address in getaddresses([v.replace("\r\n", "").replace("\n", "") for v in values]):
        domain = _a_label(address.rpartition("@")[2]) if "@" in address else ""
        if domain and domain not in domains:
            domains.append(domain)
    return domains


def signed_fields(names: Sequence[bytes], key: DKIMKey) -> list[bytes]:
    """h= for a message with these header field names: each wanted field as often as present,
    in the message's order, then each oversigned field once more (RFC 6376 §5.4.2)."""
    wanted = {h.encode("ascii") for h in (*key.headers, *key.oversign)}
    present = [n.lower() for n in names if n.lower() in wanted]
    return present + [h.encode("ascii") for h in key.oversign]


# --- verification --------------------------------------------------------------------------------


class DNSFunc(Protocol):
    """dkimpy's TXT lookup: the record for a name such as b"sel._domainkey.example.org.", or
    None when there is none. A failed lookup raises (dns.exception.DNSException, OSError)."""

    def __call__(self, name: bytes, timeout: float = ...) -> bytes | None: ...


def dns_txt(name: bytes, timeout: float = 5.0, *, resolver: dns.resolver.Resolver | None = None) -> bytes | None:
    """The default DNSFunc, with dnspython: NXDOMAIN or no TXT record is None (permerror);
    a timeout or SERVFAIL raises (temperror). Several strings of a record are joined
    (RFC 6376 §3.6.2.2)."""
    try:
        qname = dns.name.from_text(name.decode("ascii"))
    except (UnicodeDecodeError, dns.exception.DNSException):
        return None
    try:
        answer = (resolver or dns.resolver.get_default_resolver()).resolve(
            qname, dns.rdatatype.TXT, lifetime=timeout, raise_on_no_answer=False, search=False)
    except dns.resolver.NXDOMAIN:
        return None
    records = [b"".join(r.strings) for r in answer.rrset or ()]
    return next((r for r in records if r.startswith(b"v=DKIM1")), records[0] if records else None)


@dataclass(frozen=True)
class DKIMResult:
    """The outcome for one signature (RFC 8601 §2.7.1) and the properties that name it."""

    result: str
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    b: str = ""
    reason: str = ""

    def resinfo(self) -> str:
        parts = [f"dkim={self.result}"]
        if self.reason:
            parts.append(f"({self.reason})")
        for prop, value in (("d", self.domain), ("s", self.selector), ("a", self.algorithm), ("b", self.b)):
            if value:
                parts.append(f"header.{prop}={_pvalue(value)}")
        return " ".join(parts)


def verify_signatures(content: bytes, *, dnsfunc: DNSFunc | None = None, minkey: int = MIN_RSA_BITS,
                      timeout: float = 5.0) -> list[DKIMResult]:
    """One result per DKIM-Signature, top one first; [] for an unsigned message. CPU-bound and
    doing blocking DNS: run it off the event loop."""
    try:
        checker = _dkimpy_checker(content, minkey, timeout)
    except Exception as err:  # a header section dkimpy cannot even parse
        signed = b"dkim-signature:" in header_block(content).lower()
        return [DKIMResult("neutral", reason=_reason(err))] if signed else []
    lookup = _KeyLookup(dnsfunc or dns_txt)
    return [_verify_one(checker, idx, raw, lookup) for idx, raw in enumerate(_signature_values(checker))]


def verify(content: bytes, *, authserv_id: str, dnsfunc: DNSFunc | None = None) -> str:
    """The Authentication-Results: field (no line end) recording every DKIM signature's outcome:
    ``Authentication-Results: mx.example.org; dkim=pass header.d=example.org header.s=sel
    header.a=rsa-sha256 header.b=abcdefgh``; ``dkim=none`` for an unsigned message."""
    return authentication_results(authserv_id, verify_signatures(content, dnsfunc=dnsfunc))


def authentication_results(authserv_id: str, results: Sequence[DKIMResult]) -> str:
    """The Authentication-Results: field for these results: one line for one result, else
    folded with one result a line."""
    if not _TOKEN.match(authserv_id):
        raise ValueError(f"authserv-id {authserv_id!r} must be a host name (RFC 8601 §2.5)")
    resinfo = [r.resinfo() for r in results] or ["dkim=none"]
    if len(resinfo) == 1:
        return f"Authentication-Results: {authserv_id}; {resinfo[0]}"
    return f"Authentication-Results: {authserv_id};\r\n\t" + ";\r\n\t".join(resinfo)


def strip_authentication_results(content: bytes, authserv_id: str) -> bytes:
    """The message without the Authentication-Results: fields that carry our authserv-id: a
    forgery from upstream, since only we write those (RFC 8601 §5). Everything else is kept
    byte for byte."""
    ours = authserv_id.lower().encode("ascii")
    head = header_block(content)

    def keep(m: re.Match[bytes]) -> bytes:
        return b"" if _authserv_id(m.group(1)) == ours else m.group(0)

    return _AR_FIELD.sub(keep, head) + content[len(head):]


def _authserv_id(value: bytes) -> bytes:
    """The authserv-id that opens an Authentication-Results: value, comments skipped, lower case."""
    previous = None
    while previous != value:
        previous, value = value, _COMMENT.sub(b" ", value)
    match = re.match(rb'\s*"?([^\s;"(]+)', value)
    return match.group(1).lower() if match else b""


def _pvalue(value: str) -> str:
    """A property value: a token, or a quoted-string when it holds tspecials such as '/' or '='
    (RFC 8601 §2.2, RFC 2045 §5.1); header.b often does."""
    if _TOKEN.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _reason(err: BaseException) -> str:
    """A short comment from an exception: the words before any quoted value, printable only."""
    words = _REASON_END.split(re.sub(r"b'([^']*)'", r"\1", str(err)), maxsplit=1)[0]  # dkimpy shows bytes
    return re.sub(r"[^A-Za-z0-9 .=_-]", "", words).strip()[:60] or type(err).__name__


def _signature_fields(raw: bytes) -> dict[str, str]:
    tags: dict[str, str] = {}
    for spec in re.sub(rb"\r?\n", b"", raw).split(b";"):
        name, sep, value = spec.partition(b"=")
        if sep:
            text = re.sub(rb"\s+", b"", value).decode("ascii", "replace")
            tags.setdefault(name.strip().decode("ascii", "replace"), text)
    return tags


def _result(result: str, raw: bytes, reason: str = "") -> DKIMResult:
    """A result named by the signature's own d=, s=, a= and b= (only printable ASCII of them: the
    signature is the sender's text, our field is not)."""
    tags = {k: re.sub(r"[^!-~]", "", v)[:255] for k, v in _signature_fields(raw).items()}
    return DKIMResult(result, tags.get("d", "").lower(), tags.get("s", ""), tags.get("a", "").lower(),
                      tags.get("b", "")[:8], reason)


class _KeyLookup:
    """Wraps a DNSFunc to remember why a key could not be had: dkimpy only answers False."""

    def __init__(self, dnsfunc: DNSFunc) -> None:
        self.dnsfunc = dnsfunc
        self.error: tuple[str, str] | None = None

    def __call__(self, name: bytes, timeout: float = 5.0) -> bytes | None:
        try:
            record = self.dnsfunc(name, timeout=timeout)
        except (dns.exception.DNSException, OSError, dkim.DnsTimeoutError) as err:
            self.error = ("temperror", "key lookup failed")
            raise dkim.DnsTimeoutError(str(err)) from err
        if isinstance(record, str):
            record = record.encode("utf-8")
        if not record:
            self.error = ("permerror", "no key for signature")
        elif not _key_record_usable(name, record):
            self.error = ("permerror", "unusable key record")
        return record


# --- RSA through OpenSSL -------------------------------------------------------------------------
# Why: dkimpy computes RSASSA-PKCS1-v1_5 (RFC 8017 §8.2.1) in pure Python, and parses the PEM key
# again for every message. Measured with `python -m bench.dkim_sign` on the 2-core build box, a
# 2048-bit rsa-sha256 signature took 6.7 ms (p90 9.2 ms), 82 % of it in two pow() calls that hold
# the GIL, and 0.2 ms in the ASN.1 parse: ~150 messages a second per core, against a relay that
# moves 946. OpenSSL (the `cryptography` package) does the RSA step in about 0.3 ms; with both
# steps replaced the whole signature takes 0.5 ms (p90 0.8 ms), ~2000 messages a second.
#
# How: dkimpy's DKIM.sign and DKIM.gen_header call two module-level names, dkim.parse_pem_private_key
# and dkim.RSASSA_PKCS1_v1_5_sign. Both are replaced by functions that, for a key a Signer
# registered, answer from the key parsed once at start and sign with OpenSSL, and hand any other
# key to dkimpy's own functions, so other users of dkimpy in the process see no change.
# Canonicalization, h=, the tags and the folding stay dkimpy's. PKCS#1 v1.5 signatures are
# deterministic: the bytes are exactly dkimpy's (tests/unit/test_dkim.py proves it).

_DKIMPY_PARSE_PEM = dkim.crypto.parse_pem_private_key
_DKIMPY_RSA_SIGN = dkim.crypto.RSASSA_PKCS1_v1_5_sign
_OPENSSL_HASHES: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}


class _OpenSSLRSAKey(dict[str, int]):
    """dkimpy's parsed RSA key (modulus, exponents, primes) and the OpenSSL key that signs for it."""

    def __init__(self, parsed: Mapping[str, int], openssl: rsa.RSAPrivateKey) -> None:
        super().__init__(parsed)
        self.openssl = openssl


_REGISTERED: dict[bytes, _OpenSSLRSAKey] = {}  # PEM -> key; written while keys load, at start


def openssl_rsa_register(pem: bytes) -> bool:
    """Let dkimpy sign with this RSA key (PEM, as `load_private_key` returns it) through OpenSSL.
    False when OpenSSL cannot read it: dkimpy's pure-Python RSA then signs with it, slowly."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    if not isinstance(key, rsa.RSAPrivateKey):
        return False
    _REGISTERED[pem] = _OpenSSLRSAKey(_DKIMPY_PARSE_PEM(pem), key)
    return True


def _parse_pem_private_key(data: bytes) -> Mapping[str, int]:
    """dkimpy's parse_pem_private_key, answered from the parse made at start for a registered key."""
    found = _REGISTERED.get(data) if isinstance(data, bytes) else None  # dkimpy also takes a bytearray
    return found or _DKIMPY_PARSE_PEM(data)


def _rsassa_pkcs1_v1_5_sign(digest: Any, private_key: Mapping[str, int]) -> bytes:
    """dkimpy's RSASSA_PKCS1_v1_5_sign(hash, private_key) (RFC 8017 §8.2.1): through OpenSSL for
    a registered key, which signs the hash object's digest with the same DigestInfo (§9.2)."""
    algorithm = _OPENSSL_HASHES.get(str(digest.name).lower())
    if not isinstance(private_key, _OpenSSLRSAKey) or algorithm is None:
        return bytes(_DKIMPY_RSA_SIGN(digest, private_key))
    return private_key.openssl.sign(digest.digest(), padding.PKCS1v15(), Prehashed(algorithm))


dkim.parse_pem_private_key = _parse_pem_private_key
dkim.RSASSA_PKCS1_v1_5_sign = _rsassa_pkcs1_v1_5_sign


# --- dkimpy boundary: untyped calls, typed results -----------------------------------------------


def _dkimpy_sign(content: bytes, key: DKIMKey, private: bytes, linesep: bytes) -> bytes:
    """One DKIM-Signature field, ending in linesep, folded by dkimpy (b= on its own lines)."""
    header, body = key.canonicalization.encode("ascii").split(b"/")
    try:
        signer = dkim.DKIM(content, linesep=linesep, signature_algorithm=key.algorithm.encode("ascii"))
        names = [bytes(name) for name, _value in signer.headers]
        signature = signer.sign(key.selector.encode("ascii"), key.domain.encode("ascii"), private,
                                canonicalize=(header, body), include_headers=signed_fields(names, key))
    except dkim.DKIMException as err:
        raise SigningError(f"cannot sign for {key.domain}: {err}") from err
    return bytes(signature)


def _rsa_problem(key: bytes) -> str:
    try:
        bits = _rsa_public_numbers(key)[0].bit_length()
    except (dkim.crypto.UnparsableKeyError, dkim.asn1.ASN1FormatError, binascii.Error, ValueError, TypeError):
        return "not an RSA private key in PEM form (PKCS#1 or PKCS#8)"
    return f"the RSA key has {bits} bits; at least {MIN_RSA_BITS} are needed (RFC 8301)" if bits < MIN_RSA_BITS else ""


def _rsa_public_numbers(key: bytes) -> tuple[int, int]:
    parsed = dkim.crypto.parse_pem_private_key(key)
    return int(parsed["modulus"]), int(parsed["publicExponent"])


def _key_record_usable(name: bytes, record: bytes) -> bool:
    try:
        dkim.evaluate_pk(name, record)
    except Exception:  # dkimpy raises KeyFormatError, binascii.Error, IndexError...
        return False
    return True


def _dkimpy_checker(content: bytes, minkey: int, timeout: float) -> Any:
    return dkim.DKIM(content, minkey=minkey, timeout=timeout)


def _signature_values(checker: Any) -> list[bytes]:
    return [bytes(value) for name, value in checker.headers if bytes(name).lower() == b"dkim-signature"]


def _verify_one(checker: Any, idx: int, raw: bytes, lookup: _KeyLookup) -> DKIMResult:
    lookup.error = None
    try:
        ok = bool(checker.verify(idx=idx, dnsfunc=lookup))
    except dkim.ValidationError as err:
        return _result("fail" if "body hash mismatch" in str(err) else "neutral", raw, _reason(err))
    except dkim.KeyFormatError as err:
        return _result("permerror", raw, _reason(err))
    except Exception as err:  # hostile input must not stop the inbound pipeline
        return _result("neutral", raw, _reason(err))
    if ok:
        return _result("pass", raw)
    if lookup.error:
        result, reason = lookup.error
        return _result(result, raw, reason)
    return _result("fail", raw, "signature did not verify")
