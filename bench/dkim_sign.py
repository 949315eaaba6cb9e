"""What one DKIM signature costs: ``python -m bench.dkim_sign [N]``.

Makes throwaway keys (RSA 2048 and 1024 bits, ed25519) in a temporary directory and signs a
typical 2 KB message N times (default 300) with each through `Signer.sign`, what the `dkim_sign`
hook runs: RSA through OpenSSL, and, for comparison, RSA through dkimpy's own pure-Python code
(its two functions put back for the "dkimpy RSA" rows). Prints the median and 90th percentile in
µs per message, and the messages per second one core can sign.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from msgspool.hooks.dkim import DKIMKey, Signer

MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: the weekly report\r\n"
           b"Date: Tue, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + b"All is well, line after line.\r\n" * 64)


def write_key(directory: Path, name: str, pem: bytes) -> str:
    path = directory / name
    path.write_bytes(pem)
    path.chmod(0o600)
    return str(path)


def keys(directory: Path) -> dict[str, DKIMKey]:
    none = serialization.NoEncryption()
    found = {}
    for bits in (2048, 1024):
        pem = rsa.generate_private_key(public_exponent=65537, key_size=bits).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, none)
        found[f"rsa-sha256 {bits}"] = DKIMKey("example.org", "sel", write_key(directory, f"rsa{bits}", pem))
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, none)
    found["ed25519-sha256"] = DKIMKey("example.org", "ed", write_key(directory, "ed", pem), "ed25519-sha256")
    return found


@contextmanager
def dkimpy_rsa() -> Iterator[None]:
    """dkimpy's own PEM parse and pure-Python RSA, as before hooks/dkim.py replaced them."""
    ours = dkim.parse_pem_private_key, dkim.RSASSA_PKCS1_v1_5_sign
    dkim.parse_pem_private_key, dkim.RSASSA_PKCS1_v1_5_sign = (dkim.crypto.parse_pem_private_key,
                                                               dkim.crypto.RSASSA_PKCS1_v1_5_sign)
    try:
        yield
    finally:
        dkim.parse_pem_private_key, dkim.RSASSA_PKCS1_v1_5_sign = ours


def timed(sign: Callable[[], object], rounds: int) -> list[float]:
    sign()  # warm caches
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        sign()
        times.append(time.perf_counter() - t0)
    return times


def report(label: str, times: list[float]) -> None:
    median = statistics.median(times) * 1e6
    p90 = statistics.quantiles(times, n=10)[-1] * 1e6
    print(f"{label:<28} median {median:8.0f} µs   p90 {p90:8.0f} µs   {1e6 / median:7.0f} msg/s")


def main(argv: list[str]) -> int:
    rounds = int(argv[0]) if argv else 300
    with tempfile.TemporaryDirectory() as tmp:
        for label, key in keys(Path(tmp)).items():
            signer = Signer([key])
            report(f"{label}", timed(lambda s=signer: s.sign(MESSAGE, ""), rounds))
            if key.algorithm == "rsa-sha256":
                with dkimpy_rsa():
                    report(f"{label}, dkimpy RSA", timed(lambda s=signer: s.sign(MESSAGE, ""), rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
