//! Finding 8: when Redis cannot be reached, the default policy (`local`)
//! falls back to this instance's in-memory limits and throttle, never to none.
//! Each test runs a private `redis-server`; skipped, with a printed reason,
//! where that is not installed.

use crate::harness::{Builder, PASSWORD, PrivateRedis, Server};

fn on_redis(redis: &PrivateRedis) -> Builder {
    super::server()
        .env("GATEHOUSE__RATE_LIMIT__BACKEND", "redis")
        .env("GATEHOUSE__RATE_LIMIT__REDIS_URL", redis.url())
}

/// Three logins pass, the fourth is refused by the in-memory limit.
async fn login_limit_holds_locally(s: &Server) {
    for i in 0..3 {
        s.login(&format!("nobody{i}"), "wrong password")
            .await
            .expect(401, "AUTH001");
    }
    let refused = s.login("nobody3", "wrong password").await;
    refused.expect(429, "RATE001");
    for header in ["retry-after", "ratelimit-remaining", "ratelimit-reset"] {
        assert!(
            refused.header(header).is_some(),
            "{header} missing: {:?}",
            refused.headers
        );
    }
    assert_eq!(refused.header("ratelimit-limit"), Some("3"));
}

#[tokio::test]
async fn without_redis_the_default_keeps_rate_limits_locally() {
    gatehouse_testkit::require_redis_server!();
    let mut redis = PrivateRedis::start();
    let s = on_redis(&redis)
        .env("GATEHOUSE__RATE_LIMIT__ROUTES__LOGIN__LIMIT", 3)
        .env("GATEHOUSE__AUTH__MAX_FAILED_LOGINS", 2)
        .start();
    redis.stop();
    login_limit_holds_locally(&s).await;
}

#[tokio::test]
async fn without_redis_the_default_keeps_the_account_throttle_locally() {
    gatehouse_testkit::require_redis_server!();
    let mut redis = PrivateRedis::start();
    let s = on_redis(&redis)
        .env("GATEHOUSE__AUTH__MAX_FAILED_LOGINS", 2)
        .start();
    s.register("throttled_local").await.ok(201);
    redis.stop();
    s.login("throttled_local", "wrong password")
        .await
        .expect(401, "AUTH001");
    s.login("throttled_local", "wrong password")
        .await
        .expect(401, "AUTH001");
    let locked = s.login("throttled_local", PASSWORD).await;
    locked.expect(429, "AUTH006");
    assert!(locked.header("retry-after").is_some());
}

#[tokio::test]
async fn on_backend_failure_local_is_accepted_explicitly() {
    gatehouse_testkit::require_redis_server!();
    let mut redis = PrivateRedis::start();
    let s = on_redis(&redis)
        .env("GATEHOUSE__RATE_LIMIT__ON_BACKEND_FAILURE", "local")
        .env("GATEHOUSE__RATE_LIMIT__ROUTES__LOGIN__LIMIT", 3)
        .start();
    redis.stop();
    login_limit_holds_locally(&s).await;
}
