//! Micro-benchmarks of the per-request decisions: `cargo bench --bench micro`.
//!
//! Token sign and verify (HS256, EdDSA, ES256; first sight and seen before), the session-cache check an authenticated request
//! makes, one rate-limit decision and one circuit-breaker decision, through
//! the public API of `gatehouse-actors`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use gatehouse_actors::breaker::{BreakerId, BreakerSettings, CircuitBreaker, Outcome};
use gatehouse_actors::model::ActiveSession;
use gatehouse_actors::rate_limiter::window::Windows;
use gatehouse_actors::rate_limiter::{RouteClass, RouteLimit, RouteLimits};
use gatehouse_actors::sealing::Sealer;
use gatehouse_actors::token_issuer::keys::{self, SigningAlgorithm, StoredKey};
use gatehouse_actors::token_issuer::ring::{KeyInfo, KeyState};
use gatehouse_actors::token_issuer::{AuthSettings, Grant, Signer, Verifier, from_ring, hs256};
use gatehouse_actors::user_repo::SessionCache;
use secrecy::{ExposeSecret, SecretString};

/// A fixed "now", in unix seconds and milliseconds.
const NOW_S: i64 = 1_770_000_000;
const NOW_MS: i64 = NOW_S * 1000;

/// A signer and verifier for `alg`, as the `TokenIssuer` builds them.
fn token_pair(alg: SigningAlgorithm) -> (Signer, Verifier) {
    let settings = AuthSettings::default();
    if alg == SigningAlgorithm::HS256 {
        let secret = SecretString::from("micro-benchmark-secret-0123456789abcdef");
        return hs256(&secret, &settings).expect("HS256 keys");
    }
    let sealer = Sealer::new(&SecretString::from("k".repeat(32)), "signing-keys").expect("sealer");
    let key = keys::generate(alg, &sealer).expect("a key");
    let stored = StoredKey {
        info: KeyInfo {
            kid: key.kid,
            alg: alg.name().into(),
            state: KeyState::Active,
            created_at: NOW_MS,
            activates_at: NOW_MS,
            retired_at: None,
        },
        public_jwk: key.public_jwk,
        sealed_private: key.sealed_private,
    };
    let (signer, verifier) = from_ring(alg, &[stored], &sealer, &settings).expect("ring keys");
    (signer.expect("an active key"), verifier)
}

fn tokens(c: &mut Criterion) {
    let grant = Grant {
        user_id: "0190f5a4-7b7e-7cc3-9d0e-2f6a1b3c4d5e".into(),
        session_id: "0190f5a4-8c1d-7aa2-8e3f-5b6c7d8e9f00".into(),
        auth_time: NOW_S,
        amr: vec!["pwd".into()],
        roles: Vec::new(),
    };
    let sign = |signer: &Signer| {
        signer
            .sign(&grant, NOW_S)
            .expect("a signed token")
            .token
            .expose_secret()
            .to_owned()
    };
    for alg in [
        SigningAlgorithm::HS256,
        SigningAlgorithm::EdDSA,
        SigningAlgorithm::ES256,
    ] {
        let (signer, verifier) = token_pair(alg);
        let name = alg.name();
        c.bench_function(&format!("token/{name}/sign"), |b| {
            b.iter(|| signer.sign(black_box(&grant), NOW_S))
        });
        // A token the verifier has not seen: signature and claims are checked.
        c.bench_function(&format!("token/{name}/verify first sight"), |b| {
            b.iter_batched(
                || sign(&signer),
                |token| verifier.verify(black_box(&token), NOW_S),
                BatchSize::SmallInput,
            )
        });
        // The same token again, as on every later request of a client.
        let token = sign(&signer);
        assert!(verifier.verify(&token, NOW_S).is_ok(), "the token verifies");
        c.bench_function(&format!("token/{name}/verify seen before"), |b| {
            b.iter(|| verifier.verify(black_box(&token), NOW_S))
        });
        let mut forged = token.into_bytes();
        let at = forged.len() - 10;
        forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).expect("ASCII");
        c.bench_function(&format!("token/{name}/verify bad signature"), |b| {
            b.iter(|| verifier.verify(black_box(&forged), NOW_S))
        });
    }
}

