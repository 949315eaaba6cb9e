"""`GET /metrics` of a real `msgspool serve` (issue 13.5), parsed by prometheus-client's own parser:
every named series is there at zero on a fresh daemon, and moves after a real SMTP submission that
the delivery process delivers to a loopback sink (its figures reach intake over the link)."""

from __future__ import annotations

import smtplib
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import Daemon, Spool, port_open
from tests.support.sink import Sink, free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# Every series of spooler/metrics.py that is there before anything happened, with its labels.
AT_ZERO = [
    ("msgspool_accepted_total", {"transport": "smtp"}),
    ("msgspool_accepted_total", {"transport": "local"}),
    ("msgspool_delivered_total", {"transport": "smtp"}),
    ("msgspool_deferred_total", {"transport": "smtp"}),
    ("msgspool_failed_total", {"transport": "smtp"}),
    ("msgspool_expired_total", {"transport": "smtp"}),
    ("msgspool_delivery_latency_seconds_count", {"transport": "smtp"}),
    ("msgspool_intake_latency_seconds_count", {}),
    ("msgspool_queue_recipients", {"status": "queued"}),
    ("msgspool_queue_recipients", {"status": "deferred"}),
    ("msgspool_queue_messages", {}),
    ("msgspool_destinations_down", {"transport": "smtp"}),
    ("msgspool_smtp_connections_open", {}),
    ("msgspool_webhook_backlog", {}),
]


def started(daemon: Daemon) -> Daemon:
    """The daemon, once its HTTP listener (which opens after the SMTP one) answers too."""
    daemon.start()
    wait_for(lambda: port_open("127.0.0.1", daemon.http_port))
    return daemon


def scrape(daemon: Daemon, token: str | None = None) -> tuple[str, Samples]:
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.http_port}/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"{s.name}{s.labels} twice in one scrape"
            samples[key] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} missing; have {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.parametrize("two_processes", [True, False], ids=["delivery-process", "one-process"])
def test_metrics_are_there_at_zero_and_move_with_a_delivered_smtp_message(
        spool: Spool, relay: Sink, daemon: Daemon, two_processes: bool) -> None:
    if not two_processes:
        (spool.data / "msgspool.toml").write_text("delivery_process = false\n")
    relay.start()
    started(daemon)
    _text, fresh = scrape(daemon)
    for name, labels in AT_ZERO:
        assert value(fresh, name, **labels) == 0, (name, labels)
    if two_processes:
        assert value(fresh, "msgspool_delivery_process_up") == 1
    else:
        assert not any(name == "msgspool_delivery_process_up" for name, _labels in fresh)
    connections = value(fresh, "msgspool_smtp_connections_total")  # the test harness's port probes
    commits = value(fresh, "msgspool_commit_batch_size_count")  # node registration, heartbeats

    with smtplib.SMTP(*daemon.smtp_address, timeout=10) as smtp:
        smtp.sendmail("alice@example.org", ["bob@example.net", "carol@example.net"],
                      b"Subject: metrics\r\n\r\nhello\r\n")
    spool.wait_for_sink(relay, 1, timeout=10.0)

    def delivered_counted() -> bool:
        return value(scrape(daemon)[1], "msgspool_delivered_total", transport="smtp") == 2

    wait_for(delivered_counted)
    text, after = scrape(daemon)
    assert value(after, "msgspool_accepted_total", transport="smtp") == 2  # counted by intake
    assert value(after, "msgspool_delivery_latency_seconds_count", transport="smtp") == 2  # by delivery
    assert value(after, "msgspool_delivery_latency_seconds_bucket", transport="smtp", le="+Inf") == 2
    assert value(after, "msgspool_intake_latency_seconds_count") == 1
    assert 0 < value(after, "msgspool_intake_latency_seconds_sum") < 5
    assert value(after, "msgspool_smtp_connections_total") == connections + 1
    assert value(after, "msgspool_failed_total", transport="smtp") == 0
    assert value(after, "msgspool_commit_batch_size_count") >= commits + 2  # intake's submission, the settlement
    assert value(after, "msgspool_commit_batch_size_bucket", le="+Inf") == value(
        after, "msgspool_commit_batch_size_count")
    destination = relay.address
    assert value(after, "msgspool_destination_up", transport="smtp", destination=destination) == 1
    assert value(after, "msgspool_connections_out_total", transport="smtp", destination=destination) >= 1
    assert value(after, "msgspool_queue_recipients", status="delivered") == 0  # the outbox is empty again
    assert "msgspool_accepted_created" not in text


def test_metrics_count_a_down_destination_and_its_deferrals(spool: Spool, relay: Sink, daemon: Daemon) -> None:
    started(daemon)  # the relay is down
    with smtplib.SMTP(*daemon.smtp_address, timeout=10) as smtp:
        smtp.sendmail("alice@example.org", ["bob@example.net"], b"Subject: later\r\n\r\nhello\r\n")

    def deferred() -> bool:  # counted by delivery, and in the store's figures (which may be a moment old)
        samples = scrape(daemon)[1]
        return (value(samples, "msgspool_deferred_total", transport="smtp") >= 1
                and value(samples, "msgspool_queue_recipients", status="deferred") == 1)

    wait_for(deferred)
    _text, down = scrape(daemon)
    assert value(down, "msgspool_destination_up", transport="smtp", destination=relay.address) == 0
    assert value(down, "msgspool_destinations_down", transport="smtp") == 1
    assert value(down, "msgspool_queue_recipients", status="deferred") == 1
    assert value(down, "msgspool_destination_queue_recipients", transport="smtp", destination=relay.address,
                 status="deferred") == 1


def test_metrics_need_a_token_with_the_metrics_scope_once_tokens_exist(spool: Spool, daemon: Daemon) -> None:
    started(daemon)
    token = spool.run("token", "create", "--scope", "metrics", "--name", "prometheus").stdout.strip()
    try:
        scrape(daemon)
        raise AssertionError("a scrape without a token was served")
    except urllib.error.HTTPError as err:
        assert err.code == 401
    _text, samples = scrape(daemon, token)
    assert value(samples, "msgspool_queue_messages") == 0
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.http_port}/api/queue",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        urllib.request.urlopen(request, timeout=10)
        raise AssertionError("a metrics token read the queue")
    except urllib.error.HTTPError as err:
        assert err.code == 403


