//! Finding 3: a request authenticated before its session was revoked changes
//! nothing after the revocation. Finding 4: of two password changes racing
//! with the same `current_password`, exactly one wins.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::{head, raw_send, read_reply};
use crate::harness::{PASSWORD, Server};
use tokio::io::AsyncWriteExt;

async fn login_token(s: &Server, login: &str, password: &str) -> String {
    let r = s.login(login, password).await;
    r.ok(200);
    r.body["access_token"].as_str().unwrap().to_owned()
}

/// Sends `method path` with token `t1` and a JSON `body` whose bytes are held
/// back until every session of the user was revoked with `t2`; returns the
/// answer to the held request.
async fn held_across_logout_all(
    s: &Server,
    method: &str,
    path: &str,
    t1: &str,
    t2: &str,
    body: &str,
) -> super::RawReply {
    let request = head(
        method,
        path,
        &[
            format!("Authorization: Bearer {t1}"),
            "Content-Type: application/json".into(),
            format!("Content-Length: {}", body.len()),
        ],
    );
    let mut stream = raw_send(s, request.as_bytes()).await;
    // Give the server the head (and time to check the token) first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.send(
        s.request(Method::POST, "/api/v1/auth/logout-all")
            .bearer_auth(t2),
    )
    .await
    .ok(204);
    let _ = stream.write_all(body.as_bytes()).await;
    read_reply(&mut stream, Duration::from_secs(10)).await
}

#[tokio::test]
async fn a_profile_change_held_across_a_revocation_changes_nothing() {
    let s = super::server().start();
    let name = super::unique("held");
    let (t1, _) = s.user(&name).await;
    let t2 = login_token(&s, &name, PASSWORD).await;
    let r = held_across_logout_all(
        &s,
        "PUT",
        "/api/v1/users/me",
        &t1,
        &t2,
        r#"{"email":"evil@example.com"}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (401, "AUTH004"),
        "the held change was answered {}: {}",
        r.status,
        r.text
    );
    let fresh = login_token(&s, &name, PASSWORD).await;
    let me = s.get("/api/v1/users/me", Some(&fresh)).await;
    me.ok(200);
    assert_eq!(
        me.body["email"],
        format!("{name}@example.com"),
        "{}",
        me.text
    );
    assert_ne!(me.body["pending_email"], "evil@example.com", "{}", me.text);
}

#[tokio::test]
async fn a_password_change_held_across_a_revocation_changes_nothing() {
    let s = super::server().start();
    let name = super::unique("heldpw");
    let (t1, _) = s.user(&name).await;
    let t2 = login_token(&s, &name, PASSWORD).await;
    let new = "held back passphrase 12";
    let body = json!({"current_password": PASSWORD, "new_password": new}).to_string();
    let r = held_across_logout_all(&s, "PATCH", "/api/v1/users/me/password", &t1, &t2, &body).await;
    assert_eq!(
        (r.status, r.code()),
        (401, "AUTH004"),
        "the held password change was answered {}: {}",
        r.status,
        r.text
    );
    s.login(&name, PASSWORD).await.ok(200);
    s.login(&name, new).await.expect(401, "AUTH001");
}

#[tokio::test]
async fn of_two_racing_password_changes_exactly_one_wins() {
    let s = super::server().start();
    let mut outcomes = Vec::new();
    for round in 0..15 {
        let name = super::unique(&format!("race{round}x"));
        let (t1, _) = s.user(&name).await;
        let t2 = login_token(&s, &name, PASSWORD).await;
        let same_token = round % 2 == 0;
        let news = [
            format!("first new secret {round}"),
            format!("second new secret {round}"),
        ];
        let change = |token: &str, new: &str| {
            s.send(
                s.request(Method::PATCH, "/api/v1/users/me/password")
                    .bearer_auth(token)
                    .json(&json!({"current_password": PASSWORD, "new_password": new})),
            )
        };
        let (r0, r1) = tokio::join!(
            change(&t1, &news[0]),
            change(if same_token { &t1 } else { &t2 }, &news[1]),
        );
        let answers = [
            (r0.status.as_u16(), r0.code().to_owned()),
            (r1.status.as_u16(), r1.code().to_owned()),
        ];
        outcomes.push((round, answers.clone()));
        let winners: Vec<usize> = (0..2).filter(|i| answers[*i].0 == 204).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round} (same token: {same_token}): {answers:?}; so far {outcomes:?}"
        );
        let winner = winners[0];
        let loser = &answers[1 - winner];
        assert!(
            matches!(
                (loser.0, loser.1.as_str()),
                (403, "AUTH005") | (401, "AUTH004")
            ),
            "round {round}: the loser got {loser:?}"
        );
        s.login(&name, &news[winner]).await.ok(200);
        s.login(&name, &news[1 - winner])
            .await
            .expect(401, "AUTH001");
        s.login(&name, PASSWORD).await.expect(401, "AUTH001");
    }
}
