//! CORS, HSTS and connection hygiene: slow and idle clients.

use std::time::Duration;

use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::Server;

const APP: &str = "https://app.example.com";

fn with_cors() -> Server {
    Server::builder()
        .env(
            "GATEHOUSE__SECURITY__CORS_ALLOWED_ORIGINS",
            format!("[\"{APP}\"]"),
        )
        .env("GATEHOUSE__SECURITY__HSTS", "true")
        .start()
}

#[tokio::test]
async fn allowed_origins_get_cors_headers_and_others_none() {
    let s = with_cors();
    let (token, _) = s.user("corsuser").await;
    let from = |origin: &str| {
        s.request(Method::GET, "/api/v1/users/me")
            .bearer_auth(&token)
            .header("origin", origin)
    };
    let ok = s.send(from(APP)).await;
    ok.ok(200);
    assert_eq!(ok.header("access-control-allow-origin"), Some(APP));
    assert_eq!(ok.header("vary"), Some("Origin"));
    assert!(
        ok.header("strict-transport-security")
            .unwrap()
            .starts_with("max-age=")
    );

    let other = s.send(from("https://evil.example.com")).await;
    other.ok(200);
    assert!(other.header("access-control-allow-origin").is_none());

    // Errors carry the CORS headers too, so browsers can read them.
    let err = s
        .send(
            s.request(Method::GET, "/api/v1/users/me")
                .header("origin", APP),
        )
        .await;
    err.expect(401, "AUTH002");
    assert_eq!(err.header("access-control-allow-origin"), Some(APP));
}

#[tokio::test]
async fn preflight_is_answered_for_allowed_origins_only() {
    let s = with_cors();
    let preflight = |origin: &str| {
        s.request(Method::OPTIONS, "/api/v1/auth/login")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
    };
    let ok = s.send(preflight(APP)).await;
    ok.ok(204);
    assert_eq!(ok.header("access-control-allow-origin"), Some(APP));
    assert_eq!(ok.header("access-control-allow-methods"), Some("POST"));
    assert!(
        ok.header("access-control-allow-headers")
            .unwrap()
            .contains("Content-Type")
    );

    let refused = s.send(preflight("https://evil.example.com")).await;
    refused.expect(405, "REQ004");
    assert!(refused.header("access-control-allow-origin").is_none());
    assert!(refused.header("access-control-allow-methods").is_none());
}

/// Sends the start of a request and never finishes its headers.
async fn half_open(s: &Server) -> TcpStream {
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(b"GET /api/v1/monitoring/health HTTP/1.1\r\nHost: gatehouse\r\nX-Slow: ")
        .await
        .unwrap();
    stream
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let s = Server::builder()
        .env("GATEHOUSE__SERVER__HEADER_READ_TIMEOUT_MS", 300)
        .start();
    let mut slow = half_open(&s).await;
    let mut buf = Vec::new();
    // The safety net is generous; the server closes after 300 ms.
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept a half-sent request open");
}

#[tokio::test]
async fn three_hundred_idle_half_open_connections_do_not_block_a_normal_request() {
    let s = Server::builder()
        .env("GATEHOUSE__SERVER__HEADER_READ_TIMEOUT_MS", 20_000)
        .start();
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(half_open(&s).await);
    }
    let r = s.get("/api/v1/monitoring/health", None).await;
    r.ok(200);
    s.register("notblocked").await.ok(201);
    drop(idle);
}
