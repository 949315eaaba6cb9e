-- When an auto-reply (a Sieve vacation) last went to a sender, per mailbox and handle (RFC 5230
-- §4.2): kept in the spool that every node shares (it was a file of each node's own).
CREATE TABLE vacation_replies (
    mailbox     TEXT NOT NULL,
    sender      TEXT NOT NULL,
    handle      TEXT NOT NULL,
    sent_at     DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (mailbox, sender, handle)
);
