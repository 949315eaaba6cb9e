-- Fetch accounts (domain/fetch.py): the unique id (POP3 UIDL, IMAP UIDVALIDITY:UID) of every message
-- fetched and still on the server, recorded in the commit that files it, so it is never filed twice.
CREATE TABLE fetched (
    account     TEXT NOT NULL,
    uid         TEXT NOT NULL,
    fetched_at  DOUBLE PRECISION NOT NULL,
    message_id  TEXT NOT NULL,
    PRIMARY KEY (account, uid)
);
