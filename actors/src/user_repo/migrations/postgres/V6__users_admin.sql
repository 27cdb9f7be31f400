-- The same schema change, with the same meaning, as sqlite/006_users_admin.sql.
ALTER TABLE users ADD COLUMN last_login_at BIGINT;
-- The admin search takes a prefix as a range in code-point order, as SQLite
-- compares, whatever the database's collation.
CREATE INDEX users_email_prefix ON users ((lower(email) COLLATE "C"));
CREATE INDEX users_username_prefix ON users ((lower(username) COLLATE "C"));
