-- msgspool PostgreSQL spool, migration 4: the suppression list (domain/suppression.py; SQLite
-- schema 13): addresses that hard-bounced, or that an operator listed; new mail to one fails at
-- submission while `suppressed_until` is ahead (NULL: until removed).

CREATE TABLE suppressions (
    address          TEXT PRIMARY KEY,
    reason           TEXT NOT NULL,
    source           TEXT NOT NULL,
    created_at       DOUBLE PRECISION NOT NULL,
    suppressed_until DOUBLE PRECISION,
    message_id       TEXT
);
