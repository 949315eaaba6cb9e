"""MTA-STS parsing and MX matching (RFC 8461 §3.1, §3.2, §4.1), without I/O."""

from __future__ import annotations

import pytest

from msgspool.domain.mta_sts import Policy, mx_matches, parse_policy, record_id

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n"


def test_a_record_gives_its_id() -> None:
    assert record_id(["v=STSv1; id=20160831085700Z;"]) == "20160831085700Z"
    assert record_id(["v=STSv1;id=abc123", "some other text"]) == "abc123"


@pytest.mark.parametrize("texts", [
    [],  # none published
    ["v=STSv1; id=a", "v=STSv1; id=b"],  # §3.1: more than one record is none
    ["v=STSv1;"],  # no id
    ["v=STSv1; id=not-alphanumeric"],
    ["v=STSv1; id=" + "x" * 33],  # longer than 32
    ["v=STSv2; id=abc"],
])
def test_records_that_are_no_usable_policy_record(texts: list[str]) -> None:
    assert record_id(texts) is None


def test_a_policy_is_parsed_with_its_mx_patterns() -> None:
    assert parse_policy(POLICY) == Policy("enforce", ("mail.example.com", "*.example.net"), 86400)
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 0\n") == Policy("none", (), 0)


@pytest.mark.parametrize(("text", "error"), [
    ("mode: enforce\nmx: a.example\nmax_age: 1\n", "version"),
    ("version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n", "mode 'strict'"),
    ("version: STSv1\nmode: enforce\nmx: a.example\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n", "out of range"),
    ("version: STSv1\nmode: enforce\nmax_age: 60\n", "names no mx"),
])
def test_invalid_policies_are_refused(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_policy(text)


@pytest.mark.parametrize(("pattern", "host", "matches"), [
    ("mail.example.com", "mail.example.com", True),
    ("mail.example.com", "MAIL.Example.COM.", True),
    ("mail.example.com", "mail2.example.com", False),
    ("*.example.net", "mx1.example.net", True),
    ("*.example.net", "a.b.example.net", False),  # one label only
    ("*.example.net", "example.net", False),
    ("*.example.net", ".example.net", False),
])
def test_mx_patterns_match_exact_names_or_one_leftmost_label(pattern: str, host: str, matches: bool) -> None:
    assert mx_matches(pattern, host) is matches


def test_a_policy_allows_only_the_hosts_it_names() -> None:
    policy = parse_policy(POLICY)
    assert policy.allowed(["mx.example.net", "evil.example.org", "mail.example.com"]) == \
        ["mx.example.net", "mail.example.com"]


def test_the_daemon_imports_no_https_client_until_a_policy_is_fetched() -> None:
    """aiohttp is 0.3 s of the daemon's imports, paid by every (re)start of the delivery process;
    only an MTA-STS fetch needs it there (transports/mta_sts.py)."""
    import subprocess
    import sys

    probe = "import sys, msgspool.daemon, msgspool.transports.smtp; print('aiohttp' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
