//! The operator's view: monitoring routes, Prometheus, the monitoring token,
//! chaos kills with their restarts, security events, the OpenAPI document.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::harness::{PASSWORD, Server, eventually};

const ACTORS: [&str; 5] = [
    "rate_limiter",
    "breaker",
    "user_repo",
    "token_issuer",
    "metrics",
];

/// Prometheus text format → (series with labels, as written) → value.
fn scrape(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn metrics(s: &Server, token: Option<&str>) -> HashMap<String, f64> {
    let r = s.get("/metrics", token).await;
    r.ok(200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    scrape(&r.text)
}

#[tokio::test]
async fn monitoring_routes_answer_in_the_documented_shapes() {
    let s = Server::builder()
        .env("GATEHOUSE__RATE_LIMIT__ROUTES__LOGIN__LIMIT", 3)
        .start();
    s.register("watched").await.ok(201);
    s.login("watched", PASSWORD).await.ok(200);
    s.login("watched", "wrong password!")
        .await
        .expect(401, "AUTH001");
    s.login("watched", "wrong password!")
        .await
        .expect(401, "AUTH001");
    s.login("watched", PASSWORD).await.expect(429, "RATE001");

    let health = s.get("/api/v1/monitoring/health", None).await;
    health.ok(200);
    let h = &health.body;
    assert_eq!(h["status"], "healthy");
    assert!(h["timestamp"].is_string() && h["version"].is_string());
    assert!(h["uptime_s"].is_u64());
    assert_eq!(h["circuit_breakers"]["database"], "closed");
    for actor in ACTORS {
        assert_eq!(h["actors"][actor], "running", "{actor}");
    }

    let b = s
        .get("/api/v1/monitoring/circuit-breakers", None)
        .await
        .body;
    let db = &b["circuit_breakers"]["database"];
    assert_eq!(db["state"], "closed");
    assert_eq!(db["failure_count"], 0);
    assert!(
        db["last_failure"].is_null() && db["next_attempt"].is_null(),
        "{db}"
    );

    let m = s.get("/api/v1/monitoring/metrics", None).await;
    m.ok(200);
    let m = &m.body;
    assert!(m["uptime_s"].is_u64());
    assert!(m["requests_total"].as_u64().unwrap() >= 5, "{m}");
    for p in ["p50", "p95", "p99"] {
        assert!(m["latency_ms"][p].as_f64().unwrap() > 0.0, "{m}");
    }
    assert!(m["latency_ms"]["p50"].as_f64() <= m["latency_ms"]["p99"].as_f64());
    assert_eq!(m["logins"], json!({"success": 1, "failure": 2}));
    assert_eq!(m["registrations_total"], 1);
    assert_eq!(m["rate_limited_total"], 1);

    let a = s.get("/api/v1/monitoring/actors", None).await.body;
    for actor in ACTORS {
        let report = &a["actors"][actor];
        assert_eq!(report["status"], "running", "{actor}");
        assert_eq!(report["restarts"], 0);
        assert!(report["last_failure"].is_null());
    }
}

#[tokio::test]
async fn prometheus_series_use_route_templates_and_count_what_happens() {
    let s = Server::start();
    let (token, _) = s.user("scraped").await;
    let before = metrics(&s, None).await;
    s.login("scraped", PASSWORD).await.ok(200);
    s.login("scraped", "not it at all")
        .await
        .expect(401, "AUTH001");
    let path = "/api/v1/users/me/sessions/0190-not-a-session";
    s.send(s.request(Method::DELETE, path).bearer_auth(&token))
        .await
        .expect(404, "NOT001");
    s.get("/no/such/route", None).await.expect(404, "NOT001");
    let after = metrics(&s, None).await;

    let delta = |series: &str| {
        after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
    };
    assert_eq!(delta("gatehouse_logins_total{result=\"success\"}"), 1.0);
    assert_eq!(delta("gatehouse_logins_total{result=\"failure\"}"), 1.0);
    assert_eq!(
        delta(
            "gatehouse_http_requests_total{method=\"POST\",route=\"/api/v1/auth/login\",status=\"200\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(
            "gatehouse_http_requests_total{method=\"DELETE\",route=\"/api/v1/users/me/sessions/{id}\",status=\"404\"}"
        ),
        1.0
    );
    assert!(
        after
            .keys()
            .all(|k| !k.contains("0190-not-a-session") && !k.contains("/no/such/route"))
    );
    assert_eq!(after["gatehouse_registrations_total"], 1.0);
    assert_eq!(
        after["gatehouse_circuit_breaker_state{breaker=\"database\"}"],
        0.0
    );
    for actor in ACTORS {
        assert_eq!(
            after[&format!("gatehouse_actor_restarts_total{{actor=\"{actor}\"}}")],
            0.0
        );
    }
    let buckets = after
        .keys()
        .filter(|k| {
            k.starts_with("gatehouse_http_request_duration_seconds_bucket{")
                && k.contains("route=\"/api/v1/auth/login\"")
        })
        .count();
    assert!(buckets >= 10, "a latency histogram with buckets");
    assert!(after.contains_key("process_resident_memory_bytes"));
}

#[tokio::test]
async fn the_monitoring_token_guards_everything_but_health() {
    let s = Server::builder()
        .env("GATEHOUSE__MONITORING__TOKEN", "s3cret-monitoring-token")
        .env("GATEHOUSE__MONITORING__CHAOS", "true")
        .start();
    s.get("/api/v1/monitoring/health", None).await.ok(200);
    s.get("/api/v1/openapi.json", None).await.ok(200);
    for path in [
        "/api/v1/monitoring/circuit-breakers",
        "/api/v1/monitoring/metrics",
        "/api/v1/monitoring/actors",
        "/metrics",
    ] {
        s.get(path, None).await.expect(401, "AUTH002");
        s.get(path, Some("s3cret-monitoring-token-but-longer"))
            .await
            .expect(401, "AUTH002");
        s.get(path, Some("s3cret-monitoring-tokeN"))
            .await
            .expect(401, "AUTH002");
        s.get(path, Some("s3cret-monitoring-token")).await.ok(200);
    }
    let kill = "/api/v1/monitoring/actors/metrics/kill";
    s.send(s.request(Method::POST, kill))
        .await
        .expect(401, "AUTH002");
    s.send(
        s.request(Method::POST, kill)
            .bearer_auth("s3cret-monitoring-token"),
    )
    .await
    .ok(202);
}

#[tokio::test]
async fn the_kill_route_does_not_exist_without_chaos() {
    let s = Server::start();
    let r = s
        .send(s.request(Method::POST, "/api/v1/monitoring/actors/user_repo/kill"))
        .await;
    r.expect(404, "NOT001");
}

async fn restarts(s: &Server, actor: &str) -> (String, u64) {
    let a = s.get("/api/v1/monitoring/actors", None).await.body;
    let r = &a["actors"][actor];
    (
        r["status"].as_str().unwrap_or("").to_owned(),
        r["restarts"].as_u64().unwrap_or(0),
    )
}

#[tokio::test]
async fn every_actor_killed_is_restarted_and_the_flow_works_right_after() {
    let s = Server::builder()
        .env("GATEHOUSE__MONITORING__CHAOS", "true")
        .start();
    let unknown = s
        .send(s.request(Method::POST, "/api/v1/monitoring/actors/nobody/kill"))
        .await;
    unknown.expect(404, "NOT001");
    for actor in ACTORS {
        let path = format!("/api/v1/monitoring/actors/{actor}/kill");
        s.send(s.request(Method::POST, &path)).await.ok(202);
        let back = eventually(Duration::from_secs(1), || async {
            restarts(&s, actor).await == ("running".to_owned(), 1)
        })
        .await;
        assert!(back, "{actor}: {:?}", restarts(&s, actor).await);
    }
    let a = s.get("/api/v1/monitoring/actors", None).await.body;
    for actor in ACTORS {
        assert!(a["actors"][actor]["last_failure"].is_string(), "{actor}");
    }
    let m = metrics(&s, None).await;
    for actor in ACTORS {
        assert_eq!(
            m[&format!("gatehouse_actor_restarts_total{{actor=\"{actor}\"}}")],
            1.0,
            "{actor}"
        );
    }
    let logs = s.settled_logs().await;
    let restarted: BTreeSet<&str> = logs
        .iter()
        .filter(|l| l["event"] == "actor.restarted")
        .filter_map(|l| l["actor"].as_str())
        .collect();
    assert_eq!(restarted.len(), 5, "{restarted:?}");

    // The whole flow, right after.
    let (access, refresh) = s.user("survivor").await;
    s.get("/api/v1/users/me", Some(&access)).await.ok(200);
    let r = s
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": refresh}),
            None,
        )
        .await;
    r.ok(200);
    let fresh = r.body["access_token"].as_str().unwrap();
    s.send(
        s.request(Method::POST, "/api/v1/auth/logout")
            .bearer_auth(fresh),
    )
    .await
    .ok(204);
    s.get("/api/v1/users/me", Some(fresh))
        .await
        .expect(401, "AUTH004");
    assert_eq!(
        s.get("/api/v1/monitoring/health", None).await.body["status"],
        "healthy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_actors_under_a_burst_of_registrations_loses_no_acknowledged_write() {
    let s = Server::builder()
        .env("GATEHOUSE__MONITORING__CHAOS", "true")
        .start();
    let mut burst = Vec::new();
    for i in 0..60 {
        let request = s.http().post(s.url("/api/v1/auth/register")).json(&json!({
            "email": format!("chaos{i}@example.com"),
            "username": format!("chaos{i}"),
            "password": PASSWORD,
        }));
        burst.push(tokio::spawn(async move {
            (
                i,
                request
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0),
            )
        }));
        if i % 15 == 7 {
            for actor in [
                "user_repo",
                "breaker",
                "token_issuer",
                "rate_limiter",
                "metrics",
                "mailer",
            ] {
                let path = format!("/api/v1/monitoring/actors/{actor}/kill");
                s.send(s.request(Method::POST, &path)).await.ok(202);
            }
        }
    }
    let mut acknowledged = Vec::new();
    for handle in burst {
        let (i, status) = handle.await.unwrap();
        match status {
            201 => acknowledged.push(i),
            503 => {}
            other => panic!("chaos{i}: {other}"),
        }
    }
    assert!(!acknowledged.is_empty());
    for i in acknowledged {
        s.login(&format!("chaos{i}"), PASSWORD).await.ok(200);
    }
    // Work lost with a restarting actor never reached the database: the
    // breaker has nothing to count.
    let breakers = s
        .get("/api/v1/monitoring/circuit-breakers", None)
        .await
        .body;
    assert_eq!(
        breakers["circuit_breakers"]["database"]["failure_count"], 0,
        "{breakers}"
    );
    // And every actor ends up running again.
    let running = eventually(Duration::from_secs(5), || async {
        let actors = s.get("/api/v1/monitoring/actors", None).await.body;
        actors["actors"]
            .as_object()
            .is_some_and(|all| all.len() == 6 && all.values().all(|a| a["status"] == "running"))
    })
    .await;
    assert!(
        running,
        "{}",
        s.get("/api/v1/monitoring/actors", None).await.text
    );
}

#[tokio::test]
async fn a_burst_of_failures_from_one_address_is_flagged_once() {
    let s = Server::start();
    for i in 0..25 {
        s.login(&format!("guess{}", i % 4), "wrong password!")
            .await
            .expect(401, "AUTH001");
    }
    let found = eventually(Duration::from_secs(2), || async {
        s.settled_logs()
            .await
            .iter()
            .any(|l| l["event"] == "suspicious")
    })
    .await;
    assert!(found);
    let logs = s.settled_logs().await;
    let flagged: Vec<_> = logs.iter().filter(|l| l["event"] == "suspicious").collect();
    assert_eq!(flagged.len(), 1);
    assert_eq!(flagged[0]["ip"], "127.0.0.1");
    assert_eq!(flagged[0]["failures"], 20);
    assert_eq!(flagged[0]["distinct_logins"], 4);
    let failure = logs.iter().find(|l| l["event"] == "login.failure").unwrap();
    assert_eq!(failure["login"], "guess0");
    assert_eq!(failure["ip"], "127.0.0.1");
    assert_eq!(failure["reason"], "unknown_user");
}

/// The document lists what the router serves: the chaos-only routes only
/// while `monitoring.chaos` is on (then every row of the table), each with
/// its row's operation id.
#[tokio::test]
async fn the_openapi_document_covers_exactly_the_routes_served() {
    use gatehouse::http::router::Router;
    use gatehouse::routes::{KILL_ROUTE, ROUTES};

    for chaos in [false, true] {
        let s = Server::builder()
            .env("GATEHOUSE__MONITORING__CHAOS", chaos)
            .start();
        let r = s.get("/api/v1/openapi.json", None).await;
        r.ok(200);
        assert!(r.body["openapi"].as_str().unwrap().starts_with("3.1"));
        let documented: BTreeSet<(String, String)> = r.body["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| ["get", "put", "post", "delete", "patch"].contains(&k.as_str()))
                    .map(move |m| (path.clone(), m.to_uppercase()))
            })
            .collect();
        let served: BTreeSet<(String, String)> = Router::new(ROUTES, chaos)
            .unwrap()
            .served()
            .flat_map(|(template, methods)| {
                methods
                    .into_iter()
                    .map(move |m| (template.to_owned(), m.as_str().to_owned()))
            })
            .collect();
        assert_eq!(documented, served, "chaos = {chaos}");
        let kill = (KILL_ROUTE.to_owned(), "POST".to_owned());
        assert_eq!(documented.contains(&kill), chaos);
        if chaos {
            let table: BTreeSet<(String, String)> = ROUTES
                .iter()
                .map(|route| (route.template.to_owned(), route.method.as_str().to_owned()))
                .collect();
            assert_eq!(documented, table);
        }
        for route in ROUTES.iter().filter(|route| chaos || !route.chaos_only) {
            let method = route.method.as_str().to_lowercase();
            assert_eq!(
                r.body["paths"][route.template][&method]["operationId"],
                route.operation_id
            );
        }
    }
}
