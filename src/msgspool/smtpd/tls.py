"""Inbound TLS for the SMTP listeners (RFC 3207 STARTTLS, RFC 8314 implicit TLS).

With `tls_cert_file` and `tls_key_file` set (PEM; the certificate file may carry the chain),
every SMTP listener offers STARTTLS and `smtps_listen` accepts implicit TLS. The context has a
TLS 1.2 floor (RFC 8996 retires 1.0 and 1.1; RFC 8314 §4.1), no compression (CRIME) and no
client-initiated renegotiation; the ciphers are OpenSSL's defaults for that floor. Without a
certificate nothing is offered, and `make run` works as before.

`ServerTLS.reload()` reads the files again into the same context, so that every listener, the
implicit-TLS one included, uses the new certificate for the next handshake (SIGHUP); a pair that
cannot be loaded leaves the old one in force.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass

from msgspool.errors import ConfigError

log = logging.getLogger("msgspool.smtpd")


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(cert_file, key_file)
    return context


@dataclass
class ServerTLS:
    """The listeners' TLS context and where its certificate comes from."""

    cert_file: str
    key_file: str
    context: ssl.SSLContext

    @classmethod
    def load(cls, cert_file: str, key_file: str) -> ServerTLS | None:
        """None when no certificate is configured; a ConfigError when one is and cannot be used."""
        if not cert_file and not key_file:
            return None
        if not (cert_file and key_file):
            raise ConfigError("tls_cert_file and tls_key_file go together: set both or neither")
        try:
            loaded = cls(cert_file, key_file, server_context(cert_file, key_file))
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"cannot load the TLS certificate {cert_file} / key {key_file}: {err}") from err
        _warn_if_others_may_read(key_file)
        return loaded

    def reload(self) -> bool:
        """Read the certificate and key again; False (and the old pair kept) when they cannot be used."""
        try:
            server_context(self.cert_file, self.key_file)  # the whole pair checked before it replaces the old one
            self.context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as err:
            log.error("TLS certificate not reloaded, the old one stays: %s", err)
            return False
        log.info("TLS certificate reloaded from %s", self.cert_file)
        return True


def _warn_if_others_may_read(key_file: str) -> None:
    """A warning, not a refusal: a key shared with a web server's group is a choice some make."""
    try:
        mode = os.stat(key_file).st_mode & 0o777
    except OSError:
        return
    if mode & 0o077:
        log.warning("TLS key %s has mode %04o: others may read it; chmod 600 it", key_file, mode)


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> tuple[str, str] | None:
    """(protocol version, cipher) of an established TLS session, e.g. ("TLSv1.3", "TLS_AES_256_GCM_SHA384")."""
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return ssl_object.version() or "TLS", cipher[0] if cipher else "unknown"
