//! The audit log: the security events the log writes, also kept in the
//! database where operators can query them.
//!
//! An event that a write causes is stored by that write, in its transaction:
//! the service builds it ([`Event`]), hands it to the store operation, and
//! logs it ([`Event::log`]) once the write is done, so the log and the table
//! never disagree about whether it happened. Events without a write (a
//! refused login, a throttled name, a breaker turning) are only logged where
//! they happen, with target [`SECURITY_TARGET`]; the front end's audit layer
//! picks them out of the log by name ([`is_stored`]) and the repository
//! appends them in batches. The log shows both targets whatever
//! `logging.level` says, so the log and the table hold the same events.
//!
//! Who asked (request id, client address) comes from the [`Context`] the
//! front end sets around each request, so nothing has to pass it down.

use std::net::IpAddr;

use serde_json::{Map, Value};
use tracing::Level;

/// The target of the lines [`Event::log`] writes: the audit layer leaves
/// them alone, since the write that caused them stored them already.
pub const STORED_TARGET: &str = "gatehouse::audit";

/// The target of the security events logged without a write behind them
/// (the audit layer stores them from the log).
pub const SECURITY_TARGET: &str = "gatehouse::security";

/// Security events the log writes, all of which are stored; admin actions
/// (`admin.<action>`) are too.
pub const STORED: &[&str] = &[
    "login.success",
    "login.failure",
    "account.throttled",
    "rate_limit.exceeded",
    "session.created",
    "session.refreshed",
    "session.revoked",
    "refresh.reuse_detected",
    "password.changed",
    "password.change_refused",
    "account.deactivated",
    "breaker.transition",
    "actor.restarted",
    "suspicious",
    "user.registered",
    "profile.changed",
    "email.verified",
    "password.reset_requested",
    "password.reset",
    "mfa.enabled",
    "mfa.disabled",
    "mfa.failure",
    "key.rotated",
    "key.revoked",
    "admin_key.created",
    "admin_key.revoked",
];

/// Whether the security event `name` is stored.
pub fn is_stored(name: &str) -> bool {
    STORED.contains(&name) || name.starts_with("admin.")
}

/// Detail fields an [`Event::log`] line carries (each only when set).
const LOGGED_DETAILS: [&str; 9] = [
    "login",
    "session_id",
    "reason",
    "count",
    "method",
    "by",
    "amr",
    "admin_key",
    "admin_name",
];

tokio::task_local! {
    static CONTEXT: Context;
}

/// The request an event happened in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    pub request_id: String,
    pub ip: IpAddr,
}

impl Context {
    /// Runs `work` with this context for the events it causes.
    pub async fn scope<F: Future>(self, work: F) -> F::Output {
        CONTEXT.scope(self, work).await
    }

    /// The context of the request being served, if any.
    pub fn current() -> Option<Self> {
        CONTEXT.try_with(Clone::clone).ok()
    }
}

/// One security event, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub event: String,
    /// Unix ms; 0 until the repository stamps it.
    pub at: i64,
    pub user_id: Option<String>,
    /// The canonical login name an event without a user was about.
    pub login: Option<String>,
    pub ip: Option<String>,
    pub request_id: Option<String>,
    pub details: Map<String, Value>,
}

impl Event {
    /// An event at `at` in the current request's context.
    pub fn new(event: impl Into<String>, at: i64) -> Self {
        let context = Context::current();
        Self {
            event: event.into(),
            at,
            user_id: None,
            login: None,
            ip: context.as_ref().map(|c| c.ip.to_string()),
            request_id: context.map(|c| c.request_id),
            details: Map::new(),
        }
    }

    pub fn user(mut self, user_id: &str) -> Self {
        self.user_id = Some(user_id.to_owned());
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// Writes the event's log line at `level` (the write that caused it has
    /// stored it).
    pub fn log(&self, level: Level, message: &str) {
        let text = |key: &str| {
            self.details.get(key).map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        };
        let [
            login,
            session_id,
            reason,
            count,
            method,
            by,
            amr,
            admin_key,
            admin_name,
        ] = LOGGED_DETAILS.map(text);
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(target: STORED_TARGET, event = %self.event,
                    user_id = self.user_id.as_deref(), ip = self.ip.as_deref(),
                    login = login.as_deref(), session_id = session_id.as_deref(),
                    reason = reason.as_deref(), count = count.as_deref(),
                    method = method.as_deref(), by = by.as_deref(), amr = amr.as_deref(),
                    admin_key = admin_key.as_deref(), admin_name = admin_name.as_deref(),
                    "{message}")
            };
        }
        match level {
            Level::ERROR => line!(error),
            Level::WARN => line!(warn),
            _ => line!(info),
        }
    }
}

/// Logs each of `events` (stored by the write that caused them) at `level`.
pub fn log_all(events: &[Event], level: Level, message: &str) {
    for event in events {
        event.log(level, message);
    }
}

/// A stored event, with its place in the log.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub id: i64,
    pub event: Event,
}

/// Which stored events to read: newest first, ids below `before`.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub user_id: Option<String>,
    pub event: Option<String>,
    /// Unix ms: only events at or after it.
    pub since: Option<i64>,
    /// Only events with a smaller id (the cursor).
    pub before: Option<i64>,
    pub limit: u32,
}

/// Details as stored (a JSON object).
pub(crate) fn details_text(details: &Map<String, Value>) -> String {
    serde_json::to_string(details).unwrap_or_else(|_| "{}".into())
}

/// Details as read back (an unreadable value reads as none).
pub(crate) fn details_from(stored: &str) -> Map<String, Value> {
    serde_json::from_str(stored).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_take_the_request_they_happen_in() {
        let outside = Event::new("login.failure", 1);
        assert_eq!((outside.ip, outside.request_id), (None, None));
        let context = Context {
            request_id: "r-1".into(),
            ip: IpAddr::from([192, 0, 2, 7]),
        };
        let inside = context
            .scope(async { Event::new("login.failure", 1).user("u") })
            .await;
        assert_eq!(inside.ip.as_deref(), Some("192.0.2.7"));
        assert_eq!(inside.request_id.as_deref(), Some("r-1"));
        assert_eq!(inside.user_id.as_deref(), Some("u"));
    }

    #[test]
    fn every_listed_event_and_every_admin_action_is_stored() {
        assert!(is_stored("login.failure"));
        assert!(is_stored("admin.erase"));
        assert!(!is_stored("email.sent"));
        assert!(!is_stored("administrator"));
    }

    #[test]
    fn details_survive_storage() {
        let event = Event::new("session.revoked", 5)
            .detail("count", 3)
            .detail("reason", "x");
        assert_eq!(details_from(&details_text(&event.details)), event.details);
        assert!(details_from("not json").is_empty());
    }
}
