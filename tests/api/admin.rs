//! Admin keys and introspection, seen from outside: keys made and revoked
//! with `gatehouse admin-keys` beside two running instances, the scope
//! check, and RFC 7662 introspection that turns inactive the moment a
//! session is revoked, on either instance.

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{DataDir, Reply, Server, cli, shipped_config, stderr};
use crate::signing::lines;

/// `gatehouse admin-keys …` against `dir`, as an operator runs it beside servers.
fn admin_keys(dir: &DataDir, args: &[&str]) -> std::process::Output {
    let config = shipped_config();
    let mut all = vec![
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("admin-keys"),
    ];
    all.extend(args.iter().map(OsStr::new));
    cli(&all, &dir.env())
}

/// Creates a key; returns (id, key).
fn create(dir: &DataDir, name: &str, scopes: &str) -> (String, String) {
    let out = admin_keys(dir, &["create", "--name", name, "--scopes", scopes]);
    let created = lines(&out);
    assert_eq!(created.len(), 1, "{created:?}");
    let line = &created[0];
    assert_eq!(line["name"], name);
    (
        line["id"].as_str().unwrap().to_owned(),
        line["key"].as_str().unwrap().to_owned(),
    )
}

async fn introspect(s: &Server, key: &str, token: &str) -> Reply {
    s.send(
        s.request(Method::POST, "/api/v1/admin/introspect")
            .bearer_auth(key)
            .form(&[("token", token)]),
    )
    .await
}

