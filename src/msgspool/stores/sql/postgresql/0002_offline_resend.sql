-- msgspool PostgreSQL spool, migration 2 (SQLite schema 11): transports put offline by an operator
-- (issue 12.7: every node honours the row, and it survives restarts), and the link of a resent
-- message to the one it resends (MAPI MSGFLAG_RESEND, `msgspool queue resend`).

CREATE TABLE offline_transports (
    name        TEXT PRIMARY KEY,
    since       DOUBLE PRECISION NOT NULL
);

ALTER TABLE messages ADD COLUMN resend_of TEXT;
CREATE INDEX messages_resends ON messages (resend_of) WHERE resend_of IS NOT NULL;
