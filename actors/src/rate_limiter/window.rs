//! Per-client sliding windows: at most `limit` allowed requests of one route
//! class from one client in any `window_s`.
//!
//! The window is a true sliding log: a request is allowed when fewer than
//! `limit` allowed requests happened in the last `window_s`, so the bound holds
//! at every instant, with no fixed-window burst at boundaries. Refused
//! requests are not recorded. IPv6 clients count by their /64.

use std::collections::VecDeque;
use std::net::IpAddr;

use serde::Deserialize;

use super::shards::Sharded;
use crate::clock;
use crate::error::RateLimitInfo;

/// Which allowance a route draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    Login,
    Register,
    Refresh,
    Password,
    /// Routes that send mail: asking for a verification or reset link.
    Email,
    /// The second step of a login.
    Mfa,
    Default,
}

impl RouteClass {
    pub const ALL: [Self; 7] = [
        Self::Login,
        Self::Register,
        Self::Refresh,
        Self::Password,
        Self::Email,
        Self::Mfa,
        Self::Default,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Register => "register",
            Self::Refresh => "refresh",
            Self::Password => "password",
            Self::Email => "email",
            Self::Mfa => "mfa",
            Self::Default => "default",
        }
    }
}

/// One class's allowance; what is left out keeps the class's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimit {
    /// Requests allowed in any window.
    pub limit: Option<u32>,
    /// Window length in seconds.
    pub window_s: Option<u64>,
}

/// The `[rate_limit.routes]` table.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteLimits {
    pub login: RouteLimit,
    pub register: RouteLimit,
    pub refresh: RouteLimit,
    pub password: RouteLimit,
    pub email: RouteLimit,
    pub mfa: RouteLimit,
    pub default: RouteLimit,
}

impl RouteLimits {
    pub fn window(&self, class: RouteClass) -> Window {
        let (configured, default_limit, default_window_s) = match class {
            RouteClass::Login => (self.login, 5, 60),
            RouteClass::Register => (self.register, 3, 60),
            RouteClass::Refresh => (self.refresh, 30, 60),
            RouteClass::Password => (self.password, 5, 60),
            RouteClass::Mfa => (self.mfa, 10, 60),
            RouteClass::Email => (self.email, 5, 3_600),
            RouteClass::Default => (self.default, 300, 60),
        };
        let window_s = configured.window_s.unwrap_or(default_window_s);
        Window {
            limit: configured.limit.unwrap_or(default_limit),
            window_ms: clock::secs_to_ms(window_s),
        }
    }

    /// Every class with its allowance, for validation and documentation.
    pub fn all(&self) -> [(RouteClass, Window); RouteClass::ALL.len()] {
        RouteClass::ALL.map(|c| (c, self.window(c)))
    }
}

/// A sliding window: at most `limit` allowed requests in any `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u32,
    pub window_ms: i64,
}

impl Window {
    /// Decides one request at `now` against the times of earlier allowed
    /// requests, recording it when allowed. `Ok` and `Err` both carry the
    /// header values.
    pub fn decide(
        self,
        hits: &mut VecDeque<i64>,
        now: i64,
    ) -> std::result::Result<RateLimitInfo, RateLimitInfo> {
        let horizon = now.saturating_sub(self.window_ms);
        while hits.front().is_some_and(|&t| t <= horizon) {
            hits.pop_front();
        }
        let used = u32::try_from(hits.len()).unwrap_or(u32::MAX);
        let allowed = used < self.limit;
        if allowed {
            hits.push_back(now);
        }
        let used = used + u32::from(allowed);
        let info = RateLimitInfo {
            limit: self.limit,
            remaining: self.limit.saturating_sub(used),
            reset_s: hits.front().map_or(0, |&oldest| {
                clock::seconds_until(now, oldest.saturating_add(self.window_ms))
            }),
        };
        if allowed { Ok(info) } else { Err(info) }
    }
}

/// The outcome of counting one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Refused, and the first refusal since this client was last allowed:
    /// worth one log line, where the rest are not.
    pub first_refusal: bool,
    pub info: RateLimitInfo,
}

/// One client's recent allowed requests for one class.
#[derive(Debug, Default)]
struct Hits {
    times: VecDeque<i64>,
    /// The last decision was a refusal (so the next one is not the first).
    refusing: bool,
}

/// Every client's windows, in this process.
pub struct Windows {
    routes: RouteLimits,
    hits: Sharded<(IpAddr, RouteClass), Hits>,
}

impl Windows {
    pub fn new(routes: RouteLimits, max_keys: usize) -> Self {
        Self {
            routes,
            hits: Sharded::new(max_keys),
        }
    }

    pub fn check(&mut self, class: RouteClass, client: IpAddr, now: i64) -> Decision {
        let window = self.routes.window(class);
        let routes = self.routes;
        let hits = self
            .hits
            .entry(
                (bucket(client), class),
                |(_, class), h| live(h, routes.window(*class), now),
                last_hit,
                |_| false,
            )
            .or_default();
        let (allowed, info) = match window.decide(&mut hits.times, now) {
            Ok(info) => (true, info),
            Err(info) => (false, info),
        };
        let first_refusal = !allowed && !hits.refusing;
        hits.refusing = !allowed;
        Decision {
            allowed,
            first_refusal,
            info,
        }
    }

    /// Forgets, in one shard, windows with no hit inside them.
    pub fn sweep(&mut self, shard: usize, now: i64) {
        let routes = self.routes;
        self.hits
            .retain_shard(shard, |(_, class), h| live(h, routes.window(*class), now));
    }

