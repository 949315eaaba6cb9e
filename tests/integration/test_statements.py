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


def best_of_three(store: str, figure: str, most: float, *url: str) -> None:
    """What a batch shares is shared by fewer messages when group commit batches less, as on a
    loaded machine (seen on SQLite: 8.11 statements at 3 writes a transaction, against 7.3 at rest):
    up to three runs, the best counts. A statement more per message is in every run, whatever the
    batching."""
    runs = []
    for _ in range(3):
        runs.append(measure(store, 200, *url))
        if runs[-1][figure] <= most:
            return
    assert min(r[figure] for r in runs) <= most, runs


@pytest.mark.timeout(600)
def test_a_relayed_message_costs_postgresql_about_one_round_trip_at_most() -> None:
    pg.require()
    best_of_three("postgresql", "round trips", MOST_ROUND_TRIPS, pg.ADMIN_URL)


@pytest.mark.timeout(600)
def test_a_relayed_message_costs_sqlite_at_most_eight_statements() -> None:
    best_of_three("sqlite", "statements", MOST_SQLITE_STATEMENTS)
