-- msgspool PostgreSQL spool, migration 9: migration 8's count triggers in a form whose cost stays
-- linear in the rows a statement changes, whatever plan PL/pgSQL keeps. It keeps each statement's
-- plan for the session, made for the sizes of the first call: a transition table of one row, a
-- `messages` table of a new spool. Measured with those plans: a claim of 1,500 recipients spent
-- 260 ms joining OLD TABLE to NEW TABLE by a nested loop (1,500 x 1,500), and every recipient
-- statement scanned the outbox to find its message (0.4 ms a statement with 3,000 messages,
-- growing with the spool). Now:
-- - an update's deltas are NEW TABLE counted +1 and OLD TABLE -1, summed by key: the rows it did
--   not change cancel out, with no join of the two;
-- - a recipient's message is looked up by its primary key, one row (a scalar subquery), and the
--   functions run with enable_seqscan off, so no cached plan scans `messages` or `recipients`.

CREATE OR REPLACE FUNCTION msgspool_count_recipients() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO outbox_count_deltas (key, n)
            SELECT status, count(*) FROM new_rows r
            WHERE (SELECT m.folder FROM messages m WHERE m.id = r.message_id) = 'outbox' GROUP BY status;
        INSERT INTO destination_count_deltas (transport, nexthop, status, n)
            SELECT coalesce(transport, ''), coalesce(nexthop, ''), status, count(*) FROM new_rows
            WHERE status IN ('queued', 'active', 'deferred', 'held') GROUP BY 1, 2, 3;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO outbox_count_deltas (key, n)
            SELECT status, -count(*) FROM old_rows r
            WHERE (SELECT m.folder FROM messages m WHERE m.id = r.message_id) = 'outbox' GROUP BY status;
        INSERT INTO destination_count_deltas (transport, nexthop, status, n)
            SELECT coalesce(transport, ''), coalesce(nexthop, ''), status, -count(*) FROM old_rows
            WHERE status IN ('queued', 'active', 'deferred', 'held') GROUP BY 1, 2, 3;
    ELSE
        -- Most updates (attempts, replies, leases) change no count: their rows cancel out before
        -- any message is looked up.
        INSERT INTO outbox_count_deltas (key, n)
            WITH changed AS (
                SELECT message_id, status, sum(d) AS d FROM (
                    SELECT message_id, status, 1 AS d FROM new_rows
                    UNION ALL
                    SELECT message_id, status, -1 FROM old_rows) s
                GROUP BY message_id, status HAVING sum(d) <> 0)
            SELECT status, sum(d) FROM changed c
            WHERE (SELECT m.folder FROM messages m WHERE m.id = c.message_id) = 'outbox'
            GROUP BY status HAVING sum(d) <> 0;
        INSERT INTO destination_count_deltas (transport, nexthop, status, n)
            SELECT t, h, s, sum(d) FROM (
                SELECT coalesce(transport, '') AS t, coalesce(nexthop, '') AS h, status AS s, 1 AS d
                    FROM new_rows WHERE status IN ('queued', 'active', 'deferred', 'held')
                UNION ALL
                SELECT coalesce(transport, ''), coalesce(nexthop, ''), status, -1
                    FROM old_rows WHERE status IN ('queued', 'active', 'deferred', 'held')) s
            GROUP BY t, h, s HAVING sum(d) <> 0;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION msgspool_count_messages() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off AS $$
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
        -- A message moved into the outbox counts +1, out of it -1; one that stayed, 0 (dropped).
        INSERT INTO outbox_count_deltas (key, n)
            WITH moved AS (
                SELECT id, sum(d) AS d FROM (
                    SELECT id, 1 AS d FROM new_rows WHERE folder = 'outbox'
                    UNION ALL
                    SELECT id, -1 FROM old_rows WHERE folder = 'outbox') s
                GROUP BY id HAVING sum(d) <> 0)
            SELECT 'messages', sum(d) FROM moved HAVING coalesce(sum(d), 0) <> 0
            UNION ALL
            SELECT r.status, sum(m.d) FROM moved m JOIN recipients r ON r.message_id = m.id
            GROUP BY r.status HAVING sum(m.d) <> 0;
    END IF;
    RETURN NULL;
END $$;
