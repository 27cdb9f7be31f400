//! Sessions and account management: refresh rotation and reuse detection,
//! revocation that takes effect on the very next request, the sessions API,
//! profile and password changes, deactivation.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{DataDir, PASSWORD, Reply, SECRET, Server, eventually};

async fn refresh(s: &Server, token: &str) -> Reply {
    s.post(
        "/api/v1/auth/refresh",
        json!({"refresh_token": token}),
        None,
    )
    .await
}

fn tokens(r: &Reply) -> (String, String) {
    r.ok(200);
    (
        r.body["access_token"].as_str().unwrap().to_owned(),
        r.body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn me(s: &Server, token: &str) -> Reply {
    s.get("/api/v1/users/me", Some(token)).await
}

async fn send_json(s: &Server, method: Method, path: &str, token: &str, body: Value) -> Reply {
    s.send(s.request(method, path).bearer_auth(token).json(&body))
        .await
}

async fn empty(s: &Server, method: Method, path: &str, token: &str) -> Reply {
    s.send(s.request(method, path).bearer_auth(token)).await
}

#[tokio::test]
async fn refresh_rotates_and_spends_the_old_token() {
    let s = Server::start();
    let (access, first) = s.user("rotator").await;
    let (access2, second) = tokens(&refresh(&s, &first).await);
    assert_ne!(second, first);
    assert_ne!(access2, access);
    me(&s, &access2).await.ok(200);
    let (access3, _third) = tokens(&refresh(&s, &second).await);
    me(&s, &access3).await.ok(200);
    for bad in ["", "not-a-token", &"x".repeat(5000)] {
        refresh(&s, bad).await.expect(401, "AUTH004");
    }
    s.post("/api/v1/auth/refresh", json!({}), None)
        .await
        .expect(422, "VAL001");
    assert!(
        s.settled_logs()
            .await
            .iter()
            .any(|l| l["event"] == "session.refreshed")
    );
}

#[tokio::test]
async fn reusing_a_spent_refresh_token_revokes_the_whole_session() {
    // No grace: the replay comes at once (the grace is signing.rs's subject).
    let s = Server::builder()
        .env("GATEHOUSE__AUTH__REFRESH_REUSE_GRACE_S", 0)
        .start();
    let (_, stolen) = s.user("victim").await;
    // The legitimate client refreshes; the thief later replays the old token.
    let (newest_access, newest_refresh) = tokens(&refresh(&s, &stolen).await);
    me(&s, &newest_access).await.ok(200);
    refresh(&s, &stolen).await.expect(401, "AUTH004");
    // Everything of that session is dead now, the newest tokens included.
    me(&s, &newest_access).await.expect(401, "AUTH004");
    refresh(&s, &newest_refresh).await.expect(401, "AUTH004");
    let logs = s.settled_logs().await;
    assert!(logs.iter().any(|l| l["event"] == "refresh.reuse_detected"));
    // Other sessions of the user are untouched.
    let other = s.login("victim", PASSWORD).await;
    me(&s, &tokens(&other).0).await.ok(200);
}

#[tokio::test]
async fn logout_logout_all_and_session_deletion_take_effect_at_once() {
    let s = Server::start();
    let (a, a_refresh) = s.user("leaver").await;
    let (b, _) = tokens(&s.login("leaver", PASSWORD).await);
    let (c, _) = tokens(&s.login("leaver", PASSWORD).await);
    for t in [&a, &b, &c] {
        me(&s, t).await.ok(200);
    }

    empty(&s, Method::POST, "/api/v1/auth/logout", &a)
        .await
        .ok(204);
    me(&s, &a).await.expect(401, "AUTH004");
    refresh(&s, &a_refresh).await.expect(401, "AUTH004");
    me(&s, &b).await.ok(200);

    empty(&s, Method::POST, "/api/v1/auth/logout-all", &b)
        .await
        .ok(204);
    me(&s, &b).await.expect(401, "AUTH004");
    me(&s, &c).await.expect(401, "AUTH004");
    empty(&s, Method::POST, "/api/v1/auth/logout", &c)
        .await
        .expect(401, "AUTH004");
    let revoked = s
        .settled_logs()
        .await
        .iter()
        .filter(|l| l["event"] == "session.revoked")
        .count();
    assert!(revoked >= 2);
}

#[tokio::test]
async fn sessions_are_listed_and_only_the_owner_can_delete_them() {
    let s = Server::start();
    let (mine, _) = s.user("lister").await;
    let other_login = s
        .send(
            s.request(Method::POST, "/api/v1/auth/login")
                .header("user-agent", "second-device/1.0")
                .json(&json!({"username": "lister", "password": PASSWORD})),
        )
        .await;
    let (second, _) = tokens(&other_login);

    let list = empty(&s, Method::GET, "/api/v1/users/me/sessions", &mine).await;
    list.ok(200);
    let sessions = list.body["sessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 2);
    let current: Vec<&Value> = sessions.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    for session in &sessions {
        for key in ["id", "created_at", "last_used_at", "expires_at"] {
            assert!(session[key].is_string(), "{key}: {session}");
        }
        assert_eq!(session["ip"], "127.0.0.1");
    }
    let other = sessions.iter().find(|s| s["current"] == false).unwrap();
    assert_eq!(other["user_agent"], "second-device/1.0");
    let other_id = other["id"].as_str().unwrap();

    // Someone else cannot learn that the session exists, let alone end it.
    let (stranger, _) = s.user("stranger").await;
    let path = format!("/api/v1/users/me/sessions/{other_id}");
    empty(&s, Method::DELETE, &path, &stranger)
        .await
        .expect(404, "NOT001");
    me(&s, &second).await.ok(200);
    empty(
        &s,
        Method::DELETE,
        "/api/v1/users/me/sessions/no-such-id",
        &mine,
    )
    .await
    .expect(404, "NOT001");

    empty(&s, Method::DELETE, &path, &mine).await.ok(204);
    me(&s, &second).await.expect(401, "AUTH004");
    empty(&s, Method::DELETE, &path, &mine)
        .await
        .expect(404, "NOT001");
    let left = empty(&s, Method::GET, "/api/v1/users/me/sessions", &mine).await;
    assert_eq!(left.body["sessions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn profile_updates_follow_the_registration_rules() {
    // Without verification a new email applies at once (the email tests
    // cover the pending address verification makes of it).
    let s = Server::builder()
        .env("GATEHOUSE__AUTH__EMAIL_VERIFICATION", "off")
        .start();
    let (token, _) = s.user("renamer").await;
    s.register("taken").await.ok(201);
    let before = me(&s, &token).await.body;
    let path = "/api/v1/users/me";

    let changed = send_json(
        &s,
        Method::PUT,
        path,
        &token,
        json!({"username": "Renamed", "email": "New@Example.com"}),
    )
    .await;
    changed.ok(200);
    assert_eq!(changed.body["username"], "Renamed");
    assert_eq!(changed.body["email"], "new@example.com");
    assert_eq!(changed.body["created_at"], before["created_at"]);
    assert_ne!(changed.body["updated_at"], before["updated_at"]);
    assert_eq!(
        me(&s, &token).await.body,
        changed.body,
        "the change is visible at once"
    );
    s.login("renamed", PASSWORD).await.ok(200);
    s.login("renamer", PASSWORD).await.expect(401, "AUTH001");

    send_json(&s, Method::PUT, path, &token, json!({"username": "TAKEN"}))
        .await
        .expect(409, "USER001");
    send_json(
        &s,
        Method::PUT,
        path,
        &token,
        json!({"email": "taken@example.com"}),
    )
    .await
    .expect(409, "USER001");
    send_json(&s, Method::PUT, path, &token, json!({"username": "x"}))
        .await
        .expect(422, "VAL001");
    send_json(&s, Method::PUT, path, &token, json!({"email": "nope"}))
        .await
        .expect(422, "VAL001");
    send_json(&s, Method::PUT, path, &token, json!({}))
        .await
        .expect(422, "VAL001");
    send_json(&s, Method::PUT, path, &token, json!({"username": 7}))
        .await
        .expect(400, "REQ003");
    // Only the caller's own record changed.
    s.login("taken", PASSWORD).await.ok(200);
}

#[tokio::test]
async fn password_change_checks_the_current_one_and_ends_other_sessions() {
    let s = Server::start();
    let (this, _) = s.user("changer").await;
    let (other, other_refresh) = tokens(&s.login("changer", PASSWORD).await);
    let path = "/api/v1/users/me/password";
    let new = "an entirely new passphrase";

    send_json(
        &s,
        Method::PATCH,
        path,
        &this,
        json!({"current_password": "wrong one!", "new_password": new}),
    )
    .await
    .expect(403, "AUTH005");
    let weak = send_json(
        &s,
        Method::PATCH,
        path,
        &this,
        json!({"current_password": PASSWORD, "new_password": "password123"}),
    )
    .await;
    weak.expect(422, "VAL001");
    assert_eq!(weak.body["error"]["fields"][0]["field"], "new_password");
    send_json(
        &s,
        Method::PATCH,
        path,
        &this,
        json!({"current_password": PASSWORD}),
    )
    .await
    .expect(422, "VAL001");
    me(&s, &other).await.ok(200);

    send_json(
        &s,
        Method::PATCH,
        path,
        &this,
        json!({"current_password": PASSWORD, "new_password": new}),
    )
    .await
    .ok(204);
    me(&s, &this).await.ok(200);
    me(&s, &other).await.expect(401, "AUTH004");
    refresh(&s, &other_refresh).await.expect(401, "AUTH004");
    s.login("changer", PASSWORD).await.expect(401, "AUTH001");
    s.login("changer", new).await.ok(200);
    assert!(
        s.settled_logs()
            .await
            .iter()
            .any(|l| l["event"] == "password.changed")
    );
    let all = s.logs().join("\n");
    assert!(!all.contains(new) && !all.contains(PASSWORD));
}

#[tokio::test]
async fn wrong_current_passwords_count_against_the_password_class() {
    let s = Server::builder()
        .env("GATEHOUSE__RATE_LIMIT__ROUTES__PASSWORD__LIMIT", 2)
        .start();
    let (token, _) = s.user("guesser").await;
    let body =
        json!({"current_password": "guess number one", "new_password": "whatever works here"});
    for _ in 0..2 {
        send_json(
            &s,
            Method::PATCH,
            "/api/v1/users/me/password",
            &token,
            body.clone(),
        )
        .await
        .expect(403, "AUTH005");
    }
    send_json(&s, Method::PATCH, "/api/v1/users/me/password", &token, body)
        .await
        .expect(429, "RATE001");
}

#[tokio::test]
async fn deactivation_is_a_soft_delete_that_ends_every_session() {
    let s = Server::start();
    let (token, refresh_token) = s.user("quitter").await;
    let (other, _) = tokens(&s.login("quitter", PASSWORD).await);
    empty(&s, Method::DELETE, "/api/v1/users/me", &token)
        .await
        .ok(204);
    me(&s, &token).await.expect(401, "AUTH004");
    me(&s, &other).await.expect(401, "AUTH004");
    refresh(&s, &refresh_token).await.expect(401, "AUTH004");

    let strip = |r: Reply| {
        let mut body = r.body;
        let e = body["error"].as_object_mut().unwrap();
        e.remove("correlation_id");
        e.remove("timestamp");
        body
    };
    let deactivated = s.login("quitter", PASSWORD).await;
    deactivated.expect(401, "AUTH001");
    let wrong = s.login("quitter", "not the password").await;
    assert_eq!(strip(deactivated), strip(wrong));
    // The name and the address stay reserved.
    s.register("quitter").await.expect(409, "USER001");
    assert!(
        s.settled_logs()
            .await
            .iter()
            .any(|l| l["event"] == "account.deactivated")
    );
}

#[tokio::test]
async fn an_expired_access_token_is_auth003_and_refresh_still_works() {
    // HS256, so that the test can re-sign a token with the shared secret.
    let s = Server::builder()
        .env("GATEHOUSE__AUTH__SIGNING_ALGORITHM", "HS256")
        .start();
    let (access, refresh_token) = s.user("sleeper").await;
    // The server's own token, re-signed with an exp in the past.
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value =
        serde_json::from_slice(&engine.decode(access.split('.').nth(1).unwrap()).unwrap()).unwrap();
    claims["exp"] = json!(claims["iat"].as_i64().unwrap() - 60);
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    me(&s, &expired).await.expect(401, "AUTH003");
    let (fresh, _) = tokens(&refresh(&s, &refresh_token).await);
    me(&s, &fresh).await.ok(200);
}

#[tokio::test]
async fn two_processes_on_one_database_honour_each_others_logouts() {
    let dir = DataDir::new();
    let a = Server::builder().dir(&dir).start();
    let b = Server::builder().dir(&dir).start();
    let (token, _) = a.user("roamer").await;
    // Both have checked (and cached) the session.
    me(&a, &token).await.ok(200);
    me(&b, &token).await.ok(200);
    empty(&b, Method::POST, "/api/v1/auth/logout", &token)
        .await
        .ok(204);
    let refused = eventually(Duration::from_secs(1), || async {
        me(&a, &token).await.code() == "AUTH004"
    })
    .await;
    assert!(
        refused,
        "a logout through one process was not honoured by the other within a second"
    );
    // And the other way round, for a password change.
    let (this, _) = tokens(&b.login("roamer", PASSWORD).await);
    let (other, _) = tokens(&b.login("roamer", PASSWORD).await);
    me(&b, &other).await.ok(200);
    send_json(
        &a,
        Method::PATCH,
        "/api/v1/users/me/password",
        &this,
        json!({"current_password": PASSWORD, "new_password": "a different passphrase"}),
    )
    .await
    .ok(204);
    let refused = eventually(Duration::from_secs(1), || async {
        me(&b, &other).await.code() == "AUTH004"
    })
    .await;
    assert!(refused);
}
