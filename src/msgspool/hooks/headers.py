"""Built-in outbound hooks on the header section: `complete_headers` adds the Message-ID and
Date a message must have (RFC 5322 §3.6) when they are missing, and `header_checks` rejects or
holds a message whose header lines match a regular expression (Postfix header_checks).

    [[hooks]]
    name = "checks"
    type = "header_checks"
    rules = [
      { pattern = "^Subject:.*\\bviagra\\b", flags = "i", action = "reject", text = "no spam here" },
      { pattern = "^X-Mailer: BulkBlaster", action = "hold", text = "review bulk mail" },
    ]

A pattern is matched against each header field as one logical line (folded lines unfolded),
``Name: value``, as Postfix does. The first rule that matches decides; `reject` fails the message's
recipients with ``550 5.7.1 <text>`` (an NDR follows), `hold` holds it for an operator: `queue
release` sends it as the hooks left it, without checking it again (Postfix postsuper -H).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import make_msgid
from typing import Any

from msgspool.domain.content import header_block
from msgspool.domain.hooks import Draft, Hold, Reject
from msgspool.domain.timefmt import rfc5322
from msgspool.errors import ConfigError


def header_fields(content: bytes) -> list[str]:
    """The header fields of a message, each unfolded to one line ``Name: value``."""
    head = header_block(content).decode("utf-8", "replace")
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", head)
    return [line for line in unfolded.split("\r\n") if line and ":" in line]


def _has(fields: list[str], name: str) -> bool:
    prefix = name.lower() + ":"
    return any(f.lower().startswith(prefix) for f in fields)


class CompleteHeaders:
    """Add Message-ID and Date when missing (options: hostname, the Message-ID's domain)."""

    def __init__(self, name: str, settings: Any, options: dict[str, Any]) -> None:
        self.name = name
        self.domain = str(options.pop("hostname", "") or settings.host_name)
        _no_more(name, options)

    def preprocess(self, draft: Draft) -> Draft | None:
        fields = header_fields(draft.content)
        extra = [] if _has(fields, "date") else [f"Date: {rfc5322()}"]
        if not _has(fields, "message-id"):
            extra.append(f"Message-ID: {make_msgid(domain=self.domain)}")
        if not extra:
            return None
        draft.content = "".join(f"{line}\r\n" for line in extra).encode() + draft.content
        return draft


@dataclass(frozen=True, slots=True)
class Rule:
    pattern: re.Pattern[str]
    action: str  # reject | hold
    text: str


class HeaderChecks:
    def __init__(self, name: str, settings: Any, options: dict[str, Any]) -> None:
        self.name = name
        self.rules = [_rule(name, r) for r in options.pop("rules", [])]
        _no_more(name, options)

    def preprocess(self, draft: Draft) -> Reject | Hold | None:
        for field in header_fields(draft.content):
            for rule in self.rules:
                if rule.pattern.search(field):
                    text = rule.text or f"message content rejected: {field[:80]}"
                    return Reject.because(text) if rule.action == "reject" else Hold(text)
        return None


def _rule(hook: str, raw: Any) -> Rule:
    if not isinstance(raw, dict) or "pattern" not in raw:
        raise ConfigError(f"hook {hook}: each rule needs a pattern")
    action = str(raw.get("action", "reject")).lower()
    if action not in ("reject", "hold"):
        raise ConfigError(f"hook {hook}: action must be reject or hold, not {action!r}")
    flags = re.IGNORECASE if "i" in str(raw.get("flags", "")) else 0
    try:
        pattern = re.compile(str(raw["pattern"]), flags)
    except re.error as err:
        raise ConfigError(f"hook {hook}: bad pattern {raw['pattern']!r}: {err}") from err
    return Rule(pattern, action, str(raw.get("text", "")))


def _no_more(hook: str, options: dict[str, Any]) -> None:
    if options:
        raise ConfigError(f"hook {hook}: unknown options {', '.join(sorted(options))}")
