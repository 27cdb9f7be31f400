//! Bursts of failed logins from one address: [`SUSPICIOUS_FAILURES`] within
//! [`SUSPICION_WINDOW_MS`] is flagged once, with how many distinct login
//! names were tried. Always counted in this process, whatever the backend.

use std::collections::HashSet;
use std::net::IpAddr;

use super::shards::Sharded;
use super::throttle::{NameKey, ThrottleKey};
use super::window::bucket;

/// Failed logins from one address within [`SUSPICION_WINDOW_MS`] that make it suspicious.
pub const SUSPICIOUS_FAILURES: u32 = 20;
pub const SUSPICION_WINDOW_MS: i64 = 60_000;
/// Distinct names remembered per address and window.
const MAX_NAMES_COUNTED: usize = 100;

/// A burst of failed logins from one address, reported once per burst.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspicion {
    pub failures: u32,
    pub distinct_logins: usize,
}

/// Failed logins from one address within the current window.
#[derive(Debug, Default)]
struct Failures {
    count: u32,
    since: i64,
    names: HashSet<NameKey>,
    flagged: bool,
}

pub struct Bursts {
    failures: Sharded<IpAddr, Failures>,
}

impl Bursts {
    pub fn new(max_keys: usize) -> Self {
        Self {
            failures: Sharded::new(max_keys),
        }
    }

    /// A login of `login` (normalized) from `client` failed; says so once
    /// when that makes a burst.
    pub fn failed(&mut self, client: IpAddr, login: &str, now: i64) -> Option<Suspicion> {
        let entry = self
            .failures
            .entry(
                bucket(client),
                |_, f| current(f, now),
                |f| f.since,
                |_| false,
            )
            .or_default();
        if !current(entry, now) {
            *entry = Failures {
                since: now,
                ..Failures::default()
            };
        }
        entry.count += 1;
        if entry.names.len() < MAX_NAMES_COUNTED {
            entry.names.insert(ThrottleKey::name(login).digest());
        }
        if entry.count >= SUSPICIOUS_FAILURES && !entry.flagged {
            entry.flagged = true;
            return Some(Suspicion {
                failures: entry.count,
                distinct_logins: entry.names.len(),
            });
        }
        None
    }

    /// Forgets, in one shard, addresses whose window has passed.
    pub fn sweep(&mut self, shard: usize, now: i64) {
        self.failures.retain_shard(shard, |_, f| current(f, now));
    }
}

fn current(f: &Failures, now: i64) -> bool {
    now - f.since < SUSPICION_WINDOW_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn a_burst_of_failures_from_one_address_is_flagged_once() {
        let mut b = Bursts::new(100);
        for i in 0..SUSPICIOUS_FAILURES - 1 {
            assert_eq!(b.failed(IP, &format!("name{}", i % 3), 1_000), None);
        }
        let other: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(b.failed(other, "x", 1_000), None, "counted per address");
        let flagged = b.failed(IP, "name0", 2_000).unwrap();
        assert_eq!(
            flagged,
            Suspicion {
                failures: SUSPICIOUS_FAILURES,
                distinct_logins: 3
            }
        );
        assert_eq!(b.failed(IP, "name0", 3_000), None, "once per burst");
        // A new window starts a new count.
        let later = 1_000 + SUSPICION_WINDOW_MS;
        for _ in 0..SUSPICIOUS_FAILURES - 1 {
            assert_eq!(b.failed(IP, "again", later), None);
        }
        assert!(b.failed(IP, "again", later).is_some());
    }
}
