//! What authenticated requests read instead of the database: active sessions
//! and user records, kept correct under revocation.
//!
//! The `UserRepo` creates a cache when it starts and publishes it; callers
//! reach it only through [`super::Repo`], which reads it, and only the
//! repository's own tasks put entries in or make them stale. Entries are put in by the repository's own reads, and
//! dropped the moment a write of this process revokes or changes something,
//! and within one poll (a quarter second) when another process sharing the
//! database does, through the invalidation log. The cache is only trusted
//! while those polls keep succeeding: once the last good poll is older than
//! [`TRUST_FOR_MS`], every lookup misses and goes to the database (and its
//! breaker), so a stalled poller can never let a revoked session through.
//! Entries also expire after [`MAX_AGE_MS`], which bounds what any gap in the
//! invalidation log could leave behind; a bounded concurrent cache (moka)
//! holds them, so a full cache evicts what is least used instead of emptying.
//!
//! Nothing is stored before the first poll has fixed where in the log this
//! process starts reading. A lookup made before that point may predate a
//! revocation that the first poll, starting from the log's end, never
//! reports; storing it would let a revoked session live on for a minute.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use moka::sync::Cache;

use crate::model::{ActiveSession, Invalidation, User};

/// How long after a successful poll the cache may answer on its own.
pub const TRUST_FOR_MS: i64 = 1_000;

/// How long an entry is used before it is read from the database again.
pub const MAX_AGE_MS: i64 = 60_000;

/// How often a session's `last_used_at` is written while it is in use.
pub const TOUCH_EVERY_MS: i64 = 60_000;

/// Entries kept per kind; beyond it the least used are evicted.
const CAPACITY: u64 = 250_000;

struct CachedSession {
    session: ActiveSession,
    cached_at: i64,
    /// The epoch its lookup began in.
    epoch: u64,
    /// When `last_used_at` was last written for this session.
    touched_at: AtomicI64,
}

#[derive(Clone)]
struct CachedUser {
    user: User,
    cached_at: i64,
    epoch: u64,
}

pub struct SessionCache {
    sessions: Cache<String, Arc<CachedSession>>,
    users: Cache<String, CachedUser>,
    /// Sessions invalidated lately, with the epoch it happened in: an entry
    /// whose lookup began in an earlier epoch is stale.
    revoked_sessions: Cache<String, u64>,
    /// Users whose every session (and whose record) was invalidated lately.
    revoked_users: Cache<String, u64>,
    /// Bumped by every invalidation.
    epoch: AtomicU64,
    /// Unix ms until which cached entries may be trusted.
    trusted_until: AtomicI64,
    /// The epoch that began when the first poll fixed where the log is read
    /// from (`u64::MAX` until then): lookups begun earlier may not store.
    seeded_at: AtomicU64,
}

impl Default for SessionCache {
    fn default() -> Self {
        Self {
            sessions: bounded(),
            users: bounded(),
            revoked_sessions: bounded(),
            revoked_users: bounded(),
            epoch: AtomicU64::new(0),
            trusted_until: AtomicI64::new(i64::MIN),
            seeded_at: AtomicU64::new(u64::MAX),
        }
    }
}

/// A map of at most [`CAPACITY`] entries, each kept at most [`MAX_AGE_MS`].
fn bounded<V: Clone + Send + Sync + 'static>() -> Cache<String, V> {
    let max_age = Duration::from_millis(u64::try_from(MAX_AGE_MS).unwrap_or(60_000));
    Cache::builder()
        .max_capacity(CAPACITY)
        .time_to_live(max_age)
        .build()
}

impl SessionCache {
    /// Whether the invalidation log was read recently enough to answer from cache.
    pub fn trusted(&self, now: i64) -> bool {
        now < self.trusted_until.load(Ordering::Acquire)
    }

    /// The epoch a lookup begins in; pass it to `put_*` with what it read.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether something cached in `epoch` outlived an invalidation of `key` in `revoked`.
    fn current(revoked: &Cache<String, u64>, key: &str, epoch: u64) -> bool {
        revoked.get(key).is_none_or(|at| epoch >= at)
    }

