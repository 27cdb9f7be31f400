//! Registration, login and `/users/me`: the flow, validation, and the
//! contract's request errors.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{PASSWORD, Server};

#[tokio::test]
async fn register_login_me() {
    let s = Server::start();
    let created = s
        .post(
            "/api/v1/auth/register",
            json!({"email": "Alice@Example.COM", "username": "Alice_01", "password": PASSWORD}),
            None,
        )
        .await;
    created.ok(201);
    let user = &created.body;
    assert_eq!(
        user["email"], "alice@example.com",
        "email is stored lower-cased"
    );
    assert_eq!(user["username"], "Alice_01");
    assert_eq!(user["is_active"], true);
    for key in ["id", "created_at", "updated_at"] {
        assert!(user[key].is_string(), "{key} missing: {user}");
    }
    assert!(user.get("password_hash").is_none() && !created.text.contains("scrypt"));

    let tokens = s.login("alice_01", PASSWORD).await;
    tokens.ok(200);
    assert_eq!(tokens.body["token_type"], "bearer");
    assert_eq!(tokens.body["expires_in"], 900);
    assert!(tokens.body["refresh_token"].as_str().unwrap().len() >= 43);
    let access = tokens.body["access_token"].as_str().unwrap();

    let me = s.get("/api/v1/users/me", Some(access)).await;
    me.ok(200);
    assert_eq!(me.body, created.body);

    // The email works as a login name too, in any case.
    s.login("ALICE@example.com", PASSWORD).await.ok(200);
}

