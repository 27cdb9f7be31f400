//! Several instances sharing one database and one Redis behave as one
//! service; Redis failing is survived per `rate_limit.on_backend_failure`.
//! These tests use the machine's Redis on 127.0.0.1:6379 (each under a key
//! prefix of its own) or a private `redis-server` they can stop, and are
//! skipped, with a printed reason, when that is not there.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::harness::{Builder, DataDir, PASSWORD, PrivateRedis, Reply, Server, eventually};

fn shared(dir: &DataDir, redis_url: &str, prefix: &str) -> Builder {
    Server::builder()
        .dir(dir)
        .env("GATEHOUSE__RATE_LIMIT__BACKEND", "redis")
        .env("GATEHOUSE__RATE_LIMIT__REDIS_URL", redis_url)
        .env("GATEHOUSE__RATE_LIMIT__REDIS_PREFIX", prefix)
}

fn unique_prefix() -> String {
    format!("gatehouse-it:{}:", uuid::Uuid::new_v4().simple())
}

async fn bad_login(s: &Server, login: &str) -> Reply {
    s.login(login, "not the right password").await
}

#[tokio::test]
async fn two_instances_share_rate_limits_throttle_and_revocation() {
    gatehouse_testkit::require_redis!();
    let redis_url = gatehouse_testkit::redis_url();
    let dir = DataDir::new();
    let prefix = unique_prefix();
    let start = || {
        shared(&dir, &redis_url, &prefix)
            .env("GATEHOUSE__RATE_LIMIT__ROUTES__LOGIN__LIMIT", 6)
            .env("GATEHOUSE__AUTH__MAX_FAILED_LOGINS", 3)
            .start()
    };
    let (a, b) = (start(), start());

    // The login limit of 6 is spent alternately across both instances.
    for i in 0..6 {
        let s = if i % 2 == 0 { &a } else { &b };
        let r = bad_login(s, &format!("nobody{i}")).await;
        r.expect(401, "AUTH001");
        assert_eq!(
            r.header("ratelimit-remaining"),
            Some((5 - i).to_string().as_str())
        );
    }
    bad_login(&a, "nobody").await.expect(429, "RATE001");
    bad_login(&b, "nobody").await.expect(429, "RATE001");

    // The account throttle spans instances too (two more, with fresh IP windows).
    a.register("shared_user").await.ok(201);
    let other = unique_prefix();
    let start = || {
        shared(&dir, &redis_url, &other)
            .env("GATEHOUSE__AUTH__MAX_FAILED_LOGINS", 3)
            .start()
    };
    let (c, d) = (start(), start());
    bad_login(&c, "shared_user").await.expect(401, "AUTH001");
    bad_login(&d, "shared_user").await.expect(401, "AUTH001");
    bad_login(&c, "SHARED_USER").await.expect(401, "AUTH001");
    d.login("shared_user", PASSWORD)
        .await
        .expect(429, "AUTH006");

    // A logout through one instance is refused by the other.
    let (token, _) = c.user("roaming").await;
    d.get("/api/v1/users/me", Some(&token)).await.ok(200);
    c.send(
        c.request(Method::POST, "/api/v1/auth/logout")
            .bearer_auth(&token),
    )
    .await
    .ok(204);
    let refused = eventually(Duration::from_secs(1), || async {
        d.get("/api/v1/users/me", Some(&token)).await.code() == "AUTH004"
    })
    .await;
    assert!(refused);

    let breakers = a
        .get("/api/v1/monitoring/circuit-breakers", None)
        .await
        .body;
    assert_eq!(breakers["circuit_breakers"]["redis"]["state"], "closed");
    assert_eq!(breakers["circuit_breakers"]["database"]["state"], "closed");
}

async fn redis_breaker(s: &Server) -> Value {
    s.get("/api/v1/monitoring/circuit-breakers", None)
        .await
        .body["circuit_breakers"]["redis"]
        .clone()
}

