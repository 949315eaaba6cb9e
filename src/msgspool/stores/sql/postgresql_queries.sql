-- The statements PostgreSQL says its own way, by the name of the block of queries.sql they replace
-- (stores/queries.py refuses a name queries.sql lacks). Same placeholders, same result columns.

-- name: claim_due
-- One priority class's due recipients, oldest due first, claimed for node :owner (at most :limit),
-- with SKIP LOCKED (River's and Oban's shape): rows another node is claiming right now are passed
-- over instead of waited for, and a row it claimed meanwhile fails the recheck.
WITH due AS (
    SELECT message_id, idx FROM recipients WHERE status IN ('queued', 'deferred') AND priority = :priority
    AND next_attempt_at <= :now ORDER BY next_attempt_at LIMIT :limit FOR UPDATE SKIP LOCKED)
UPDATE recipients r SET status = 'active', owner = :owner FROM due
WHERE r.message_id = due.message_id AND r.idx = due.idx
RETURNING r.message_id, r.idx, r.address, r.addrtype, r.type, r.transport, r.nexthop, r.attempts, r.notify,
    r.orcpt;

-- name: report_debts
-- The report debts of a message, locked until this transaction ends: of two nodes that read the
-- same debts and wrote the same report, the second waits here for the first, then finds the
-- debts cleared and writes nothing (a report is written once, issue 11.5).
SELECT idx, report FROM recipients WHERE message_id = :message_id AND report IS NOT NULL FOR UPDATE;

-- name: kept_outbox_counts
-- The counts as the triggers keep them (sql/postgresql/0008_counts.sql): the sum of the deltas.
SELECT key, sum(n) FROM outbox_count_deltas GROUP BY key;

-- name: kept_destination_counts
SELECT transport, nexthop, status, sum(n) FROM destination_count_deltas
GROUP BY transport, nexthop, status HAVING sum(n) <> 0;