#[tokio::test]
async fn oauth2_password_grant_form_login() {
    let s = Server::start();
    s.register("formuser").await.ok(201);
    let form = [
        ("grant_type", "password"),
        ("username", "formuser"),
        ("password", PASSWORD),
    ];
    let r = s
        .send(s.request(Method::POST, "/api/v1/auth/login").form(&form))
        .await;
    r.ok(200);
    assert_eq!(r.body["token_type"], "bearer");
    let wrong_grant = [
        ("grant_type", "client_credentials"),
        ("username", "formuser"),
        ("password", PASSWORD),
    ];
    let r = s
        .send(
            s.request(Method::POST, "/api/v1/auth/login")
                .form(&wrong_grant),
        )
        .await;
    r.expect(422, "VAL001");
    let invalid_utf8 = s
        .request(Method::POST, "/api/v1/auth/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("username=formuser&password=%FF%FE");
    s.send(invalid_utf8).await.expect(400, "REQ003");
}

#[tokio::test]
async fn duplicates_are_409_ignoring_case() {
    let s = Server::start();
    s.register("bob").await.ok(201);
    let same_email = s
        .post(
            "/api/v1/auth/register",
            json!({"email": "BOB@example.com", "username": "bobby", "password": PASSWORD}),
            None,
        )
        .await;
    same_email.expect(409, "USER001");
    let same_username = s
        .post(
            "/api/v1/auth/register",
            json!({"email": "other@example.com", "username": "BoB", "password": PASSWORD}),
            None,
        )
        .await;
    same_username.expect(409, "USER001");
}

fn fields(reply: &crate::harness::Reply) -> Vec<String> {
    reply.body["error"]["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("no fields: {}", reply.text))
        .iter()
        .map(|f| f["field"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_validation_rule_is_a_422_naming_the_field() {
    let s = Server::start();
    let cases: &[(Value, &[&str])] = &[
        (
            json!({"email": "not-an-email", "username": "valid_name", "password": PASSWORD}),
            &["email"],
        ),
        (
            json!({"email": "a@b", "username": "valid_name", "password": PASSWORD}),
            &["email"],
        ),
        (
            json!({"email": "x@example.com", "username": "ab", "password": PASSWORD}),
            &["username"],
        ),
        (
            json!({"email": "x@example.com", "username": "x".repeat(33), "password": PASSWORD}),
            &["username"],
        ),
        (
            json!({"email": "x@example.com", "username": "bad name!", "password": PASSWORD}),
            &["username"],
        ),
        (
            json!({"email": "x@example.com", "username": "valid_name", "password": "short"}),
            &["password"],
        ),
        (
            json!({"email": "x@example.com", "username": "valid_name", "password": "p".repeat(129)}),
            &["password"],
        ),
        (
            json!({"email": "x@example.com", "username": "valid_name", "password": "password123"}),
            &["password"],
        ),
        (
            json!({"email": "x@example.com", "username": "valid_name", "password": "qwerty123"}),
            &["password"],
        ),
        (
            json!({"email": "x@example.com", "username": "valid_name", "password": "12345678"}),
            &["password"],
        ),
        (
            json!({"email": "x@example.com", "username": "same_as_name", "password": "Same_As_Name"}),
            &["password"],
        ),
        (
            json!({"email": "mail@example.com", "username": "valid_name", "password": "MAIL@example.com"}),
            &["password"],
        ),
        (
            json!({"email": "bad", "username": "b", "password": "c"}),
            &["email", "username", "password"],
        ),
        (json!({}), &["email", "username", "password"]),
        (
            json!({"email": null, "username": "valid_name"}),
            &["email", "password"],
        ),
    ];
    for (body, expected) in cases {
        let r = s.post("/api/v1/auth/register", body.clone(), None).await;
        r.expect(422, "VAL001");
        assert_eq!(fields(&r), *expected, "for {body}");
    }
    let r = s
        .post("/api/v1/auth/login", json!({"username": "x"}), None)
        .await;
    r.expect(422, "VAL001");
    assert_eq!(fields(&r), ["password"]);
}

#[tokio::test]
async fn malformed_requests_get_contract_errors() {
    let s = Server::start();
    let raw = |body: Vec<u8>, content_type: &str| {
        s.request(Method::POST, "/api/v1/auth/register")
            .header("content-type", content_type)
            .body(body)
    };
    let json = "application/json";
    s.send(raw(b"{not json".to_vec(), json))
        .await
        .expect(400, "REQ003");
    s.send(raw(b"".to_vec(), json)).await.expect(400, "REQ003");
    s.send(raw(b"[1,2]".to_vec(), json))
        .await
        .expect(400, "REQ003");
    s.send(raw(b"{\"email\": \"\xff\xfe@x.com\"}".to_vec(), json))
        .await
        .expect(400, "REQ003");
    s.send(raw(
        br#"{"email": 5, "username": "abc", "password": "x"}"#.to_vec(),
        json,
    ))
    .await
    .expect(400, "REQ003");
    s.send(raw(
        br#"{"email": "a@example.com", "email": "b@example.com", "username": "abc", "password": "x"}"#.to_vec(),
        json,
    ))
    .await
    .expect(400, "REQ003");
    s.send(raw(b"{}".to_vec(), "text/plain"))
        .await
        .expect(415, "REQ002");
    s.send(s.request(Method::POST, "/api/v1/auth/register").body("{}"))
        .await
        .expect(415, "REQ002");
    s.send(raw(vec![b' '; 70_000], json))
        .await
        .expect(413, "REQ001");
    s.send(raw(
        format!("{{\"email\": \"{}\"}}", "a".repeat(70_000)).into_bytes(),
        "application/json; charset=utf-8",
    ))
    .await
    .expect(413, "REQ001");

    s.get("/api/v1/nothing-here", None)
        .await
        .expect(404, "NOT001");
    let r = s.get("/api/v1/auth/register", None).await;
    r.expect(405, "REQ004");
    assert_eq!(r.header("allow"), Some("POST"));
}

#[tokio::test]
async fn error_envelope_and_request_ids() {
    let s = Server::start();
    let r = s
        .send(
            s.request(Method::GET, "/api/v1/nope")
                .header("x-request-id", "trace-abc_123.x"),
        )
        .await;
    r.expect(404, "NOT001");
    assert_eq!(r.header("x-request-id"), Some("trace-abc_123.x"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let e = &r.body["error"];
    assert_eq!(e["correlation_id"], "trace-abc_123.x");
    assert!(e["message"].is_string());
    assert!(
        e.get("details").is_some(),
        "details is present, possibly null"
    );
    let ts = e["timestamp"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.len() == 20, "{ts}");

    let bad = s
        .send(
            s.request(Method::GET, "/api/v1/nope")
                .header("x-request-id", "spaces are bad"),
        )
        .await;
    let id = bad.header("x-request-id").unwrap();
    assert_ne!(id, "spaces are bad");
    assert_eq!(bad.body["error"]["correlation_id"], id);

    let ok = s.get("/api/v1/monitoring/health", None).await;
    assert!(ok.header("x-request-id").is_some_and(|v| !v.is_empty()));
}

#[tokio::test]
async fn unknown_user_and_wrong_password_are_indistinguishable() {
    let s = Server::start();
    s.register("carol").await.ok(201);
    let strip = |mut v: Value| {
        let e = v["error"].as_object_mut().unwrap();
        e.remove("correlation_id");
        e.remove("timestamp");
        v
    };
    let wrong = s.login("carol", "not the password at all").await;
    let unknown = s.login("nobody_here", "not the password at all").await;
    wrong.expect(401, "AUTH001");
    unknown.expect(401, "AUTH001");
    assert_eq!(strip(wrong.body.clone()), strip(unknown.body.clone()));
    assert_eq!(wrong.headers.len(), unknown.headers.len());
}

#[tokio::test]
async fn security_headers_on_success_and_errors() {
    let s = Server::start();
    let (token, _) = s.user("dave").await;
    let replies = [
        s.get("/api/v1/users/me", Some(&token)).await,
        s.get("/api/v1/users/me", None).await,
        s.get("/api/v1/nope", None).await,
        s.get("/api/v1/monitoring/health", None).await,
    ];
    for r in &replies {
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(
            r.header("content-security-policy"),
            Some("default-src 'none'; frame-ancestors 'none'")
        );
        assert!(
            r.header("strict-transport-security").is_none(),
            "hsts is off by default"
        );
    }
    assert_eq!(replies[0].header("cache-control"), Some("no-store"));
    assert_eq!(replies[1].header("cache-control"), Some("no-store"));
    replies[1].expect(401, "AUTH002");
}

#[tokio::test]
async fn logs_are_json_with_request_ids_and_no_secrets() {
    let s = Server::start();
    let (token, refresh) = s.user("erin").await;
    let r = s
        .send(
            s.request(Method::GET, "/api/v1/users/me")
                .bearer_auth(&token)
                .header("x-request-id", "find-me-in-the-log"),
        )
        .await;
    r.ok(200);
    let found = crate::harness::eventually(std::time::Duration::from_secs(5), || async {
        s.settled_logs()
            .await
            .iter()
            .any(|l| l["request_id"] == "find-me-in-the-log" && l["status"] == 200)
    })
    .await;
    assert!(found, "no log line for the request");
    let logs = s.settled_logs().await;
    let line = logs
        .iter()
        .find(|l| l["request_id"] == "find-me-in-the-log" && l["status"] == 200)
        .unwrap();
    for key in [
        "timestamp",
        "level",
        "target",
        "message",
        "method",
        "route",
        "latency_ms",
    ] {
        assert!(line.get(key).is_some(), "{key} missing from {line}");
    }
    assert_eq!(line["route"], "/api/v1/users/me");
    assert!(logs.iter().any(|l| l["event"] == "login.success"));
    let all = s.logs().join("\n");
    for secret in [
        PASSWORD,
        token.as_str(),
        refresh.as_str(),
        crate::harness::SECRET,
        "$scrypt$",
    ] {
        assert!(!all.contains(secret), "a secret reached the log");
    }
}
