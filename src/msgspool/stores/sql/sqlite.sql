-- msgspool SQLite spool schema (PRAGMA user_version = 18). Every statement is idempotent.
-- One row per message (any folder of any mailbox), its content stored once in `contents`
-- (local copies of one submission share it), one row per recipient of an outbound message.

CREATE TABLE IF NOT EXISTS contents (
    id      INTEGER PRIMARY KEY,
    data    BLOB NOT NULL
);

CREATE TABLE IF NOT EXISTS messages (
    id                  TEXT PRIMARY KEY,
    mailbox             TEXT NOT NULL DEFAULT '',
    folder              TEXT NOT NULL,
    sender              TEXT NOT NULL,
    size                INTEGER NOT NULL,
    submitted_at        REAL NOT NULL,
    finished_at         REAL,
    content_id          INTEGER NOT NULL,
    headers_prefix      BLOB,
    message_class       TEXT NOT NULL DEFAULT 'IPM.Note',
    priority            INTEGER NOT NULL DEFAULT 0,
    deliver_after       REAL,
    expires_at          REAL,
    delete_after_submit INTEGER NOT NULL DEFAULT 0,
    held                INTEGER NOT NULL DEFAULT 0,
    read                INTEGER NOT NULL DEFAULT 0,  -- MAPI MSGFLAG_READ; submitted mail starts read
    mdn                 TEXT,            -- the read receipt answered, RFC 8098: displayed | deleted | suppressed
    origin              TEXT NOT NULL DEFAULT 'api',
    flags               TEXT NOT NULL DEFAULT '',
    meta                TEXT,
    ret                 TEXT,            -- RFC 3461 RET: FULL | HDRS
    envid               TEXT,            -- RFC 3461 ENVID, decoded
    preprocessed        INTEGER NOT NULL DEFAULT 0,  -- the outbound hooks have run
    source_content_id   INTEGER,         -- the content as submitted, when hooks changed it
    source_sender       TEXT,            -- the envelope sender as submitted, when hooks changed it
    crashes             INTEGER NOT NULL DEFAULT 0,  -- attempts that crashed a transport
    max_attempts        INTEGER,         -- cap on attempts per recipient (NULL: the setting)
    resend_of           TEXT,            -- MAPI MSGFLAG_RESEND: the message this one resends (`queue resend`)
    copy_of             TEXT,            -- a copy filed in a local mailbox: the message it copies (13.2)
    copy_for            TEXT,            -- ... and the recipient it was filed for
    subject             TEXT             -- the Subject, decoded, for queue searches (domain/content.py)
);
CREATE INDEX IF NOT EXISTS messages_by_folder ON messages (mailbox, folder, submitted_at);
CREATE INDEX IF NOT EXISTS messages_finished ON messages (finished_at) WHERE folder = 'sent';
-- The resends of a message (`queue show` links both ways).
CREATE INDEX IF NOT EXISTS messages_resends ON messages (resend_of) WHERE resend_of IS NOT NULL;
-- The copies of a message in local mailboxes (`queue show` and `queue read` link both ways).
CREATE INDEX IF NOT EXISTS messages_copies ON messages (copy_of) WHERE copy_of IS NOT NULL;

CREATE TABLE IF NOT EXISTS recipients (
    message_id          TEXT NOT NULL,
    idx                 INTEGER NOT NULL,
    address             TEXT NOT NULL,
    addrtype            TEXT NOT NULL,
    type                TEXT NOT NULL,
    transport           TEXT,
    nexthop             TEXT,
    status              TEXT NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     REAL,
    last_attempt_at     REAL,
    reply_code          INTEGER,
    reply_enhanced      TEXT,
    reply_text          TEXT,
    remote              TEXT,
    wait_destination    INTEGER NOT NULL DEFAULT 0,
    notify              TEXT,            -- RFC 3461 NOTIFY: NULL (not given), NEVER, or a list
    orcpt               TEXT,            -- RFC 3461 ORCPT, decoded: addr-type;address
    report              TEXT,            -- a report owed to the sender: failed | delayed | delivered | relayed
    source_address      TEXT,            -- as submitted, when a hook renamed it; '' when a hook added it
    priority            INTEGER NOT NULL DEFAULT 0,  -- priority class of the message: 1 urgent, 0, -1
    warn_at             REAL,            -- when its delay notice falls due; 0 once owed (one per recipient)
    owner               TEXT,            -- while active: the delivery node (nodes.owner) whose lease it is
    PRIMARY KEY (message_id, idx)
);
-- The scheduler's refill reads due recipients through this index only: one range per priority
-- class (urgent first, non-urgent last), each by time. It replaces version 4's index on time
-- alone: one entry per waiting recipient either way, so writes cost what they did.
DROP INDEX IF EXISTS recipients_due;
CREATE INDEX IF NOT EXISTS recipients_due_by_priority ON recipients (priority, next_attempt_at)
    WHERE status IN ('queued', 'deferred');