#[tokio::test]
async fn losing_redis_is_survived_by_policy_and_limits_resume_when_it_returns() {
    gatehouse_testkit::require_redis_server!();
    let mut redis = PrivateRedis::start();
    let dir = DataDir::new();
    let s = shared(&dir, &redis.url(), "gatehouse:")
        .env("GATEHOUSE__RATE_LIMIT__ON_BACKEND_FAILURE", "allow")
        .env("GATEHOUSE__RATE_LIMIT__ROUTES__LOGIN__LIMIT", 2)
        .env("GATEHOUSE__CIRCUIT_BREAKER__REDIS__FAILURE_THRESHOLD", 2)
        .env("GATEHOUSE__CIRCUIT_BREAKER__REDIS__RESET_TIMEOUT_MS", 300)
        .start();
    bad_login(&s, "x").await.expect(401, "AUTH001");
    bad_login(&s, "x").await.expect(401, "AUTH001");
    bad_login(&s, "x").await.expect(429, "RATE001");

    redis.stop();
    // allow: the service keeps answering, without limits and without limit headers.
    for _ in 0..4 {
        let r = bad_login(&s, "x").await;
        r.expect(401, "AUTH001");
        assert!(r.header("ratelimit-limit").is_none());
    }
    assert_eq!(redis_breaker(&s).await["state"], "open");
    let health = s.get("/api/v1/monitoring/health", None).await;
    assert_eq!(health.body["status"], "degraded");
    assert_eq!(health.body["circuit_breakers"]["redis"], "open");
    let metrics = s.get("/metrics", None).await.text;
    assert!(
        metrics.contains("gatehouse_circuit_breaker_state{breaker=\"redis\"} 2"),
        "{metrics}"
    );
    assert!(s.settled_logs().await.iter().any(|l| {
        l["level"] == "ERROR"
            && l["message"]
                .as_str()
                .unwrap_or("")
                .contains("rate limiting unavailable")
    }));

    redis.restart();
    // No restart of Gatehouse: the breaker closes and limits apply again
    // (the fresh Redis has forgotten the earlier window).
    let resumed = eventually(Duration::from_secs(5), || async {
        bad_login(&s, "x").await.header("ratelimit-limit") == Some("2")
    })
    .await;
    assert!(
        resumed,
        "limits did not resume: {:?}",
        redis_breaker(&s).await
    );
    assert_eq!(redis_breaker(&s).await["state"], "closed");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(bad_login(&s, "x").await.status.as_u16());
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
}

#[tokio::test]
async fn with_deny_an_unreachable_redis_refuses_limited_routes_only() {
    gatehouse_testkit::require_redis_server!();
    let mut redis = PrivateRedis::start();
    let dir = DataDir::new();
    let s = shared(&dir, &redis.url(), "gatehouse:")
        .env("GATEHOUSE__RATE_LIMIT__ON_BACKEND_FAILURE", "deny")
        .env("GATEHOUSE__CIRCUIT_BREAKER__REDIS__FAILURE_THRESHOLD", 2)
        .env(
            "GATEHOUSE__CIRCUIT_BREAKER__REDIS__RESET_TIMEOUT_MS",
            60_000,
        )
        .start();
    s.register("denied").await.ok(201);
    redis.stop();
    let first = bad_login(&s, "denied").await;
    first.expect(503, "SVC003");
    assert!(first.header("retry-after").is_some());
    bad_login(&s, "denied").await.expect(503, "SVC003");
    let open = bad_login(&s, "denied").await;
    open.expect(503, "SVC001");
    assert!(
        open.body["error"]["details"]
            .as_str()
            .unwrap()
            .contains("redis")
    );
    // Monitoring is never rate limited, so it keeps answering.
    let health = s.get("/api/v1/monitoring/health", None).await;
    assert_eq!(health.body["status"], "degraded");
}
