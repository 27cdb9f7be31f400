//! Signing keys and verifying tokens elsewhere: every algorithm issues
//! tokens that work, the JWKS publishes public keys only, forged tokens are
//! refused, a rotation while two instances run breaks no token, a revoked
//! key's tokens fail on every instance within a second and from then on, the
//! `keys` command, the refresh grace window, the OAuth2 refresh grant and the
//! discovery documents.

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{DataDir, SECRET, Server, cli, shipped_config, stderr};

pub(crate) fn with_alg(alg: &str) -> crate::harness::Builder {
    Server::builder().env("GATEHOUSE__AUTH__SIGNING_ALGORITHM", alg)
}

pub(crate) fn part(token: &str, i: usize) -> Value {
    let segment = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
}

async fn jwks(s: &Server) -> Value {
    let r = s.get("/.well-known/jwks.json", None).await;
    r.ok(200);
    assert_eq!(r.header("cache-control"), Some("public, max-age=300"));
    r.body
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// `gatehouse keys …` against `dir`, as an operator runs it beside servers
/// signing with `alg` (with the same configuration as theirs).
pub(crate) fn keys(dir: &DataDir, alg: &str, args: &[&str]) -> std::process::Output {
    let config = shipped_config();
    let mut all = vec![
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("keys"),
    ];
    all.extend(args.iter().map(OsStr::new));
    let mut env = dir.env();
    env.push(("GATEHOUSE__AUTH__SIGNING_ALGORITHM".into(), alg.into()));
    cli(&all, &env)
}

pub(crate) fn lines(out: &std::process::Output) -> Vec<Value> {
    assert!(out.status.success(), "{}", stderr(out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Asks `check` every 100 ms for `watch`; `Some(first time it held)`, and
/// it must hold from then on.
async fn holds_from_then_on<F, Fut>(watch: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    let mut since = None;
    while started.elapsed() < watch {
        match (check().await, since) {
            (true, None) => since = Some(started.elapsed()),
            (false, Some(at)) => panic!("held from {at:?}, then failed again"),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    since
}

#[tokio::test]
async fn every_algorithm_issues_tokens_that_work_and_publishes_only_public_keys() {
    for (alg, kty, crv) in [
        ("EdDSA", Some("OKP"), Some("Ed25519")),
        ("ES256", Some("EC"), Some("P-256")),
        ("HS256", None, None),
    ] {
        let s = with_alg(alg).start();
        let (token, _) = s.user(&format!("alg{}", alg.to_lowercase())).await;
        s.get("/api/v1/users/me", Some(&token)).await.ok(200);
        let header = part(&token, 0);
        let claims = part(&token, 1);
        assert_eq!(header["alg"], alg);
        assert_eq!(header["typ"], "JWT");
        assert_eq!(claims["amr"], json!(["pwd"]), "{alg}");
        assert_eq!(claims["roles"], json!([]));
        assert!(claims["auth_time"].as_i64().unwrap() <= claims["iat"].as_i64().unwrap());
        let published = jwks(&s).await;
        let text = published.to_string();
        for private in ["\"d\"", "\"k\"", "\"p\"", "\"q\"", SECRET] {
            assert!(!text.contains(private), "{alg}: {private} in {text}");
        }
        match (kty, crv) {
            (Some(kty), Some(crv)) => {
                let key = &published["keys"][0];
                assert_eq!(kids(&published), [header["kid"].as_str().unwrap()]);
                assert_eq!(
                    (key["kty"].as_str(), key["crv"].as_str()),
                    (Some(kty), Some(crv))
                );
                assert_eq!(
                    (key["alg"].as_str(), key["use"].as_str()),
                    (Some(alg), Some("sig"))
                );
            }
            _ => {
                assert!(header.get("kid").is_none());
                assert_eq!(published, json!({"keys": []}));
            }
        }
    }
}

#[tokio::test]
async fn forged_tokens_are_auth002() {
    let s = with_alg("EdDSA").start();
    let (token, _) = s.user("forgery").await;
    let header = part(&token, 0);
    let kid = header["kid"].as_str().unwrap().to_owned();
    let claims = part(&token, 1);
    let published = jwks(&s).await["keys"][0].clone();
    let forge = |header: Value, key: &jsonwebtoken::EncodingKey| {
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let c = URL_SAFE_NO_PAD.encode(claims.to_string());
        let alg = match header["alg"].as_str() {
            Some("EdDSA") => jsonwebtoken::Algorithm::EdDSA,
            _ => jsonwebtoken::Algorithm::HS256,
        };
        let message = format!("{h}.{c}");
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
        format!("{message}.{signature}")
    };
    let hmac = |key: &[u8]| jsonwebtoken::EncodingKey::from_secret(key).unwrap();
    let public_x = URL_SAFE_NO_PAD
        .decode(published["x"].as_str().unwrap())
        .unwrap();
    // A key of our own, claiming the server's kid.
    let foreign = {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        let der = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
            .to_pkcs8_der()
            .unwrap();
        jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes())
    };
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let cases = [
        ("alg none", none),
        (
            "HS256 keyed with the published JWK",
            forge(
                json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
                &hmac(published.to_string().as_bytes()),
            ),
        ),
        (
            "HS256 keyed with the public key's bytes",
            forge(
                json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
                &hmac(&public_x),
            ),
        ),
        (
            "HS256 with the development secret",
            forge(
                json!({"alg": "HS256", "typ": "JWT"}),
                &hmac(SECRET.as_bytes()),
            ),
        ),
        (
            "an unknown kid",
            forge(
                json!({"alg": "EdDSA", "typ": "JWT", "kid": "no-such-kid"}),
                &foreign,
            ),
        ),
        (
            "a foreign key with our kid",
            forge(json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}), &foreign),
        ),
    ];
    for (name, forged) in cases {
        let r = s.get("/api/v1/users/me", Some(&forged)).await;
        assert_eq!((r.status.as_u16(), r.code()), (401, "AUTH002"), "{name}");
    }
    // The genuine token still works: the failures are the forgeries'.
    s.get("/api/v1/users/me", Some(&token)).await.ok(200);
}

#[tokio::test]
async fn a_rotation_while_two_instances_run_breaks_no_token_and_no_cached_key_set() {
    let dir = DataDir::new();
    let a = with_alg("EdDSA").dir(&dir).start();
    let b = with_alg("EdDSA").dir(&dir).start();
    let (old_token, _) = a.user("rotation").await;
    let old_kid = part(&old_token, 0)["kid"].as_str().unwrap().to_owned();
    // Both instances sign with the one active key and publish the same set.
    let (on_b, _) = b.user("rotation2").await;
    assert_eq!(part(&on_b, 0)["kid"], old_kid.as_str());
    assert_eq!(kids(&jwks(&a).await), kids(&jwks(&b).await));

    // An operator publishes the next key: it appears on both within a second,
    // ten minutes before it would sign, and nothing signs with it yet.
    let next = lines(&keys(&dir, "EdDSA", &["rotate"]));
    assert_eq!(next.len(), 1);
    let new_kid = next[0]["kid"].as_str().unwrap().to_owned();
    assert_eq!(next[0]["state"], "next");
    for s in [&a, &b] {
        let published = holds_from_then_on(Duration::from_secs(2), || async {
            kids(&jwks(s).await).contains(&new_kid)
        })
        .await;
        assert!(
            published.is_some_and(|at| at < Duration::from_secs(1)),
            "{published:?}"
        );
    }
    // What a verifier honouring max-age has cached from now on.
    let cached = kids(&jwks(&a).await);
    let (still_old, _) = a.user("rotation3").await;
    assert_eq!(part(&still_old, 0)["kid"], old_kid.as_str());

    // The key is made to sign (here at once, instead of after its ten minutes).
    let signing = lines(&keys(&dir, "EdDSA", &["rotate", "--now"]));
    assert_eq!(signing[0]["kid"], new_kid.as_str());
    assert_eq!(signing[0]["state"], "active");
    for s in [&a, &b] {
        let switched = holds_from_then_on(Duration::from_secs(2), || async {
            let (token, _) = tokens_for(s).await;
            part(&token, 0)["kid"] == new_kid.as_str()
        })
        .await;
        assert!(
            switched.is_some_and(|at| at < Duration::from_secs(1)),
            "{switched:?}"
        );
    }
    // Old tokens still verify everywhere; new ones carry a kid the cached set knows.
    for s in [&a, &b] {
        s.get("/api/v1/users/me", Some(&old_token)).await.ok(200);
        let (token, _) = tokens_for(s).await;
        let kid = part(&token, 0)["kid"].as_str().unwrap().to_owned();
        assert!(
            cached.contains(&kid),
            "{kid} not in the cached set {cached:?}"
        );
    }
    let listed = lines(&keys(&dir, "EdDSA", &["list"]));
    let state = |kid: &str| {
        listed
            .iter()
            .find(|k| k["kid"] == kid)
            .map(|k| k["state"].as_str().unwrap().to_owned())
    };
    assert_eq!(state(&old_kid).as_deref(), Some("retired"));
    assert_eq!(state(&new_kid).as_deref(), Some("active"));
}

/// A fresh login's tokens on `s`, for a user of their own.
pub(crate) async fn tokens_for(s: &Server) -> (String, String) {
    s.user(&format!("u{}", uuid::Uuid::new_v4().simple())[..20])
        .await
}

#[tokio::test]
async fn a_revoked_key_fails_on_every_instance_within_a_second_and_from_then_on() {
    let dir = DataDir::new();
    let a = with_alg("ES256").dir(&dir).start();
    let b = with_alg("ES256").dir(&dir).start();
    let (token, _) = a.user("revoked").await;
    let kid = part(&token, 0)["kid"].as_str().unwrap().to_owned();
    b.get("/api/v1/users/me", Some(&token)).await.ok(200);

    // Revoking the signing key makes another sign first: signing never stops.
    keys(&dir, "ES256", &["revoke", &kid]);
    for s in [&a, &b] {
        let refused = holds_from_then_on(Duration::from_secs(3), || async {
            s.get("/api/v1/users/me", Some(&token)).await.code() == "AUTH002"
        })
        .await;
        assert!(
            refused.is_some_and(|at| at < Duration::from_secs(1)),
            "{refused:?}"
        );
        assert!(!kids(&jwks(s).await).contains(&kid));
        let (fresh, _) = tokens_for(s).await;
        assert_ne!(part(&fresh, 0)["kid"], kid.as_str());
        s.get("/api/v1/users/me", Some(&fresh)).await.ok(200);
    }
    let out = keys(&dir, "ES256", &["revoke", "no-such-kid"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let logs = a.settled_logs().await;
    assert!(
        logs.iter()
            .all(|l| !l.to_string().contains("BEGIN PRIVATE"))
    );
}

#[tokio::test]
async fn the_keys_command_lists_and_rotates_and_private_keys_are_sealed_at_rest() {
    let dir = DataDir::new();
    let s = with_alg("EdDSA").dir(&dir).start();
    s.user("lister").await;
    let listed = lines(&keys(&dir, "EdDSA", &["list"]));
    assert_eq!(listed.len(), 1);
    let first = &listed[0];
    assert_eq!(
        (first["alg"].as_str(), first["state"].as_str()),
        (Some("EdDSA"), Some("active"))
    );
    assert!(first["created_at"].is_string());
    assert!(first["activates_at"].is_null(), "only a next key has one");
    let next = &lines(&keys(&dir, "EdDSA", &["rotate"]))[0];
    let at = time::OffsetDateTime::parse(
        next["activates_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let lead = at - time::OffsetDateTime::now_utc();
    assert!(
        lead > time::Duration::seconds(590),
        "published ahead: {lead}"
    );
    // A second rotation replaces the next key that never signed.
    let again = &lines(&keys(&dir, "EdDSA", &["rotate"]))[0];
    assert_ne!(again["kid"], next["kid"]);
    assert_eq!(lines(&keys(&dir, "EdDSA", &["list"])).len(), 2);

    // What the database holds of a private key is sealed: no PKCS#8 in the clear.
    let sealed = dir.query(if gatehouse_testkit::on_postgres() {
        "SELECT encode(private_key, 'hex') FROM signing_keys LIMIT 1"
    } else {
        "SELECT hex(private_key) FROM signing_keys LIMIT 1"
    });
    assert!(sealed.len() > 64, "a sealed key is stored: {sealed}");
    let pkcs8_ed25519_prefix = "302E020100300506032B657004220420";
    assert!(
        !sealed.to_uppercase().contains(pkcs8_ed25519_prefix),
        "{sealed}"
    );

    // With HS256 there are no stored keys to manage.
    let hs = cli(
        &[
            OsStr::new("--config"),
            shipped_config().as_os_str(),
            OsStr::new("keys"),
            OsStr::new("list"),
        ],
        &[
            ("GATEHOUSE__AUTH__SIGNING_ALGORITHM", "HS256"),
            ("GATEHOUSE__AUTH__JWT_SECRET", SECRET),
        ],
    );
    assert_eq!(hs.status.code(), Some(2), "{}", stderr(&hs));
}

#[tokio::test]
async fn two_tabs_refreshing_at_once_stay_logged_in_and_without_grace_reuse_revokes() {
    let s = Server::start();
    let (_, refresh) = s.user("twotabs").await;
    let exchange = |token: String| {
        s.post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": token}),
            None,
        )
    };
    let first = exchange(refresh.clone()).await;
    first.ok(200);
    // The second tab presents the same token a moment later: refused, no harm done.
    exchange(refresh.clone()).await.expect(401, "AUTH004");
    let next = first.body["refresh_token"].as_str().unwrap().to_owned();
    let access = first.body["access_token"].as_str().unwrap().to_owned();
    s.get("/api/v1/users/me", Some(&access)).await.ok(200);
    exchange(next).await.ok(200);

    // Both tabs at the same moment, again and again: one wins, the other is
    // refused, and the session lives on.
    for i in 0..10 {
        let (_, refresh) = s.user(&format!("racingtabs{i}")).await;
        let (one, two) = tokio::join!(exchange(refresh.clone()), exchange(refresh));
        let (won, lost) = match one.status.as_u16() {
            200 => (one, two),
            _ => (two, one),
        };
        won.ok(200);
        lost.expect(401, "AUTH004");
        let access = won.body["access_token"].as_str().unwrap();
        s.get("/api/v1/users/me", Some(access)).await.ok(200);
        let next = won.body["refresh_token"].as_str().unwrap().to_owned();
        exchange(next).await.ok(200);
    }

    let strict = Server::builder()
        .env("GATEHOUSE__AUTH__REFRESH_REUSE_GRACE_S", 0)
        .start();
    let (_, refresh) = strict.user("strict").await;
    let spend = |token: String| {
        strict.post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": token}),
            None,
        )
    };
    let rotated = spend(refresh.clone()).await;
    rotated.ok(200);
    spend(refresh).await.expect(401, "AUTH004");
    let access = rotated.body["access_token"].as_str().unwrap();
    strict
        .get("/api/v1/users/me", Some(access))
        .await
        .expect(401, "AUTH004");
}

#[tokio::test]
async fn the_login_route_refreshes_with_the_oauth2_refresh_grant() {
    let s = Server::start();
    let (_, refresh) = s.user("oauthclient").await;
    let form = |body: String| {
        s.request(Method::POST, "/api/v1/auth/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    let r = s
        .send(form(format!(
            "grant_type=refresh_token&refresh_token={refresh}"
        )))
        .await;
    r.ok(200);
    assert_eq!(r.body["token_type"], "bearer");
    assert_ne!(r.body["refresh_token"], refresh.as_str());
    s.send(form("grant_type=refresh_token".into()))
        .await
        .expect(422, "VAL001");
    s.send(form("grant_type=client_credentials".into()))
        .await
        .expect(422, "VAL001");
}

#[tokio::test]
async fn discovery_documents_are_built_from_the_public_url_and_never_limited() {
    let s = Server::builder()
        .env("GATEHOUSE__SERVER__PUBLIC_URL", "https://auth.example.com/")
        .env("GATEHOUSE__RATE_LIMIT__ROUTES__DEFAULT__LIMIT", 1)
        .start();
    for _ in 0..5 {
        s.get("/.well-known/jwks.json", None).await.ok(200);
        let meta = s.get("/.well-known/oauth-authorization-server", None).await;
        meta.ok(200);
        assert!(meta.header("ratelimit-limit").is_none());
        let m = &meta.body;
        assert_eq!(m["issuer"], "gatehouse");
        assert_eq!(
            m["token_endpoint"],
            "https://auth.example.com/api/v1/auth/login"
        );
        assert_eq!(
            m["jwks_uri"],
            "https://auth.example.com/.well-known/jwks.json"
        );
        assert_eq!(
            m["introspection_endpoint"],
            "https://auth.example.com/api/v1/admin/introspect"
        );
        assert_eq!(
            m["grant_types_supported"],
            json!(["password", "refresh_token"])
        );
    }
    let metrics = s.get("/metrics", None).await.text;
    assert!(
        metrics.contains("gatehouse_signing_key_age_seconds"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_hs256_token_is_refused_by_an_eddsa_server() {
    let hs = with_alg("HS256").start();
    let (hs_token, _) = hs.user("crossover").await;
    let ed = with_alg("EdDSA").dir(&hs.dir).start();
    ed.get("/api/v1/users/me", Some(&hs_token))
        .await
        .expect(401, "AUTH002");
}

#[tokio::test]
async fn another_key_encryption_secret_refuses_to_start_instead_of_signing_otherwise() {
    let s = with_alg("EdDSA").start();
    let (token, _) = s.user("sealed").await;
    let mut command = tokio::process::Command::new(crate::harness::binary());
    command
        .arg("--config")
        .arg(shipped_config())
        .envs(s.dir.env())
        .env("GATEHOUSE__SERVER__LISTEN", "127.0.0.1:0")
        .env(
            "GATEHOUSE__AUTH__KEY_ENCRYPTION_SECRET",
            "another-secret-of-at-least-32-bytes!",
        )
        .env_remove("GATEHOUSE_ENV")
        .env_remove("GATEHOUSE_CONFIG")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .expect("it exits instead of serving")
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wrong key-encryption secret"),
        "{}",
        stderr(&out)
    );
    // The instance with the right secret goes on.
    s.get("/api/v1/users/me", Some(&token)).await.ok(200);
}
