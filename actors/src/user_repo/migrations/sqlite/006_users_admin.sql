-- When each user last logged in (a session opened), for the admin API. The
-- lower() indexes of 001 serve the admin search: a prefix is a range on them.
ALTER TABLE users ADD COLUMN last_login_at INTEGER;
