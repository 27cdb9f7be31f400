//! Finding 11: `WWW-Authenticate` on every 401, `HEAD` wherever `GET`, no
//! submitted value or type name echoed in errors, a body that never comes
//! is 408 `REQ005` (not a logged server error).

use std::time::{Duration, Instant};

use reqwest::Method;
use tokio::io::AsyncReadExt;

use super::{head, raw_send, read_reply};
use crate::harness::{Reply, Server};

#[track_caller]
fn bearer_challenge(r: &Reply, token_sent: bool, what: &str) {
    assert_eq!(r.status.as_u16(), 401, "{what}: {}", r.text);
    let challenge = r
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: a 401 without WWW-Authenticate: {:?}", r.headers));
    assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
    assert_eq!(
        challenge.contains("error=\"invalid_token\""),
        token_sent,
        "{what}: {challenge}"
    );
}

#[tokio::test]
async fn every_401_carries_a_bearer_challenge() {
    let s = super::server().start();
    let wrong = s.login("nobody-at-all", "wrong password").await;
    wrong.expect(401, "AUTH001");
    bearer_challenge(&wrong, false, "wrong login");

    let missing = s.get("/api/v1/users/me", None).await;
    missing.expect(401, "AUTH002");
    bearer_challenge(&missing, false, "missing token");

    let garbage = s.get("/api/v1/users/me", Some("garbage")).await;
    garbage.expect(401, "AUTH002");
    bearer_challenge(&garbage, true, "garbage token");

    let (token, _) = s.user(&super::unique("chal")).await;
    s.send(
        s.request(Method::POST, "/api/v1/auth/logout")
            .bearer_auth(&token),
    )
    .await
    .ok(204);
    let revoked = s.get("/api/v1/users/me", Some(&token)).await;
    revoked.expect(401, "AUTH004");
    bearer_challenge(&revoked, true, "revoked session");
}

/// Sends a `HEAD` request and reads until the server closes: (status, headers, bytes after the head).
async fn raw_head(s: &Server, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = raw_send(s, head("HEAD", path, &[]).as_bytes()).await;
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all))
        .await
        .expect("the HEAD answer did not end")
        .expect("read");
    let at = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let text = String::from_utf8_lossy(&all[..at]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, all[at + 4..].to_vec())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn head_is_answered_wherever_get_is() {
    let s = super::server().start();
    // The health body holds the uptime, so its length may change between two
    // requests; a HEAD and a GET in a row agree almost always.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, headers, body) = raw_head(&s, "/api/v1/monitoring/health").await;
        let get = s.get("/api/v1/monitoring/health", None).await;
        let same = status == 200
            && body.is_empty()
            && header(&headers, "content-type") == get.header("content-type")
            && header(&headers, "content-length") == get.header("content-length")
            && header(&headers, "content-length").is_some();
        if same {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "HEAD {status} {headers:?} body {body:?}; GET {:?}",
            get.headers
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let me = s.send(s.request(Method::HEAD, "/api/v1/users/me")).await;
    assert_eq!(me.status.as_u16(), 401);
    assert!(
        me.header("www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer")),
        "{:?}",
        me.headers
    );

    let post = s
        .send(s.request(Method::POST, "/api/v1/monitoring/health"))
        .await;
    post.expect(405, "REQ004");
    let allow: Vec<String> = post
        .header("allow")
        .unwrap_or("")
        .split(',')
        .map(|m| m.trim().to_owned())
        .collect();
    assert!(
        allow.iter().any(|m| m == "GET") && allow.iter().any(|m| m == "HEAD"),
        "Allow: {allow:?}"
    );
}

const TYPE_NAMES: &[&str] = &[
    "RegisterBody",
    "LoginBody",
    "SecretString",
    "Option",
    "alloc::",
    "core::",
    "String",
];

#[track_caller]
fn echoes_nothing(r: &Reply, values: &[&str], what: &str) {
    assert!(
        r.status.is_client_error(),
        "{what}: {} {}",
        r.status,
        r.text
    );
    for needle in values.iter().chain(TYPE_NAMES) {
        assert!(
            !r.text.contains(needle),
            "{what}: the answer holds {needle:?}: {}",
            r.text
        );
    }
}

#[tokio::test]
async fn malformed_bodies_echo_no_value_and_no_type_name() {
    let s = super::server().start();
    let register = |body: &'static str| {
        s.send(
            s.request(Method::POST, "/api/v1/auth/register")
                .header("content-type", "application/json")
                .body(body),
        )
    };
    let r =
        register(r#"{"email":"num@example.com","username":"numuser","password":12345678}"#).await;
    r.expect(400, "REQ003");
    echoes_nothing(&r, &["12345678"], "numeric password");

    let r = register(
        r#"{"email":987654321,"username":"numuser","password":"correct horse battery staple"}"#,
    )
    .await;
    r.expect(400, "REQ003");
    echoes_nothing(&r, &["987654321"], "numeric email");

    let r = s
        .send(
            s.request(Method::POST, "/api/v1/auth/login")
                .header("content-type", "application/x-www-form-urlencoded")
                .body("username=alpha-dup-1&username=beta-dup-2&password=secret-dup-3"),
        )
        .await;
    echoes_nothing(
        &r,
        &["alpha-dup-1", "beta-dup-2", "secret-dup-3"],
        "duplicate form field",
    );
}

#[tokio::test]
async fn a_body_that_never_comes_is_408_and_no_server_error() {
    let s = super::server()
        .env("GATEHOUSE__SERVER__REQUEST_TIMEOUT_MS", 500)
        .start();
    let id = format!("slow-body-{}", uuid::Uuid::new_v4().simple());
    let request = head(
        "POST",
        "/api/v1/auth/login",
        &[
            "Content-Type: application/json".into(),
            "Content-Length: 50".into(),
            format!("X-Request-ID: {id}"),
        ],
    );
    let sent = Instant::now();
    let mut stream = raw_send(&s, request.as_bytes()).await;
    let r = read_reply(&mut stream, Duration::from_millis(2500)).await;
    assert_eq!(
        (r.status, r.code()),
        (408, "REQ005"),
        "after {:?}: {}",
        sent.elapsed(),
        r.text
    );
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));

    let logs = s.settled_logs().await;
    let mine: Vec<_> = logs.iter().filter(|l| l["request_id"] == id).collect();
    assert!(!mine.is_empty(), "no log line for {id}");
    assert!(
        mine.iter().all(|l| l["level"] != "ERROR"),
        "an ERROR was logged for a client that sent no body: {mine:?}"
    );
}
