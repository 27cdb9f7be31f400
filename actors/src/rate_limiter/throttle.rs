//! The per-account login throttle: after `max_failures` failed logins for one
//! account, it is locked for `lockout_ms`.
//!
//! Attempts are counted as they start, so parallel guesses cannot overtake
//! the limit, and given back when they end without a verdict (the database
//! failed, the client left), so outages do not lock accounts. A success
//! forgives the count. Keys are digests of a [`ThrottleKey`], so neither the
//! length nor the content of a login name is what is stored.

use sha2::{Digest, Sha256};

use super::shards::Sharded;
use crate::clock;

/// What the throttle counts failures against: the account, when the login
/// name is one of its names (its username and its email then share one
/// count), else the name as typed, so that unknown names are throttled like
/// real ones and the answers reveal nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleKey(String);

impl ThrottleKey {
    pub fn account(user_id: &str) -> Self {
        Self(format!("account:{user_id}"))
    }

    /// An unknown login name, already normalized.
    pub fn name(login: &str) -> Self {
        Self(format!("name:{login}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What is stored for it: a fixed-size digest.
    pub fn digest(&self) -> NameKey {
        let digest = Sha256::digest(self.0.as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        key
    }
}

/// A throttle key as stored.
pub type NameKey = [u8; 16];

/// The throttle's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleRule {
    pub max_failures: u32,
    pub lockout_ms: i64,
}

/// What a login attempt may do, as the throttle sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptDecision {
    Allowed,
    /// Locked; `first` is true for the first refusal of this lock (log it once).
    Locked {
        retry_after_s: u64,
        first: bool,
    },
}

/// Failed-login bookkeeping for one key.
#[derive(Debug, Clone, Copy, Default)]
struct Strikes {
    /// Attempts since the last success, counted as they start.
    attempts: u32,
    locked_until: Option<i64>,
    /// Whether the lock in force has been logged as `account.throttled`.
    announced: bool,
    last_seen: i64,
}

impl Strikes {
    fn locked_at(&self, now: i64) -> bool {
        self.locked_until.is_some_and(|until| until > now)
    }
}

/// Every key's strikes, in this process.
pub struct Throttle {
    rule: ThrottleRule,
    strikes: Sharded<NameKey, Strikes>,
}

impl Throttle {
    pub fn new(rule: ThrottleRule, max_keys: usize) -> Self {
        Self {
            rule,
            strikes: Sharded::new(max_keys),
        }
    }

    /// Starts a login attempt against `key`. At the key cap the least
    /// recently seen names are forgotten, but never a locked one, or flooding
    /// new names would lift a lock; locks need no cap of their own, since each
    /// costs `max_failures` verified passwords, and hashing throughput bounds
    /// how many can be alive within one lockout.
    pub fn attempt(&mut self, key: &ThrottleKey, now: i64) -> AttemptDecision {
        let rule = self.rule;
        let idle = now.saturating_sub(rule.lockout_ms);
        let entry = self
            .strikes
            .entry(
                key.digest(),
                |_, s| s.locked_at(now) || s.last_seen > idle,
                |s| s.last_seen,
                |s| s.locked_at(now),
            )
            .or_default();
        entry.last_seen = now;
        match entry.locked_until {
            Some(until) if now < until => {
                let first = !entry.announced;
                entry.announced = true;
                return AttemptDecision::Locked {
                    retry_after_s: clock::seconds_until(now, until),
                    first,
                };
            }
            Some(_) => {
                *entry = Strikes {
                    last_seen: now,
                    ..Strikes::default()
                }
            }
            None => {}
        }
        entry.attempts += 1;
        if entry.attempts >= rule.max_failures {
            entry.locked_until = Some(now.saturating_add(rule.lockout_ms));
        }
        AttemptDecision::Allowed
    }

    /// Until when `key` is locked, if it is at `now`.
    pub fn locked_until(&self, key: &ThrottleKey, now: i64) -> Option<i64> {
        self.strikes
            .get(&key.digest())
            .and_then(|s| s.locked_until)
            .filter(|&until| until > now)
    }

    /// A login counted against `key` succeeded: its failures are forgiven.
    pub fn succeeded(&mut self, key: &ThrottleKey) {
        self.strikes.remove(&key.digest());
    }

    /// An attempt ended without a verdict on the password: it stops counting,
    /// and a lock it caused that nobody has been refused by yet is lifted.
    pub fn release(&mut self, key: &ThrottleKey) {
        let max = self.rule.max_failures;
        if let Some(entry) = self.strikes.get_mut(&key.digest()) {
            entry.attempts = entry.attempts.saturating_sub(1);
            if entry.attempts < max && !entry.announced {
                entry.locked_until = None;
            }
        }
    }

    /// Forgets, in one shard, names idle for a lockout and not locked.
    pub fn sweep(&mut self, shard: usize, now: i64) {
        let idle = now.saturating_sub(self.rule.lockout_ms);
        self.strikes
            .retain_shard(shard, |_, s| s.locked_at(now) || s.last_seen > idle);
    }

    pub fn tracked(&self) -> usize {
        self.strikes.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> ThrottleRule {
        ThrottleRule {
            max_failures: 3,
            lockout_ms: 300_000,
        }
    }

    fn key(name: &str) -> ThrottleKey {
        ThrottleKey::name(name)
    }

    #[test]
    fn locks_after_max_failures_and_success_resets() {
        let mut t = Throttle::new(rule(), 100);
        let alice = key("alice");
        for _ in 0..3 {
            assert_eq!(t.attempt(&alice, 0), AttemptDecision::Allowed);
        }
        assert_eq!(
            t.attempt(&alice, 1_000),
            AttemptDecision::Locked {
                retry_after_s: 299,
                first: true
            }
        );
        assert_eq!(
            t.attempt(&alice, 2_000),
            AttemptDecision::Locked {
                retry_after_s: 298,
                first: false
            }
        );
        assert_eq!(t.attempt(&key("bob"), 2_000), AttemptDecision::Allowed);
        // After the lockout the name starts afresh.
        assert_eq!(t.attempt(&alice, 300_000), AttemptDecision::Allowed);
        assert_eq!(t.attempt(&alice, 300_001), AttemptDecision::Allowed);
        t.succeeded(&alice);
        for _ in 0..3 {
            assert_eq!(t.attempt(&alice, 300_002), AttemptDecision::Allowed);
        }
        assert!(matches!(
            t.attempt(&alice, 300_003),
            AttemptDecision::Locked { .. }
        ));
    }

    #[test]
    fn an_account_and_a_name_are_different_keys() {
        let mut t = Throttle::new(rule(), 100);
        for _ in 0..3 {
            t.attempt(&ThrottleKey::account("u1"), 0);
        }
        assert!(matches!(
            t.attempt(&ThrottleKey::account("u1"), 1),
            AttemptDecision::Locked { .. }
        ));
        assert_eq!(
            t.attempt(&ThrottleKey::name("u1"), 1),
            AttemptDecision::Allowed
        );
    }

    #[test]
    fn sweep_and_cap_bound_memory() {
        let mut t = Throttle::new(rule(), 1_000);
        for i in 0..2_000 {
            t.attempt(&key(&format!("user{i}")), 0);
        }
        assert!(t.tracked() <= 1_100, "{}", t.tracked());
        for shard in 0..super::super::shards::SHARDS {
            t.sweep(shard, 300_001);
        }
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn flooding_new_names_never_lifts_a_lock() {
        let mut t = Throttle::new(rule(), 100);
        let victim = key("victim");
        for _ in 0..3 {
            t.attempt(&victim, 0);
        }
        for i in 0..5_000 {
            t.attempt(&key(&format!("flood{i}")), 1 + i64::from(i));
        }
        assert!(t.tracked() <= 200, "{}", t.tracked());
        assert!(matches!(
            t.attempt(&victim, 10_000),
            AttemptDecision::Locked { .. }
        ));
        // Once it has run out, the lock goes like any idle name.
        for shard in 0..super::super::shards::SHARDS {
            t.sweep(shard, 310_001);
        }
        assert_eq!(t.attempt(&victim, 310_001), AttemptDecision::Allowed);
    }

    #[test]
    fn attempts_without_a_verdict_are_given_back() {
        let mut t = Throttle::new(rule(), 100);
        let carol = key("carol");
        for _ in 0..3 {
            assert_eq!(t.attempt(&carol, 0), AttemptDecision::Allowed);
        }
        // The third attempt locked the name provisionally; it never got a verdict.
        t.release(&carol);
        assert_eq!(t.attempt(&carol, 1), AttemptDecision::Allowed);
        assert!(matches!(
            t.attempt(&carol, 2),
            AttemptDecision::Locked { first: true, .. }
        ));
        // Once somebody was refused, the lock stands.
        t.release(&carol);
        assert!(matches!(
            t.attempt(&carol, 3),
            AttemptDecision::Locked { .. }
        ));
        t.release(&key("nobody-at-all"));
    }

    #[test]
    fn keys_have_a_fixed_size_whatever_the_name() {
        let mut t = Throttle::new(rule(), 100);
        t.attempt(&key(&"x".repeat(60_000)), 0);
        assert_eq!(std::mem::size_of::<NameKey>(), 16);
        assert_eq!(t.tracked(), 1);
    }
}
