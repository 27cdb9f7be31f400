//! Rate limits per client IP and route class, and the per-account login throttle.

use reqwest::Method;

use crate::harness::{PASSWORD, Reply, Server};

fn limited(class: &str, limit: u32, window_s: u32) -> crate::harness::Builder {
    Server::builder()
        .env(
            &format!("GATEHOUSE__RATE_LIMIT__ROUTES__{class}__LIMIT"),
            limit,
        )
        .env(
            &format!("GATEHOUSE__RATE_LIMIT__ROUTES__{class}__WINDOW_S"),
            window_s,
        )
}

async fn login_from(s: &Server, forwarded_for: Option<&str>) -> Reply {
    let mut r = s
        .request(Method::POST, "/api/v1/auth/login")
        .json(&serde_json::json!({"username": "nobody", "password": "whatever-it-is"}));
    if let Some(xff) = forwarded_for {
        r = r.header("x-forwarded-for", xff);
    }
    s.send(r).await
}

#[tokio::test]
async fn each_route_class_has_its_own_window_and_429_carries_the_headers() {
    let s = limited("LOGIN", 3, 60).start();
    for remaining in [2, 1, 0] {
        let r = login_from(&s, None).await;
        r.expect(401, "AUTH001");
        assert_eq!(r.header("ratelimit-limit"), Some("3"));
        assert_eq!(
            r.header("ratelimit-remaining"),
            Some(remaining.to_string().as_str())
        );
        assert!(r.header("ratelimit-reset").is_some());
    }
    let refused = login_from(&s, None).await;
    refused.expect(429, "RATE001");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    assert_eq!(refused.header("x-content-type-options"), Some("nosniff"));
    // Refusals do not count, other classes are untouched, monitoring is never limited.
    login_from(&s, None).await.expect(429, "RATE001");
    s.register("stillfine").await.ok(201);
    for _ in 0..10 {
        s.get("/api/v1/monitoring/health", None).await.ok(200);
    }
    let logs = s.settled_logs().await;
    let events = logs
        .iter()
        .filter(|l| l["event"] == "rate_limit.exceeded")
        .count();
    assert_eq!(
        events, 1,
        "one log event per run of refusals, not one per request"
    );
    let metrics = s.get("/metrics", None).await.text;
    assert!(
        metrics.contains("gatehouse_rate_limited_total{route=\"/api/v1/auth/login\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let s = limited("LOGIN", 2, 60).start();
    login_from(&s, Some("198.51.100.1"))
        .await
        .expect(401, "AUTH001");
    login_from(&s, Some("198.51.100.2"))
        .await
        .expect(401, "AUTH001");
    login_from(&s, Some("198.51.100.3"))
        .await
        .expect(429, "RATE001");
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_rightmost_untrusted_address_is_the_client() {
    let s = limited("LOGIN", 2, 60)
        .env(
            "GATEHOUSE__SERVER__TRUSTED_PROXIES",
            "[\"127.0.0.0/8\", \"10.0.0.0/8\"]",
        )
        .start();
    for _ in 0..2 {
        login_from(&s, Some("203.0.113.5"))
            .await
            .expect(401, "AUTH001");
    }
    login_from(&s, Some("203.0.113.5"))
        .await
        .expect(429, "RATE001");
    // Prepending a made-up address does not buy a new bucket...
    login_from(&s, Some("6.6.6.6, 203.0.113.5, 10.1.2.3"))
        .await
        .expect(429, "RATE001");
    // ...but a different real client has its own.
    login_from(&s, Some("203.0.113.6, 10.1.2.3"))
        .await
        .expect(401, "AUTH001");
}

async fn attempt(s: &Server, login: &str, password: &str) -> Reply {
    s.login(login, password).await
}

#[tokio::test]
async fn account_throttle_locks_known_and_unknown_names_alike() {
    let s = Server::builder()
        .env("GATEHOUSE__AUTH__MAX_FAILED_LOGINS", 3)
        .env("GATEHOUSE__AUTH__LOCKOUT_S", 120)
        .start();
    s.register("victim").await.ok(201);
    for name in ["victim", "ghost_user"] {
        for _ in 0..3 {
            attempt(&s, name, "wrong-password-guess")
                .await
                .expect(401, "AUTH001");
        }
        let locked = attempt(&s, name, PASSWORD).await;
        locked.expect(429, "AUTH006");
        let retry: u64 = locked.header("retry-after").unwrap().parse().unwrap();
        assert!((110..=120).contains(&retry), "{retry}");
    }
    // The lock is per name (case-insensitive), not per client.
    attempt(&s, "VICTIM", PASSWORD).await.expect(429, "AUTH006");
    s.register("bystander").await.ok(201);
    attempt(&s, "bystander", PASSWORD).await.ok(200);
    let events = s
        .settled_logs()
        .await
        .into_iter()
        .filter(|l| l["event"] == "account.throttled")
        .count();
    assert_eq!(events, 2, "one event per lock");
}

#[tokio::test]
async fn a_successful_login_resets_the_failure_count() {
    let s = Server::builder()
        .env("GATEHOUSE__AUTH__MAX_FAILED_LOGINS", 3)
        .start();
    s.register("forgetful").await.ok(201);
    for _ in 0..2 {
        attempt(&s, "forgetful", "wrong-password-guess")
            .await
            .expect(401, "AUTH001");
    }
    attempt(&s, "forgetful", PASSWORD).await.ok(200);
    for _ in 0..2 {
        attempt(&s, "forgetful", "wrong-password-guess")
            .await
            .expect(401, "AUTH001");
    }
    attempt(&s, "forgetful", PASSWORD).await.ok(200);
}

#[tokio::test]
async fn logins_cut_short_by_an_outage_do_not_lock_the_account() {
    let s = Server::builder()
        .env("GATEHOUSE__AUTH__MAX_FAILED_LOGINS", 2)
        .env("GATEHOUSE__DATABASE__BUSY_TIMEOUT_MS", 100)
        .env("GATEHOUSE__DATABASE__STATEMENT_TIMEOUT_MS", 100)
        .env(
            "GATEHOUSE__CIRCUIT_BREAKER__DATABASE__FAILURE_THRESHOLD",
            100,
        )
        .start();
    s.register("patient").await.ok(201);
    {
        let _outage = s.dir.hold_write_lock();
        for _ in 0..3 {
            attempt(&s, "patient", PASSWORD).await.expect(503, "SVC003");
        }
    }
    attempt(&s, "patient", PASSWORD).await.ok(200);
}
