-- The audit log: every security event, newest by id. `login` is the login
-- name an event with no user was about (a refused login), canonical, so an
-- erasure can find and drop what names the person.
CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    event TEXT NOT NULL,
    user_id TEXT,
    login TEXT,
    ip TEXT,
    request_id TEXT,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_user ON audit_events (user_id, id) WHERE user_id IS NOT NULL;
CREATE INDEX audit_events_event ON audit_events (event, id);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_login ON audit_events (login) WHERE login IS NOT NULL;
