"""One id story (issue 13.2): a submission answers with its queue id and the ids of the copies
filed in local mailboxes; every view links the two; `queue read` takes either id and says what it did."""

from __future__ import annotations

import json
import re
import smtplib
import urllib.request
from typing import Any

from tests.support.daemon import Daemon, Spool
from tests.support.sink import Sink


def smtp_send(daemon: Daemon, rcpts: list[str], subject: str) -> str:
    """Send over SMTP; the queue id of the 250 answer to DATA ("queued as ID")."""
    content = (f"From: ann@example.net\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
               f"Message-ID: <{subject}@example.net>\r\nDisposition-Notification-To: ann@example.net\r\n\r\nbody\r\n")
    with smtplib.SMTP(*daemon.smtp_address, timeout=5) as client:
        client.ehlo()
        client.mail("ann@example.net")
        for rcpt in rcpts:
            client.rcpt(rcpt)
        code, text = client.data(content.encode())
    assert code == 250, text
    match = re.search(r"queued as (\S+)", text.decode())
    assert match, text
    return match.group(1)


def api(daemon: Daemon, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon.http_port}/api/{path}", method="POST" if body is not None else "GET",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"} if body is not None else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_queue_read_on_the_id_smtp_answered_marks_the_local_copies_read_and_says_so(
        spool: Spool, relay: Sink, daemon: Daemon) -> None:
    relay.start()
    daemon.start()
    queue_id = smtp_send(daemon, ["bob@localhost", "carol@localhost"], "hello")
    spool.wait_until(lambda: len(spool.run("queue", "list", "--all", "--json").stdout.splitlines()) == 1,
                     "the submission to be filed")
    shown = spool.show(queue_id)
    copies = {c["recipient"]: c for c in shown["copies"]}
    assert sorted(copies) == ["bob@localhost", "carol@localhost"], shown
    bob = spool.show(copies["bob@localhost"]["id"])
    assert (bob["mailbox"], bob["folder"], bob["read"]) == ("bob@localhost", "inbox", False)
    assert bob["copy_of"] == queue_id and bob["copy_for"] == "bob@localhost"
    # The log's delivery line starts with the id SMTP answered and names the copy's own.
    assert re.search(rf"{queue_id}: to=<bob@localhost>, relay=local, delay=[\d.]+, mailbox=bob@localhost,"
                     rf" copy={bob['id']}, dsn=2.0.0, status=sent \(filed in inbox\)", daemon.log()), daemon.log_tail()

    result = spool.run("queue", "read", queue_id)
    assert f"{queue_id}: copy {copies['bob@localhost']['id']} in bob@localhost: read" in result.stdout, result.stdout
    assert f"{queue_id}: copy {copies['carol@localhost']['id']} in carol@localhost: read" in result.stdout
    assert spool.show(copies["bob@localhost"]["id"])["read"] is True
    assert spool.show(copies["carol@localhost"]["id"])["read"] is True


def test_http_submit_answers_the_copies_and_every_view_links_them(spool: Spool, relay: Sink,
                                                                  daemon: Daemon) -> None:
    relay.start()
    daemon.start(also=[daemon.http_port])
    answer = api(daemon, "messages", {"sender": "ann@example.net", "recipients": ["bob@localhost", "x@example.com"],
                                      "content": "Subject: mixed\r\n\r\nbody\r\n"})
    [copy] = answer["copies"]
    assert (copy["recipient"], copy["mailbox"]) == ("bob@localhost", "bob@localhost") and copy["id"] != answer["id"]
    shown = api(daemon, f"queue/{answer['id']}")
    assert [(c["id"], c["recipient"], c["folder"]) for c in shown["copies"]] == [(copy["id"], "bob@localhost", "inbox")]
    [filed] = api(daemon, "queue?folder=inbox&mailbox=bob@localhost")
    assert (filed["id"], filed["copy_of"], filed["copy_for"]) == (copy["id"], answer["id"], "bob@localhost")
    text = spool.run("queue", "show", answer["id"]).stdout
    assert f"copy {copy['id']} in bob@localhost (inbox) for bob@localhost" in text, text
    assert f"copy of {answer['id']} for bob@localhost" in spool.run("queue", "show", copy["id"]).stdout

    # Read by the submission's id over HTTP: the copy is read, and the answer says which one.
    read = api(daemon, f"queue/{answer['id']}/read", {})
    assert read["targets"] == [{"id": copy["id"], "mailbox": "bob@localhost"}], read
    assert api(daemon, f"queue/{copy['id']}")["read"] is True
    unread = json.loads(spool.run("queue", "unread", copy["id"], "--json").stdout)
    assert unread["targets"] == {copy["id"]: [{"id": copy["id"], "mailbox": "bob@localhost"}]}, unread
    assert api(daemon, f"queue/{copy['id']}")["read"] is False

    # A submission with no local recipient: nothing to mark, and the command says so (exit 1).
    remote = api(daemon, "messages", {"sender": "ann@example.net", "recipients": ["y@example.com"],
                                      "content": "Subject: remote\r\n\r\nbody\r\n"})
    assert remote["copies"] == []
    result = spool.run("queue", "read", remote["id"], ok=False)
    assert result.returncode == 1 and "no copy of it was filed in a local mailbox" in result.stdout, result
