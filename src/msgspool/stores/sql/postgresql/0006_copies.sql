-- msgspool PostgreSQL spool, migration 6 (SQLite schema 15): a copy filed into a local mailbox names
-- the message it copies (the id SMTP answered "queued as") and the recipient it was filed for, so
-- that every view links the two and `queue read` takes either id (issue 13.2: one id story).

ALTER TABLE messages ADD COLUMN copy_of TEXT;
ALTER TABLE messages ADD COLUMN copy_for TEXT;
CREATE INDEX messages_copies ON messages (copy_of) WHERE copy_of IS NOT NULL;
