//! What authenticated requests read instead of the database: active sessions
//! and user records, kept correct under revocation.
//!
//! Entries are dropped the moment this process revokes or changes something,
//! and within one poll (a quarter second) when another process sharing the
//! database does, through the `invalidations` table. The cache is only
//! trusted while those polls keep succeeding: once the last good poll is older
//! than [`TRUST_FOR_MS`], every lookup misses and goes to the database (and
//! its breaker), so a stalled poller can never let a revoked session through.
//! Entries also expire after [`MAX_AGE_MS`], which bounds what any gap in the
//! invalidation log could leave behind.
//!
//! Nothing is stored before the first poll has fixed where in the log this
//! process starts reading (its cursor). A lookup made before that point may
//! predate a revocation that the first poll, starting from the log's end, never
//! reports; storing it would let a revoked session live on for a minute.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::model::{ActiveSession, Invalidation, User};

/// How long after a successful poll the cache may answer on its own.
pub const TRUST_FOR_MS: i64 = 1_000;

/// How long an entry is used before it is read from the database again.
pub const MAX_AGE_MS: i64 = 60_000;

/// How often a session's `last_used_at` is written while it is in use.
pub const TOUCH_EVERY_MS: i64 = 60_000;

/// Entries kept per map; a full map is emptied and refilled on demand.
const CAPACITY: usize = 100_000;

struct CachedSession {
    session: ActiveSession,
    cached_at: i64,
    /// When `last_used_at` was last written for this session.
    touched_at: AtomicI64,
}

struct CachedUser {
    user: User,
    cached_at: i64,
}

pub struct SessionCache {
    sessions: RwLock<HashMap<String, CachedSession>>,
    users: RwLock<HashMap<String, CachedUser>>,
    /// Bumped by every invalidation; a lookup that started in an older epoch
    /// may not store what it read, since it may predate the change.
    epoch: AtomicU64,
    /// Unix ms until which cached entries may be trusted.
    trusted_until: AtomicI64,
    /// Where the poller left off in the invalidation log (survives actor
    /// restarts); negative until the first poll.
    cursor: AtomicI64,
}

impl Default for SessionCache {
    fn default() -> Self {
        Self {
            sessions: RwLock::default(),
            users: RwLock::default(),
            epoch: AtomicU64::new(0),
            trusted_until: AtomicI64::new(i64::MIN),
            cursor: AtomicI64::new(-1),
        }
    }
}

impl SessionCache {
    /// Whether the invalidation log was read recently enough to answer from cache.
    pub fn trusted(&self, now: i64) -> bool {
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
            .filter(|c| c.session.expires_at > now && now - c.cached_at < MAX_AGE_MS)
            .map(|c| c.session.clone())
    }

    pub fn user(&self, user_id: &str, now: i64) -> Option<User> {
        if !self.trusted(now) {
            return None;
        }
        self.users
            .read()
            .get(user_id)
            .filter(|c| now - c.cached_at < MAX_AGE_MS)
            .map(|c| c.user.clone())
    }

    /// True, once a minute per cached session, when its `last_used_at` should be written.
    pub fn touch_due(&self, session_id: &str, now: i64) -> bool {
        self.sessions.read().get(session_id).is_some_and(|c| {
            let last = c.touched_at.load(Ordering::Acquire);
            now - last >= TOUCH_EVERY_MS
                && c.touched_at
                    .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
        })
    }

    /// Whether a lookup that began in `epoch` may store what it read: the log
    /// had been seeded when it began, and nothing was invalidated since.
    fn storable(&self, epoch: u64) -> bool {
        self.cursor() >= 0 && self.epoch() == epoch
    }

    /// Stores what a lookup that began in `epoch` read at `now`, unless
    /// something was invalidated since (or the log was not yet being read).
    pub fn put_session(&self, session: ActiveSession, epoch: u64, now: i64) {
        let mut sessions = self.sessions.write();
        if self.storable(epoch) {
            if sessions.len() >= CAPACITY {
                sessions.clear();
            }
            let cached = CachedSession {
                session,
                cached_at: now,
                touched_at: AtomicI64::new(now),
            };
            sessions.insert(cached.session.session_id.clone(), cached);
        }
    }

