//! Access-token attacks over HTTP: every forged, foreign or stale token is refused.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::harness::{SECRET, Server};

/// The claims of a real access token, to tamper with.
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn sign(header: Header, claims: &Value, key: &[u8]) -> String {
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key).unwrap()).unwrap()
}

fn hs256() -> Header {
    Header::new(Algorithm::HS256)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn forged_and_foreign_tokens_are_refused() {
    // HS256: the attacks below sign with the shared secret, which the test knows.
    let s = Server::builder()
        .env("GATEHOUSE__AUTH__SIGNING_ALGORITHM", "HS256")
        .start();
    let (token, refresh) = s.user("mallory").await;
    s.get("/api/v1/users/me", Some(&token)).await.ok(200);
    let real = claims_of(&token);
    let key = SECRET.as_bytes();
    let with = |field: &str, value: Value| {
        let mut c = real.clone();
        c[field] = value;
        c
    };

    // Re-signing the genuine claims with the right key still works: the
    // failures below are caused by what each case changes, nothing else.
    let resigned = sign(hs256(), &real, key);
    s.get("/api/v1/users/me", Some(&resigned)).await.ok(200);

    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        URL_SAFE_NO_PAD.encode(real.to_string())
    );
    let tampered = {
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(with("sub", json!("someone-else")).to_string());
        parts.join(".")
    };
    let bad_signature = {
        let (head, sig) = token.rsplit_once('.').unwrap();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        format!("{head}.{flipped}{}", &sig[1..])
    };
    let mut odd_typ = hs256();
    odd_typ.typ = Some("at+jwt".into());
    let cases = [
        ("alg none", none),
        (
            "wrong key",
            sign(hs256(), &real, b"another-secret-another-secret-xx"),
        ),
        (
            "other HS alg",
            sign(Header::new(Algorithm::HS512), &real, key),
        ),
        ("wrong typ", sign(odd_typ, &real, key)),
        (
            "wrong iss",
            sign(hs256(), &with("iss", json!("someone-else")), key),
        ),
        (
            "wrong aud",
            sign(hs256(), &with("aud", json!("other-clients")), key),
        ),
        (
            "future nbf",
            sign(hs256(), &with("nbf", json!(now() + 3600)), key),
        ),
        (
            "not an access token",
            sign(hs256(), &with("token_use", json!("refresh")), key),
        ),
        ("tampered claims", tampered),
        ("bad signature", bad_signature),
        ("refresh token as access token", refresh.clone()),
        ("garbage", "a.b.c".to_owned()),
    ];
    for (name, forged) in cases {
        let r = s.get("/api/v1/users/me", Some(&forged)).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (401, "AUTH002"),
            "{name}: {}",
            r.text
        );
    }

    let expired = sign(hs256(), &with("exp", json!(now() - 60)), key);
    s.get("/api/v1/users/me", Some(&expired))
        .await
        .expect(401, "AUTH003");

    let unknown_session = sign(hs256(), &with("sid", json!("no-such-session")), key);
    s.get("/api/v1/users/me", Some(&unknown_session))
        .await
        .expect(401, "AUTH004");
}

#[tokio::test]
async fn missing_or_malformed_authorization_is_auth002() {
    let s = Server::start();
    let (token, _) = s.user("oscar").await;
    s.get("/api/v1/users/me", None).await.expect(401, "AUTH002");
    for header in [
        format!("Basic {token}"),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        token.clone(),
    ] {
        let r = s
            .send(
                s.request(reqwest::Method::GET, "/api/v1/users/me")
                    .header("authorization", header.clone()),
            )
            .await;
        assert_eq!((r.status.as_u16(), r.code()), (401, "AUTH002"), "{header}");
    }
    let lower = s
        .send(
            s.request(reqwest::Method::GET, "/api/v1/users/me")
                .header("authorization", format!("bearer {token}")),
        )
        .await;
    lower.ok(200);
}
