//! What authenticated requests read instead of the database: active sessions
//! and user records, kept correct under revocation.
//!
//! Entries are dropped the moment this process revokes or changes something,
//! and within one poll (a quarter second) when another process sharing the
//! database does, through the `invalidations` table. The cache is only
//! trusted while those polls keep succeeding: once the last good poll is older
//! than [`TRUST_FOR_MS`], every lookup misses and goes to the database (and
//! its breaker), so a stalled poller can never let a revoked session through.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::model::{ActiveSession, Invalidation, User};

/// How long after a successful poll the cache may answer on its own.
pub const TRUST_FOR_MS: i64 = 1_000;

/// Entries kept per map; a full map is emptied and refilled on demand.
const CAPACITY: usize = 100_000;

#[derive(Default)]
pub struct SessionCache {
    sessions: RwLock<HashMap<String, ActiveSession>>,
    users: RwLock<HashMap<String, User>>,
    /// Bumped by every invalidation; a lookup that started in an older epoch
    /// may not store what it read, since it may predate the change.
    epoch: AtomicU64,
    /// Unix ms until which cached entries may be trusted.
    trusted_until: AtomicI64,
    /// Where the poller left off in the invalidation log (survives actor restarts).
    cursor: AtomicI64,
}

impl SessionCache {
    fn trusted(&self, now: i64) -> bool {
        now < self.trusted_until.load(Ordering::Acquire)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn session(&self, session_id: &str, now: i64) -> Option<ActiveSession> {
        if !self.trusted(now) {
            return None;
        }
        self.sessions
            .read()
            .get(session_id)
            .filter(|s| s.expires_at > now)
            .cloned()
    }

    pub fn user(&self, user_id: &str, now: i64) -> Option<User> {
        if !self.trusted(now) {
            return None;
        }
        self.users.read().get(user_id).cloned()
    }

    /// Stores what a lookup that began in `epoch` read, unless something was invalidated since.
    pub fn put_session(&self, session: ActiveSession, epoch: u64) {
        let mut sessions = self.sessions.write();
        if self.epoch() == epoch {
            if sessions.len() >= CAPACITY {
                sessions.clear();
            }
            sessions.insert(session.session_id.clone(), session);
        }
    }

    pub fn put_user(&self, user: User, epoch: u64) {
        let mut users = self.users.write();
        if self.epoch() == epoch {
            if users.len() >= CAPACITY {
                users.clear();
            }
            users.insert(user.id.clone(), user);
        }
    }

    /// Drops what `change` makes stale: one session, or a user and all their sessions.
    pub fn invalidate(&self, change: &Invalidation) {
        // Lock both maps first so no insert of the old epoch can slip in between.
        let mut sessions = self.sessions.write();
        let mut users = self.users.write();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        match &change.session_id {
            Some(id) => {
                sessions.remove(id);
            }
            None => {
                sessions.retain(|_, s| s.user_id != change.user_id);
            }
        }
        users.remove(&change.user_id);
    }

    /// A poll that started at `started` succeeded.
    pub fn polled(&self, started: i64, cursor: i64) {
        self.cursor.store(cursor, Ordering::Release);
        self.trusted_until
            .fetch_max(started.saturating_add(TRUST_FOR_MS), Ordering::AcqRel);
    }

    pub fn cursor(&self) -> i64 {
        self.cursor.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, user: &str) -> ActiveSession {
        ActiveSession {
            session_id: id.into(),
            user_id: user.into(),
            expires_at: 10_000,
        }
    }

    #[test]
    fn untrusted_until_polled_and_again_when_polls_stop() {
        let c = SessionCache::default();
        c.put_session(session("s1", "u1"), c.epoch());
        assert!(c.session("s1", 0).is_none(), "never polled");
        c.polled(100, 1);
        assert!(c.session("s1", 500).is_some());
        assert!(
            c.session("s1", 100 + TRUST_FOR_MS).is_none(),
            "poll too old"
        );
        assert!(c.session("s1", 9_999).is_none());
    }

    #[test]
    fn expired_sessions_miss() {
        let c = SessionCache::default();
        c.polled(9_500, 1);
        c.put_session(session("s1", "u1"), c.epoch());
        assert!(c.session("s1", 9_999).is_some());
        c.polled(10_000, 1);
        assert!(c.session("s1", 10_000).is_none());
    }

    #[test]
    fn invalidation_drops_entries_and_refuses_stale_inserts() {
        let c = SessionCache::default();
        c.polled(0, 1);
        let before = c.epoch();
        for (s, u) in [("s1", "u1"), ("s2", "u1"), ("s3", "u2")] {
            c.put_session(session(s, u), before);
        }
        c.invalidate(&Invalidation {
            user_id: "u1".into(),
            session_id: Some("s1".into()),
        });
        assert!(c.session("s1", 1).is_none());
        assert!(c.session("s2", 1).is_some());
        // A lookup that read the database before the revocation must not resurrect it.
        c.put_session(session("s1", "u1"), before);
        assert!(c.session("s1", 1).is_none());
        c.invalidate(&Invalidation {
            user_id: "u1".into(),
            session_id: None,
        });
        assert!(c.session("s2", 1).is_none());
        assert!(c.session("s3", 1).is_some());
    }
}