    pub fn put_user(&self, user: User, epoch: u64, now: i64) {
        let mut users = self.users.write();
        if self.storable(epoch) {
            if users.len() >= CAPACITY {
                users.clear();
            }
            users.insert(
                user.id.clone(),
                CachedUser {
                    user,
                    cached_at: now,
                },
            );
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
                sessions.retain(|_, c| c.session.user_id != change.user_id);
            }
        }
        users.remove(&change.user_id);
    }

    /// A poll that started at `started` succeeded.
    pub fn polled(&self, started: i64, cursor: i64) {
        // The first poll fixes where this process reads the log from. A lookup
        // that began before it may have read a session revoked before that
        // point, which no poll will report: it must not be stored.
        let seeding = self.cursor() < 0;
        let _maps = seeding.then(|| (self.sessions.write(), self.users.write()));
        if seeding {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
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
        c.polled(100, 1);
        c.put_session(session("s1", "u1"), c.epoch(), 0);
        assert!(c.session("s1", 500).is_some());
        assert!(
            c.session("s1", 100 + TRUST_FOR_MS).is_none(),
            "poll too old"
        );
        assert!(c.session("s1", 9_999).is_none());
    }

    /// The flap seen with two processes: a session read before this process's
    /// first poll, revoked elsewhere before that poll, whose invalidation the
    /// first poll (which starts from the log's end) never reports.
    #[test]
    fn nothing_read_before_the_first_poll_is_kept() {
        let c = SessionCache::default();
        let before = c.epoch();
        c.put_session(session("s1", "u1"), before, 0);
        c.polled(100, 7);
        assert!(
            c.session("s1", 200).is_none(),
            "stored before the first poll"
        );
        c.put_session(session("s1", "u1"), before, 150);
        assert!(
            c.session("s1", 200).is_none(),
            "a lookup begun before the first poll completed"
        );
        c.put_session(session("s1", "u1"), c.epoch(), 150);
        assert!(c.session("s1", 200).is_some(), "a lookup begun after it");
        c.put_user(
            User {
                id: "u1".into(),
                email: "a@example.com".into(),
                username: "a".into(),
                is_active: true,
                created_at: 0,
                updated_at: 0,
            },
            before,
            150,
        );
        assert!(c.user("u1", 200).is_none());
    }

    #[test]
    fn expired_sessions_miss() {
        let c = SessionCache::default();
        c.polled(9_500, 1);
        c.put_session(session("s1", "u1"), c.epoch(), 9_000);
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
            c.put_session(session(s, u), before, 0);
        }
        c.invalidate(&Invalidation {
            user_id: "u1".into(),
            session_id: Some("s1".into()),
        });
        assert!(c.session("s1", 1).is_none());
        assert!(c.session("s2", 1).is_some());
        // A lookup that read the database before the revocation must not resurrect it.
        c.put_session(session("s1", "u1"), before, 0);
        assert!(c.session("s1", 1).is_none());
        c.invalidate(&Invalidation {
            user_id: "u1".into(),
            session_id: None,
        });
        assert!(c.session("s2", 1).is_none());
        assert!(c.session("s3", 1).is_some());
    }

    #[test]
    fn entries_age_out_and_touches_are_rationed() {
        let long_lived = || ActiveSession {
            expires_at: i64::MAX,
            ..session("s1", "u1")
        };
        let c = SessionCache::default();
        c.polled(0, 1);
        c.put_session(long_lived(), c.epoch(), 0);
        c.polled(MAX_AGE_MS - 500, 1);
        assert!(c.session("s1", MAX_AGE_MS - 1).is_some());
        assert!(c.session("s1", MAX_AGE_MS).is_none(), "too old");
        let c = SessionCache::default();
        c.polled(0, 1);
        c.put_session(long_lived(), c.epoch(), 0);
        assert!(!c.touch_due("s1", TOUCH_EVERY_MS - 1));
        assert!(c.touch_due("s1", TOUCH_EVERY_MS));
        assert!(
            !c.touch_due("s1", TOUCH_EVERY_MS + 1),
            "one writer per interval"
        );
        assert!(!c.touch_due("unknown", TOUCH_EVERY_MS));
    }
}
