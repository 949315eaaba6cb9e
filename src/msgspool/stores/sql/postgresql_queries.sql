-- The statements PostgreSQL says its own way, by the name of the block of queries.sql they replace
-- (stores/queries.py refuses a name queries.sql lacks). Same placeholders, same result columns.

-- name: claim_due
-- One priority class's due recipients, oldest due first, claimed for node :owner (at most :limit),
-- with SKIP LOCKED (River's and Oban's shape): rows another node is claiming right now are passed
-- over instead of waited for, and a row it claimed meanwhile fails the recheck.
WITH due AS (
    SELECT message_id, idx FROM recipients WHERE status IN ('queued', 'deferred') AND priority = :priority
    AND next_attempt_at <= :now ORDER BY next_attempt_at LIMIT :limit FOR UPDATE SKIP LOCKED)
UPDATE recipients r SET status = :status, owner = :owner FROM due
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

-- The queue search's address domains: PostgreSQL says strpos for SQLite's instr (the same
-- expressions as migration 0010's indexes); JSON arrays of ids unpacked with jsonb into an array, whose
-- `= ANY` the planner reads from the primary key.

-- name: search_by_sender_domain
SELECT id FROM messages WHERE lower(substr(sender, strpos(sender, '@') + 1)) = :sender_domain
    AND id > :after AND id < :upto ORDER BY id LIMIT :limit;

-- name: search_by_recipient_domain
SELECT DISTINCT message_id FROM recipients WHERE lower(substr(address, strpos(address, '@') + 1)) = :recipient_domain
    AND message_id > :after AND message_id < :upto ORDER BY message_id LIMIT :limit;

-- name: search_check
SELECT m.id FROM messages m
WHERE m.id = ANY(ARRAY(SELECT jsonb_array_elements_text(CAST(:candidates AS jsonb))))
  AND (CAST(:folder_list AS TEXT) IS NULL OR m.folder IN (SELECT jsonb_array_elements_text(CAST(:folder_list AS jsonb))))
  AND (CAST(:mailbox AS TEXT) IS NULL OR m.mailbox = CAST(:mailbox AS TEXT))
  AND m.submitted_at <= :latest AND m.submitted_at > :earliest
  AND (CAST(:sender AS TEXT) IS NULL OR lower(m.sender) = CAST(:sender AS TEXT))
  AND (CAST(:sender_domain AS TEXT) IS NULL
       OR lower(substr(m.sender, strpos(m.sender, '@') + 1)) = CAST(:sender_domain AS TEXT))
  AND (CAST(:subject AS TEXT) IS NULL OR lower(m.subject) LIKE CAST(:subject AS TEXT) ESCAPE '\')
  AND (:recipient_terms = 0 OR EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id
      AND (CAST(:recipient AS TEXT) IS NULL OR lower(r.address) = CAST(:recipient AS TEXT))
      AND (CAST(:recipient_domain AS TEXT) IS NULL
           OR lower(substr(r.address, strpos(r.address, '@') + 1)) = CAST(:recipient_domain AS TEXT))
      AND (CAST(:destination AS TEXT) IS NULL OR lower(r.nexthop) = CAST(:destination AS TEXT))
      AND (CAST(:transport AS TEXT) IS NULL OR lower(r.transport) = CAST(:transport AS TEXT))
      AND (CAST(:status AS TEXT) IS NULL OR r.status = CAST(:status AS TEXT))))
ORDER BY m.id;

-- name: messages_by_ids
SELECT id, mailbox, folder, sender, size, submitted_at, finished_at, message_class, priority, deliver_after,
    expires_at, held, origin, ret, envid, read, mdn, max_attempts, flags, resend_of, copy_of, copy_for, subject
FROM messages WHERE id = ANY(ARRAY(SELECT jsonb_array_elements_text(CAST(:page_ids AS jsonb)))) ORDER BY id;

-- name: existing_messages
SELECT id FROM messages WHERE id = ANY(ARRAY(SELECT jsonb_array_elements_text(CAST(:page_ids AS jsonb))));

-- The many-rows forms (stores/queries.py ROWS; stores/ops.py `_many`): the rows of a whole group
-- commit in one statement. :rows is a JSON array of the rows, each an object with the one-row
-- form's parameters by name (bytes in base64): one text parameter, which the server reads with
-- json_to_recordset, where an array per column cost psycopg a regular expression per value to
-- quote (measured: 3.4 ms of CPU for a batch of ten submissions). A statement here is a round
-- trip and a run of the count triggers, however many rows it writes.

-- name: insert_content_rows
-- The contents of a batch; the ids are drawn in the order of the rows (ORDER BY i), so sorted
-- they are the rows' order.
INSERT INTO contents (data)
SELECT decode(v.data, 'base64')
FROM ROWS FROM (json_to_recordset(CAST(:rows AS json)) AS (data text)) WITH ORDINALITY AS v(data, i)
ORDER BY v.i
RETURNING id;

-- name: insert_message_rows
INSERT INTO messages (id, mailbox, folder, sender, size, submitted_at, content_id, headers_prefix,
    message_class, priority, deliver_after, expires_at, delete_after_submit, held, origin, meta, ret,
    envid, read, max_attempts, flags, resend_of, copy_of, copy_for, subject)
SELECT id, mailbox, folder, sender, size, submitted_at, content_id, decode(headers_prefix, 'base64'),
    message_class, priority, deliver_after, expires_at, delete_after_submit, held, origin, meta, ret,
    envid, read, max_attempts, flags, resend_of, copy_of, copy_for, subject
FROM json_to_recordset(CAST(:rows AS json)) AS v(id text, mailbox text, folder text, sender text, size bigint,
    submitted_at double precision, content_id bigint, headers_prefix text, message_class text, priority integer,
    deliver_after double precision, expires_at double precision, delete_after_submit integer, held integer,
    origin text, meta text, ret text, envid text, read integer, max_attempts integer, flags text, resend_of text,
    copy_of text, copy_for text, subject text);

-- name: insert_recipient_rows
INSERT INTO recipients (message_id, idx, address, addrtype, type, transport, nexthop, status, attempts,
    next_attempt_at, last_attempt_at, reply_code, reply_enhanced, reply_text, notify, orcpt, priority,
    report, owner)
SELECT message_id, idx, address, addrtype, type, transport, nexthop, status, attempts,
    next_attempt_at, last_attempt_at, reply_code, reply_enhanced, reply_text, notify, orcpt, priority,
    report, owner
FROM json_to_recordset(CAST(:rows AS json)) AS v(message_id text, idx integer, address text, addrtype text,
    type text, transport text, nexthop text, status text, attempts integer, next_attempt_at double precision,
    last_attempt_at double precision, reply_code integer, reply_enhanced text, reply_text text, notify text,
    orcpt text, priority integer, report text, owner text);

-- name: settle_recipient_rows
-- settle_recipient for the outcomes of a batch that decided the same state (:status), the rest of
-- each in :rows. Returns the recipients the guard let through.
UPDATE recipients r SET status = :status, attempts = r.attempts + v.attempted, next_attempt_at = v.next_at,
    last_attempt_at = CASE WHEN v.attempted = 1 THEN v.now ELSE r.last_attempt_at END,
    reply_code = COALESCE(v.code, r.reply_code), reply_enhanced = COALESCE(v.enhanced, r.reply_enhanced),
    reply_text = COALESCE(v.text, r.reply_text), remote = COALESCE(v.remote, r.remote), wait_destination = v.wait,
    transport = COALESCE(v.transport, r.transport), nexthop = COALESCE(v.nexthop, r.nexthop),
    report = CASE WHEN v.report IS NOT NULL AND (v.once = 0 OR r.warn_at IS NULL OR r.warn_at <> 0)
        THEN v.report WHEN r.report = v.void THEN NULL ELSE r.report END,
    warn_at = CASE WHEN r.warn_at = 0 THEN 0 ELSE COALESCE(v.warn_at, r.warn_at) END,
    owner = NULL
FROM json_to_recordset(CAST(:rows AS json)) AS v(message_id text, idx integer, attempted integer,
    next_at double precision, now double precision, code integer, enhanced text, text text, remote text,
    wait integer, transport text, nexthop text, report text, once integer, void text, warn_at double precision,
    owner text)
WHERE r.message_id = ANY (ARRAY(SELECT x.message_id FROM json_to_recordset(CAST(:rows AS json)) AS x(message_id text)))
    AND r.message_id = v.message_id AND r.idx = v.idx AND r.status = 'active'
    AND (v.owner IS NULL OR r.owner = v.owner)
RETURNING r.message_id, r.idx, r.transport;

-- name: finish_to_sent_rows
-- finish_to_sent for the messages of a batch (:rows of message_id and now): each that has no
-- pending recipient left, with whether it is to be deleted after submit.
UPDATE messages m SET folder = :sent, finished_at = v.now
FROM json_to_recordset(CAST(:rows AS json)) AS v(message_id text, now double precision)
WHERE m.id = ANY (ARRAY(SELECT x.message_id FROM json_to_recordset(CAST(:rows AS json)) AS x(message_id text)))
    AND m.id = v.message_id AND m.folder = :outbox
    AND NOT EXISTS (SELECT 1 FROM recipients WHERE message_id = v.message_id
                    AND status IN ('queued', 'active', 'deferred', 'held'))
RETURNING m.id, m.delete_after_submit;
