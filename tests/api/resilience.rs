//! The database breaker against a real fault: a second connection holding
//! the lock writers need (SQLite's write lock, or an exclusive lock on
//! PostgreSQL's users table), so calls fail after the busy or statement timeout.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{PASSWORD, Reply, Server};

/// Repeats `attempt` every 50 ms while `again` holds, for at most five seconds.
async fn retry_while<F, Fut>(mut attempt: F, again: impl Fn(&Reply) -> bool) -> Reply
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = attempt().await;
        if !again(&reply) || std::time::Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn breaker(s: &Server) -> Value {
    let r = s.get("/api/v1/monitoring/circuit-breakers", None).await;
    r.ok(200);
    r.body["circuit_breakers"]["database"].clone()
}

async fn transitions(s: &Server) -> Vec<(String, String)> {
    s.settled_logs()
        .await
        .into_iter()
        .filter(|l| l["event"] == "breaker.transition")
        .map(|l| {
            (
                l["from"].as_str().unwrap().to_owned(),
                l["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn assert_security_headers(r: &Reply) {
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{}",
        r.text
    );
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert!(r.header("x-request-id").is_some());
}

#[tokio::test]
async fn a_locked_database_opens_the_breaker_and_it_recovers_through_half_open() {
    let s = Server::builder()
        .env("GATEHOUSE__DATABASE__BUSY_TIMEOUT_MS", 200)
        .env("GATEHOUSE__DATABASE__STATEMENT_TIMEOUT_MS", 200)
        .env("GATEHOUSE__CIRCUIT_BREAKER__DATABASE__FAILURE_THRESHOLD", 3)
        .env(
            "GATEHOUSE__CIRCUIT_BREAKER__DATABASE__RESET_TIMEOUT_MS",
            800,
        )
        .start();
    let (token, _) = s.user("before").await;
    s.get("/api/v1/users/me", Some(&token)).await.ok(200);
    let (cold, _) = s.user("cold").await;
    assert_eq!(breaker(&s).await["state"], "closed");

    let lock = s.dir.hold_write_lock();
    for i in 0..3 {
        let r = s.register(&format!("blocked{i}")).await;
        r.expect(503, "SVC003");
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_security_headers(&r);
    }
    let open = breaker(&s).await;
    assert_eq!(open["state"], "open");
    assert_eq!(open["failure_count"], 3);
    assert!(
        open["last_failure"].is_string() && open["next_attempt"].is_string(),
        "{open}"
    );

    // Open: refused without touching the database, with a Retry-After.
    let r = s.register("fastfail").await;
    r.expect(503, "SVC001");
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().unwrap() >= 1)
    );
    assert_security_headers(&r);
    s.login("before", PASSWORD).await.expect(503, "SVC001");
    let health = s.get("/api/v1/monitoring/health", None).await;
    health.ok(200);
    assert_eq!(health.body["status"], "degraded");
    assert_eq!(health.body["circuit_breakers"]["database"], "open");
    // Reads are not blocked by the held write lock, and the invalidation log
    // is still being read: a session checked before keeps working from cache.
    s.get("/api/v1/users/me", Some(&token)).await.ok(200);
    // A session never checked before cannot be vouched for: it fails closed.
    s.get("/api/v1/users/me", Some(&cold))
        .await
        .expect(503, "SVC001");

    // Still locked after the reset timeout: the one trial fails and it re-opens.
    let trial = retry_while(|| s.register("trial"), |r| r.code() == "SVC001").await;
    trial.expect(503, "SVC003");
    let reopened = breaker(&s).await;
    assert_eq!(reopened["state"], "open");
    assert_ne!(reopened["next_attempt"], open["next_attempt"]);

    drop(lock);
    let recovered = retry_while(|| s.register("recovered"), |r| r.code() == "SVC001").await;
    recovered.ok(201);
    let closed = breaker(&s).await;
    assert_eq!(
        (closed["state"].clone(), closed["failure_count"].clone()),
        ("closed".into(), 0.into())
    );
    s.login("recovered", PASSWORD).await.ok(200);
    assert_eq!(
        s.get("/api/v1/monitoring/health", None).await.body["status"],
        "healthy"
    );

    let seen = transitions(&s).await;
    let expected = [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn half_open_admits_exactly_the_configured_trials_under_a_burst() {
    let s = Server::builder()
        .env("GATEHOUSE__DATABASE__BUSY_TIMEOUT_MS", 300)
        .env("GATEHOUSE__DATABASE__STATEMENT_TIMEOUT_MS", 300)
        .env("GATEHOUSE__CIRCUIT_BREAKER__DATABASE__FAILURE_THRESHOLD", 1)
        .env(
            "GATEHOUSE__CIRCUIT_BREAKER__DATABASE__RESET_TIMEOUT_MS",
            500,
        )
        .env(
            "GATEHOUSE__CIRCUIT_BREAKER__DATABASE__HALF_OPEN_MAX_CALLS",
            2,
        )
        .start();
    let _lock = s.dir.hold_write_lock();
    s.register("opener").await.expect(503, "SVC003");
    assert_eq!(breaker(&s).await["state"], "open");
    tokio::time::sleep(Duration::from_millis(600)).await;

    let s = &s;
    let burst = (0..100).map(|i| async move { s.register(&format!("burst{i}")).await });
    let replies = futures::future::join_all(burst).await;
    let count = |code: &str| replies.iter().filter(|r| r.code() == code).count();
    assert_eq!(
        count("SVC003"),
        2,
        "exactly the trials reached the database"
    );
    assert_eq!(count("SVC001"), 98);
    assert_eq!(breaker(s).await["state"], "open");
}
