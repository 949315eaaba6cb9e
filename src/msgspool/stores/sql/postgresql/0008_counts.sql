-- msgspool PostgreSQL spool, migration 8 (SQLite schema 17): the queue's counts kept with the
-- writes (issue 13.7: `status` and GET /api/status in milliseconds with 1,000,000 queued).
--
-- Not one counter row per key, as on SQLite: every node's writer would queue behind the row lock of
-- the counter it touches. Instead statement-level triggers with transition tables (REFERENCING
-- OLD TABLE / NEW TABLE, FOR EACH STATEMENT) append the delta of each statement — one row per key
-- it changed — to a table nobody updates; a count is the SUM of its deltas, and any node compacts
-- them now and then (stores/postgresql.py compact_counts: DELETE .. RETURNING, then one INSERT of
-- the sums, in one transaction; rows written meanwhile are not in its snapshot and stay).
--
-- outbox_count_deltas: outbox recipients by status, and under 'messages' the outbox messages.
-- destination_count_deltas: pending recipients (any folder) by route and status ('' unrouted).

CREATE TABLE outbox_count_deltas (
    key     TEXT NOT NULL,
    n       BIGINT NOT NULL
);
CREATE TABLE destination_count_deltas (
    transport   TEXT NOT NULL,
    nexthop     TEXT NOT NULL,
    status      TEXT NOT NULL,
    n           BIGINT NOT NULL
);

-- A recipient counts in the outbox counts while its message is in the outbox; a statement on
-- messages counts the recipients of the messages it moves into or out of the outbox, so either
-- table may be written first (as on SQLite). The statements that move a message between folders
-- (finish_to_sent, delete) run once its recipients' changes are in, in the same transaction.
CREATE FUNCTION msgspool_count_recipients() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO outbox_count_deltas (key, n)
            SELECT r.status, count(*) FROM new_rows r JOIN messages m ON m.id = r.message_id
            WHERE m.folder = 'outbox' GROUP BY r.status;
        INSERT INTO destination_count_deltas (transport, nexthop, status, n)
            SELECT coalesce(transport, ''), coalesce(nexthop, ''), status, count(*) FROM new_rows
            WHERE status IN ('queued', 'active', 'deferred', 'held') GROUP BY 1, 2, 3;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO outbox_count_deltas (key, n)
            SELECT r.status, -count(*) FROM old_rows r JOIN messages m ON m.id = r.message_id
            WHERE m.folder = 'outbox' GROUP BY r.status;
        INSERT INTO destination_count_deltas (transport, nexthop, status, n)
            SELECT coalesce(transport, ''), coalesce(nexthop, ''), status, -count(*) FROM old_rows
            WHERE status IN ('queued', 'active', 'deferred', 'held') GROUP BY 1, 2, 3;
    ELSE
        -- Most updates (attempts, replies, leases) change no count: only changed rows are counted.
        INSERT INTO outbox_count_deltas (key, n)
            WITH changed AS (
                SELECT o.message_id, o.status AS old_status, n.status AS new_status
                FROM old_rows o JOIN new_rows n ON n.message_id = o.message_id AND n.idx = o.idx
                WHERE o.status IS DISTINCT FROM n.status)
            SELECT key, sum(d) FROM (
                SELECT c.new_status AS key, 1 AS d FROM changed c
                    JOIN messages m ON m.id = c.message_id WHERE m.folder = 'outbox'
                UNION ALL
                SELECT c.old_status, -1 FROM changed c
                    JOIN messages m ON m.id = c.message_id WHERE m.folder = 'outbox') s
            GROUP BY key HAVING sum(d) <> 0;
        INSERT INTO destination_count_deltas (transport, nexthop, status, n)
            WITH changed AS (
                SELECT o.status AS old_status, n.status AS new_status,
                       coalesce(o.transport, '') AS old_transport, coalesce(n.transport, '') AS new_transport,
                       coalesce(o.nexthop, '') AS old_nexthop, coalesce(n.nexthop, '') AS new_nexthop
                FROM old_rows o JOIN new_rows n ON n.message_id = o.message_id AND n.idx = o.idx
                WHERE o.status IS DISTINCT FROM n.status OR o.transport IS DISTINCT FROM n.transport
                   OR o.nexthop IS DISTINCT FROM n.nexthop)
            SELECT t, h, s, sum(d) FROM (
                SELECT new_transport AS t, new_nexthop AS h, new_status AS s, 1 AS d FROM changed
                    WHERE new_status IN ('queued', 'active', 'deferred', 'held')
                UNION ALL
                SELECT old_transport, old_nexthop, old_status, -1 FROM changed
                    WHERE old_status IN ('queued', 'active', 'deferred', 'held')) s
            GROUP BY t, h, s HAVING sum(d) <> 0;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER recipients_count_insert AFTER INSERT ON recipients REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION msgspool_count_recipients();
CREATE TRIGGER recipients_count_delete AFTER DELETE ON recipients REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION msgspool_count_recipients();
CREATE TRIGGER recipients_count_update AFTER UPDATE ON recipients REFERENCING OLD TABLE AS old_rows
    NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION msgspool_count_recipients();

CREATE FUNCTION msgspool_count_messages() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO outbox_count_deltas (key, n)
            SELECT 'messages', count(*) FROM new_rows WHERE folder = 'outbox' HAVING count(*) > 0
            UNION ALL
            SELECT r.status, count(*) FROM new_rows m JOIN recipients r ON r.message_id = m.id
            WHERE m.folder = 'outbox' GROUP BY r.status;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO outbox_count_deltas (key, n)
            SELECT 'messages', -count(*) FROM old_rows WHERE folder = 'outbox' HAVING count(*) > 0
            UNION ALL
            SELECT r.status, -count(*) FROM old_rows m JOIN recipients r ON r.message_id = m.id
            WHERE m.folder = 'outbox' GROUP BY r.status;
    ELSE
        INSERT INTO outbox_count_deltas (key, n)
            WITH moved AS (
                SELECT n.id, CASE WHEN n.folder = 'outbox' THEN 1 ELSE -1 END AS d
                FROM old_rows o JOIN new_rows n ON n.id = o.id
                WHERE (o.folder = 'outbox') <> (n.folder = 'outbox'))
            SELECT 'messages', sum(d) FROM moved HAVING coalesce(sum(d), 0) <> 0
            UNION ALL
            SELECT r.status, sum(m.d) FROM moved m JOIN recipients r ON r.message_id = m.id
            GROUP BY r.status HAVING sum(m.d) <> 0;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER messages_count_insert AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION msgspool_count_messages();
CREATE TRIGGER messages_count_delete AFTER DELETE ON messages REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION msgspool_count_messages();
CREATE TRIGGER messages_count_update AFTER UPDATE ON messages REFERENCING OLD TABLE AS old_rows
    NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION msgspool_count_messages();

-- The counts of the rows already there (a spool made before this migration), in the migration's
-- transaction: from here on the triggers add to them.
INSERT INTO outbox_count_deltas (key, n)
    SELECT 'messages', count(*) FROM messages WHERE folder = 'outbox'
    UNION ALL
    SELECT r.status, count(*) FROM recipients r JOIN messages m ON m.id = r.message_id
    WHERE m.folder = 'outbox' GROUP BY r.status;
INSERT INTO destination_count_deltas (transport, nexthop, status, n)
    SELECT coalesce(transport, ''), coalesce(nexthop, ''), status, count(*) FROM recipients
    WHERE status IN ('queued', 'active', 'deferred', 'held') GROUP BY 1, 2, 3;
