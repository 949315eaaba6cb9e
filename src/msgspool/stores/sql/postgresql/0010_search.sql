-- Queue search (domain/selector.py; stores/ops.py search_messages): the Subject stored at
-- submission, and an index per selective term whose range is read in id order (ids sort by
-- submission time), a page at a time. Address terms compare in lower case, a @DOMAIN term with the
-- part after the first '@' (the same expressions in the queries: stores/sql/postgresql_queries.sql).
-- Messages stored before this migration have no subject: a subject term does not find them.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS subject TEXT;
CREATE INDEX IF NOT EXISTS messages_search_folder ON messages (folder, id);
CREATE INDEX IF NOT EXISTS messages_search_mailbox ON messages (mailbox, id);
CREATE INDEX IF NOT EXISTS messages_search_sender ON messages (lower(sender), id);
CREATE INDEX IF NOT EXISTS messages_search_sender_domain ON messages (lower(substr(sender, strpos(sender, '@') + 1)), id);
CREATE INDEX IF NOT EXISTS recipients_search_status ON recipients (status, message_id);
CREATE INDEX IF NOT EXISTS recipients_search_destination ON recipients (lower(nexthop), message_id);
CREATE INDEX IF NOT EXISTS recipients_search_address ON recipients (lower(address), message_id);
CREATE INDEX IF NOT EXISTS recipients_search_domain ON recipients
    (lower(substr(address, strpos(address, '@') + 1)), message_id);
