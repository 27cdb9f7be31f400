//! The `[database]` settings, and what both stores share besides the rules
//! ([`super::rules`]); the operations are listed in [`super::protocol`].

use std::path::PathBuf;

use serde::Deserialize;

/// The columns of a [`User`](crate::model::User), in the order both stores read them.
pub(super) const USER_COLUMNS: &str =
    "id, email, username, is_active, created_at, updated_at, roles";

/// Roles as stored: a JSON array of strings (an unreadable value reads as none).
pub(super) fn roles_from(stored: &str) -> Vec<String> {
    serde_json::from_str(stored).unwrap_or_default()
}

/// Roles or methods as stored.
pub(super) fn json_list(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

/// The `[database]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// SQLite file; its parent directories are created.
    pub path: PathBuf,
    /// `postgres://…` selects PostgreSQL instead of the SQLite file.
    pub url: String,
    /// PostgreSQL statement timeout.
    pub statement_timeout_ms: u64,
    /// Read connections.
    pub pool_size: u32,
    /// How long SQLite waits for a lock before giving up.
    pub busy_timeout_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            path: PathBuf::from("gatehouse.db"),
            url: String::new(),
            statement_timeout_ms: 2_000,
            pool_size: 4,
            busy_timeout_ms: 2_000,
        }
    }
}
