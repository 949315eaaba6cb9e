"""What a relayed message costs the store (bench/statements.py), as a guard on the design: on
PostgreSQL each statement is a round trip to the server, and the relay rate of a node is bounded
by them (issue 11: the PostgreSQL relay must beat Postfix by half). Counted, not timed: the
figures do not depend on the machine. A new statement on the path of every message fails this
test; batch it (per transaction, as events are) or fold it into one that is there already."""

from __future__ import annotations

import pytest
from bench.statements import measure

from tests.support import pg

# Per relayed one-recipient message, measured 2026-12-04: five of its own — contents, message,
# recipients (one executemany), the outcome, the move to Sent — and a share of what a batch
# shares (claims, events, BEGIN/COMMIT): 5.3 round trips on PostgreSQL, 7.3 statements on SQLite
# (which counts each executemany row). Since 2026-12-07 PostgreSQL writes a batch's rows with one
# statement per table (the many-rows forms), so nothing is its own: 0.4 round trips per message
# (1,000 messages), 0.5-0.7 here with 200. A statement more per message would add 1.
MOST_ROUND_TRIPS = 1.2
MOST_SQLITE_STATEMENTS = 8.0


@pytest.mark.timeout(240)
def test_a_relayed_message_costs_postgresql_about_one_round_trip_at_most() -> None:
    pg.require()
    figures = measure("postgresql", 200, pg.ADMIN_URL)
    assert figures["round trips"] <= MOST_ROUND_TRIPS, figures


@pytest.mark.timeout(240)
def test_a_relayed_message_costs_sqlite_at_most_eight_statements() -> None:
    figures = measure("sqlite", 200)
    assert figures["statements"] <= MOST_SQLITE_STATEMENTS, figures
