"""Reload (issue 10.6; MAPI ValidateState): SIGHUP or `msgspool reload` re-reads the configuration —
routes and transports, local domains, limits — without dropping a connection or a message; a bad
configuration is refused with its error, and the running one stays."""

from __future__ import annotations

import signal
import smtplib

import pytest

from tests.support.daemon import Daemon, Spool, received_tags, tagged_message
from tests.support.sink import Sink


@pytest.mark.timeout(90)
def test_reload_applies_a_new_route_refuses_a_broken_file_and_keeps_serving(spool: Spool, relay: Sink,
                                                                            daemon: Daemon) -> None:
    config = spool.data / "msgspool.toml"
    config.write_text('local_domains = ["example.org"]\n')
    partner = Sink().start()
    try:
        relay.start()
        daemon.start()
        with smtplib.SMTP(*daemon.smtp_address, timeout=10) as session:  # open across the reloads
            session.ehlo()
            spool.sendmail(tagged_message("before", to="bob@partner.example"), "-t")
            spool.wait_until(lambda: received_tags(relay) == ["before"], "the old route (the relay)")

            config.write_text('local_domains = ["example.org", "new.example"]\n[[transports]]\nname = "partner"\n'
                              f'type = "smtp"\nrelay = "{partner.address}"\ndomains = ["partner.example"]\n')
            result = spool.run("reload")
            assert "reloaded" in result.stdout
            spool.sendmail(tagged_message("after", to="bob@partner.example"), "-t")
            spool.wait_until(lambda: received_tags(partner) == ["after"], "the new route (the partner)")
            assert session.noop()[0] == 250  # the session lived through it
            assert not session.sendmail("a@example.com", ["carol@new.example"], "Subject: local\r\n\r\nx\r\n")

            config.write_text('[[transports]]\nname = "x"\ntype = "nosuchtype"\n')  # unusable
            refused = spool.run("reload", ok=False)
            assert refused.returncode == 1 and "configuration not reloaded" in refused.stderr, refused
            assert "nosuchtype" in refused.stderr
            config.write_text("local_domains = [\n")  # broken TOML
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGHUP)  # refused the same way, and the daemon lives on
            spool.wait_until(lambda: daemon.log().count("configuration not reloaded") >= 2, "the SIGHUP refusal")
            session.sendmail("a@example.com", ["bob@partner.example"],  # the CLI cannot read that file either
                             tagged_message("still", to="bob@partner.example", newline="\r\n"))
            spool.wait_until(lambda: received_tags(partner) == ["after", "still"], "the route kept")
        assert daemon.running
        assert received_tags(relay) == ["before"]
    finally:
        partner.stop()