    /// Whether nothing at all was invalidated since a lookup began in
    /// `epoch` (every invalidation bumps the epoch): then no key can have
    /// been, and the lists of invalidations need not be searched.
    fn unchanged_since(&self, epoch: u64) -> bool {
        epoch >= self.epoch()
    }

    pub fn session(&self, session_id: &str, now: i64) -> Option<ActiveSession> {
        if !self.trusted(now) {
            return None;
        }
        let cached = self.sessions.get(session_id)?;
        let not_revoked = || {
            Self::current(&self.revoked_sessions, session_id, cached.epoch)
                && Self::current(&self.revoked_users, &cached.session.user_id, cached.epoch)
        };
        let fresh = cached.session.expires_at > now
            && now - cached.cached_at < MAX_AGE_MS
            && (self.unchanged_since(cached.epoch) || not_revoked());
        fresh.then(|| cached.session.clone())
    }

    pub fn user(&self, user_id: &str, now: i64) -> Option<User> {
        if !self.trusted(now) {
            return None;
        }
        self.users
            .get(user_id)
            .filter(|c| {
                now - c.cached_at < MAX_AGE_MS
                    && (self.unchanged_since(c.epoch)
                        || Self::current(&self.revoked_users, user_id, c.epoch))
            })
            .map(|c| c.user)
    }

    /// True, once a minute per cached session, when its `last_used_at` should be written.
    pub fn touch_due(&self, session_id: &str, now: i64) -> bool {
        self.sessions.get(session_id).is_some_and(|c| {
            let last = c.touched_at.load(Ordering::Acquire);
            now - last >= TOUCH_EVERY_MS
                && c.touched_at
                    .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
        })
    }

    /// Whether a lookup that began in `epoch` may store what it read: the log
    /// had been seeded when it began. (One that raced an invalidation may be
    /// stored; reads then find it older than the invalidation and ignore it.)
    fn storable(&self, epoch: u64) -> bool {
        epoch >= self.seeded_at.load(Ordering::Acquire)
    }

    /// Stores what a lookup that began in `epoch` read at `now`.
    pub fn put_session(&self, session: ActiveSession, epoch: u64, now: i64) {
        if self.storable(epoch) {
            let cached = CachedSession {
                epoch,
                cached_at: now,
                touched_at: AtomicI64::new(now),
                session,
            };
            self.sessions
                .insert(cached.session.session_id.clone(), Arc::new(cached));
        }
    }

    pub fn put_user(&self, user: User, epoch: u64, now: i64) {
        if self.storable(epoch) {
            let cached = CachedUser {
                cached_at: now,
                epoch,
                user,
            };
            self.users.insert(cached.user.id.clone(), cached);
        }
    }

    /// Makes stale what `change` touched: one session, or a user and all
    /// their sessions.
    pub fn invalidate(&self, change: &Invalidation) {
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        match &change.session_id {
            Some(id) => {
                self.revoked_sessions.insert(id.clone(), epoch);
                self.sessions.invalidate(id);
            }
            None => {
                self.revoked_users.insert(change.user_id.clone(), epoch);
                self.users.invalidate(&change.user_id);
            }
        }
    }

