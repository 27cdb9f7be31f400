//! The second factor, seen from outside: TOTP enrolment through the
//! `otpauth://` URI (codes computed from it as an authenticator app does,
//! at real time), the login's second step with app and recovery codes,
//! replays, brute force across two instances, the privileged window and
//! re-authentication, the notice when MFA goes off, a password reset that
//! keeps MFA on, and the secret sealed at rest.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;
use serde_json::{Value, json};
use totp_rs::Totp;

use crate::email::{file_mails, link_token};
use crate::harness::{DataDir, PASSWORD, Reply, Server, eventually};

/// A password the policy accepts, other than [`PASSWORD`].
const NEW_PASSWORD: &str = "a brand new passphrase 42";

/// What an authenticator app holds: the key from the URI, and which time
/// steps this test has spent (the server accepts each step once).
pub(crate) struct App {
    totp: Totp,
    last_step: Option<u64>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl App {
    fn from_uri(uri: &str) -> Self {
        Self {
            totp: Totp::from_url(uri).expect("an otpauth URI an app can read"),
            last_step: None,
        }
    }

    /// A code the server has not seen yet: of the steps it accepts now (the
    /// previous, the current, the next), the earliest this app has not
    /// used, leaving out the previous one near the end of the current step
    /// (it would expire on the way). Waits for the next step when this app
    /// spent all three.
    async fn fresh_code(&mut self) -> String {
        loop {
            let now = unix_now();
            let step = now / 30;
            let mut candidates = vec![step, step + 1];
            if now % 30 < 25 {
                candidates.insert(0, step - 1);
            }
            if let Some(pick) = candidates
                .into_iter()
                .find(|s| self.last_step.is_none_or(|last| *s > last))
            {
                self.last_step = Some(pick);
                return self.totp.generate(pick * 30).to_string();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The code of the step spent last (a replay).
    fn last_code(&self) -> String {
        self.totp
            .generate(self.last_step.expect("a code was used") * 30)
            .to_string()
    }

    /// A code that is no step's the server accepts now.
    fn wrong_code(&self) -> String {
        let step = unix_now() / 30;
        let near: BTreeSet<String> = (step - 1..=step + 1)
            .map(|s| self.totp.generate(s * 30).to_string())
            .collect();
        (0..1_000_000)
            .map(|n| format!("{n:06}"))
            .find(|c| !near.contains(c))
            .unwrap()
    }
}

async fn send(s: &Server, method: Method, path: &str, token: &str, body: Option<Value>) -> Reply {
    let request = s.request(method, path).bearer_auth(token);
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    s.send(request).await
}

async fn enrol(s: &Server, access: &str) -> Reply {
    send(s, Method::POST, "/api/v1/users/me/mfa/totp", access, None).await
}

async fn confirm(s: &Server, access: &str, code: &str) -> Reply {
    send(
        s,
        Method::POST,
        "/api/v1/users/me/mfa/totp/confirm",
        access,
        Some(json!({"code": code})),
    )
    .await
}

async fn disable(s: &Server, access: &str, code: &str) -> Reply {
    send(
        s,
        Method::DELETE,
        "/api/v1/users/me/mfa",
        access,
        Some(json!({"code": code})),
    )
    .await
}

async fn reauthenticate(s: &Server, access: &str, body: Value) -> Reply {
    send(
        s,
        Method::POST,
        "/api/v1/auth/reauthenticate",
        access,
        Some(body),
    )
    .await
}

async fn login_mfa(s: &Server, mfa_token: &str, code: &str) -> Reply {
    s.post(
        "/api/v1/auth/login/mfa",
        json!({"mfa_token": mfa_token, "code": code}),
        None,
    )
    .await
}

/// The `mfa_token` of a password login that needs the second factor.
async fn first_step(s: &Server, login: &str, password: &str) -> String {
    let r = s.login(login, password).await;
    r.expect(403, "AUTH009");
    assert_eq!(r.body["error"]["methods"], json!(["totp", "recovery_code"]));
    assert!(r.body.get("access_token").is_none());
    r.body["error"]["mfa_token"].as_str().unwrap().to_owned()
}

/// The claims of an access token (its signature is the server's business).
pub(crate) fn claims(access: &str) -> Value {
    let payload = access.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn access_of(r: &Reply) -> String {
    r.ok(200);
    r.body["access_token"].as_str().unwrap().to_owned()
}

/// Registers `username`, logs in and turns TOTP on; returns the session's
/// access token, the app and the recovery codes.
pub(crate) async fn with_mfa(s: &Server, username: &str) -> (String, App, Vec<String>) {
    let (access, _) = s.user(username).await;
    let r = enrol(s, &access).await;
    r.ok(200);
    let mut app = App::from_uri(r.body["otpauth_uri"].as_str().unwrap());
    let code = app.fresh_code().await;
    let r = confirm(s, &access, &code).await;
    r.ok(200);
    let codes = r.body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    (access, app, codes)
}

#[tokio::test]
async fn enrol_confirm_and_log_in_with_app_and_recovery_codes_on_either_instance() {
    let dir = DataDir::new();
    let a = Server::builder().dir(&dir).start();
    let b = Server::builder().dir(&dir).start();
    let (access, _) = a.user("mfa_ada").await;
    let me = a.get("/api/v1/users/me", Some(&access)).await;
    assert_eq!(me.body["mfa_enabled"], false);

    let r = enrol(&a, &access).await;
    r.ok(200);
    let secret = r.body["secret"].as_str().unwrap();
    let uri = r.body["otpauth_uri"].as_str().unwrap();
    // 160 bits of base32 is 32 characters; the URI is what an app scans.
    assert!(secret.len() >= 32, "{secret}");
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert!(uri.contains(&format!("secret={secret}")), "{uri}");
    let mut app = App::from_uri(uri);
    assert_eq!(app.totp.digits(), 6);
    assert_eq!(app.totp.step(), 30);
    assert_eq!(app.totp.issuer(), Some("Gatehouse"));
    assert_eq!(app.totp.account_name(), "mfa_ada@example.com");

    // Pending: logins still need only the password, and a wrong code does not confirm.
    a.login("mfa_ada", PASSWORD).await.ok(200);
    let r = confirm(&a, &access, &app.wrong_code()).await;
    r.expect(422, "VAL001");
    assert_eq!(r.body["error"]["fields"][0]["field"], "code");
    let r = confirm(&b, &access, &app.fresh_code().await).await;
    r.ok(200);
    let codes: Vec<String> = r.body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    assert_eq!(codes.iter().collect::<BTreeSet<_>>().len(), 10);
    let me = b.get("/api/v1/users/me", Some(&access)).await;
    assert_eq!(me.body["mfa_enabled"], true);
    enrol(&a, &access).await.expect(409, "MFA001");
    confirm(&a, &access, &app.wrong_code())
        .await
        .expect(409, "MFA001");

    // The password alone opens no session now.
    let token = first_step(&a, "mfa_ada", PASSWORD).await;
    let r = a
        .post("/api/v1/auth/login/mfa", json!({"mfa_token": token}), None)
        .await;
    r.expect(422, "VAL001");
    assert_eq!(r.body["error"]["fields"][0]["field"], "code");
    let code = app.fresh_code().await;
    let r = login_mfa(&b, &token, &code).await;
    let mfa_access = access_of(&r);
    let c = claims(&mfa_access);
    assert_eq!(c["amr"], json!(["pwd", "mfa"]));
    assert!(c["auth_time"].as_i64().unwrap() <= c["iat"].as_i64().unwrap());
    a.get("/api/v1/users/me", Some(&mfa_access)).await.ok(200);
    // The token is spent, and so is the code, on both instances.
    login_mfa(&a, &token, &code).await.expect(401, "AUTH010");
    for s in [&a, &b] {
        let token = first_step(s, "mfa_ada@example.com", PASSWORD).await;
        login_mfa(s, &token, &code).await.expect(401, "AUTH010");
        login_mfa(s, &token, &app.last_code())
            .await
            .expect(401, "AUTH010");
    }

    // A recovery code works once, however it is typed.
    let token = first_step(&b, "mfa_ada", PASSWORD).await;
    let typed = codes[0].to_uppercase().replace('-', " ");
    let r = login_mfa(&b, &token, &typed).await;
    let recovered = access_of(&r);
    assert_eq!(claims(&recovered)["amr"], json!(["pwd", "mfa"]));
    let token = first_step(&a, "mfa_ada", PASSWORD).await;
    login_mfa(&a, &token, &codes[0])
        .await
        .expect(401, "AUTH010");
    // A refreshed session keeps its `amr`.
    let refreshed = a
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": r.body["refresh_token"]}),
            None,
        )
        .await;
    assert_eq!(claims(&access_of(&refreshed))["amr"], json!(["pwd", "mfa"]));
    // Unusable tokens are all the same refusal.
    for bogus in ["", "nope", &"x".repeat(5000)] {
        login_mfa(&a, bogus, &codes[1]).await.expect(401, "AUTH010");
    }
}

#[tokio::test]
async fn two_logins_racing_with_one_code_open_one_session() {
    let s = Server::start();
    let (_, mut app, codes) = with_mfa(&s, "racer").await;
    // Each recovery code, and then one app code, raced by two logins at once.
    let mut races: Vec<String> = codes.clone();
    races.push(app.fresh_code().await);
    for code in races {
        let (one, two) = (
            first_step(&s, "racer", PASSWORD).await,
            first_step(&s, "racer", PASSWORD).await,
        );
        let (x, y) = tokio::join!(login_mfa(&s, &one, &code), login_mfa(&s, &two, &code));
        let mut statuses = [x.status, y.status];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 401], "{code}");
    }
}

#[tokio::test]
async fn wrong_codes_kill_the_token_and_lock_the_account_across_instances() {
    gatehouse_testkit::require_redis!();
    let dir = DataDir::new();
    let prefix = format!("gatehouse-it:{}:", uuid::Uuid::new_v4().simple());
    let start = || {
        Server::builder()
            .dir(&dir)
            .env("GATEHOUSE__RATE_LIMIT__BACKEND", "redis")
            .env(
                "GATEHOUSE__RATE_LIMIT__REDIS_URL",
                gatehouse_testkit::redis_url(),
            )
            .env("GATEHOUSE__RATE_LIMIT__REDIS_PREFIX", &prefix)
            .env("GATEHOUSE__AUTH__MAX_FAILED_LOGINS", 8)
            .start()
    };
    let (a, b) = (start(), start());
    let (_, mut app, _) = with_mfa(&a, "guessed").await;
    let wrong = app.wrong_code();

    // Five wrong codes kill a token: even the right code is refused after.
    let token = first_step(&a, "guessed", PASSWORD).await;
    for i in 0..5 {
        let s = if i % 2 == 0 { &a } else { &b };
        login_mfa(s, &token, &wrong).await.expect(401, "AUTH010");
    }
    let right = app.fresh_code().await;
    login_mfa(&b, &token, &right).await.expect(401, "AUTH010");

    // The password step does not count; the wrong codes do, on both
    // instances: three more lock the account everywhere.
    let token = first_step(&b, "guessed", PASSWORD).await;
    for s in [&b, &a, &b] {
        login_mfa(s, &token, &wrong).await.expect(401, "AUTH010");
    }
    for s in [&a, &b] {
        login_mfa(s, &token, &right).await.expect(429, "AUTH006");
        s.login("guessed", PASSWORD).await.expect(429, "AUTH006");
    }
    let failures: usize = [&a, &b]
        .iter()
        .map(|s| {
            s.json_logs()
                .iter()
                .filter(|l| l["event"] == "mfa.failure")
                .count()
        })
        .sum();
    assert_eq!(failures, 8);
}

#[tokio::test]
async fn privileged_changes_need_a_recent_password_check() {
    // A window of two seconds: long enough for a request, short enough to wait out.
    let s = Server::builder()
        .env("GATEHOUSE__AUTH__REAUTH_WINDOW_S", 2)
        .start();
    let (access, refresh) = s.user("careful").await;
    let logged_in_at = claims(&access)["auth_time"].as_i64().unwrap();
    // Asking for the address the account has is an email change that changes
    // nothing: privileged, and harmless to repeat.
    let same_email = || async {
        send(
            &s,
            Method::PUT,
            "/api/v1/users/me",
            &access,
            Some(json!({"email": "careful@example.com"})),
        )
        .await
    };
    same_email().await.ok(200);
    enrol(&s, &access).await.ok(200);
    let window_closes = || async {
        eventually(Duration::from_secs(10), || async {
            same_email().await.code() == "AUTH012"
        })
        .await
    };
    assert!(window_closes().await, "the window never closed");
    for (method, path) in [
        (Method::POST, "/api/v1/users/me/mfa/totp"),
        (Method::DELETE, "/api/v1/users/me"),
    ] {
        send(&s, method, path, &access, None)
            .await
            .expect(403, "AUTH012");
    }
    // Not privileged: a new username.
    send(
        &s,
        Method::PUT,
        "/api/v1/users/me",
        &access,
        Some(json!({"username": "careful_2"})),
    )
    .await
    .ok(200);

    reauthenticate(&s, &access, json!({"password": "not my password"}))
        .await
        .expect(403, "AUTH005");
    reauthenticate(&s, &access, json!({}))
        .await
        .expect(422, "VAL001");
    reauthenticate(&s, &access, json!({"password": PASSWORD}))
        .await
        .ok(204);
    let r = enrol(&s, &access).await;
    r.ok(200);
    let mut app = App::from_uri(r.body["otpauth_uri"].as_str().unwrap());
    // Confirming is not privileged: it works once the window has closed.
    assert!(window_closes().await);
    confirm(&s, &access, &app.fresh_code().await).await.ok(200);

    // With MFA on, re-authentication needs a code too.
    reauthenticate(&s, &access, json!({"password": PASSWORD}))
        .await
        .expect(422, "VAL001");
    reauthenticate(
        &s,
        &access,
        json!({"password": PASSWORD, "code": app.wrong_code()}),
    )
    .await
    .expect(401, "AUTH010");
    same_email().await.expect(403, "AUTH012");
    reauthenticate(
        &s,
        &access,
        json!({"password": PASSWORD, "code": app.fresh_code().await}),
    )
    .await
    .ok(204);
    let r = send(
        &s,
        Method::PUT,
        "/api/v1/users/me",
        &access,
        Some(json!({"email": "careful.new@example.com"})),
    )
    .await;
    r.ok(200);
    assert_eq!(r.body["pending_email"], "careful.new@example.com");
    // Tokens refreshed from now on carry the new password check.
    let r = s
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": refresh}),
            None,
        )
        .await;
    let renewed = claims(&access_of(&r))["auth_time"].as_i64().unwrap();
    assert!(renewed >= logged_in_at + 2, "{renewed} vs {logged_in_at}");
}

#[tokio::test]
async fn turning_mfa_off_sends_the_notice_and_new_recovery_codes_replace_the_old() {
    let dir = DataDir::new();
    let s = Server::builder().dir(&dir).start();
    let (access, mut app, old_codes) = with_mfa(&s, "switcher").await;

    let r = send(
        &s,
        Method::POST,
        "/api/v1/users/me/mfa/recovery-codes",
        &access,
        Some(json!({"code": app.fresh_code().await})),
    )
    .await;
    r.ok(200);
    let new_codes: Vec<String> = r.body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(new_codes.len(), 10);
    let token = first_step(&s, "switcher", PASSWORD).await;
    login_mfa(&s, &token, &old_codes[0])
        .await
        .expect(401, "AUTH010");
    login_mfa(&s, &token, &new_codes[0]).await.ok(200);

    let r = disable(&s, &access, &app.wrong_code()).await;
    r.expect(422, "VAL001");
    assert_eq!(r.body["error"]["fields"][0]["field"], "code");
    disable(&s, &access, &new_codes[1]).await.ok(204);
    disable(&s, &access, &new_codes[2])
        .await
        .expect(409, "MFA001");
    let r = s.login("switcher", PASSWORD).await;
    assert_eq!(claims(&access_of(&r))["amr"], json!(["pwd"]));
    let me = s.get("/api/v1/users/me", Some(&access)).await;
    assert_eq!(me.body["mfa_enabled"], false);

    let arrived = eventually(Duration::from_secs(10), || async {
        file_mails(&dir)
            .iter()
            .any(|(_, m)| m.subject.contains("Two-step verification was turned off"))
    })
    .await;
    assert!(arrived, "no notice arrived");
    let events: Vec<Value> = s
        .settled_logs()
        .await
        .into_iter()
        .filter(|l| l["event"].as_str().is_some_and(|e| e.starts_with("mfa.")))
        .collect();
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    // The old recovery code at login, the wrong code at removal.
    assert_eq!(
        names,
        ["mfa.enabled", "mfa.failure", "mfa.failure", "mfa.disabled"]
    );
}

#[tokio::test]
async fn mfa_survives_a_password_reset_and_its_secret_is_sealed_at_rest() {
    let dir = DataDir::new();
    let s = Server::builder().dir(&dir).start();
    let (_, mut app, codes) = with_mfa(&s, "forgetful").await;
    let secret = app.totp.secret().to_base32();
    let raw_secret = app.totp.secret().as_ref().to_vec();

    s.post(
        "/api/v1/auth/password-reset/request",
        json!({"email": "forgetful@example.com"}),
        None,
    )
    .await
    .ok(202);
    let mut link = None;
    let arrived = eventually(Duration::from_secs(10), || {
        let found = file_mails(&dir).into_iter().find(|(_, m)| {
            m.text
                .as_deref()
                .is_some_and(|t| t.contains("reset-password"))
        });
        link = found.map(|(_, m)| link_token(&m, "http://127.0.0.1:8080", "reset-password"));
        std::future::ready(link.is_some())
    })
    .await;
    assert!(arrived, "no reset link arrived");
    s.post(
        "/api/v1/auth/password-reset/confirm",
        json!({"token": link.unwrap(), "new_password": NEW_PASSWORD}),
        None,
    )
    .await
    .ok(204);
    let token = first_step(&s, "forgetful", NEW_PASSWORD).await;
    login_mfa(&s, &token, &app.fresh_code().await).await.ok(200);

    // Neither the secret (raw or base32) nor a recovery code is in the store.
    let stored: Vec<u8> = match dir.postgres() {
        Some(pg) => pg
            .query(
                "SELECT string_agg(coalesce(encode(totp_secret, 'escape'), '') || \
                 coalesce(encode(totp_secret, 'hex'), ''), ',') FROM users",
            )
            .into_bytes(),
        None => {
            let mut bytes = std::fs::read(dir.db()).unwrap();
            let wal = dir.db().with_extension("db-wal");
            bytes.extend(std::fs::read(wal).unwrap_or_default());
            bytes
        }
    };
    let hex: String = raw_secret.iter().map(|b| format!("{b:02x}")).collect();
    let contains = |needle: &[u8]| stored.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(&raw_secret), "the raw secret is stored");
    assert!(!contains(secret.as_bytes()), "the base32 secret is stored");
    assert!(!contains(hex.as_bytes()), "the secret is stored in hex");
    for code in &codes {
        assert!(!contains(code.as_bytes()), "a recovery code is stored");
    }
}

