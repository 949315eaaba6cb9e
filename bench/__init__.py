"""msgspool's benchmark suite: every row of issue 5's target table, measured in one run.

Running it
----------

    make bench                              # the whole table (several minutes); installs Postfix
    make bench BENCH_ARGS=--quick           # seconds: small counts, same code paths
    .venv/bin/python -m bench --only latency --only outage
    .venv/bin/python -m bench --quick --no-postfix      # msgspool only (what the smoke test runs)

Options: ``--quick`` (small counts), ``--only ROW`` (repeatable or comma-separated: relay, tls,
latency, outage, queued, list, search, relay_pg, nodes), ``--no-postfix`` (msgspool columns only), ``--json FILE``
(the results as JSON), ``--queued N`` (size of the prefilled queue, default 1,000,000), ``--postfix-outage-cap S``
(0 skips Postfix's outage row), ``--load tools|python|auto`` (load generator for the rate rows that
do not go through relay_bench.py). Progress goes to stderr; the table (Markdown, ready for the
README's performance section) goes to stdout.

What each row measures
----------------------

``relay``    rows 1 and 2. Runs ``../shared/bench/relay_bench.py`` (smtp-source load, 1 KB messages,
             20 sessions, into msgspool and into Postfix, both relaying to smtp-sink) with
             ``MSGSPOOL_CMD`` set to this checkout's msgspool, and parses its per-round lines: accept
             rate (smtp-source finished: every DATA got its 250) and end-to-end rate (the last message
             reached the sink). Ratios use relay_bench's own median. Without Postfix, msgspool alone
             is measured with this suite's load generator instead.
``tls``      relay with STARTTLS on both sides. This suite's Python load (smtp-source speaks no
             TLS) says STARTTLS to the relay, whose listener has a test CA's certificate (trustme),
             and the relay says STARTTLS to a bench.sink offering it, refusing to send in clear:
             msgspool at ``smtp_tls_security_level = "encrypt"``, Postfix at its own
             ``smtp_tls_security_level = encrypt`` with the same certificate for smtpd (set with
             postconf, relay_bench.py's configuration restored afterwards). The same msgspool relay
             in clear runs alongside (the cost of TLS); rounds alternate; medians; the sinks count
             how many messages came over TLS.
``latency``  row 3. A paced client (``bench.smtpclient``) submits 50 msg/s over a pool of persistent
             sessions; each message carries ``X-Bench-Sent: <time.time()>`` taken just before its
             MAIL FROM. A small asyncio sink (``bench.sink``, a separate process on the sink port,
             2526 where Postfix relays) records when each message's final dot arrived. Latency =
             arrival - stamp, p50/p99 over every message after a short warm-up; msgspool first, then
             Postfix, both into the same sink.
``outage``   row 4. The sink is down; 200 messages are submitted (10 sessions) and the destination
             stays down a while longer (10 s; 1 s with --quick), so the relay has given up on it and
             is probing at its longest interval; then the sink starts. Time from "sink accepts
             connections" until all 200 distinct messages arrived. Postfix with default settings
             needs minutes (queue_run_delay, minimal_backoff_time = 300 s): its wait is capped by
             ``--postfix-outage-cap`` (120 s) and reported as ">120 s"; its leftover queue is then
             deleted with ``postsuper -d ALL``.
``relay_pg`` the relay row with msgspool on the PostgreSQL store: one node, a fresh schema in the test
             database (MSGSPOOL_TEST_PG, else postgresql://postgres@127.0.0.1:5432/test), the same
             relay_bench.py run against the same Postfix (issue 11).
``nodes``    bench/nodes.py: three nodes on one PostgreSQL spool, each with its own SMTP clients,
             one recording sink: aggregate rate, exactly once, the most connections the sink saw;
             then one node killed -9 under load: the time until its leases were taken over, lost
             and duplicated messages (see ``python -m bench.nodes -h``).
``queued``   row 5. A spool is prefilled with 1,000,000 deferred messages (``bench.prefill``: raw SQL
             matching ``src/msgspool/stores/sql/sqlite.sql`` in 50,000-message transactions, falling
             back to ``msgspool.stores.ops.op_submit`` when the schema has moved). Their one
             recipient each waits for a destination that refuses connections (127.0.0.1:9, marked
             ``wait_destination``, next attempt a day away), so they stay deferred. Two daemons run
             side by side, one on an empty spool and one on the full one, relaying to the same sink;
             the same load (smtp-source/smtp-sink when installed, else this suite's Python client
             and sink) alternates between them (ABBA order; medians of the rounds; the prefill is
             synced to disk first). Reports end-to-end rate full/empty, the full daemon's
             startup time, and its resident memory: VmRSS summed over its process tree (so an
             intake + delivery split is counted whole), idle and peak under load.
``backlog``  opt-in extra (``--only backlog``, not in the default run): on the full spool,
             ``msgspool queue flush`` makes the whole backlog due while fresh traffic flows at
             50 msg/s. Claimed recipients are routed again with the daemon's own --relay, so the
             backlog drains to the sink; reports the flush's duration, intake latency meanwhile,
             how much fresh traffic got through (or waited behind the backlog), drain rate, RSS.
``list``     row 6. ``msgspool queue list --json`` over the full spool while its daemon runs: time
             to the first line, lines per second, total time (capped), and the CLI's peak RSS
             (``wait4`` ru_maxrss), which stays small only if it streams.

``search``   on the full spool of ``queued`` while its daemon runs (issue 13.4): GET /api/queue, a
             page of 50, 20 times each after a warm-up: the first page, the next page through the
             cursor, and pages filtered by an exact sender (1 in 1,000 messages), an exact
             recipient (1 message), a sender's domain, a destination, a status, an age, and a
             subject (no index of its own: one page reads at most 1,000 candidates). Target
             <= 50 ms p50 each, wall time through HTTP.

msgspool is treated as a black box: its CLI, SMTP, HTTP API and spool files. Only ``bench.prefill``
touches its internals (the store's schema and statements), to write a million messages in seconds.
Every process the suite starts runs in its own process group and is killed as a group at the end;
Postfix is stopped at the end when the suite used it.
"""