-- Recipients waiting for a down destination, released together when it answers again.
CREATE INDEX IF NOT EXISTS recipients_waiting ON recipients (transport, nexthop)
    WHERE status = 'deferred' AND wait_destination = 1;
-- Active recipients by the node that holds them: the rescue of a dead node's work, the leases a
-- node holds (`status`), the watchdog's look. Replaces version 9's index on status alone.
DROP INDEX IF EXISTS recipients_active;
CREATE INDEX IF NOT EXISTS recipients_active_by_owner ON recipients (owner) WHERE status = 'active';

-- Queue search (domain/selector.py; stores/ops.py search_messages): each selective term has an
-- index whose range is read in id order (ids sort by submission time), a page at a time; the other
-- terms are checked on the page's candidates only. Address terms compare in lower case, a @DOMAIN
-- term with the part after the first '@' (the same expression in the queries: stores/sql/queries.sql).
CREATE INDEX IF NOT EXISTS messages_search_folder ON messages (folder, id);
CREATE INDEX IF NOT EXISTS messages_search_mailbox ON messages (mailbox, id);
CREATE INDEX IF NOT EXISTS messages_search_sender ON messages (lower(sender), id);
CREATE INDEX IF NOT EXISTS messages_search_sender_domain ON messages (lower(substr(sender, instr(sender, '@') + 1)), id);
CREATE INDEX IF NOT EXISTS recipients_search_status ON recipients (status, message_id);
CREATE INDEX IF NOT EXISTS recipients_search_destination ON recipients (lower(nexthop), message_id);
CREATE INDEX IF NOT EXISTS recipients_search_address ON recipients (lower(address), message_id);
CREATE INDEX IF NOT EXISTS recipients_search_domain ON recipients
    (lower(substr(address, instr(address, '@') + 1)), message_id);