/// Enrolment and removal are for the caller's session only.
#[tokio::test]
async fn the_mfa_routes_need_a_live_session_and_a_valid_body() {
    let s = Server::start();
    let (access, _) = s.user("bodies").await;
    for (method, path) in [
        (Method::POST, "/api/v1/users/me/mfa/totp"),
        (Method::POST, "/api/v1/users/me/mfa/totp/confirm"),
        (Method::DELETE, "/api/v1/users/me/mfa"),
        (Method::POST, "/api/v1/users/me/mfa/recovery-codes"),
        (Method::POST, "/api/v1/auth/reauthenticate"),
    ] {
        let r = s
            .send(
                s.request(method.clone(), path)
                    .json(&json!({"code": "123456"})),
            )
            .await;
        r.expect(401, "AUTH002");
    }
    confirm(&s, &access, "123456").await.expect(409, "MFA001");
    disable(&s, &access, "123456").await.expect(409, "MFA001");
    let r = send(
        &s,
        Method::POST,
        "/api/v1/users/me/mfa/totp/confirm",
        &access,
        Some(json!({"code": 123456})),
    )
    .await;
    r.expect(400, "REQ003");
    assert!(!r.text.contains("123456"));
    send(&s, Method::POST, "/api/v1/auth/logout", &access, None)
        .await
        .ok(204);
    enrol(&s, &access).await.expect(401, "AUTH004");
}