    /// A poll that started at `started` succeeded. The first one fixes where
    /// this process reads the log from: lookups begun before it must not
    /// store what they read.
    pub fn polled(&self, started: i64) {
        if self.seeded_at.load(Ordering::Acquire) == u64::MAX {
            let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
            self.seeded_at.store(epoch, Ordering::Release);
        }
        self.trusted_until
            .fetch_max(started.saturating_add(TRUST_FOR_MS), Ordering::AcqRel);
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

    fn user(id: &str) -> User {
        User {
            id: id.into(),
            email: "a@example.com".into(),
            username: "a".into(),
            is_active: true,
            email_verified: false,
            pending_email: None,
            mfa_enabled: false,
            roles: Vec::new(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn untrusted_until_polled_and_again_when_polls_stop() {
        let c = SessionCache::default();
        c.polled(100);
        c.put_session(session("s1", "u1"), c.epoch(), 0);
        assert!(c.session("s1", 500).is_some());
        assert!(
            c.session("s1", 100 + TRUST_FOR_MS).is_none(),
            "poll too old"
        );
    }

    /// The flap seen with two processes: a session read before this process's
    /// first poll, revoked elsewhere before that poll, whose invalidation the
    /// first poll (which starts from the log's end) never reports.
    #[test]
    fn nothing_read_before_the_first_poll_is_kept() {
        let c = SessionCache::default();
        let before = c.epoch();
        c.put_session(session("s1", "u1"), before, 0);
        c.polled(100);
        assert!(
            c.session("s1", 200).is_none(),
            "stored before the first poll"
        );
        c.put_session(session("s1", "u1"), before, 150);
        assert!(
            c.session("s1", 200).is_none(),
            "a lookup begun before the first poll completed"
        );
        c.put_user(user("u1"), before, 150);
        assert!(c.user("u1", 200).is_none());
        c.put_session(session("s1", "u1"), c.epoch(), 150);
        assert!(c.session("s1", 200).is_some(), "a lookup begun after it");
    }

    #[test]
    fn expired_sessions_miss() {
        let c = SessionCache::default();
        c.polled(9_500);
        c.put_session(session("s1", "u1"), c.epoch(), 9_000);
        assert!(c.session("s1", 9_999).is_some());
        c.polled(10_000);
        assert!(c.session("s1", 10_000).is_none());
    }

    #[test]
    fn invalidation_drops_entries_and_outlives_stale_inserts() {
        let c = SessionCache::default();
        c.polled(0);
        let before = c.epoch();
        for (s, u) in [("s1", "u1"), ("s2", "u1"), ("s3", "u2")] {
            c.put_session(session(s, u), before, 0);
        }
        c.put_user(user("u1"), before, 0);
        c.invalidate(&Invalidation {
            user_id: "u1".into(),
            session_id: Some("s1".into()),
        });
        assert!(c.session("s1", 1).is_none());
        assert!(c.session("s2", 1).is_some());
        assert!(
            c.user("u1", 1).is_some(),
            "one session does not change the user"
        );
        // A lookup that read the database before the revocation must not resurrect it.
        c.put_session(session("s1", "u1"), before, 0);
        assert!(c.session("s1", 1).is_none());
        c.invalidate(&Invalidation {
            user_id: "u1".into(),
            session_id: None,
        });
        assert!(c.session("s2", 1).is_none());
        assert!(c.user("u1", 1).is_none());
        assert!(c.session("s3", 1).is_some());
        c.put_session(session("s2", "u1"), before, 0);
        c.put_user(user("u1"), before, 0);
        assert!(c.session("s2", 1).is_none() && c.user("u1", 1).is_none());
        // What is read after the change may be stored.
        c.put_session(session("s2", "u1"), c.epoch(), 1);
        assert!(c.session("s2", 2).is_some());
    }

    #[test]
    fn entries_age_out_and_touches_are_rationed() {
        let long_lived = || ActiveSession {
            expires_at: i64::MAX,
            ..session("s1", "u1")
        };
        let c = SessionCache::default();
        c.polled(0);
        c.put_session(long_lived(), c.epoch(), 0);
        c.polled(MAX_AGE_MS - 500);
        assert!(c.session("s1", MAX_AGE_MS - 1).is_some());
        assert!(c.session("s1", MAX_AGE_MS).is_none(), "too old");
        assert!(!c.touch_due("s1", TOUCH_EVERY_MS - 1));
        assert!(c.touch_due("s1", TOUCH_EVERY_MS));
        assert!(
            !c.touch_due("s1", TOUCH_EVERY_MS + 1),
            "one writer per interval"
        );
        assert!(!c.touch_due("unknown", TOUCH_EVERY_MS));
    }
}