    pub fn tracked(&self) -> usize {
        self.hits.count()
    }
}

fn live(hits: &Hits, window: Window, now: i64) -> bool {
    hits.times
        .back()
        .is_some_and(|&t| t > now.saturating_sub(window.window_ms))
}

fn last_hit(hits: &Hits) -> i64 {
    hits.times.back().copied().unwrap_or(i64::MIN)
}

/// The bucket a client address counts against: itself for IPv4, its /64 for
/// IPv6 (one subscriber usually holds a whole /64, so per-address buckets
/// would hand them millions of allowances).
pub fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn window(limit: u32, window_s: i64) -> Window {
        Window {
            limit,
            window_ms: window_s * 1000,
        }
    }

    #[test]
    fn allows_limit_then_refuses_and_reports_headers() {
        let w = window(3, 60);
        let mut hits = VecDeque::new();
        let r: Vec<_> = (0..4).map(|i| w.decide(&mut hits, i * 1000)).collect();
        assert_eq!(
            r[0],
            Ok(RateLimitInfo {
                limit: 3,
                remaining: 2,
                reset_s: 60
            })
        );
        assert_eq!(r[2].unwrap().remaining, 0);
        assert_eq!(
            r[3],
            Err(RateLimitInfo {
                limit: 3,
                remaining: 0,
                reset_s: 57
            })
        );
        assert_eq!(hits.len(), 3, "refused requests are not recorded");
    }

    #[test]
    fn no_double_burst_at_window_boundaries() {
        // Three at the very end of one minute: a fixed window would allow three
        // more at the start of the next.
        let w = window(3, 60);
        let mut hits = VecDeque::new();
        for t in [59_000, 59_500, 59_900] {
            assert!(w.decide(&mut hits, t).is_ok());
        }
        assert!(w.decide(&mut hits, 60_100).is_err());
        assert!(w.decide(&mut hits, 118_999).is_err());
        assert!(
            w.decide(&mut hits, 119_000).is_ok(),
            "the first hit left the window"
        );
        assert!(w.decide(&mut hits, 119_001).is_err());
    }

    /// Brute force: no interval of window length ever holds more than `limit` allowed hits.
    #[test]
    fn at_most_limit_in_any_window() {
        let w = window(5, 10);
        let mut hits = VecDeque::new();
        let mut allowed = Vec::new();
        let mut t = 0i64;
        for i in 0..2_000i64 {
            t += (i * 7919) % 1_300; // irregular gaps, some bursts
            if w.decide(&mut hits, t).is_ok() {
                allowed.push(t);
            }
        }
        for (i, &start) in allowed.iter().enumerate() {
            let inside = allowed[i..]
                .iter()
                .take_while(|&&x| x < start + w.window_ms)
                .count();
            assert!(inside <= 5, "{inside} hits in the window from {start}");
        }
        assert!(allowed.len() > 100);
    }

    #[test]
    fn classes_and_clients_are_separate_and_refusals_are_reported_once_per_run() {
        let mut l = Windows::new(RouteLimits::default(), 100);
        for _ in 0..5 {
            assert!(l.check(RouteClass::Login, IP, 0).allowed);
        }
        let refused = l.check(RouteClass::Login, IP, 0);
        assert!(!refused.allowed && refused.first_refusal);
        let again = l.check(RouteClass::Login, IP, 0);
        assert!(
            !again.allowed && !again.first_refusal,
            "logged once, not per request"
        );
        assert!(l.check(RouteClass::Register, IP, 0).allowed);
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.check(RouteClass::Login, other, 0).allowed);
        assert!(
            l.check(RouteClass::Login, IP, 60_000).allowed,
            "the window slid"
        );
        for _ in 0..4 {
            l.check(RouteClass::Login, IP, 60_000);
        }
        assert!(
            l.check(RouteClass::Login, IP, 60_000).first_refusal,
            "a new run is logged again"
        );
    }

    #[test]
    fn sweep_and_cap_bound_memory() {
        let mut l = Windows::new(RouteLimits::default(), 1_000);
        for i in 0..5_000u32 {
            let ip = IpAddr::V4(i.into());
            assert!(l.check(RouteClass::Default, ip, i64::from(i)).allowed);
        }
        assert!(l.tracked() <= 1_100, "{}", l.tracked());
        for shard in 0..super::super::shards::SHARDS {
            l.sweep(shard, 61_000 + 5_000);
        }
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(bucket(a), bucket(b));
        assert_ne!(bucket(a), bucket(other));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(bucket(mapped), IP);
        let mut l = Windows::new(RouteLimits::default(), 100);
        for _ in 0..5 {
            assert!(l.check(RouteClass::Login, a, 0).allowed);
        }
        assert!(
            !l.check(RouteClass::Login, b, 0).allowed,
            "a new address in the same /64"
        );
        assert!(l.check(RouteClass::Login, other, 0).allowed);
    }

    #[test]
    fn config_overrides_one_field_and_keeps_class_defaults() {
        let limits: RouteLimits = serde_json::from_str(r#"{"login": {"window_s": 30}}"#).unwrap();
        assert_eq!(
            limits.window(RouteClass::Login),
            Window {
                limit: 5,
                window_ms: 30_000
            }
        );
        assert_eq!(limits.window(RouteClass::Default).limit, 300);
        assert!(serde_json::from_str::<RouteLimits>(r#"{"logn": {}}"#).is_err());
    }
}
