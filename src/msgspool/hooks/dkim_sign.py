"""Built-in outbound hook `dkim_sign`: signs each outbound message with the DKIM keys of its From:
domain (RFC 6376 §5; hooks/dkim.py's Signer does the signing).

    [[hooks]]
    name = "dkim"
    type = "dkim_sign"
    sender_fallback = false     # true: a From: domain with no key signs with the envelope sender's
    keys = [
      { domain = "example.org", selector = "2026a", key_file = "dkim/example.org.key" },
      { domain = "example.org", selector = "2026e", key_file = "dkim/example.org.ed", algorithm = "ed25519-sha256" },
    ]

A key table takes `domain`, `selector`, `key_file`, and optionally `algorithm` (``rsa-sha256``,
the default, or ``ed25519-sha256``), `headers` and `oversign` (lists of header field names) and
`canonicalization` (default ``relaxed/relaxed``). A relative `key_file` is found in the data
directory (`data_dir`), as the spool is, so a spool directory carries its keys with it. Keys are
read and checked when the hook is built: a key file that group or others may read, or that holds
no usable key, stops `msgspool serve` at start (exit 2, the file named), not at the first send.

A message whose From: domain has no key (or whose From: names several domains) is sent as it is.
A message whose header section dkimpy cannot parse is sent unsigned too, with a warning line in
the log: the message was accepted and its recipients are waiting; an unsigned message is what a
receiver gets from any sender without DKIM (dkim=none, RFC 6376 §6.1), while holding it would stop
mail for a header that no retry can repair. An operator who wants such mail stopped can add a
`header_checks` rule for it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from msgspool.domain.hooks import Draft
from msgspool.errors import ConfigError
from msgspool.hooks.dkim import DKIMKey, Signer, SigningError

log = logging.getLogger("msgspool.hooks")


class DKIMSign:
    """The `dkim_sign` hook: options `keys` (a list of key tables) and `sender_fallback`."""

    def __init__(self, name: str, settings: Any, options: dict[str, Any]) -> None:
        self.name = name
        tables = options.pop("keys", None)
        fallback = options.pop("sender_fallback", False)
        if options:
            raise ConfigError(f"hook {name}: unknown options {', '.join(sorted(options))}")
        if not isinstance(fallback, bool):
            raise ConfigError(f"hook {name}: sender_fallback must be true or false, not {fallback!r}")
        keys = [DKIMKey.from_table(_in_data_dir(table, settings.data_dir), f"hook {name}")
                for table in _key_tables(name, tables)]
        self.signer = Signer(keys, sender_fallback=fallback)

    def preprocess(self, draft: Draft) -> Draft | None:
        """The draft with its DKIM-Signature fields prepended; None (sent as it is) when no key
        signs for it or dkimpy cannot parse its header section."""
        try:
            signed = self.signer.sign(draft.content, draft.sender)
        except SigningError as err:
            log.warning("%s: hook %s: %s; sent unsigned", draft.message_id, self.name, err)
            return None
        if signed is None:
            return None
        draft.content = signed
        return draft


def _key_tables(hook: str, raw: Any) -> list[Mapping[str, Any]]:
    if not isinstance(raw, list) or not raw or not all(isinstance(t, dict) for t in raw):
        raise ConfigError(f"hook {hook}: keys must be a list of key tables "
                          "({domain, selector, key_file, algorithm}), at least one")
    return raw


def _in_data_dir(table: Mapping[str, Any], data_dir: str) -> dict[str, Any]:
    """The key table with a relative key_file made relative to the data directory."""
    found = dict(table)
    key_file = found.get("key_file")
    if isinstance(key_file, str) and key_file and not Path(key_file).is_absolute():
        found["key_file"] = str(Path(data_dir) / key_file)
    return found