-- Delivery nodes (issue 11.4): one row per start of a process that delivers. Its identity (`owner`)
-- is fresh per start and never reused, so a restarted process can never refresh a dead one's lease
-- (procrastinate#1518, Oban#862). Its lease covers every recipient it holds `active` and lasts
-- until `lease_until`, renewed by its heartbeat; once past, the lease is never renewed again and
-- any node rescues that work (NOT EXISTS a live row: a pruned row hides nothing).
CREATE TABLE IF NOT EXISTS nodes (
    owner           TEXT PRIMARY KEY,
    host            TEXT,
    pid             INTEGER,
    started_at      REAL,
    heartbeat_at    REAL,
    lease_until     REAL,
    draining        INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS mailboxes (
    address     TEXT PRIMARY KEY,
    created_at  REAL NOT NULL
);

-- MAPI receive folders: the folder an inbound message class is filed into (longest prefix wins).
CREATE TABLE IF NOT EXISTS receive_folders (
    mailbox         TEXT NOT NULL,
    message_class   TEXT NOT NULL,
    folder          TEXT NOT NULL,
    PRIMARY KEY (mailbox, message_class)
);

CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time        REAL NOT NULL,
    type        TEXT NOT NULL,
    message_id  TEXT,
    recipient   TEXT,
    mailbox     TEXT,
    folder      TEXT,
    detail      TEXT
);
-- Housekeeping drops events past their retention by time.
CREATE INDEX IF NOT EXISTS events_by_time ON events (time);
-- One message's events (GET /api/queue/ID/events: every attempt of each recipient, with its reply).
CREATE INDEX IF NOT EXISTS events_by_message ON events (message_id, id);
-- Recipients whose report is owed (reporter.py writes them).
CREATE INDEX IF NOT EXISTS recipients_report ON recipients (message_id) WHERE report IS NOT NULL;
-- Deferred recipients whose delay notice is still to come, by when it falls due: the delay timer
-- (spooler/delays.py) reads the earliest and marks the due ones a chunk at a time.
CREATE INDEX IF NOT EXISTS recipients_warn ON recipients (warn_at) WHERE status = 'deferred' AND warn_at > 0;

-- A message's history: what each hook did, holds and requeues (shown by `queue show`).
CREATE TABLE IF NOT EXISTS history (
    message_id  TEXT NOT NULL,
    time        REAL NOT NULL,
    stage       TEXT NOT NULL,           -- outbound | inbound | transport | operator | submission
    hook        TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS history_by_message ON history (message_id, time);

-- The webhook dispatcher's place in `events` (spooler/webhooks.py): the last event id whose webhook
-- deliveries are queued. Moved in the same transaction that queues them, so each is queued once.
CREATE TABLE IF NOT EXISTS webhook_cursor (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    event_id    INTEGER NOT NULL
);

-- When an auto-reply (a Sieve vacation) last went to a sender, per mailbox and handle (RFC 5230 §4.2).
CREATE TABLE IF NOT EXISTS vacation_replies (
    mailbox     TEXT NOT NULL,
    sender      TEXT NOT NULL,
    handle      TEXT NOT NULL,
    sent_at     REAL NOT NULL,
    PRIMARY KEY (mailbox, sender, handle)
);

-- Bearer tokens of the HTTP API (domain/tokens.py): only the SHA-256 of each secret is kept.
CREATE TABLE IF NOT EXISTS tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    scopes      TEXT NOT NULL,           -- space-separated: submit read admin
    digest      TEXT NOT NULL,           -- sha256 hex of the secret
    created_at  REAL NOT NULL
);

-- Accounts of the submission service (domain/users.py): only a scrypt hash of each password is kept.
CREATE TABLE IF NOT EXISTS users (
    name        TEXT PRIMARY KEY COLLATE NOCASE,
    password    TEXT NOT NULL,           -- scrypt$N$r$p$salt$hash
    senders     TEXT NOT NULL DEFAULT '', -- space-separated sender patterns; empty: the default
    created_at  REAL NOT NULL
);

-- Transports an operator put offline (`msgspool transport offline NAME`, issue 12.7; MAPI
-- STATUS_OFFLINE): one row while offline. In the store, so that every node of a shared spool
-- honours it and it survives a restart.
CREATE TABLE IF NOT EXISTS offline_transports (
    name        TEXT PRIMARY KEY,
    since       REAL NOT NULL
);

-- The suppression list (domain/suppression.py): addresses that hard-bounced, or that an operator
-- listed; new mail to one fails at submission while `suppressed_until` is ahead (NULL: until removed).
CREATE TABLE IF NOT EXISTS suppressions (
    address          TEXT PRIMARY KEY,   -- lower case (suppression_key)
    reason           TEXT NOT NULL,
    source           TEXT NOT NULL,      -- bounce | operator
    created_at       REAL NOT NULL,
    suppressed_until REAL,
    message_id       TEXT
);

-- Fetch accounts (domain/fetch.py): the unique id (POP3 UIDL, IMAP UIDVALIDITY:UID) of every message
-- fetched and still on the server, recorded in the commit that files it, so it is never filed twice.
CREATE TABLE IF NOT EXISTS fetched (
    account     TEXT NOT NULL,
    uid         TEXT NOT NULL,
    fetched_at  REAL NOT NULL,
    message_id  TEXT NOT NULL,           -- the queue id it was submitted as
    PRIMARY KEY (account, uid)
);

-- The queue's counts (issue 13.7: `status` and GET /api/status in milliseconds with 1,000,000
-- queued), kept by the triggers below with every write, so that they are read, not computed:
-- `outbox_counts` holds the recipients of outbox messages by status, and under the key 'messages'
-- the outbox messages; `destination_counts` the pending recipients (any folder) by route and status
-- ('' for an unrouted one). An older spool gets them filled from its rows once, when opened
-- (stores/sqlite.py create_schema). SQLite has one writer: a hot counter row costs nothing there.
CREATE TABLE IF NOT EXISTS outbox_counts (
    key     TEXT PRIMARY KEY,                -- a recipient status, or 'messages'
    n       INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS destination_counts (
    transport   TEXT NOT NULL,
    nexthop     TEXT NOT NULL,
    status      TEXT NOT NULL,
    n           INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (transport, nexthop, status)
) WITHOUT ROWID;

-- A recipient counts in `outbox_counts` while its message is in the outbox; a message row counts
-- its recipients when it enters or leaves the outbox, so either may be written first.
CREATE TRIGGER IF NOT EXISTS counts_recipient_insert AFTER INSERT ON recipients
BEGIN
    INSERT INTO outbox_counts (key, n) SELECT NEW.status, 1 FROM messages
        WHERE id = NEW.message_id AND folder = 'outbox'
        ON CONFLICT (key) DO UPDATE SET n = n + 1;
    INSERT INTO destination_counts (transport, nexthop, status, n)
        SELECT coalesce(NEW.transport, ''), coalesce(NEW.nexthop, ''), NEW.status, 1
        WHERE NEW.status IN ('queued', 'active', 'deferred', 'held')
        ON CONFLICT (transport, nexthop, status) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER IF NOT EXISTS counts_recipient_delete AFTER DELETE ON recipients
BEGIN
    UPDATE outbox_counts SET n = n - 1 WHERE key = OLD.status
        AND EXISTS (SELECT 1 FROM messages WHERE id = OLD.message_id AND folder = 'outbox');
    UPDATE destination_counts SET n = n - 1 WHERE OLD.status IN ('queued', 'active', 'deferred', 'held')
        AND transport = coalesce(OLD.transport, '') AND nexthop = coalesce(OLD.nexthop, '') AND status = OLD.status;
END;

CREATE TRIGGER IF NOT EXISTS counts_recipient_update AFTER UPDATE OF status, transport, nexthop ON recipients
WHEN OLD.status IS NOT NEW.status OR OLD.transport IS NOT NEW.transport OR OLD.nexthop IS NOT NEW.nexthop
BEGIN
    UPDATE outbox_counts SET n = n - 1 WHERE key = OLD.status AND OLD.status IS NOT NEW.status
        AND EXISTS (SELECT 1 FROM messages WHERE id = OLD.message_id AND folder = 'outbox');
    INSERT INTO outbox_counts (key, n) SELECT NEW.status, 1 FROM messages
        WHERE id = NEW.message_id AND folder = 'outbox' AND OLD.status IS NOT NEW.status
        ON CONFLICT (key) DO UPDATE SET n = n + 1;
    UPDATE destination_counts SET n = n - 1 WHERE OLD.status IN ('queued', 'active', 'deferred', 'held')
        AND transport = coalesce(OLD.transport, '') AND nexthop = coalesce(OLD.nexthop, '') AND status = OLD.status;
    INSERT INTO destination_counts (transport, nexthop, status, n)
        SELECT coalesce(NEW.transport, ''), coalesce(NEW.nexthop, ''), NEW.status, 1
        WHERE NEW.status IN ('queued', 'active', 'deferred', 'held')
        ON CONFLICT (transport, nexthop, status) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER IF NOT EXISTS counts_message_insert AFTER INSERT ON messages WHEN NEW.folder = 'outbox'
BEGIN
    INSERT INTO outbox_counts (key, n) VALUES ('messages', 1) ON CONFLICT (key) DO UPDATE SET n = n + 1;
    INSERT INTO outbox_counts (key, n) SELECT status, count(*) FROM recipients WHERE message_id = NEW.id
        GROUP BY status ON CONFLICT (key) DO UPDATE SET n = n + excluded.n;
END;

CREATE TRIGGER IF NOT EXISTS counts_message_delete AFTER DELETE ON messages WHEN OLD.folder = 'outbox'
BEGIN
    UPDATE outbox_counts SET n = n - 1 WHERE key = 'messages';
    UPDATE outbox_counts SET n = n - (SELECT count(*) FROM recipients
        WHERE message_id = OLD.id AND status = outbox_counts.key) WHERE key <> 'messages';
END;

CREATE TRIGGER IF NOT EXISTS counts_message_folder AFTER UPDATE OF folder ON messages
WHEN (OLD.folder = 'outbox') <> (NEW.folder = 'outbox')
BEGIN
    UPDATE outbox_counts SET n = n + CASE WHEN NEW.folder = 'outbox' THEN 1 ELSE -1 END WHERE key = 'messages';
    INSERT INTO outbox_counts (key, n)
        SELECT status, CASE WHEN NEW.folder = 'outbox' THEN 1 ELSE -1 END * count(*) FROM recipients
        WHERE message_id = NEW.id GROUP BY status ON CONFLICT (key) DO UPDATE SET n = n + excluded.n;
END;
INSERT OR IGNORE INTO outbox_counts (key, n) VALUES ('messages', 0), ('queued', 0), ('active', 0), ('deferred', 0),
    ('held', 0), ('delivered', 0), ('failed', 0), ('expired', 0);