def hook_outcome(samples: Samples, hook: str, outcome: str) -> float:
    return value(samples, "msgspool_hook_outcomes_total", stage="preprocess", hook=hook, outcome=outcome)


def test_metrics_count_hook_outcomes_and_the_webhook_backlog(spool: Spool, relay: Sink, daemon: Daemon) -> None:
    closed = free_port()  # the webhook receiver is down: its deliveries wait
    (spool.data / "msgspool.toml").write_text(f"""
[[hooks]]
name = "checks"
type = "header_checks"
rules = [{{ pattern = "^Subject: spam", action = "reject", text = "no spam here" }}]

[[hooks]]
name = "headers"
type = "complete_headers"

[[webhooks]]
url = "http://127.0.0.1:{closed}/hook"
secret = "k"
types = ["delivered"]
""")
    relay.start()
    started(daemon)
    _text, fresh = scrape(daemon)
    for hook in ("checks", "headers"):
        for outcome in ("unchanged", "changed", "rejected", "held", "error"):
            assert hook_outcome(fresh, hook, outcome) == 0, (hook, outcome)
    assert value(fresh, "msgspool_webhook_backlog") == 0
    assert value(fresh, "msgspool_accepted_total", transport="webhook") == 0

    with smtplib.SMTP(*daemon.smtp_address, timeout=10) as smtp:
        smtp.sendmail("alice@example.org", ["bob@example.net"], b"Subject: fine\r\n\r\nhello\r\n")
        smtp.sendmail("alice@example.org", ["bob@example.net"], b"Subject: spam\r\n\r\nbuy\r\n")
    spool.wait_for_sink(relay, 1)

    def webhook_waiting() -> bool:  # and the spam's rejection recorded
        samples = scrape(daemon)[1]
        return (value(samples, "msgspool_webhook_backlog") >= 1
                and value(samples, "msgspool_failed_total", transport="smtp") == 1)

    wait_for(webhook_waiting)
    _text, after = scrape(daemon)
    # The hooks run on everything that goes out: the fine message, the non-delivery report to alice,
    # the webhook deliveries.
    assert hook_outcome(after, "checks", "unchanged") >= 1
    assert hook_outcome(after, "checks", "rejected") == 1
    assert hook_outcome(after, "headers", "changed") >= 1  # Message-ID and Date added; never on the spam
    assert hook_outcome(after, "headers", "rejected") == 0
    assert value(after, "msgspool_failed_total", transport="smtp") == 1  # the rejected one
    assert value(after, "msgspool_accepted_total", transport="webhook") >= 1
    assert value(after, "msgspool_delivered_total", transport="webhook") == 0