/// Asks every server in `servers`, every 100 ms for `hold`, and fails at the
/// first answer `check` refuses.
async fn holds(servers: &[&Server], hold: Duration, mut check: impl AsyncFnMut(&Server) -> bool) {
    let until = Instant::now() + hold;
    while Instant::now() < until {
        for s in servers {
            assert!(check(s).await, "the property broke after it held");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn admin_keys_made_and_revoked_beside_running_instances() {
    let dir = DataDir::new();
    let a = Server::builder().dir(&dir).start();
    let b = Server::builder().dir(&dir).start();
    let (token, _) = a.user("inspected").await;

    let (id, key) = create(&dir, "resource server", "introspect,users:read");
    assert!(key.starts_with("ghk_"), "{key}");
    // Listed without the key; the database holds only its digest.
    let listed = lines(&admin_keys(&dir, &["list"]));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["scopes"], json!(["users:read", "introspect"]));
    assert!(listed[0].get("key").is_none());
    assert!(!listed[0].to_string().contains(&key));
    let stored = dir.query("SELECT digest FROM admin_keys");
    assert!(!stored.contains(&key[4..]), "the key is stored");

    for s in [&a, &b] {
        let r = introspect(s, &key, &token).await;
        r.ok(200);
        assert_eq!(r.body["active"], true);
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }

    // Wrong scope, user tokens, and keys that are not ours.
    let (_, narrow) = create(&dir, "reader", "users:read");
    introspect(&a, &narrow, &token).await.expect(403, "AUTH011");
    let forged = format!("ghk_{id}_not-the-secret");
    for bad in [token.as_str(), forged.as_str(), "ghk_", "ghk_nobody_x", "x"] {
        let r = introspect(&b, bad, &token).await;
        r.expect(401, "AUTH002");
        assert!(r.header("www-authenticate").is_some());
    }
    let r = a
        .send(
            a.request(Method::POST, "/api/v1/admin/introspect")
                .form(&[("token", token.as_str())]),
        )
        .await;
    r.expect(401, "AUTH002");

    // Bad commands are refused with a reason, and nothing is stored.
    for args in [
        &["create", "--name", "x", "--scopes", "root"][..],
        &["create", "--name", " ", "--scopes", "introspect"],
    ] {
        let out = admin_keys(&dir, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(lines(&admin_keys(&dir, &["list"])).len(), 2);

    // Revoked: refused by both instances at once, and from then on.
    let out = admin_keys(&dir, &["revoke", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    holds(&[&a, &b], Duration::from_secs(2), async |s| {
        introspect(s, &key, &token).await.code() == "AUTH002"
    })
    .await;
    let out = admin_keys(&dir, &["revoke", &id]);
    assert_eq!(out.status.code(), Some(1), "revoking twice");
    assert_eq!(lines(&admin_keys(&dir, &["list"])).len(), 1);
}

#[tokio::test]
async fn introspection_turns_inactive_the_moment_a_session_is_revoked() {
    let dir = DataDir::new();
    let a = Server::builder().dir(&dir).start();
    let b = Server::builder().dir(&dir).start();
    let (_, key) = create(&dir, "api gateway", "introspect");
    let (token, _) = a.user("watched").await;
    let me = a.get("/api/v1/users/me", Some(&token)).await;
    me.ok(200);

    for s in [&a, &b] {
        let r = introspect(s, &key, &token).await;
        r.ok(200);
        let body = &r.body;
        assert_eq!(body["active"], true);
        assert_eq!(body["sub"], me.body["id"]);
        assert_eq!(body["token_type"], "access_token");
        assert_eq!(body["amr"], json!(["pwd"]));
        assert!(body["exp"].as_i64().unwrap() > body["iat"].as_i64().unwrap());
        assert!(body["sid"].is_string() && body["roles"].is_array());
    }
    // Garbage and foreign tokens are simply inactive.
    for other in ["", "nonsense", "eyJhbGciOiJub25lIn0.e30."] {
        let r = introspect(&a, &key, other).await;
        r.ok(200);
        assert_eq!(r.body, json!({"active": false}), "{other:?}");
    }
    let r = a
        .send(
            a.request(Method::POST, "/api/v1/admin/introspect")
                .bearer_auth(&key)
                .form(&[("token_type_hint", "access_token")]),
        )
        .await;
    r.expect(422, "VAL001");

    a.send(
        a.request(Method::POST, "/api/v1/auth/logout")
            .bearer_auth(&token),
    )
    .await
    .ok(204);
    // The next question, on either instance, already says inactive, and
    // every one after it.
    holds(&[&b, &a], Duration::from_secs(2), async |s| {
        let r = introspect(s, &key, &token).await;
        r.status == 200 && r.body == json!({"active": false})
    })
    .await;
}

#[tokio::test]
async fn signing_keys_are_listed_rotated_and_revoked_over_http_as_by_the_command() {
    let dir = DataDir::new();
    let a = Server::builder().dir(&dir).start();
    let b = Server::builder().dir(&dir).start();
    let (_, key) = create(&dir, "key custodian", "keys:write");
    let (_, reader) = create(&dir, "reader", "introspect");
    let (token, _) = a.user("signed").await;
    let send = |s: &Server, method: Method, path: &str, key: &str| {
        s.request(method, path).bearer_auth(key.to_owned())
    };

    let r = a
        .send(send(&a, Method::GET, "/api/v1/admin/keys", &key))
        .await;
    r.ok(200);
    let listed = r.body["keys"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["state"], "active");
    let old = listed[0]["kid"].as_str().unwrap().to_owned();
    assert!(!r.text.contains("\"d\""), "private material: {}", r.text);
    let cli = lines(&crate::signing::keys(&dir, "EdDSA", &["list"]));
    assert_eq!(Value::from(cli), r.body["keys"]);
    a.send(send(&a, Method::GET, "/api/v1/admin/keys", &reader))
        .await
        .expect(403, "AUTH011");

    // A rotation without a body publishes a next key; with now, it signs.
    let r = b
        .send(send(&b, Method::POST, "/api/v1/admin/keys/rotate", &key))
        .await;
    r.ok(200);
    assert_eq!(r.body["state"], "next");
    assert!(r.body["activates_at"].is_string());
    let r = b
        .send(send(&b, Method::POST, "/api/v1/admin/keys/rotate", &key).json(&json!({"now": true})))
        .await;
    r.ok(200);
    assert_eq!(r.body["state"], "active");
    assert_ne!(r.body["kid"], old.as_str());

    // Revoking the old key: its tokens fail on both instances within a
    // second, and from then on.
    a.get("/api/v1/users/me", Some(&token)).await.ok(200);
    let path = format!("/api/v1/admin/keys/{old}/revoke");
    a.send(send(&a, Method::POST, &path, &key)).await.ok(204);
    let refused = crate::harness::eventually(Duration::from_secs(1), || async {
        a.get("/api/v1/users/me", Some(&token)).await.status == 401
            && b.get("/api/v1/users/me", Some(&token)).await.status == 401
    })
    .await;
    assert!(refused, "the revoked key's token still works");
    holds(&[&a, &b], Duration::from_secs(2), async |s| {
        s.get("/api/v1/users/me", Some(&token)).await.code() == "AUTH002"
    })
    .await;
    a.send(send(&a, Method::POST, &path, &key))
        .await
        .expect(404, "NOT001");
    // New logins sign with the new key and work everywhere.
    let (fresh, _) = b.user("signed_again").await;
    a.get("/api/v1/users/me", Some(&fresh)).await.ok(200);
}
