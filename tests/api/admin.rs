//! Admin keys and introspection, seen from outside: keys made and revoked
//! with `gatehouse admin-keys` beside two running instances, the scope
//! check, and RFC 7662 introspection that turns inactive the moment a
//! session is revoked, on either instance.

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use crate::harness::{DataDir, PASSWORD, Reply, Server, cli, shipped_config, stderr};
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

    // What the command did is in the audit log, once, with the key's name.
    let (_, auditor) = create(&dir, "auditor", "audit:read");
    let events = audit(&b, &auditor, "event=admin_key.created").await;
    let named: Vec<_> = events.iter().map(|e| &e["details"]["admin_name"]).collect();
    assert_eq!(
        named,
        [
            &json!("auditor"),
            &json!("reader"),
            &json!("resource server")
        ]
    );
    let revoked = audit(&a, &auditor, "event=admin_key.revoked").await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["details"]["admin_key"], id.as_str());
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

    // Each change is in the audit log with who made it, the command's too.
    crate::signing::keys(&dir, "EdDSA", &["rotate", "--now"]);
    let (_, auditor) = create(&dir, "auditor", "audit:read");
    let by = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| {
                let d = &e["details"];
                format!(
                    "{} {}",
                    d["by"].as_str().or(d["admin_name"].as_str()).unwrap_or("-"),
                    e["event"]
                )
            })
            .collect()
    };
    let rotated = audited(&a, &auditor, "event=key.rotated", &["key.rotated"; 2]).await;
    assert_eq!(
        by(&rotated),
        [
            r#"gatehouse keys "key.rotated""#,
            r#"admin API "key.rotated""#
        ]
    );
    let revoked = audit(&b, &auditor, "event=key.revoked").await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["details"]["kid"], old.as_str());
    let actions = audit(&b, &auditor, "event=admin.keys_rotate").await;
    assert_eq!(by(&actions), [r#"key custodian "admin.keys_rotate""#; 2]);
}

/// `method path` on `s` with the admin key `key`.
async fn admin(s: &Server, method: Method, path: &str, key: &str) -> Reply {
    s.send(s.request(method, path).bearer_auth(key)).await
}

/// The ids of the users on a page.
fn ids(page: &Reply) -> Vec<String> {
    page.ok(200);
    page.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn users_are_searched_by_prefix_and_paged_once_each_under_inserts() {
    let dir = DataDir::new();
    let a = Server::builder().dir(&dir).start();
    let (_, reader) = create(&dir, "support desk", "users:read");
    let (_, other) = create(&dir, "gateway", "introspect");
    for name in ["Ada_L", "adam", "bob", "zed_ada"] {
        a.register(name).await.ok(201);
    }
    let search = async |query: &str| {
        let path = format!("/api/v1/admin/users?query={query}");
        admin(&a, Method::GET, &path, &reader).await
    };
    let names = |r: &Reply| -> Vec<String> {
        r.ok(200);
        let mut names: Vec<String> = r.body["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    // A prefix of the username or of the email, ignoring case; never a
    // match inside a name.
    assert_eq!(names(&search("ad").await), ["Ada_L", "adam"]);
    assert_eq!(names(&search("ADA").await), ["Ada_L", "adam"]);
    assert_eq!(names(&search("adam%40example").await), ["adam"]);
    assert_eq!(names(&search("zed").await), ["zed_ada"]);
    assert!(names(&search("%25").await).is_empty(), "a wildcard matched");
    assert!(names(&search("nobody").await).is_empty());
    let one = &search("bob").await.body["users"][0];
    assert_eq!(one["email"], "bob@example.com");
    assert_eq!(one["roles"], json!([]));
    assert_eq!(one["locked_until"], Value::Null);
    assert_eq!(one["last_login_at"], Value::Null);
    assert_eq!(one["active_sessions"], 0);

    // Scopes: a key without users:read, a user's token and no key at all.
    let (token, _) = a.user("not_an_admin").await;
    admin(&a, Method::GET, "/api/v1/admin/users", &other)
        .await
        .expect(403, "AUTH011");
    admin(&a, Method::GET, "/api/v1/admin/users", &token)
        .await
        .expect(401, "AUTH002");
    a.get("/api/v1/admin/users", None)
        .await
        .expect(401, "AUTH002");
    for bad in ["limit=0", "limit=201", "cursor=%21%21", "query=a%00"] {
        let path = format!("/api/v1/admin/users?{bad}");
        let r = admin(&a, Method::GET, &path, &reader).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.text);
    }
    let r = admin(&a, Method::GET, "/api/v1/admin/users?limit=ten", &reader).await;
    assert_eq!(r.status, 400, "{}", r.text);

    // Paging three at a time while users register between the pages: every
    // user that was there at the start is visited exactly once.
    for n in 0..10 {
        a.register(&format!("page_{n:02}")).await.ok(201);
    }
    let at_start = ids(&admin(&a, Method::GET, "/api/v1/admin/users?limit=200", &reader).await);
    let mut visited = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        assert!(page < 20, "the pages never end");
        let path = match &cursor {
            Some(c) => format!("/api/v1/admin/users?limit=3&cursor={c}"),
            None => "/api/v1/admin/users?limit=3".to_owned(),
        };
        let r = admin(&a, Method::GET, &path, &reader).await;
        visited.extend(ids(&r));
        a.register(&format!("late_{page:02}")).await.ok(201);
        match r.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut unique = visited.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), visited.len(), "a user was listed twice");
    for id in &at_start {
        assert!(visited.contains(id), "{id} was skipped");
    }
}

#[tokio::test]
async fn operators_manage_users_and_every_instance_follows_at_once() {
    let dir = DataDir::new();
    let server = || {
        Server::builder()
            .dir(&dir)
            .env("GATEHOUSE__AUTH__MAX_FAILED_LOGINS", 3)
            .start()
    };
    let (a, b) = (server(), server());
    let (_, reader) = create(&dir, "support desk", "users:read");
    let (_, writer) = create(&dir, "trust and safety", "users:write");
    let (token, _) = a.user("managed").await;
    let (other_token, _) = a.user("bystander").await;
    let me = a.get("/api/v1/users/me", Some(&token)).await;
    let id = me.body["id"].as_str().unwrap().to_owned();
    let path = |action: &str| format!("/api/v1/admin/users/{id}{action}");
    let detail = async || {
        let r = admin(&a, Method::GET, &path(""), &reader).await;
        r.ok(200);
        r.body
    };

    let seen = detail().await;
    assert_eq!(seen["username"], "managed");
    assert_eq!(seen["active_sessions"], 1);
    assert!(seen["last_login_at"].is_string(), "{seen}");
    for action in [
        "/deactivate",
        "/reactivate",
        "/logout",
        "/unlock",
        "/password-reset",
    ] {
        admin(&a, Method::POST, &path(action), &reader)
            .await
            .expect(403, "AUTH011");
    }
    let nobody = "/api/v1/admin/users/no-such-user";
    admin(&a, Method::GET, nobody, &reader)
        .await
        .expect(404, "NOT001");
    admin(&a, Method::POST, &format!("{nobody}/logout"), &writer)
        .await
        .expect(404, "NOT001");

    // Logged out everywhere: refused by both instances from the next
    // request on; the bystander is untouched.
    admin(&a, Method::POST, &path("/logout"), &writer)
        .await
        .ok(204);
    holds(&[&a, &b], Duration::from_secs(2), async |s| {
        s.get("/api/v1/users/me", Some(&token)).await.status == 401
            && s.get("/api/v1/users/me", Some(&other_token)).await.status == 200
    })
    .await;
    assert_eq!(detail().await["active_sessions"], 0);

    // Deactivated: no login, on either instance, until reactivated.
    let fresh = a.login("managed", PASSWORD).await;
    fresh.ok(200);
    let fresh = fresh.body["access_token"].as_str().unwrap().to_owned();
    admin(&b, Method::POST, &path("/deactivate"), &writer)
        .await
        .ok(204);
    holds(&[&a, &b], Duration::from_secs(1), async |s| {
        s.get("/api/v1/users/me", Some(&fresh)).await.status == 401
    })
    .await;
    for s in [&a, &b] {
        s.login("managed", PASSWORD).await.expect(401, "AUTH001");
    }
    assert_eq!(detail().await["is_active"], false);
    admin(&a, Method::POST, &path("/reactivate"), &writer)
        .await
        .ok(204);
    for s in [&a, &b] {
        s.login("managed", PASSWORD).await.ok(200);
    }

    // Roles: checked, shown, and in the tokens issued from then on.
    let roles = |body: Value| {
        let a = &a;
        let writer = &writer;
        let path = path("/roles");
        async move {
            a.send(
                a.request(Method::PUT, &path)
                    .bearer_auth(writer)
                    .json(&body),
            )
            .await
        }
    };
    let r = roles(json!({"roles": ["support", "billing:read", "support"]})).await;
    r.ok(200);
    assert_eq!(r.body["roles"], json!(["support", "billing:read"]));
    assert_eq!(r.body["id"], id.as_str());
    for bad in [
        json!({"roles": ["Admin"]}),
        json!({"roles": "support"}),
        json!({}),
    ] {
        let r = roles(bad.clone()).await;
        assert!([400, 422].contains(&r.status.as_u16()), "{bad}: {}", r.text);
    }
    let login = b.login("managed", PASSWORD).await;
    let access = login.body["access_token"].as_str().unwrap();
    assert_eq!(
        crate::mfa::claims(access)["roles"],
        json!(["support", "billing:read"])
    );

    // A lock from wrong passwords shows, and an operator lifts it for
    // every instance.
    for _ in 0..3 {
        a.login("managed", "not the password")
            .await
            .expect(401, "AUTH001");
    }
    a.login("managed", PASSWORD).await.expect(429, "AUTH006");
    assert!(detail().await["locked_until"].is_string());
    admin(&a, Method::POST, &path("/unlock"), &writer)
        .await
        .ok(204);
    a.login("managed", PASSWORD).await.ok(200);
    assert_eq!(detail().await["locked_until"], Value::Null);

    // A reset link on its way, to the account's address.
    admin(&b, Method::POST, &path("/password-reset"), &writer)
        .await
        .ok(202);
    let queued = a.dir.query(
        "SELECT CAST(count(*) AS TEXT) FROM outbox WHERE kind = 'reset_password' \
         AND recipient = 'managed@example.com'",
    );
    assert_eq!(queued, "1");

    // Each action is a security event naming the key.
    let logged = a.settled_logs().await;
    let logged_b = b.settled_logs().await;
    for action in ["logout", "reactivate", "set_roles", "unlock"] {
        let event = format!("admin.{action}");
        let found = logged.iter().find(|l| l["event"] == event.as_str());
        let found = found.unwrap_or_else(|| panic!("no {event}"));
        assert_eq!(found["admin_name"], "trust and safety");
        assert_eq!(found["user_id"], id.as_str());
    }
    for action in ["deactivate", "password_reset"] {
        let event = format!("admin.{action}");
        assert!(
            logged_b.iter().any(|l| l["event"] == event.as_str()),
            "no {event}"
        );
    }
}

#[tokio::test]
async fn with_shared_limits_a_lock_shows_and_lifts_on_every_instance() {
    gatehouse_testkit::require_redis_server!();
    let redis = crate::harness::PrivateRedis::start();
    let dir = DataDir::new();
    let server = || {
        Server::builder()
            .dir(&dir)
            .env("GATEHOUSE__RATE_LIMIT__BACKEND", "redis")
            .env("GATEHOUSE__RATE_LIMIT__REDIS_URL", redis.url())
            .env("GATEHOUSE__AUTH__MAX_FAILED_LOGINS", 3)
            .start()
    };
    let (a, b) = (server(), server());
    let (_, key) = create(&dir, "support desk", "users:read,users:write");
    let id = a.register("guessed_at").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Locked through one instance, so seen and refused by the other.
    for _ in 0..3 {
        a.login("guessed_at", "not the password")
            .await
            .expect(401, "AUTH001");
    }
    b.login("guessed_at", PASSWORD).await.expect(429, "AUTH006");
    let path = format!("/api/v1/admin/users/{id}");
    let r = admin(&b, Method::GET, &path, &key).await;
    r.ok(200);
    assert!(r.body["locked_until"].is_string(), "{}", r.text);

    admin(&b, Method::POST, &format!("{path}/unlock"), &key)
        .await
        .ok(204);
    let r = admin(&a, Method::GET, &path, &key).await;
    assert_eq!(r.body["locked_until"], Value::Null, "{}", r.text);
    a.login("guessed_at", PASSWORD).await.ok(200);
}

/// How many rows of the store mention `needle` anywhere, over every table
/// (PostgreSQL: each row as text), or the byte offsets where the SQLite
/// file holds it (free pages included).
fn traces(dir: &DataDir, needle: &str) -> String {
    match dir.postgres() {
        Some(pg) => {
            let tables = [
                "users",
                "sessions",
                "spent_refresh_tokens",
                "invalidations",
                "signing_keys",
                "email_links",
                "outbox",
                "recovery_codes",
                "mfa_challenges",
                "admin_keys",
                "audit_events",
            ];
            let rows: Vec<String> = tables
                .iter()
                .map(|t| format!("SELECT t::text AS r FROM {t} t"))
                .collect();
            pg.query(&format!(
                "SELECT CAST(count(*) AS TEXT) FROM ({}) x WHERE r ILIKE '%{needle}%'",
                rows.join(" UNION ALL ")
            ))
        }
        None => {
            let mut bytes = std::fs::read(dir.db()).unwrap();
            bytes.extend(std::fs::read(dir.db().with_extension("db-wal")).unwrap_or_default());
            let found = bytes
                .windows(needle.len())
                .filter(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
                .count();
            found.to_string()
        }
    }
}

#[tokio::test]
async fn an_operator_removes_a_second_factor_and_erases_a_user_without_a_trace() {
    let dir = DataDir::new();
    let mut a = Server::builder().dir(&dir).start();
    let b = Server::builder().dir(&dir).start();
    let (_, key) = create(&dir, "privacy desk", "users:read,users:write");
    let (access, _app, _codes) = crate::mfa::with_mfa(&a, "forgotten_person").await;
    let id = a.get("/api/v1/users/me", Some(&access)).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/admin/users/{id}");

    // Lost the phone and the codes: the second factor goes, with a notice.
    let (_, reader) = create(&dir, "read only", "users:read");
    admin(&a, Method::DELETE, &format!("{path}/mfa"), &reader)
        .await
        .expect(403, "AUTH011");
    admin(&a, Method::DELETE, &format!("{path}/mfa"), &key)
        .await
        .ok(204);
    let r = admin(&b, Method::GET, &path, &key).await;
    assert_eq!(r.body["mfa_enabled"], false, "{}", r.text);
    b.login("forgotten_person", PASSWORD).await.ok(200);
    let notices = dir.query(
        "SELECT CAST(count(*) AS TEXT) FROM outbox WHERE kind = 'mfa_disabled' \
         AND recipient = 'forgotten_person@example.com'",
    );
    assert_eq!(notices, "1");
    admin(&a, Method::DELETE, &format!("{path}/mfa"), &key)
        .await
        .ok(204);

    // Erased: its tokens stop working everywhere at once, the login is
    // unknown, and the name is free again.
    let (other, _) = a.user("stays_around").await;
    admin(&b, Method::POST, &format!("{path}/password-reset"), &key)
        .await
        .ok(202);
    admin(&b, Method::DELETE, &path, &key).await.ok(204);
    holds(&[&a, &b], Duration::from_secs(2), async |s| {
        s.get("/api/v1/users/me", Some(&access)).await.status == 401
            && s.get("/api/v1/users/me", Some(&other)).await.status == 200
    })
    .await;
    admin(&a, Method::GET, &path, &key)
        .await
        .expect(404, "NOT001");
    admin(&a, Method::DELETE, &path, &key)
        .await
        .expect(404, "NOT001");
    let r = admin(&a, Method::GET, "/api/v1/admin/users?query=forgotten", &key).await;
    assert_eq!(r.body["users"], json!([]), "{}", r.text);

    // Nothing personal is left in the store: not the address, not the
    // username, in any table (and, on SQLite, nowhere in the file once the
    // servers have stopped).
    drop(b);
    a.terminate();
    for needle in ["forgotten_person", "forgotten_person@example.com"] {
        assert_eq!(traces(&dir, needle), "0", "{needle} is still stored");
    }
    assert_ne!(traces(&dir, "stays_around"), "0", "the check sees nothing");
    // What is left of them in the audit log is their id.
    let a = Server::builder().dir(&dir).start();
    let (_, auditor) = create(&dir, "auditor", "audit:read");
    let left = audit(&a, &auditor, &format!("user_id={id}")).await;
    assert!(left.len() >= 4, "{left:?}");
    assert!(left.iter().all(|e| e["user_id"] == id.as_str()));
    assert_eq!(left[0]["event"], "admin.erase");
    assert_eq!(left[0]["details"]["admin_name"], "privacy desk");
    // The name is unknown from then on (and typing it is a new event).
    a.login("forgotten_person", PASSWORD)
        .await
        .expect(401, "AUTH001");
}

/// The stored events `query` selects, newest first, all pages.
async fn audit(s: &Server, key: &str, query: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = admin(
            s,
            Method::GET,
            &format!("/api/v1/admin/audit?{query}&limit=3{cursor}"),
            key,
        )
        .await;
        r.ok(200);
        events.extend(r.body["events"].as_array().unwrap().iter().cloned());
        match r.body["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return events,
        }
    }
}

/// The names of `events`, in order.
fn names(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect()
}

/// Polls `s` until the events `query` selects are named `want`, newest first.
async fn audited(s: &Server, key: &str, query: &str, want: &[&str]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = audit(s, key, query).await;
        if names(&events) == want || Instant::now() > deadline {
            assert_eq!(names(&events), want, "{query}: {events:?}");
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_audit_log_keeps_who_did_what_from_every_instance() {
    let dir = DataDir::new();
    let a = Server::builder().dir(&dir).start();
    let b = Server::builder().dir(&dir).start();
    let (_, key) = create(&dir, "security desk", "audit:read,users:write");
    let (_, helpdesk) = create(&dir, "helpdesk", "users:read,users:write");
    let (token, _) = a.user("audited").await;
    let id = a.get("/api/v1/users/me", Some(&token)).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();

    admin(&a, Method::GET, "/api/v1/admin/audit", &helpdesk)
        .await
        .expect(403, "AUTH011");
    admin(&a, Method::GET, "/api/v1/admin/audit", &token)
        .await
        .expect(401, "AUTH002");

    // A refused login on B: stored with the name typed, the client and the request.
    let refused = b.login("Audited", "not the password").await;
    refused.expect(401, "AUTH001");
    let failures = audited(&a, &key, "event=login.failure", &["login.failure"]).await;
    let failure = &failures[0];
    assert_eq!(
        failure["details"]["login"], "Audited",
        "as typed: {failure}"
    );
    assert_eq!(failure["details"]["reason"], "wrong_password", "{failure}");
    assert_eq!(failure["ip"], "127.0.0.1");
    assert_eq!(
        failure["request_id"].as_str(),
        refused.header("x-request-id"),
        "{failure}"
    );
    assert!(!failure.to_string().contains("not the password"));

    // The user's own actions and an operator's, by the user, newest first.
    a.post("/api/v1/auth/logout", json!({}), Some(&token))
        .await
        .ok(204);
    let path = format!("/api/v1/admin/users/{id}");
    admin(&b, Method::POST, &format!("{path}/deactivate"), &helpdesk)
        .await
        .ok(204);
    let query = format!("user_id={id}");
    let events = audited(
        &b,
        &key,
        &query,
        &[
            "admin.deactivate",
            "session.revoked",
            "session.created",
            "login.success",
            "user.registered",
        ],
    )
    .await;
    assert_eq!(events[0]["details"]["admin_name"], "helpdesk");
    let at = |e: &Value| time::OffsetDateTime::parse(e["at"].as_str().unwrap(), &Rfc3339).unwrap();
    assert!(
        events.windows(2).all(|w| at(&w[0]) >= at(&w[1])),
        "{events:?}"
    );
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");

    // Filters combine; `since` cuts at a time; bad filters are refused.
    let since = events[1]["at"].as_str().unwrap();
    let recent = audit(&a, &key, &format!("{query}&since={since}")).await;
    assert!(
        names(&recent).starts_with(&["admin.deactivate", "session.revoked"]),
        "{recent:?}"
    );
    assert!(!names(&recent).contains(&"user.registered"));
    for bad in [
        "since=yesterday",
        "limit=0",
        "limit=201",
        "cursor=%2F%2F",
        "event=a%00",
    ] {
        let r = admin(&a, Method::GET, &format!("/api/v1/admin/audit?{bad}"), &key).await;
        r.expect(422, "VAL001");
        assert!(!r.text.contains("yesterday"), "{}", r.text);
    }
    let r = admin(&a, Method::GET, "/api/v1/admin/audit?limit=ten", &key).await;
    r.expect(400, "REQ003");
}

#[tokio::test]
async fn audit_pages_visit_each_event_once_while_new_ones_arrive() {
    let dir = DataDir::new();
    let a = Server::builder().dir(&dir).start();
    let (_, key) = create(&dir, "auditor", "audit:read");
    for n in 0..7 {
        a.register(&format!("early{n}")).await.ok(201);
    }
    let query = "event=user.registered";
    audited(&a, &key, query, &["user.registered"; 7]).await;

    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut n = 0;
    loop {
        let r = admin(
            &a,
            Method::GET,
            &format!("/api/v1/admin/audit?{query}&limit=2{cursor}"),
            &key,
        )
        .await;
        r.ok(200);
        seen.extend(
            r.body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_i64().unwrap()),
        );
        // Newer events arrive between pages; they sort before the cursor.
        a.register(&format!("late{n}")).await.ok(201);
        n += 1;
        match r.body["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let mut once = seen.clone();
    once.dedup();
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert_eq!(once, seen);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "{seen:?}");
}

#[tokio::test]
async fn security_events_are_logged_and_stored_whatever_the_log_level() {
    let dir = DataDir::new();
    let s = Server::builder()
        .dir(&dir)
        .env("GATEHOUSE__LOGGING__LEVEL", "error")
        .start();
    let (_, key) = create(&dir, "auditor", "audit:read");
    s.register("quietly").await.ok(201);
    s.login("quietly", "not the password at all")
        .await
        .expect(401, "AUTH001");

    // Stored: the one with a write behind it and the one without.
    audited(&s, &key, "event=user.registered", &["user.registered"]).await;
    let refused = audited(&s, &key, "event=login.failure", &["login.failure"]).await;
    assert_eq!(refused[0]["ip"], "127.0.0.1", "{refused:?}");
    // Logged too, while the access lines stay off.
    let logged = crate::harness::eventually(Duration::from_secs(5), || async {
        let logs = s.logs();
        ["\"user.registered\"", "\"login.failure\""]
            .iter()
            .all(|name| logs.iter().any(|l| l.contains(name)))
    })
    .await;
    assert!(logged, "{:#?}", s.logs());
    assert!(
        !s.logs().iter().any(|l| l.contains("request completed")),
        "{:#?}",
        s.logs()
    );
}
