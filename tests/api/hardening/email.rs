//! Finding 9: emails are stored NFC-normalised and lower-cased with an IDNA
//! domain; invisible and control characters and quoted local parts are refused.

use reqwest::Method;
use serde_json::json;

use crate::harness::{PASSWORD, Reply, Server};

async fn register(s: &Server, username: &str, email: &str) -> Reply {
    s.post(
        "/api/v1/auth/register",
        json!({"email": email, "username": username, "password": PASSWORD}),
        None,
    )
    .await
}

#[track_caller]
fn refused_email(r: &Reply, email: &str) {
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "VAL001"),
        "{email:?}: {}",
        r.text
    );
    let fields = r.body["error"]["fields"].as_array();
    assert!(
        fields.is_some_and(|f| f.iter().any(|e| e["field"] == "email")),
        "{email:?}: no fields entry for email: {}",
        r.text
    );
}

#[tokio::test]
async fn emails_are_normalised_and_invisible_characters_refused() {
    let s = super::server().start();

    let composed = "caf\u{e9}@example.com";
    let r = register(&s, "cafe_composed", composed).await;
    r.ok(201);
    assert_eq!(r.body["email"], composed);
    register(&s, "cafe_decomposed", "cafe\u{301}@example.com")
        .await
        .expect(409, "USER001");

    for (i, email) in [
        "ca\u{200b}fe@example.com",
        "ab\u{202e}moc.elpmaxe@example.com",
        "\"john doe\"@example.com",
        "\"x\"@example.com",
    ]
    .into_iter()
    .enumerate()
    {
        let r = register(&s, &format!("refused{i}"), email).await;
        refused_email(&r, email);
    }

    let r = register(&s, "idn_user", "user@b\u{fc}cher.example").await;
    r.ok(201);
    assert_eq!(r.body["email"], "user@xn--bcher-kva.example", "{}", r.text);
    register(&s, "idn_again", "user@xn--bcher-kva.example")
        .await
        .expect(409, "USER001");

    let r = register(&s, "upper_user", "UPPER@Example.COM").await;
    r.ok(201);
    assert_eq!(r.body["email"], "upper@example.com", "{}", r.text);

    // The Unicode form of the domain is a login name for the account.
    s.login("user@b\u{fc}cher.example", PASSWORD).await.ok(200);

    // Another user's email, decomposed, is still taken.
    let token = s.login("upper_user", PASSWORD).await.body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    s.send(
        s.request(Method::PUT, "/api/v1/users/me")
            .bearer_auth(&token)
            .json(&json!({"email": "cafe\u{301}@example.com"})),
    )
    .await
    .expect(409, "USER001");
}
