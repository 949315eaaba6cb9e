-- One message's events (GET /api/queue/ID/events: every attempt of each recipient, with its reply).
CREATE INDEX IF NOT EXISTS events_by_message ON events (message_id, id);
