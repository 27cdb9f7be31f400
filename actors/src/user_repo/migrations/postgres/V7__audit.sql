-- The same schema change, with the same meaning, as sqlite/007_audit.sql.
CREATE TABLE audit_events (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
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
