-- msgspool PostgreSQL spool, migration 1: the tables of the SQLite spool (sql/sqlite.sql, schema 9)
-- in PostgreSQL's types, plus the node registry that leases hang on. Applied once, in a
-- transaction, by `msgspool db upgrade` or the first node that starts (stores/postgresql.py).
-- Times are Unix seconds (double precision), as in SQLite; flags stay integers, so one set of
-- statements serves both dialects.

CREATE TABLE contents (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    data    BYTEA NOT NULL
);

CREATE TABLE messages (
    id                  TEXT PRIMARY KEY,
    mailbox             TEXT NOT NULL DEFAULT '',
    folder              TEXT NOT NULL,
    sender              TEXT NOT NULL,
    size                BIGINT NOT NULL,
    submitted_at        DOUBLE PRECISION NOT NULL,
    finished_at         DOUBLE PRECISION,
    content_id          BIGINT NOT NULL,
    headers_prefix      BYTEA,
    message_class       TEXT NOT NULL DEFAULT 'IPM.Note',
    priority            INTEGER NOT NULL DEFAULT 0,
    deliver_after       DOUBLE PRECISION,
    expires_at          DOUBLE PRECISION,
    delete_after_submit INTEGER NOT NULL DEFAULT 0,
    held                INTEGER NOT NULL DEFAULT 0,
    read                INTEGER NOT NULL DEFAULT 0,
    mdn                 TEXT,
    origin              TEXT NOT NULL DEFAULT 'api',
    flags               TEXT NOT NULL DEFAULT '',
    meta                TEXT,
    ret                 TEXT,
    envid               TEXT,
    preprocessed        INTEGER NOT NULL DEFAULT 0,
    source_content_id   BIGINT,
    source_sender       TEXT,
    crashes             INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER
);
CREATE INDEX messages_by_folder ON messages (mailbox, folder, submitted_at);
CREATE INDEX messages_finished ON messages (finished_at) WHERE folder = 'sent';
CREATE INDEX messages_by_content ON messages (content_id);

CREATE TABLE recipients (
    message_id          TEXT NOT NULL,
    idx                 INTEGER NOT NULL,
    address             TEXT NOT NULL,
    addrtype            TEXT NOT NULL,
    type                TEXT NOT NULL,
    transport           TEXT,
    nexthop             TEXT,
    status              TEXT NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     DOUBLE PRECISION,
    last_attempt_at     DOUBLE PRECISION,
    reply_code          INTEGER,
    reply_enhanced      TEXT,
    reply_text          TEXT,
    remote              TEXT,
    wait_destination    INTEGER NOT NULL DEFAULT 0,
    notify              TEXT,
    orcpt               TEXT,
    report              TEXT,
    source_address      TEXT,
    priority            INTEGER NOT NULL DEFAULT 0,
    warn_at             DOUBLE PRECISION,
    owner               TEXT,
    PRIMARY KEY (message_id, idx)
);
CREATE INDEX recipients_due_by_priority ON recipients (priority, next_attempt_at)
    WHERE status IN ('queued', 'deferred');
CREATE INDEX recipients_waiting ON recipients (transport, nexthop)
    WHERE status = 'deferred' AND wait_destination = 1;
CREATE INDEX recipients_active_by_owner ON recipients (owner) WHERE status = 'active';
CREATE INDEX recipients_report ON recipients (message_id) WHERE report IS NOT NULL;
CREATE INDEX recipients_warn ON recipients (warn_at) WHERE status = 'deferred' AND warn_at > 0;

CREATE TABLE mailboxes (
    address     TEXT PRIMARY KEY,
    created_at  DOUBLE PRECISION NOT NULL
);

CREATE TABLE receive_folders (
    mailbox         TEXT NOT NULL,
    message_class   TEXT NOT NULL,
    folder          TEXT NOT NULL,
    PRIMARY KEY (mailbox, message_class)
);

CREATE TABLE events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time        DOUBLE PRECISION NOT NULL,
    type        TEXT NOT NULL,
    message_id  TEXT,
    recipient   TEXT,
    mailbox     TEXT,
    folder      TEXT,
    detail      TEXT
);
CREATE INDEX events_by_time ON events (time);

-- `rowid` is named after SQLite's implicit one, which the statements order a message's history by.
CREATE TABLE history (
    rowid       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  TEXT NOT NULL,
    time        DOUBLE PRECISION NOT NULL,
    stage       TEXT NOT NULL,
    hook        TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX history_by_message ON history (message_id, time);

CREATE TABLE webhook_cursor (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    event_id    BIGINT NOT NULL
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    scopes      TEXT NOT NULL,
    digest      TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL
);

-- User names compare case-insensitively (ASCII, as SQLite's NOCASE): one account per lower(name).
CREATE TABLE users (
    name        TEXT PRIMARY KEY,
    password    TEXT NOT NULL,
    senders     TEXT NOT NULL DEFAULT '',
    created_at  DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX users_by_lower_name ON users (lower(name));

-- The nodes delivering from this spool (issue 11.4): one row per process start, a fresh owner
-- identity each time; a node's leases are the active recipients it owns, alive while lease_until
-- lies ahead (renewed by its heartbeat).
CREATE TABLE nodes (
    owner           TEXT PRIMARY KEY,
    host            TEXT NOT NULL DEFAULT '',
    pid             INTEGER NOT NULL DEFAULT 0,
    started_at      DOUBLE PRECISION NOT NULL,
    heartbeat_at    DOUBLE PRECISION NOT NULL,
    lease_until     DOUBLE PRECISION NOT NULL,
    draining        INTEGER NOT NULL DEFAULT 0
);
