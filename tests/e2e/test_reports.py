"""Delivery reports with `msgspool serve` as a user runs it: the intake process files local mail in
the commit that acknowledges it, and the delivery process writes the reports that commit owes."""

from __future__ import annotations

import smtplib

from tests.e2e.test_notifications import api_status
from tests.e2e.test_read_receipts import wait_inbox
from tests.support.daemon import Daemon, Spool


def test_notify_success_for_smtp_mail_to_a_local_mailbox_yields_a_delivery_report(spool: Spool,
                                                                                   daemon: Daemon) -> None:
    daemon.start()
    # Both processes up (the delivery process answers for its part of the status table), so the
    # report is not just written by the delivery process's look for owed reports when it starts.
    spool.wait_until(lambda: api_status(daemon)["spooler"].get("delivery", {}).get("pid"), "the delivery process")
    with smtplib.SMTP(*daemon.smtp_address, timeout=5) as client:
        client.ehlo("client.example")
        client.sendmail("ann@localhost", ["bob@localhost"], b"Subject: dr\r\n\r\nbody\r\n",
                        rcpt_options=["NOTIFY=SUCCESS"])
    (report,) = wait_inbox(spool, daemon, "ann@localhost", 1)
    assert report["message_class"] == "REPORT.IPM.Note.DR"
    assert report["sender"] == ""