fn session_check(c: &mut Criterion) {
    let cache = SessionCache::default();
    // Trusted, as after a successful invalidation poll.
    cache.polled(NOW_MS);
    let epoch = cache.epoch();
    for i in 0..10_000 {
        cache.put_session(
            ActiveSession {
                session_id: format!("session-{i}"),
                user_id: format!("user-{i}"),
                expires_at: NOW_MS + 900_000,
            },
            epoch,
            NOW_MS,
        );
    }
    assert!(cache.session("session-42", NOW_MS + 1).is_some());
    c.bench_function("session_cache/hit (10k sessions)", |b| {
        b.iter(|| cache.session(black_box("session-4242"), NOW_MS + 1))
    });
    c.bench_function("session_cache/miss (10k sessions)", |b| {
        b.iter(|| cache.session(black_box("no-such-session"), NOW_MS + 1))
    });
}

fn limits(default_limit: u32) -> RouteLimits {
    RouteLimits {
        default: RouteLimit {
            limit: Some(default_limit),
            window_s: Some(60),
        },
        ..RouteLimits::default()
    }
}

fn rate_limit(c: &mut Criterion) {
    let client = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

    // One busy client, always allowed: the window slides by one hit per call.
    let mut limiter = Windows::new(limits(1_000_000), 250_000);
    let mut now = NOW_MS;
    c.bench_function("rate_limit/check allowed (one client)", |b| {
        b.iter(|| {
            now += 1;
            limiter.check(RouteClass::Default, black_box(client), now)
        })
    });

    // One client over its limit: refused.
    let mut limiter = Windows::new(limits(300), 250_000);
    for _ in 0..300 {
        limiter.check(RouteClass::Default, client, NOW_MS);
    }
    assert!(!limiter.check(RouteClass::Default, client, NOW_MS).allowed);
    c.bench_function("rate_limit/check refused (one client)", |b| {
        b.iter(|| limiter.check(RouteClass::Default, black_box(client), NOW_MS + 1))
    });

    // 100,000 distinct clients, in turn.
    let mut limiter = Windows::new(limits(300), 250_000);
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    let mut i = 0u32;
    c.bench_function("rate_limit/check (100k distinct clients)", |b| {
        b.iter(|| {
            i = (i + 1) % 100_000;
            let ip = IpAddr::V4(Ipv4Addr::from(base + i));
            limiter.check(RouteClass::Default, black_box(ip), NOW_MS + i64::from(i))
        })
    });
}

fn breaker(c: &mut Criterion) {
    let settings = BreakerSettings::default();
    let mut closed = CircuitBreaker::new(settings, 0);
    c.bench_function("breaker/admit+report closed", |b| {
        b.iter(|| {
            let (permit, _) = closed.admit(BreakerId::Database, NOW_MS);
            if let Ok(permit) = permit {
                closed.report(permit, Outcome::Success, NOW_MS);
            }
        })
    });

    let mut open = CircuitBreaker::new(settings, 0);
    for _ in 0..settings.failure_threshold {
        if let (Ok(permit), _) = open.admit(BreakerId::Database, NOW_MS) {
            open.report(permit, Outcome::Failure, NOW_MS);
        }
    }
    assert!(open.admit(BreakerId::Database, NOW_MS + 1).0.is_err());
    c.bench_function("breaker/admit open (fail fast)", |b| {
        b.iter(|| open.admit(BreakerId::Database, black_box(NOW_MS + 1)))
    });

    c.bench_function("breaker/open after threshold failures", |b| {
        b.iter_batched(
            || CircuitBreaker::new(settings, 0),
            |mut breaker| {
                for _ in 0..settings.failure_threshold {
                    if let (Ok(permit), _) = breaker.admit(BreakerId::Database, NOW_MS) {
                        breaker.report(permit, Outcome::Failure, NOW_MS);
                    }
                }
                breaker
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, tokens, session_check, rate_limit, breaker);
criterion_main!(benches);
