-- Every statement of the SQL stores, by name (stores/queries.py loads them; stores/ops.py runs them).
-- Written in the spelling SQLite and PostgreSQL both take: named placeholders (:name), RETURNING,
-- ON CONFLICT, row values, CAST(:x AS TEXT) where a NULL parameter needs a type. What PostgreSQL
-- says its own way is in postgresql_queries.sql, under the same name. Statuses are recipients'
-- states (domain/recipient.py); "waiting" is queued or deferred, "pending" also active and held.


-- ---------------------------------------------------------------------------------------------
-- Submission and filing

-- name: insert_event
-- Record an event (the webhook and SSE feed); its id orders the feed.
INSERT INTO events (time, type, message_id, recipient, mailbox, folder, detail)
VALUES (:time, :type, :message_id, :recipient, :mailbox, :folder, :detail) RETURNING id;

-- name: insert_content
-- Store a message body once (local copies of one submission share it).
INSERT INTO contents (data) VALUES (:data) RETURNING id;

-- name: insert_message
-- One message in a folder of a mailbox (the spool's own outbox: mailbox '').
INSERT INTO messages (id, mailbox, folder, sender, size, submitted_at, content_id, headers_prefix,
    message_class, priority, deliver_after, expires_at, delete_after_submit, held, origin, meta, ret,
    envid, read, max_attempts, flags, resend_of, copy_of, copy_for, subject)
VALUES (:id, :mailbox, :folder, :sender, :size, :submitted_at, :content_id, :headers_prefix,
    :message_class, :priority, :deliver_after, :expires_at, :delete_after_submit, :held, :origin, :meta,
    :ret, :envid, :read, :max_attempts, :flags, :resend_of, :copy_of, :copy_for, :subject);

-- name: insert_recipient
-- One recipient of an outbound message; `owner` is the node holding it when it comes in active.
INSERT INTO recipients (message_id, idx, address, addrtype, type, transport, nexthop, status, attempts,
    next_attempt_at, last_attempt_at, reply_code, reply_enhanced, reply_text, notify, orcpt, priority,
    report, owner)
VALUES (:message_id, :idx, :address, :addrtype, :type, :transport, :nexthop, :status, :attempts,
    :next_attempt_at, :last_attempt_at, :reply_code, :reply_enhanced, :reply_text, :notify, :orcpt,
    :priority, :report, :owner);

-- name: insert_mailbox
-- A mailbox comes to exist with its first message or setting.
INSERT INTO mailboxes (address, created_at) VALUES (:address, :created_at) ON CONFLICT DO NOTHING;

-- name: content_id_of
-- The content row a message is stored with.
SELECT content_id FROM messages WHERE id = :message_id;

-- name: receive_folders_of
-- A mailbox's receive folders by message class (MAPI SetReceiveFolder).
SELECT message_class, folder FROM receive_folders WHERE mailbox = :mailbox;

-- name: mailbox_exists
-- A mailbox exists once something was filed into it, set for it, or sent from it.
SELECT 1 FROM mailboxes WHERE address = :mailbox
UNION ALL SELECT 1 FROM messages WHERE mailbox = :mailbox LIMIT 1;

-- name: folders_of_mailbox
-- The folders holding a mailbox's messages (`mailbox export`).
SELECT DISTINCT folder FROM messages WHERE mailbox = :mailbox ORDER BY folder;

-- name: list_mailboxes
-- A page of the mailboxes by address (the dashboard's Mailboxes page, GET /api/mailboxes).
SELECT address, created_at FROM mailboxes WHERE address > :after ORDER BY address LIMIT :limit;

-- name: folders_of_mailbox_range
-- The folders of the mailboxes of one page (after :after up to :last): a loose index scan of
-- messages_by_folder, one MIN seek per folder to the next, so a mailbox of a million messages in
-- two folders costs three seeks, not a million rows (as a DISTINCT would read).
WITH RECURSIVE pairs(mailbox, folder) AS (
    SELECT b.address, (SELECT MIN(m.folder) FROM messages m WHERE m.mailbox = b.address)
    FROM mailboxes b WHERE b.address > :after AND b.address <= :last
    UNION ALL
    SELECT p.mailbox, (SELECT MIN(m.folder) FROM messages m WHERE m.mailbox = p.mailbox AND m.folder > p.folder)
    FROM pairs p WHERE p.folder IS NOT NULL
)
SELECT mailbox, folder FROM pairs WHERE folder IS NOT NULL ORDER BY mailbox, folder;

-- name: answer_once
-- Record that an auto-reply with this key goes out now, unless one went within the period
-- (:before = now - period): a row back means "send it". One statement, so that of two nodes (or
-- two messages) asking at once exactly one is told yes (RFC 5230 §4.2).
INSERT INTO vacation_replies (mailbox, sender, handle, sent_at) VALUES (:mailbox, :sender, :handle, :now)
ON CONFLICT (mailbox, sender, handle) DO UPDATE SET sent_at = excluded.sent_at
WHERE vacation_replies.sent_at <= :before
RETURNING sent_at;

-- name: set_receive_folder
-- File `message_class` (and its subclasses) of a mailbox into `folder`, replacing an older choice.
INSERT INTO receive_folders (mailbox, message_class, folder) VALUES (:mailbox, :message_class, :folder)
ON CONFLICT (mailbox, message_class) DO UPDATE SET folder = excluded.folder;

-- name: finish_to_sent
-- An outbox message with no pending recipient left moves to Sent Items (MAPI FinishedMsg), and
-- says whether it is to be deleted after submit: one statement whether or not it is finished.
UPDATE messages SET folder = :sent, finished_at = :now WHERE id = :message_id AND folder = :outbox
    AND NOT EXISTS (SELECT 1 FROM recipients WHERE message_id = :message_id
                    AND status IN ('queued', 'active', 'deferred', 'held'))
RETURNING delete_after_submit;

-- name: reports_owed
-- Does any recipient of the message still owe its sender a report?
SELECT 1 FROM recipients WHERE message_id = :message_id AND report IS NOT NULL LIMIT 1;

-- name: contents_of
-- The content rows a message holds: as sent, and as submitted (after a hook changed it).
SELECT content_id, source_content_id FROM messages WHERE id = :message_id;

-- name: delete_recipients_of
-- A deleted message's recipients.
DELETE FROM recipients WHERE message_id = :message_id;

-- name: delete_history_of
-- A deleted message's history.
DELETE FROM history WHERE message_id = :message_id;

-- name: delete_message
-- The message row itself (its recipients and history go first).
DELETE FROM messages WHERE id = :message_id;

-- name: drop_content_if_unused
-- A content row no message refers to any more.
DELETE FROM contents WHERE id = :content_id
AND NOT EXISTS (SELECT 1 FROM messages WHERE content_id = :content_id OR source_content_id = :content_id);

-- name: insert_history
-- A line of a message's history (hook verdicts, operator actions, rescues).
INSERT INTO history (message_id, time, stage, hook, outcome, detail)
VALUES (:message_id, :time, :stage, :hook, :outcome, :detail);


-- ---------------------------------------------------------------------------------------------
-- Claiming and settling delivery work

-- name: claim_due
-- One priority class's due recipients, oldest due first, claimed for node :owner (at most :limit).
UPDATE recipients SET status = :status, owner = :owner WHERE (message_id, idx) IN (
    SELECT message_id, idx FROM recipients WHERE status IN ('queued', 'deferred') AND priority = :priority
    AND next_attempt_at <= :now ORDER BY next_attempt_at LIMIT :limit)
RETURNING message_id, idx, address, addrtype, type, transport, nexthop, attempts, notify, orcpt;

-- name: claim_the_rest
-- A message's other waiting recipients, due or not, claimed with it (its hooks must see them all).
UPDATE recipients SET status = :status, owner = :owner
WHERE message_id = :message_id AND status IN ('queued', 'deferred')
RETURNING message_id, idx, address, addrtype, type, transport, nexthop, attempts, notify, orcpt;

-- name: load_message
-- A claimed message with its content, for delivery.
SELECT m.sender, m.submitted_at, m.mailbox, m.folder, m.message_class, m.priority, m.deliver_after,
    m.expires_at, m.delete_after_submit, m.held, m.origin, m.headers_prefix, c.data, m.ret, m.envid,
    m.preprocessed, m.max_attempts
FROM messages m JOIN contents c ON c.id = m.content_id WHERE m.id = :message_id;

-- name: held_flag
-- Is the message held?
SELECT held FROM messages WHERE id = :message_id;

-- name: settle_recipient
-- One outcome as the domain decided it (domain/transitions.py settle), on a recipient still active
-- (and, with :owner, still held by that node: fenced). The report columns are written relative to
-- the row, as the decision says, since the reporter may clear an older debt meanwhile: :report is
-- owed, unless :once and the recipient was owed its one delay notice already (warn_at = 0); a debt
-- :void still unwritten goes; warn_at = 0 stays 0 (one notice per recipient), else takes :warn_at.
-- One step with the outcome: a crash neither loses the notice nor repeats it.
UPDATE recipients SET status = :status, attempts = attempts + :attempted, next_attempt_at = :next_at,
    last_attempt_at = CASE WHEN :attempted = 1 THEN :now ELSE last_attempt_at END,
    reply_code = COALESCE(:code, reply_code), reply_enhanced = COALESCE(:enhanced, reply_enhanced),
    reply_text = COALESCE(:text, reply_text), remote = COALESCE(:remote, remote), wait_destination = :wait,
    transport = COALESCE(:transport, transport), nexthop = COALESCE(:nexthop, nexthop),
    report = CASE WHEN CAST(:report AS TEXT) IS NOT NULL AND (:once = 0 OR warn_at IS NULL OR warn_at <> 0)
        THEN :report WHEN report = CAST(:void AS TEXT) THEN NULL ELSE report END,
    warn_at = CASE WHEN warn_at = 0 THEN 0 ELSE COALESCE(:warn_at, warn_at) END,
    owner = NULL
WHERE message_id = :message_id AND idx = :idx AND status = 'active'
    AND (CAST(:owner AS TEXT) IS NULL OR owner = :owner)
RETURNING transport;

-- name: count_crash
-- One more attempt of the message crashed its transport.
UPDATE messages SET crashes = crashes + 1 WHERE id = :message_id RETURNING crashes;

-- name: held_flags
-- Whether each of these messages is held (what giving their recipients back decides on).
SELECT id, held FROM messages WHERE id IN (:ids);

-- name: give_back
-- An active recipient waits again, due now, as :status (domain/transitions.py give_back: held when
-- its message is, else queued), while its message is still held as that decision read it (:held).
UPDATE recipients SET status = :status, next_attempt_at = :now, wait_destination = 0, owner = NULL
WHERE message_id = :message_id AND idx = :idx AND status = 'active'
    AND (SELECT held FROM messages m WHERE m.id = recipients.message_id) = :held
RETURNING status, address, transport;

-- name: give_back_held_by
-- As give_back, only while node :owner (NULL: no node) still holds the recipient.
UPDATE recipients SET status = :status, next_attempt_at = :now, wait_destination = 0, owner = NULL
WHERE message_id = :message_id AND idx = :idx AND status = 'active'
    AND (SELECT held FROM messages m WHERE m.id = recipients.message_id) = :held
    AND (owner = :owner OR (owner IS NULL AND CAST(:owner AS TEXT) IS NULL))
RETURNING status, address, transport;

-- name: give_back_unleased
-- As give_back_held_by, only while that node holds no live lease (the rescue's recheck).
UPDATE recipients SET status = :status, next_attempt_at = :now, wait_destination = 0, owner = NULL
WHERE message_id = :message_id AND idx = :idx AND status = 'active'
    AND (SELECT held FROM messages m WHERE m.id = recipients.message_id) = :held
    AND (owner = :owner OR (owner IS NULL AND CAST(:owner AS TEXT) IS NULL))
    AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.owner = recipients.owner AND n.lease_until >= :now)
RETURNING status, address, transport;

-- name: active_recipients
-- Every active recipient and the node holding it.
SELECT message_id, idx, owner FROM recipients WHERE status = 'active';

-- name: active_recipients_of
-- The active recipients node :owner holds (the watchdog's view of its own node; by the index).
SELECT message_id, idx, owner FROM recipients WHERE status = 'active' AND owner = :owner;

-- name: release_destination
-- A destination answered again: (a chunk of) its waiting backlog becomes due now.
UPDATE recipients SET next_attempt_at = :now, wait_destination = 0 WHERE (message_id, idx) IN (
    SELECT message_id, idx FROM recipients WHERE status = 'deferred' AND wait_destination = 1
    AND transport = :transport AND nexthop = :nexthop LIMIT :limit);

-- name: mark_delay_warnings
-- Deferred recipients whose delay notice fell due while they waited owe it (:report, the domain's
-- delay_notice_owed) now, unless they owe a report already (a chunk, by index).
UPDATE recipients SET report = COALESCE(report, :report), warn_at = 0 WHERE (message_id, idx) IN (
    SELECT message_id, idx FROM recipients WHERE status = 'deferred' AND warn_at > 0 AND warn_at <= :now
    ORDER BY warn_at LIMIT :limit);

-- name: next_delay_warning
-- When the next delay notice of a deferred recipient falls due.
SELECT warn_at FROM recipients WHERE status = 'deferred' AND warn_at > 0 ORDER BY warn_at LIMIT 1;

-- name: next_due_in_class
-- The earliest next attempt in one priority class (the head of its index range).
SELECT next_attempt_at FROM recipients WHERE status IN ('queued', 'deferred') AND priority = :priority
AND next_attempt_at IS NOT NULL ORDER BY next_attempt_at LIMIT 1;

-- name: release_transport
-- A transport is online again: (a chunk of) the backlog that waited while it was offline is due now.
UPDATE recipients SET next_attempt_at = :now, wait_destination = 0 WHERE (message_id, idx) IN (
    SELECT message_id, idx FROM recipients WHERE status = 'deferred' AND wait_destination = 1
    AND transport = :transport LIMIT :limit);

-- name: offline_transports
-- The transports put offline, and since when.
SELECT name, since FROM offline_transports ORDER BY name;

-- name: set_transport_offline
-- Put a transport offline (nothing changes if it is already).
INSERT INTO offline_transports (name, since) VALUES (:name, :now) ON CONFLICT DO NOTHING;

-- name: set_transport_online
-- Put a transport online again.
DELETE FROM offline_transports WHERE name = :name;

-- name: waiting_destinations
-- The destinations deferred recipients wait for.
SELECT DISTINCT transport, nexthop FROM recipients WHERE status = 'deferred' AND wait_destination = 1;


-- ---------------------------------------------------------------------------------------------
-- Leases (issue 11.4): nodes and the recipients they hold active

-- name: lease_until
-- When node :owner's lease ends (no row: it has none).
SELECT lease_until FROM nodes WHERE owner = :owner;

-- name: submission_checks
-- What a batch of submissions handed to node :owner checks, read in one statement: when that
-- node's lease ends (NULL: it has none), and whether any suppression is in force at :now.
SELECT (SELECT lease_until FROM nodes WHERE owner = :owner),
       EXISTS (SELECT 1 FROM suppressions WHERE suppressed_until IS NULL OR suppressed_until > :now);

-- name: node_live
-- Does node :owner hold a lease at :now?
SELECT EXISTS (SELECT 1 FROM nodes n WHERE n.owner = :owner AND n.lease_until >= :now);

-- name: end_other_leases
-- Every other node's lease ends at its last heartbeat (the caller proved no other node lives).
UPDATE nodes SET lease_until = COALESCE(heartbeat_at, started_at, 0)
WHERE owner <> :owner AND lease_until > COALESCE(heartbeat_at, started_at, 0);

-- name: insert_node
-- A node starts delivering, with a lease until :lease_until (a reused identity is refused).
INSERT INTO nodes (owner, host, pid, started_at, heartbeat_at, lease_until)
VALUES (:owner, :host, :pid, :now, :now, :lease_until);

-- name: heartbeat
-- Renew node :owner's lease, while it still runs.
UPDATE nodes SET heartbeat_at = :now, lease_until = :lease_until WHERE owner = :owner AND lease_until >= :now;

-- name: any_unowned_active
-- Is any recipient active with no node holding it?
SELECT 1 FROM recipients WHERE status = 'active' AND owner IS NULL LIMIT 1;

-- name: next_active_owner
-- The next owner of active recipients after :after (one index probe).
SELECT owner FROM recipients WHERE status = 'active' AND owner > :after ORDER BY owner LIMIT 1;

-- name: any_node_dead_since
-- Is there a node row whose lease ran out before :before?
SELECT 1 FROM nodes WHERE lease_until < :before LIMIT 1;

-- name: active_of_node
-- Up to :limit recipients node :owner holds active.
SELECT message_id, idx, owner FROM recipients WHERE status = 'active' AND owner = :owner LIMIT :limit;

-- name: held_by_node
-- Every recipient node :owner holds active.
SELECT message_id, idx, owner FROM recipients WHERE status = 'active' AND owner = :owner;

-- name: active_of_no_node
-- Up to :limit recipients active with no node holding them.
SELECT message_id, idx, owner FROM recipients WHERE status = 'active' AND owner IS NULL LIMIT :limit;

-- name: prune_nodes
-- Node rows dead since :before that hold nothing.
DELETE FROM nodes WHERE lease_until < :before
AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.status = 'active' AND r.owner = nodes.owner);

-- name: drain_node
-- Ask live node :owner to drain (it sees the flag at its next heartbeat).
UPDATE nodes SET draining = 1 WHERE owner = :owner AND lease_until >= :now;

-- name: delete_node
-- A retired node's row.
DELETE FROM nodes WHERE owner = :owner;

-- name: list_nodes
-- Every node, oldest first, with the number of recipients it holds active.
SELECT owner, host, pid, started_at, heartbeat_at, lease_until, draining,
    (SELECT count(*) FROM recipients r WHERE r.status = 'active' AND r.owner = n.owner)
FROM nodes n ORDER BY started_at, owner;


-- ---------------------------------------------------------------------------------------------
-- The operator's commands (hold, release, flush, delete, requeue) and the reader's flags

-- name: message_exists
SELECT 1 FROM messages WHERE id = :message_id;

-- name: message_in_folder
-- Is the message in :folder?
SELECT 1 FROM messages WHERE id = :message_id AND folder = :folder;

-- name: hold_message
UPDATE messages SET held = 1 WHERE id = :message_id;

-- name: hold_waiting_recipients
-- A held message's waiting recipients are held too.
UPDATE recipients SET status = :status WHERE message_id = :message_id AND status IN ('queued', 'deferred')
RETURNING address, transport;

-- name: hold_active_recipients
-- A message held by its hooks: its recipients in delivery are held.
UPDATE recipients SET status = :status WHERE message_id = :message_id AND status = 'active'
RETURNING address, transport;

-- name: release_message
UPDATE messages SET held = 0 WHERE id = :message_id;

-- name: release_recipients
-- A released message's held recipients are due now.
UPDATE recipients SET status = :status, next_attempt_at = :now, wait_destination = 0
WHERE message_id = :message_id AND status = 'held';

-- name: flush_all
-- A chunk of the waiting recipients not due yet become due now (priority IN: the claim index's ranges,
-- ops.PRIORITY_CLASSES).
UPDATE recipients SET next_attempt_at = :now, wait_destination = 0 WHERE (message_id, idx) IN (
    SELECT message_id, idx FROM recipients WHERE status IN ('queued', 'deferred') AND next_attempt_at > :now
    AND priority IN (1, 0, -1) LIMIT :limit);

-- name: flush_route
-- A chunk of the waiting recipients of one transport and/or one destination (nexthop) not due yet
-- become due now (`queue flush --transport T --destination D`; a NULL parameter matches any).
UPDATE recipients SET next_attempt_at = :now, wait_destination = 0 WHERE (message_id, idx) IN (
    SELECT message_id, idx FROM recipients WHERE status IN ('queued', 'deferred') AND next_attempt_at > :now
    AND transport = COALESCE(CAST(:transport AS TEXT), transport) AND nexthop = COALESCE(CAST(:nexthop AS TEXT), nexthop)
    LIMIT :limit);

-- name: flush_message
-- A message's waiting recipients not due yet become due now.
UPDATE recipients SET next_attempt_at = :now, wait_destination = 0
WHERE status IN ('queued', 'deferred') AND next_attempt_at > :now AND message_id = :message_id;

-- name: pending_indexes
-- A message's pending recipients (`queue delete` cancels those not in flight).
SELECT idx FROM recipients WHERE message_id = :message_id AND status IN ('queued', 'active', 'deferred', 'held')
ORDER BY idx;

-- name: cancel_recipient
-- Remove a pending recipient.
DELETE FROM recipients WHERE message_id = :message_id AND idx = :idx
AND status IN ('queued', 'active', 'deferred', 'held') RETURNING address;

-- name: set_read
-- Set or clear a message's read flag (MAPI SetReadFlag), if it changes.
UPDATE messages SET read = :read WHERE id = :message_id AND read <> :read RETURNING mailbox, folder;

-- name: record_mdn
-- Record a message's one disposition (RFC 8098 §2.1), for `deleted` only while it is unread.
UPDATE messages SET mdn = :mdn WHERE id = :message_id AND mdn IS NULL AND (:deleted = 0 OR read = 0)
RETURNING mailbox, folder;

-- name: restore_submitted
-- `queue requeue`: the message as submitted again, unheld, for the hooks to see once more.
UPDATE messages SET held = 0, preprocessed = 0, crashes = 0,
    content_id = COALESCE(source_content_id, content_id), sender = COALESCE(source_sender, sender),
    source_content_id = NULL, source_sender = NULL
WHERE id = :message_id;

-- name: delete_added_recipients
-- `queue requeue`: waiting recipients a hook added go.
DELETE FROM recipients WHERE message_id = :message_id AND status IN ('held', 'deferred', 'queued')
AND source_address = '';

-- name: requeue_recipients
-- `queue requeue`: waiting recipients are queued, due now, at their address as submitted.
UPDATE recipients SET status = :status, next_attempt_at = :now, wait_destination = 0,
    address = COALESCE(source_address, address), source_address = NULL
WHERE message_id = :message_id AND status IN ('held', 'deferred', 'queued');

-- name: purgeable_messages
-- Up to :limit of the spool's own finished messages that finished before :before.
SELECT id FROM messages WHERE folder = 'sent' AND mailbox = '' AND finished_at < :before LIMIT :limit;

-- name: purge_events
DELETE FROM events WHERE time < :before;


-- ---------------------------------------------------------------------------------------------
-- Outbound hooks (MAPI preprocessing)

-- name: mark_preprocessed
-- The hooks are done with the message.
UPDATE messages SET preprocessed = 1 WHERE id = :message_id;

-- name: indexes_held_by
-- The message's recipients node :owner holds active.
SELECT idx FROM recipients WHERE message_id = :message_id AND status = 'active' AND owner = :owner;

-- name: replace_content
-- A hook changed the message: its new content and sender; the submitted ones are kept (for requeue).
UPDATE messages SET source_content_id = COALESCE(source_content_id, content_id),
    source_sender = COALESCE(source_sender, sender), content_id = :content_id, sender = :sender, size = :size
WHERE id = :message_id;

-- name: next_recipient_index
SELECT COALESCE(max(idx), -1) + 1 FROM recipients WHERE message_id = :message_id;

-- name: mark_added_recipient
-- A recipient a hook added has no address as submitted ('': requeue removes it).
UPDATE recipients SET source_address = '' WHERE message_id = :message_id AND idx = :idx;

-- name: rename_recipient
-- A hook changed a recipient's address; the submitted one is kept, and it is routed afresh.
UPDATE recipients SET source_address = COALESCE(source_address, address), address = :address,
    addrtype = :addrtype, transport = NULL, nexthop = NULL
WHERE message_id = :message_id AND idx = :idx;

-- name: delete_recipient
-- A recipient moved to a message split off by a hook.
DELETE FROM recipients WHERE message_id = :message_id AND idx = :idx;


-- ---------------------------------------------------------------------------------------------
-- Reports (RFC 3464 DSNs, RFC 8098 MDNs) and webhooks

-- name: messages_owing_reports
SELECT DISTINCT message_id FROM recipients WHERE report IS NOT NULL LIMIT :limit;

-- name: report_message
-- What a report quotes of its message.
SELECT sender, submitted_at, message_class, ret, envid, expires_at, deliver_after FROM messages
WHERE id = :message_id;

-- name: reports_owed_by
-- The recipients of a message that owe a report, with what it says of each.
SELECT idx, address, report, reply_code, reply_enhanced, reply_text, remote, orcpt, last_attempt_at
FROM recipients WHERE message_id = :message_id AND report IS NOT NULL ORDER BY idx;

-- name: report_debts
-- The report debts of a message as they stand, before a report of them is written (PostgreSQL
-- locks them: a node writing the same report meanwhile waits, then finds them cleared).
SELECT idx, report FROM recipients WHERE message_id = :message_id AND report IS NOT NULL;

-- name: clear_report
-- A report is written: the debt is cleared, unless it changed meanwhile.
UPDATE recipients SET report = NULL WHERE message_id = :message_id AND idx = :idx AND report = :action;

-- name: sent_to_delete
-- Is the message finished, and to be deleted once it owes no report?
SELECT 1 FROM messages WHERE id = :message_id AND folder = :sent AND delete_after_submit = 1;

-- name: start_webhook_cursor
-- The first time: the webhook cursor starts at the newest event (WHERE true: SQLite's upsert after a
-- SELECT needs a WHERE to parse).
INSERT INTO webhook_cursor (id, event_id) SELECT 1, COALESCE(max(id), 0) FROM events WHERE true
ON CONFLICT DO NOTHING;

-- name: webhook_cursor
SELECT event_id FROM webhook_cursor WHERE id = 1;

-- name: move_webhook_cursor
-- Move the cursor from :after to :upto, only if it is still at :after.
UPDATE webhook_cursor SET event_id = :upto WHERE id = 1 AND event_id = :after;


-- ---------------------------------------------------------------------------------------------
-- Reads, shaped for `queue list/show --json` and the HTTP API

-- name: list_messages
-- A page of the messages in :folders (a list: Queries.expand), in submission order, after a position.
SELECT id, mailbox, folder, sender, size, submitted_at, finished_at, message_class, priority, deliver_after,
    expires_at, held, origin, ret, envid, read, mdn, max_attempts, flags, resend_of, copy_of, copy_for, subject
FROM messages WHERE folder IN (:folders) AND (submitted_at, id) > (:after_at, :after_id)
ORDER BY submitted_at, id LIMIT :limit;

-- name: list_mailbox_messages
-- As list_messages, in one mailbox.
SELECT id, mailbox, folder, sender, size, submitted_at, finished_at, message_class, priority, deliver_after,
    expires_at, held, origin, ret, envid, read, mdn, max_attempts, flags, resend_of, copy_of, copy_for, subject
FROM messages WHERE folder IN (:folders) AND mailbox = :mailbox AND (submitted_at, id) > (:after_at, :after_id)
ORDER BY submitted_at, id LIMIT :limit;

-- name: recipients_of_messages
-- The recipients of the messages :ids (a list: Queries.expand).
SELECT message_id, idx, address, addrtype, type, transport, nexthop, status, attempts, next_attempt_at,
    last_attempt_at, reply_code, reply_enhanced, reply_text, remote, notify, orcpt
FROM recipients WHERE message_id IN (:ids) ORDER BY message_id, idx;

-- name: message_info
SELECT id, mailbox, folder, sender, size, submitted_at, finished_at, message_class, priority, deliver_after,
    expires_at, held, origin, ret, envid, read, mdn, max_attempts, flags, resend_of, copy_of, copy_for, subject
FROM messages WHERE id = :message_id;

-- name: copies_of
-- The copies of a message filed into local mailboxes (issue 13.2), oldest first.
SELECT id, mailbox, folder, copy_for FROM messages WHERE copy_of = :message_id ORDER BY submitted_at, id;

-- name: resends_of
-- The messages that resend this one (`queue resend`), oldest first.
SELECT id FROM messages WHERE resend_of = :message_id ORDER BY submitted_at, id;

-- name: submitted_content
-- A message's envelope sender and content as submitted (before outbound hooks changed them).
SELECT COALESCE(m.source_sender, m.sender), COALESCE(s.data, c.data)
FROM messages m JOIN contents c ON c.id = m.content_id LEFT JOIN contents s ON s.id = m.source_content_id
WHERE m.id = :message_id;

-- name: recipients_of
SELECT message_id, idx, address, addrtype, type, transport, nexthop, status, attempts, next_attempt_at,
    last_attempt_at, reply_code, reply_enhanced, reply_text, remote, notify, orcpt
FROM recipients WHERE message_id = :message_id ORDER BY idx;

-- name: history_of
SELECT time, stage, hook, outcome, detail FROM history WHERE message_id = :message_id ORDER BY time, rowid;

-- name: content_of
-- The message as stored: the headers a hook prepended, then the content.
SELECT m.headers_prefix, c.data FROM messages m JOIN contents c ON c.id = m.content_id WHERE m.id = :message_id;

-- name: kept_outbox_counts
-- The counts the triggers keep (sql/sqlite.sql outbox_counts): outbox recipients by status, and
-- under 'messages' the outbox messages. Read, not computed: milliseconds with 1,000,000 queued.
SELECT key, n FROM outbox_counts;

-- name: kept_destination_counts
-- The metrics' queue depth by destination, as the triggers keep it: pending recipients by route.
SELECT transport, nexthop, status, n FROM destination_counts WHERE n <> 0;

-- name: count_outbox_by_status
-- The same counts computed from the rows (a scan: seconds with 1,000,000 queued): the backfill of
-- an older spool, and the tests that check the kept counts against the rows.
SELECT status, count(*) FROM recipients r JOIN messages m ON m.id = r.message_id
WHERE m.folder = 'outbox' GROUP BY status;

-- name: count_outbox
SELECT count(*) FROM messages WHERE folder = 'outbox';

-- name: count_pending_by_destination
SELECT coalesce(transport, ''), coalesce(nexthop, ''), status, count(*) FROM recipients
WHERE status IN ('queued', 'active', 'deferred', 'held')
GROUP BY coalesce(transport, ''), coalesce(nexthop, ''), status;

-- name: events_after
SELECT id, time, type, message_id, recipient, mailbox, folder, detail FROM events
WHERE id > :after ORDER BY id LIMIT :limit;

-- name: message_events
SELECT id, time, type, message_id, recipient, mailbox, folder, detail FROM events
WHERE message_id = :message_id AND id > :after ORDER BY id LIMIT :limit;


-- ---------------------------------------------------------------------------------------------
-- Credentials: HTTP API tokens and SMTP AUTH users. A user name is one account whatever its case
-- (RFC 5321 §2.4: the local part is the server's to fold; msgspool folds it), spelled lower() on
-- both sides rather than SQLite's NOCASE collation, so that both dialects say it alike.

-- name: token_name_taken
SELECT 1 FROM tokens WHERE name = :name OR id = :name;

-- name: insert_token
INSERT INTO tokens (id, name, scopes, digest, created_at) VALUES (:id, :name, :scopes, :digest, :created_at);

-- name: list_tokens
SELECT id, name, scopes, created_at FROM tokens ORDER BY created_at, id;

-- name: find_token
-- A token and the digest of its secret.
SELECT id, name, scopes, created_at, digest FROM tokens WHERE id = :id;

-- name: any_token
SELECT 1 FROM tokens LIMIT 1;

-- name: token_by_id_or_name
SELECT id, name, scopes, created_at FROM tokens WHERE id = :key OR name = :key;

-- name: delete_token
DELETE FROM tokens WHERE id = :id;

-- name: user_exists
SELECT 1 FROM users WHERE lower(name) = lower(:name);

-- name: delete_user
DELETE FROM users WHERE lower(name) = lower(:name);

-- name: insert_user
INSERT INTO users (name, password, senders, created_at) VALUES (:name, :password, :senders, :created_at);

-- name: list_users
SELECT name, senders, created_at FROM users ORDER BY name;

-- name: find_user
-- A user and its password hash.
SELECT name, senders, created_at, password FROM users WHERE lower(name) = lower(:name);

-- Queue search (domain/selector.py; ops.search_messages). Each `search_by_*` statement reads one
-- index's range (stores/sql/sqlite.sql, "Queue search") in id order, after :after and before :upto,
-- :limit candidates at most; `search_check` keeps the candidates (a JSON array) that every term
-- holds for. A NULL parameter is a term not given; the recipient terms must hold for one recipient.

-- name: search_by_folder
SELECT id FROM messages WHERE folder = :folder AND id > :after AND id < :upto ORDER BY id LIMIT :limit;

-- name: search_by_mailbox
SELECT id FROM messages WHERE mailbox = :mailbox AND id > :after AND id < :upto ORDER BY id LIMIT :limit;

-- name: search_by_any_folder
SELECT id FROM messages WHERE id > :after AND id < :upto ORDER BY id LIMIT :limit;

-- name: search_by_sender
SELECT id FROM messages WHERE lower(sender) = :sender AND id > :after AND id < :upto ORDER BY id LIMIT :limit;

-- name: search_by_sender_domain
SELECT id FROM messages WHERE lower(substr(sender, instr(sender, '@') + 1)) = :sender_domain
    AND id > :after AND id < :upto ORDER BY id LIMIT :limit;

-- name: search_by_recipient
SELECT DISTINCT message_id FROM recipients WHERE lower(address) = :recipient
    AND message_id > :after AND message_id < :upto ORDER BY message_id LIMIT :limit;

-- name: search_by_recipient_domain
SELECT DISTINCT message_id FROM recipients WHERE lower(substr(address, instr(address, '@') + 1)) = :recipient_domain
    AND message_id > :after AND message_id < :upto ORDER BY message_id LIMIT :limit;

-- name: search_by_destination
SELECT DISTINCT message_id FROM recipients WHERE lower(nexthop) = :destination
    AND message_id > :after AND message_id < :upto ORDER BY message_id LIMIT :limit;

-- name: search_by_status
SELECT DISTINCT message_id FROM recipients WHERE status = :status
    AND message_id > :after AND message_id < :upto ORDER BY message_id LIMIT :limit;

-- name: search_check
-- Of the :candidates (a JSON array of ids), those every term holds for, in id order.
SELECT m.id FROM messages m
WHERE m.id IN (SELECT value FROM json_each(:candidates))
  AND (CAST(:folder_list AS TEXT) IS NULL OR m.folder IN (SELECT value FROM json_each(:folder_list)))
  AND (CAST(:mailbox AS TEXT) IS NULL OR m.mailbox = CAST(:mailbox AS TEXT))
  AND m.submitted_at <= :latest AND m.submitted_at > :earliest
  AND (CAST(:sender AS TEXT) IS NULL OR lower(m.sender) = CAST(:sender AS TEXT))
  AND (CAST(:sender_domain AS TEXT) IS NULL
       OR lower(substr(m.sender, instr(m.sender, '@') + 1)) = CAST(:sender_domain AS TEXT))
  AND (CAST(:subject AS TEXT) IS NULL OR lower(m.subject) LIKE CAST(:subject AS TEXT) ESCAPE '\')
  AND (:recipient_terms = 0 OR EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id
      AND (CAST(:recipient AS TEXT) IS NULL OR lower(r.address) = CAST(:recipient AS TEXT))
      AND (CAST(:recipient_domain AS TEXT) IS NULL
           OR lower(substr(r.address, instr(r.address, '@') + 1)) = CAST(:recipient_domain AS TEXT))
      AND (CAST(:destination AS TEXT) IS NULL OR lower(r.nexthop) = CAST(:destination AS TEXT))
      AND (CAST(:transport AS TEXT) IS NULL OR lower(r.transport) = CAST(:transport AS TEXT))
      AND (CAST(:status AS TEXT) IS NULL OR r.status = CAST(:status AS TEXT))))
ORDER BY m.id;

-- name: existing_messages
-- Which of the messages :page_ids (a JSON array of ids) exist: one read for a chunk of an action.
SELECT id FROM messages WHERE id IN (SELECT value FROM json_each(:page_ids));

-- name: messages_by_ids
-- The messages :page_ids (a JSON array of ids), in id order: a page of a search.
SELECT id, mailbox, folder, sender, size, submitted_at, finished_at, message_class, priority, deliver_after,
    expires_at, held, origin, ret, envid, read, mdn, max_attempts, flags, resend_of, copy_of, copy_for, subject
FROM messages WHERE id IN (SELECT value FROM json_each(:page_ids)) ORDER BY id;

-- name: insert_fetched
-- A fetched message's unique id on its server, in the commit that files it (domain/fetch.py).
INSERT INTO fetched (account, uid, fetched_at, message_id) VALUES (:account, :uid, :fetched_at, :message_id)
ON CONFLICT DO NOTHING RETURNING uid;

-- name: fetched_uids
SELECT uid FROM fetched WHERE account = :account;

-- name: delete_fetched
-- An id the server no longer lists.
DELETE FROM fetched WHERE account = :account AND uid = :uid;

-- ---------------------------------------------------------------------------------------------
-- The suppression list (domain/suppression.py; stores/suppressions.py runs these).

-- name: suppress
-- An operator's entry replaces whatever the address had.
INSERT INTO suppressions (address, reason, source, created_at, suppressed_until, message_id)
VALUES (:address, :reason, :source, :created_at, :until, :message_id)
ON CONFLICT (address) DO UPDATE SET reason = excluded.reason, source = excluded.source,
    created_at = excluded.created_at, suppressed_until = excluded.suppressed_until,
    message_id = excluded.message_id;

-- name: suppress_bounce
-- A hard bounce: a new entry, or a later end for an entry that has one (one until removed stays so).
INSERT INTO suppressions (address, reason, source, created_at, suppressed_until, message_id)
VALUES (:address, :reason, :source, :created_at, :until, :message_id)
ON CONFLICT (address) DO UPDATE SET reason = excluded.reason, source = excluded.source,
    created_at = excluded.created_at, suppressed_until = excluded.suppressed_until,
    message_id = excluded.message_id
WHERE suppressions.suppressed_until IS NOT NULL AND suppressions.suppressed_until < excluded.suppressed_until;

-- name: relayed_to
-- Messages of :sender (the outbox, or Sent once done) submitted since :since whose recipient
-- :recipient (lower case) was handed on, with that recipient's transport: what a report that
-- came back later as mail may be about (spooler/bounces.py). Newest first.
SELECT m.id, r.transport FROM messages m JOIN recipients r ON r.message_id = m.id
WHERE lower(m.sender) = :sender AND lower(r.address) = :recipient AND r.status = 'delivered'
  AND m.submitted_at >= :since
ORDER BY m.submitted_at DESC LIMIT :limit;

-- name: list_suppressions
-- The entries in force at :now, by address.
SELECT address, reason, source, created_at, suppressed_until, message_id FROM suppressions
WHERE suppressed_until IS NULL OR suppressed_until > :now ORDER BY address;

-- name: any_suppression_in_force
-- Whether any entry is in force at :now (a batch of submissions asks once).
SELECT 1 FROM suppressions WHERE suppressed_until IS NULL OR suppressed_until > :now LIMIT 1;

-- name: suppressions_among
-- The entries in force at :now for the addresses :addresses (a list: Queries.expand).
SELECT address, reason, source, created_at, suppressed_until, message_id FROM suppressions
WHERE address IN (:addresses) AND (suppressed_until IS NULL OR suppressed_until > :now);

-- name: delete_suppression
DELETE FROM suppressions WHERE address = :address;

-- name: prune_suppressions
-- Entries whose time has passed (housekeeping).
DELETE FROM suppressions WHERE suppressed_until IS NOT NULL AND suppressed_until <= :now;

-- name: suppressions_signature
-- Whether the list changed since it was last read (intake's copy for RCPT time is read again then).
SELECT count(*), max(created_at) FROM suppressions;
