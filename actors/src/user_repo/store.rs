//! The `[database]` settings, and what both stores share besides the rules
//! ([`super::rules`]); the operations are listed in [`super::protocol`].

use std::path::PathBuf;

use serde::Deserialize;

/// The columns of a [`User`](crate::model::User), in the order both stores read them.
pub(super) const USER_COLUMNS: &str = "id, email, username, is_active, created_at, updated_at, roles, email_verified, pending_email, \
     mfa_enabled";

/// The index of the column read after [`USER_COLUMNS`] (the password hash).
pub(super) const AFTER_USER: usize = 10;

/// An hour, the per-recipient cap's window, in ms.
pub(super) const HOUR_MS: i64 = 3_600_000;

/// Whether `mail` may be queued to an address that had `sent` capped
/// messages in the last hour; when not, says so (log and metric).
pub(super) fn cap_allows(sent: i64, mail: &crate::model::Outgoing) -> bool {
    if super::rules::under_cap(u64::try_from(sent).unwrap_or(0), mail.cap) {
        return true;
    }
    tracing::warn!(
        event = "email.dropped",
        kind = mail.kind,
        reason = "per_recipient_cap",
        "message not queued: its address had its hourly share"
    );
    metrics::counter!("gatehouse_emails_total", "kind" => mail.kind, "result" => "dropped")
        .increment(1);
    false
}

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
    /// How long stored security events are kept (the purge deletes older ones).
    pub audit_retention_days: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            path: PathBuf::from("gatehouse.db"),
            url: String::new(),
            statement_timeout_ms: 2_000,
            pool_size: 4,
            busy_timeout_ms: 2_000,
            audit_retention_days: 365,
        }
    }
}
