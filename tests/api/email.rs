//! Email over the durable outbox, seen from outside: what a person receives
//! (over a real SMTP server, the testkit's sink, or as the `file`
//! transport's `.eml` files), the links it carries and what following them
//! does, verification modes, the per-recipient cap, and delivery that
//! survives a relay outage, a SIGKILL, a killed `mailer` actor and a second
//! instance on the same database: each message arrives once.
//!
//! Tests that need the sink skip, with a printed reason, without the test
//! tools' Python (they fail instead under `GATEHOUSE_TEST_REQUIRE_SERVICES=1`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use gatehouse_testkit::{DataDir, Mail, SmtpSink};
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Builder, PASSWORD, Reply, Server, cli, eventually, shipped_config, stderr};

/// The `email.from` the SMTP tests configure.
const FROM: &str = "Gatehouse Test <accounts@mail.example.test>";

/// The `email.link_base` the SMTP tests configure.
const LINK_BASE: &str = "https://app.example.test";

/// `server.public_url` as shipped: the default base of links.
const DEFAULT_LINK_BASE: &str = "http://127.0.0.1:8080";

/// A `server.public_url`, which links follow when `email.link_base` is not set.
const PUBLIC_URL: &str = "http://auth.example.test:9000";

/// A password the policy accepts, other than [`PASSWORD`].
const NEW_PASSWORD: &str = "a brand new passphrase 42";

/// How long a message may take to arrive when nothing is in its way.
const DELIVERY: Duration = Duration::from_secs(10);

/// How long to keep watching for a duplicate after the last expected message.
const DUPLICATE_WATCH: Duration = Duration::from_secs(2);

/// A server that sends through `sink` (plain SMTP on loopback).
fn via(sink: &SmtpSink) -> Builder {
    Server::builder()
        .env("GATEHOUSE__EMAIL__TRANSPORT", "smtp")
        .env("GATEHOUSE__EMAIL__SMTP__HOST", "127.0.0.1")
        .env("GATEHOUSE__EMAIL__SMTP__PORT", sink.port())
        .env("GATEHOUSE__EMAIL__SMTP__TLS", "none")
        .env("GATEHOUSE__EMAIL__FROM", FROM)
        .env("GATEHOUSE__EMAIL__LINK_BASE", LINK_BASE)
}

fn address(username: &str) -> String {
    format!("{username}@example.com")
}

/// Where a server's mail arrives: the SMTP sink, or the `file` transport's
/// directory (one `<outbox-id>.eml` per message).
enum Inbox<'a> {
    Smtp(&'a SmtpSink),
    Files(&'a DataDir),
}

impl Inbox<'_> {
    /// Every message so far (files in outbox-id order, which is creation order).
    fn mails(&self) -> Vec<Mail> {
        match self {
            Self::Smtp(sink) => sink.messages(),
            Self::Files(dir) => file_mails(dir).into_iter().map(|(_, mail)| mail).collect(),
        }
    }

    /// The messages once there are at least `count`; fails, listing what
    /// came, when `limit` passes first.
    async fn wait_for(&self, count: usize, limit: Duration) -> Vec<Mail> {
        let deadline = Instant::now() + limit;
        loop {
            let mails = self.mails();
            if mails.len() >= count {
                return mails;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} messages within {limit:?}:\n{}",
                mails.len(),
                summary(&mails)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts that exactly `count` messages are there, and still are after
    /// `window` (no late duplicate, nothing sent that should not be).
    async fn stays_at(&self, count: usize, window: Duration) -> Vec<Mail> {
        let deadline = Instant::now() + window;
        loop {
            let mails = self.mails();
            assert_eq!(mails.len(), count, "{}", summary(&mails));
            if Instant::now() > deadline {
                return mails;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The `.eml` files the `file` transport wrote, by outbox id (the file stem).
pub(crate) fn file_mails(dir: &DataDir) -> Vec<(String, Mail)> {
    let Ok(entries) = std::fs::read_dir(dir.mail_dir()) else {
        return Vec::new();
    };
    let mut found: Vec<(String, Mail)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".eml").filter(|s| !s.starts_with('.'))?;
            let raw = std::fs::read(entry.path()).ok()?;
            Some((stem.to_owned(), Mail::parse(String::new(), Vec::new(), raw)))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn summary(mails: &[Mail]) -> String {
    mails
        .iter()
        .map(|m| {
            format!(
                "  {:?} to {} ({:?})",
                m.subject,
                m.to,
                m.header("Message-ID")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The messages whose `To` is `to`.
fn to<'m>(mails: &'m [Mail], to: &str) -> Vec<&'m Mail> {
    mails.iter().filter(|m| m.to.contains(to)).collect()
}

/// The outbox id a message was sent for: the left part of `<id@domain>`.
fn outbox_id(mail: &Mail) -> String {
    let id = mail.header("Message-ID").expect("a Message-ID header");
    let inner = id
        .strip_prefix('<')
        .and_then(|i| i.strip_suffix('>'))
        .unwrap_or_else(|| panic!("Message-ID {id:?} is not <id@domain>"));
    let (local, _domain) = inner
        .split_once('@')
        .unwrap_or_else(|| panic!("Message-ID {id:?} has no domain"));
    local.to_owned()
}

/// The token of the `{base}/{page}?token=…` link in the text part, after
/// checking that the HTML part carries the same link.
pub(crate) fn link_token(mail: &Mail, base: &str, page: &str) -> String {
    let text = mail.text.as_deref().expect("a text/plain part");
    let html = mail.html.as_deref().expect("a text/html part");
    let prefix = format!("{base}/{page}?token=");
    let at = text
        .find(&prefix)
        .unwrap_or_else(|| panic!("no {prefix}… link in the text part:\n{text}"));
    let token: String = text[at + prefix.len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '%'))
        .collect();
    // At least 128 bits: 22 characters of base64url.
    assert!(token.len() >= 22, "a short token: {token:?}");
    let link = format!("{prefix}{token}");
    let html = unescape_html(html);
    assert!(
        html.contains(&format!("href=\"{link}\"")),
        "the HTML part lacks the link {link}:\n{html}"
    );
    token
}

/// `html` with its character references decoded (`&#x2f;` is `/`), as a
/// browser reads an attribute or text.
fn unescape_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let decoded = rest.find(';').filter(|&end| end <= 10).and_then(|end| {
            let name = &rest[1..end];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => name
                    .strip_prefix("#x")
                    .or_else(|| name.strip_prefix("#X"))
                    .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                    .or_else(|| name.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            }?;
            Some((c, end + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// One value from the database: `query` (a scalar subquery) as text, `""` for NULL.
fn sql(s: &Server, query: &str) -> String {
    s.dir
        .query(&format!("SELECT COALESCE(CAST(({query}) AS TEXT), '')"))
}

fn count(s: &Server, query: &str) -> i64 {
    let n = sql(s, &format!("SELECT count(*) FROM {query}"));
    n.parse()
        .unwrap_or_else(|_| panic!("not a count: {n:?} ({query})"))
}

fn kind_of(s: &Server, mail: &Mail) -> String {
    sql(
        s,
        &format!("SELECT kind FROM outbox WHERE id = '{}'", outbox_id(mail)),
    )
}

/// (state, attempts) of the one outbox row to `recipient`.
fn outbox_row(s: &Server, recipient: &str) -> (String, i64) {
    let row = format!("FROM outbox WHERE lower(recipient) = '{recipient}'");
    (
        sql(s, &format!("SELECT max(state) {row}")),
        sql(s, &format!("SELECT max(attempts) {row}"))
            .parse()
            .unwrap_or(-1),
    )
}

async fn me(s: &Server, access: &str) -> Reply {
    s.get("/api/v1/users/me", Some(access)).await
}

async fn access_token(s: &Server, login: &str, password: &str) -> String {
    let r = s.login(login, password).await;
    r.ok(200);
    r.body["access_token"].as_str().unwrap().to_owned()
}

async fn verify(s: &Server, token: &str) -> Reply {
    s.post("/api/v1/auth/verify-email", json!({"token": token}), None)
        .await
}

async fn request_verification(s: &Server, access: &str) -> Reply {
    s.send(
        s.request(Method::POST, "/api/v1/auth/verify-email/request")
            .bearer_auth(access),
    )
    .await
}

async fn request_reset(s: &Server, email: &str) -> Reply {
    s.post(
        "/api/v1/auth/password-reset/request",
        json!({"email": email}),
        None,
    )
    .await
}

async fn confirm_reset(s: &Server, token: &str, new_password: &str) -> Reply {
    s.post(
        "/api/v1/auth/password-reset/confirm",
        json!({"token": token, "new_password": new_password}),
        None,
    )
    .await
}

async fn change_email(s: &Server, access: &str, email: &str) -> Reply {
    s.send(
        s.request(Method::PUT, "/api/v1/users/me")
            .bearer_auth(access)
            .json(&json!({"email": email})),
    )
    .await
}

/// The security events called `event` logged so far.
async fn events(s: &Server, event: &str) -> Vec<Value> {
    s.settled_logs()
        .await
        .into_iter()
        .filter(|l| l["event"] == event)
        .collect()
}

/// The sum of the Prometheus samples of `name` whose labels include every one of `labels`.
async fn metric(s: &Server, name: &str, labels: &[(&str, &str)]) -> f64 {
    let r = s.get("/metrics", None).await;
    r.ok(200);
    r.text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

async fn smtp_breaker(s: &Server) -> String {
    let b = s.get("/api/v1/monitoring/circuit-breakers", None).await;
    b.ok(200);
    b.body["circuit_breakers"]["smtp"]["state"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

async fn health(s: &Server) -> Value {
    s.get("/api/v1/monitoring/health", None).await.body
}

/// Registers `names` at once, each on `servers[i % servers.len()]`; all must get 201.
async fn register_all(servers: &[&Server], names: &[String]) {
    let mut burst = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let s = servers[i % servers.len()];
        let request = s.http().post(s.url("/api/v1/auth/register")).json(&json!({
            "email": address(name),
            "username": name,
            "password": PASSWORD,
        }));
        let name = name.clone();
        burst.push(tokio::spawn(async move {
            let status = request.send().await.map(|r| r.status().as_u16());
            (name, status.ok())
        }));
    }
    for handle in burst {
        let (name, status) = handle.await.unwrap();
        assert_eq!(status, Some(201), "{name}");
    }
}

/// Each message once (by Message-ID) and each address in `names` exactly once.
fn once_each(mails: &[Mail], names: &[String]) {
    let ids: BTreeSet<String> = mails.iter().map(outbox_id).collect();
    assert_eq!(
        ids.len(),
        mails.len(),
        "a Message-ID came twice:\n{}",
        summary(mails)
    );
    let mut recipients: BTreeMap<String, usize> = BTreeMap::new();
    for mail in mails {
        *recipients.entry(mail.to.clone()).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = names.iter().map(|n| (address(n), 1)).collect();
    assert_eq!(recipients, expected);
}

#[tokio::test]
async fn registration_mails_a_single_use_verification_link_stored_only_as_a_digest() {
    gatehouse_testkit::require_smtp_sink!();
    let sink = SmtpSink::start();
    let inbox = Inbox::Smtp(&sink);
    let s = via(&sink).start();
    let registered = s.register("alice").await;
    registered.ok(201);
    assert_eq!(
        registered.body["email_verified"], false,
        "{}",
        registered.text
    );
    assert!(
        registered.body["pending_email"].is_null(),
        "{}",
        registered.text
    );
    let user_id = registered.body["id"].as_str().unwrap().to_owned();

    let mails = inbox.wait_for(1, DELIVERY).await;
    let mail = &mails[0];
    assert_eq!(mail.envelope_to, vec![address("alice")]);
    assert_eq!(mail.to, address("alice"));
    assert_eq!(mail.from, FROM);
    let subject = mail.subject.to_lowercase();
    assert!(
        subject.contains("confirm") && subject.contains("email") && !subject.contains("{{"),
        "a subject a person understands: {:?}",
        mail.subject
    );
    let token = link_token(mail, LINK_BASE, "verify-email");
    let id = outbox_id(mail);
    assert_eq!(
        mail.header("Message-ID").as_deref(),
        Some(format!("<{id}@mail.example.test>").as_str())
    );
    assert_eq!(kind_of(&s, mail), "verify_address");

    // Stored only as a digest; the delivered message's body is gone.
    assert_eq!(
        count(&s, &format!("email_links WHERE user_id = '{user_id}'")),
        1
    );
    assert_eq!(
        count(&s, &format!("email_links WHERE digest = '{token}'")),
        0
    );
    assert_eq!(
        count(
            &s,
            &format!("email_links WHERE digest LIKE '%{token}%' OR address LIKE '%{token}%'")
        ),
        0
    );
    let emptied = eventually(DELIVERY, || async {
        count(
            &s,
            &format!("outbox WHERE id = '{id}' AND state = 'sent' AND body IS NULL"),
        ) == 1
    })
    .await;
    assert!(
        emptied,
        "the sent row keeps its body: {:?}",
        outbox_row(&s, &address("alice"))
    );
    assert_eq!(
        count(&s, &format!("outbox WHERE last_error LIKE '%{token}%'")),
        0
    );

    let access = access_token(&s, "alice", PASSWORD).await;
    assert_eq!(me(&s, &access).await.body["email_verified"], false);
    verify(&s, &token).await.ok(204);
    let after = me(&s, &access).await;
    assert_eq!(after.body["email_verified"], true, "{}", after.text);
    assert_eq!(after.body["email"], address("alice"));
    verify(&s, &token).await.expect(400, "AUTH008");
    for garbage in ["garbage", "", &"A".repeat(43), &"x".repeat(5000)] {
        verify(&s, garbage).await.expect(400, "AUTH008");
    }

    // Nothing left to verify: 202, and nothing is sent.
    request_verification(&s, &access).await.ok(202);
    assert_eq!(count(&s, "outbox"), 1);

    assert_eq!(
        metric(
            &s,
            "gatehouse_emails_total",
            &[("kind", "verify_address"), ("result", "sent")]
        )
        .await,
        1.0
    );
    let logs = s.settled_logs().await;
    assert!(logs.iter().any(|l| l["event"] == "email.sent"));
    assert!(logs.iter().any(|l| l["event"] == "email.verified"));
    assert!(
        !s.logs().iter().any(|l| l.contains(&token)),
        "a log line holds the link token"
    );
    inbox.stays_at(1, Duration::ZERO).await;

    // An unverified address asks again: a new link, which voids the first.
    let (second, _) = s.user("alfred").await;
    let first = link_token(
        &inbox.wait_for(2, DELIVERY).await[1],
        LINK_BASE,
        "verify-email",
    );
    request_verification(&s, &second).await.ok(202);
    let mails = inbox.wait_for(3, DELIVERY).await;
    assert_eq!(mails[2].to, address("alfred"));
    assert_eq!(kind_of(&s, &mails[2]), "verify_address");
    let again = link_token(&mails[2], LINK_BASE, "verify-email");
    verify(&s, &first).await.expect(400, "AUTH008");
    verify(&s, &again).await.ok(204);
    assert_eq!(me(&s, &second).await.body["email_verified"], true);
    inbox.stays_at(3, Duration::ZERO).await;
}

#[tokio::test]
async fn a_reset_link_sets_a_new_password_once_and_ends_every_session() {
    gatehouse_testkit::require_smtp_sink!();
    let sink = SmtpSink::start();
    let inbox = Inbox::Smtp(&sink);
    let s = via(&sink)
        .env("GATEHOUSE__RATE_LIMIT__ROUTES__EMAIL__LIMIT", 100)
        .start();
    let bob = address("bob");
    let (first, first_refresh) = s.user("bob").await;
    let second = access_token(&s, "bob", PASSWORD).await;
    let registration = link_token(
        &inbox.wait_for(1, DELIVERY).await[0],
        LINK_BASE,
        "verify-email",
    );

    // Unknown and deactivated addresses answer 202 and get nothing; the
    // known one, asked last, gets its link.
    let (deactivated, _) = s.user("gone").await;
    s.send(
        s.request(Method::DELETE, "/api/v1/users/me")
            .bearer_auth(&deactivated),
    )
    .await
    .ok(204);
    inbox.wait_for(2, DELIVERY).await;
    request_reset(&s, "nobody@example.com").await.ok(202);
    request_reset(&s, &address("gone")).await.ok(202);
    request_reset(&s, "not an address")
        .await
        .expect(422, "VAL001");
    request_reset(&s, "BOB@Example.COM").await.ok(202);
    let mails = inbox.wait_for(3, DELIVERY).await;
    let link = &mails[2];
    assert_eq!(link.to, bob);
    assert_eq!(kind_of(&s, link), "reset_password");
    assert!(
        link.subject.to_lowercase().contains("password"),
        "{:?}",
        link.subject
    );
    assert!(to(&mails, "nobody@example.com").is_empty());
    assert_eq!(
        to(&mails, &address("gone")).len(),
        1,
        "only its verify link"
    );
    assert_eq!(
        count(&s, "outbox WHERE recipient = 'nobody@example.com'"),
        0
    );
    let older = link_token(link, LINK_BASE, "reset-password");
    assert_eq!(
        count(&s, &format!("email_links WHERE digest = '{older}'")),
        0
    );

    // A newer link voids the older one.
    request_reset(&s, &bob).await.ok(202);
    let mails = inbox.wait_for(4, DELIVERY).await;
    assert_eq!(kind_of(&s, &mails[3]), "reset_password");
    let token = link_token(&mails[3], LINK_BASE, "reset-password");
    assert_ne!(token, older);
    confirm_reset(&s, &older, NEW_PASSWORD)
        .await
        .expect(400, "AUTH008");

    // A refused password leaves the link usable.
    for weak in ["password123", "short", "bob@example.com"] {
        let r = confirm_reset(&s, &token, weak).await;
        r.expect(422, "VAL001");
        assert!(!r.text.contains(weak), "echoed: {}", r.text);
    }
    me(&s, &first).await.ok(200);
    // A link of one purpose does nothing for the other.
    confirm_reset(&s, &registration, NEW_PASSWORD)
        .await
        .expect(400, "AUTH008");
    verify(&s, &token).await.expect(400, "AUTH008");

    // Two confirms at once with different passwords: one wins, and only its
    // password works.
    const OTHER_PASSWORD: &str = "the losing passphrase 99";
    let (a, b) = tokio::join!(
        confirm_reset(&s, &token, NEW_PASSWORD),
        confirm_reset(&s, &token, OTHER_PASSWORD)
    );
    let outcomes = [
        (a.status.as_u16(), a.code().to_owned()),
        (b.status.as_u16(), b.code().to_owned()),
    ];
    assert!(
        outcomes.contains(&(204, String::new())) && outcomes.contains(&(400, "AUTH008".to_owned())),
        "{outcomes:?}"
    );
    let (winner, loser) = if a.status == 204 {
        (NEW_PASSWORD, OTHER_PASSWORD)
    } else {
        (OTHER_PASSWORD, NEW_PASSWORD)
    };

    // Every earlier session ends at once, and stays ended.
    for access in [&first, &second] {
        me(&s, access).await.expect(401, "AUTH004");
    }
    s.post(
        "/api/v1/auth/refresh",
        json!({"refresh_token": first_refresh}),
        None,
    )
    .await
    .expect(401, "AUTH004");
    let deadline = Instant::now() + DUPLICATE_WATCH;
    while Instant::now() < deadline {
        for access in [&first, &second] {
            me(&s, access).await.expect(401, "AUTH004");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.login("bob", PASSWORD).await.expect(401, "AUTH001");
    s.login("bob", loser).await.expect(401, "AUTH001");
    let fresh = access_token(&s, "bob", winner).await;
    me(&s, &fresh).await.ok(200);
    confirm_reset(&s, &token, "yet another passphrase 7")
        .await
        .expect(400, "AUTH008");
    access_token(&s, "bob", winner).await;
    // The verification link was not spent by the attempt to reset with it.
    verify(&s, &registration).await.ok(204);

    // The notice.
    let mails = inbox.wait_for(5, DELIVERY).await;
    let notice = &mails[4];
    assert_eq!(notice.to, bob);
    assert_eq!(kind_of(&s, notice), "password_changed");
    assert!(
        notice.subject.to_lowercase().contains("password"),
        "{:?}",
        notice.subject
    );
    assert!(!notice.text.as_deref().unwrap_or("").contains("token="));
    assert_eq!(events(&s, "password.reset").await.len(), 1);
    assert_eq!(events(&s, "password.reset_requested").await.len(), 2);
    inbox.stays_at(5, Duration::ZERO).await;
}

#[tokio::test]
async fn a_reset_request_answers_alike_for_known_and_unknown_addresses() {
    let s = Server::builder()
        .env("GATEHOUSE__RATE_LIMIT__ROUTES__EMAIL__LIMIT", 1000)
        .start();
    s.register("timing").await.ok(201);
    let strip = |r: &Reply| {
        let headers: BTreeMap<String, String> = r
            .headers
            .iter()
            .filter(|(name, _)| {
                let name = name.as_str();
                name != "x-request-id" && name != "date" && !name.starts_with("ratelimit-")
            })
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    value.to_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        (r.status.as_u16(), headers, r.text.clone())
    };
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    let mut shapes = BTreeSet::new();
    // Warm both paths once, then interleave.
    request_reset(&s, &address("timing")).await.ok(202);
    request_reset(&s, "warm@example.com").await.ok(202);
    for i in 0..20 {
        for (times, email) in [
            (&mut known, address("timing")),
            (&mut unknown, format!("nobody{i}@example.com")),
        ] {
            let started = Instant::now();
            let r = request_reset(&s, &email).await;
            times.push(started.elapsed());
            r.ok(202);
            shapes.insert(strip(&r));
        }
    }
    assert_eq!(shapes.len(), 1, "the answers differ: {shapes:#?}");
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    eprintln!(
        "password-reset request latency, median of 20: known address {:?}, unknown address {:?}",
        median(&mut known),
        median(&mut unknown)
    );
}

#[tokio::test]
async fn an_email_change_waits_for_the_link_to_the_new_address_and_tells_the_old_one() {
    let s = Server::builder()
        .env("GATEHOUSE__SERVER__PUBLIC_URL", PUBLIC_URL)
        .start();
    let inbox = Inbox::Files(&s.dir);
    let (old, new) = (address("carol"), "carol.new@example.com".to_owned());
    let (access, _) = s.user("carol").await;
    let mails = inbox.wait_for(1, DELIVERY).await;
    let registration_token = link_token(&mails[0], PUBLIC_URL, "verify-email");

    let changed = change_email(&s, &access, "Carol.New@Example.COM").await;
    changed.ok(200);
    assert_eq!(changed.body["email"], old, "{}", changed.text);
    assert_eq!(
        changed.body["pending_email"],
        new.as_str(),
        "{}",
        changed.text
    );
    let mails = inbox.wait_for(3, DELIVERY).await;
    let notice = to(&mails, &old)
        .into_iter()
        .find(|m| kind_of(&s, m) == "email_change_requested")
        .unwrap_or_else(|| panic!("no notice to the old address:\n{}", summary(&mails)));
    assert!(!notice.subject.is_empty());
    assert!(!notice.text.as_deref().unwrap_or("").contains("token="));
    let links = to(&mails, &new);
    assert_eq!(links.len(), 1, "{}", summary(&mails));
    assert_eq!(kind_of(&s, links[0]), "verify_address");
    let token = link_token(links[0], PUBLIC_URL, "verify-email");
    // The file transport names each file after its message's outbox id.
    for (stem, mail) in file_mails(&s.dir) {
        assert_eq!(stem, outbox_id(&mail));
    }

    let pending = me(&s, &access).await;
    assert_eq!(pending.body["email"], old);
    assert_eq!(pending.body["pending_email"], new.as_str());
    // The newer verification link voided the registration's.
    verify(&s, &registration_token).await.expect(400, "AUTH008");
    // Asking again sends a fresh link to the pending address, voiding the last.
    request_verification(&s, &access).await.ok(202);
    let mails = inbox.wait_for(4, DELIVERY).await;
    let links = to(&mails, &new);
    assert_eq!(links.len(), 2, "{}", summary(&mails));
    let fresh = links
        .iter()
        .map(|m| link_token(m, PUBLIC_URL, "verify-email"))
        .find(|t| *t != token)
        .expect("a second link");
    verify(&s, &token).await.expect(400, "AUTH008");
    verify(&s, &fresh).await.ok(204);
    let after = me(&s, &access).await;
    assert_eq!(after.body["email"], new.as_str(), "{}", after.text);
    assert!(after.body["pending_email"].is_null(), "{}", after.text);
    assert_eq!(after.body["email_verified"], true, "{}", after.text);
    access_token(&s, &new, PASSWORD).await;
    s.login(&old, PASSWORD).await.expect(401, "AUTH001");

    // Nothing left to verify.
    request_verification(&s, &access).await.ok(202);
    assert_eq!(count(&s, "outbox"), 4);
    inbox.stays_at(4, Duration::ZERO).await;
}

#[tokio::test]
async fn with_verification_off_an_email_change_applies_at_once_and_still_tells_the_old_address() {
    let s = Server::builder()
        .env("GATEHOUSE__AUTH__EMAIL_VERIFICATION", "off")
        .start();
    let inbox = Inbox::Files(&s.dir);
    let (old, new) = (address("dave"), "dave.new@example.com");
    let (access, _) = s.user("dave").await;
    assert_eq!(
        count(&s, "outbox"),
        0,
        "no verification link at registration"
    );

    let changed = change_email(&s, &access, new).await;
    changed.ok(200);
    assert_eq!(changed.body["email"], new, "{}", changed.text);
    assert!(changed.body["pending_email"].is_null(), "{}", changed.text);
    let mails = inbox.wait_for(1, DELIVERY).await;
    assert_eq!(mails[0].to, old);
    assert_eq!(kind_of(&s, &mails[0]), "email_change_requested");
    assert_eq!(count(&s, &format!("outbox WHERE recipient = '{new}'")), 0);
    assert_eq!(count(&s, "email_links"), 0);
    request_verification(&s, &access).await.ok(202);
    assert_eq!(count(&s, "outbox"), 1);
    access_token(&s, new, PASSWORD).await;
    inbox.stays_at(1, Duration::ZERO).await;
}

#[tokio::test]
async fn required_verification_refuses_the_right_password_until_the_address_is_confirmed() {
    let s = Server::builder()
        .env("GATEHOUSE__AUTH__EMAIL_VERIFICATION", "required")
        .env("GATEHOUSE__AUTH__VERIFICATION_TTL_S", 3)
        .env(
            "GATEHOUSE__EMAIL__LINK_BASE",
            "https://front.example.test/account/",
        )
        .start();
    let inbox = Inbox::Files(&s.dir);
    let token_of = |m: &Mail| link_token(m, "https://front.example.test/account", "verify-email");
    s.register("erin").await.ok(201);
    for login in ["erin", &address("erin")] {
        let r = s.login(login, PASSWORD).await;
        r.expect(403, "AUTH007");
        assert!(r.body.get("access_token").is_none(), "{}", r.text);
        s.login(login, "not the right password")
            .await
            .expect(401, "AUTH001");
    }
    s.login("nobody", PASSWORD).await.expect(401, "AUTH001");
    // The registration's link still stands, so those refusals sent none.
    let first = inbox.wait_for(1, DELIVERY).await;
    assert_eq!(first.len(), 1);

    // Once it has expired, a refused right password sends a new one (an
    // unverified user has no session to ask for one with).
    let resent = eventually(DELIVERY, || async {
        s.login("erin", PASSWORD).await.expect(403, "AUTH007");
        inbox.mails().len() >= 2
    })
    .await;
    assert!(resent, "no new link after the first expired");
    let mails = inbox.wait_for(2, DELIVERY).await;
    verify(&s, &token_of(&mails[0]))
        .await
        .expect(400, "AUTH008");
    verify(&s, &token_of(&mails[1])).await.ok(204);
    let access = access_token(&s, "erin", PASSWORD).await;
    assert_eq!(me(&s, &access).await.body["email_verified"], true);
}

#[tokio::test]
async fn the_per_recipient_cap_drops_links_but_never_a_notice() {
    let s = Server::builder()
        .env("GATEHOUSE__EMAIL__PER_RECIPIENT_PER_HOUR", 2)
        .env("GATEHOUSE__AUTH__EMAIL_VERIFICATION", "off")
        .env("GATEHOUSE__RATE_LIMIT__ROUTES__EMAIL__LIMIT", 100)
        .start();
    let inbox = Inbox::Files(&s.dir);
    let frank = address("frank");
    s.register("frank").await.ok(201);
    let answers: BTreeSet<(u16, String)> = {
        let mut answers = BTreeSet::new();
        for _ in 0..3 {
            let r = request_reset(&s, &frank).await;
            answers.insert((r.status.as_u16(), r.text));
        }
        answers
    };
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers.iter().next().unwrap().0, 202);
    // The reset requests are handled after their answer: wait for the drop.
    let dropped = eventually(DELIVERY, || async {
        !events(&s, "email.dropped").await.is_empty()
    })
    .await;
    assert!(dropped, "no email.dropped logged");
    assert_eq!(events(&s, "email.dropped").await.len(), 1);
    assert_eq!(count(&s, &format!("outbox WHERE recipient = '{frank}'")), 2);
    let mails = inbox.wait_for(2, DELIVERY).await;
    for mail in &mails {
        assert_eq!(kind_of(&s, mail), "reset_password");
    }

    // The newer delivered link works (the dropped request voided nothing);
    // its notice goes out past the cap.
    let results: Vec<u16> = {
        let mut results = Vec::new();
        for mail in &mails {
            let token = link_token(mail, DEFAULT_LINK_BASE, "reset-password");
            results.push(
                confirm_reset(&s, &token, NEW_PASSWORD)
                    .await
                    .status
                    .as_u16(),
            );
        }
        results
    };
    assert_eq!(
        results.iter().filter(|&&r| r == 204).count(),
        1,
        "{results:?}"
    );
    let mails = inbox.wait_for(3, DELIVERY).await;
    assert_eq!(kind_of(&s, &mails[2]), "password_changed");
    assert_eq!(mails[2].to, frank);
    // So does the notice of a password change, and a further link is still dropped.
    let access = access_token(&s, "frank", NEW_PASSWORD).await;
    s.send(
        s.request(Method::PATCH, "/api/v1/users/me/password")
            .bearer_auth(&access)
            .json(&json!({"current_password": NEW_PASSWORD, "new_password": "third passphrase of frank"})),
    )
    .await
    .ok(204);
    let mails = inbox.wait_for(4, DELIVERY).await;
    assert_eq!(kind_of(&s, &mails[3]), "password_changed");
    request_reset(&s, &frank).await.ok(202);
    let dropped = eventually(DELIVERY, || async {
        events(&s, "email.dropped").await.len() == 2
    })
    .await;
    assert!(dropped, "the fourth link was not dropped");
    assert_eq!(count(&s, &format!("outbox WHERE recipient = '{frank}'")), 4);
    inbox.stays_at(4, Duration::ZERO).await;
}

#[tokio::test]
async fn links_expire_after_their_configured_lifetime() {
    let s = Server::builder()
        .env("GATEHOUSE__AUTH__VERIFICATION_TTL_S", 1)
        .env("GATEHOUSE__AUTH__RESET_TTL_S", 1)
        .start();
    let inbox = Inbox::Files(&s.dir);
    s.register("kate").await.ok(201);
    let verify_token = link_token(
        &inbox.wait_for(1, DELIVERY).await[0],
        DEFAULT_LINK_BASE,
        "verify-email",
    );
    request_reset(&s, &address("kate")).await.ok(202);
    let reset_token = link_token(
        &inbox.wait_for(2, DELIVERY).await[1],
        DEFAULT_LINK_BASE,
        "reset-password",
    );
    // A refused password tells a live link (422) from a dead one (400)
    // without spending it.
    let issued = Instant::now();
    confirm_reset(&s, &reset_token, "password123")
        .await
        .expect(422, "VAL001");
    let expired = eventually(Duration::from_secs(5), || async {
        confirm_reset(&s, &reset_token, "password123").await.status == 400
    })
    .await;
    assert!(expired, "the reset link outlived its 1 s");
    eprintln!(
        "a 1 s reset link was refused {:?} after it was delivered",
        issued.elapsed()
    );
    confirm_reset(&s, &reset_token, NEW_PASSWORD)
        .await
        .expect(400, "AUTH008");
    // The verification link is older still.
    verify(&s, &verify_token).await.expect(400, "AUTH008");
    access_token(&s, "kate", PASSWORD).await;
}

#[tokio::test]
async fn link_requests_share_the_email_rate_class() {
    let s = Server::start();
    let (access, _) = s.user("limited").await;
    for _ in 0..3 {
        request_reset(&s, "someone@example.com").await.ok(202);
    }
    for _ in 0..2 {
        request_verification(&s, &access).await.ok(202);
    }
    let refused = request_reset(&s, "someone@example.com").await;
    refused.expect(429, "RATE001");
    assert!(refused.header("retry-after").is_some());
    request_verification(&s, &access)
        .await
        .expect(429, "RATE001");
    // Other routes are not in the class.
    me(&s, &access).await.ok(200);
}

#[tokio::test]
async fn a_message_waits_out_a_relay_outage_and_is_then_delivered_once() {
    gatehouse_testkit::require_smtp_sink!();
    let mut sink = SmtpSink::start();
    sink.stop();
    let s = via(&sink)
        .env("GATEHOUSE__CIRCUIT_BREAKER__SMTP__FAILURE_THRESHOLD", 2)
        .env("GATEHOUSE__CIRCUIT_BREAKER__SMTP__RESET_TIMEOUT_MS", 300)
        .start();
    let grace = address("grace");
    let began = Instant::now();
    s.register("grace").await.ok(201);
    assert_eq!(
        smtp_breaker(&s).await,
        "closed",
        "the smtp breaker is listed"
    );

    let retried = eventually(DELIVERY, || async {
        outbox_row(&s, &grace) == ("pending".to_owned(), 2)
    })
    .await;
    assert!(retried, "{:?}", outbox_row(&s, &grace));
    let degraded = eventually(DELIVERY, || async {
        smtp_breaker(&s).await != "closed" && health(&s).await["status"] == "degraded"
    })
    .await;
    assert!(
        degraded,
        "breaker {}, health {}",
        smtp_breaker(&s).await,
        health(&s).await
    );
    let observed_health = health(&s).await;
    let retries = events(&s, "email.retry").await;
    assert!(retries.len() >= 2, "{retries:?}");
    let waits: Vec<i64> = retries
        .iter()
        .map(|l| l["retry_in_ms"].as_i64().unwrap_or(-1))
        .collect();
    assert!(waits[1] > waits[0], "no back-off: {waits:?}");
    let last_error = sql(
        &s,
        &format!("SELECT max(last_error) FROM outbox WHERE recipient = '{grace}'"),
    );
    assert!(!last_error.is_empty());
    assert!(
        metric(
            &s,
            "gatehouse_emails_total",
            &[("kind", "verify_address"), ("result", "retry")]
        )
        .await
            >= 2.0
    );
    assert_eq!(metric(&s, "gatehouse_outbox_pending", &[]).await, 1.0);
    assert!(
        metric(
            &s,
            "gatehouse_circuit_breaker_state",
            &[("breaker", "smtp")]
        )
        .await
            >= 1.0,
        "the smtp breaker is not open in /metrics"
    );
    assert!(!sink.messages().iter().any(|m| m.to == grace));
    eprintln!(
        "relay down: after {:?} the row is {:?}, retries waited {waits:?} ms, last error {last_error:?}, \
         smtp breaker {}, health {}",
        began.elapsed(),
        outbox_row(&s, &grace),
        observed_health["circuit_breakers"]["smtp"],
        observed_health["status"]
    );

    sink.restart();
    let restarted = Instant::now();
    let inbox = Inbox::Smtp(&sink);
    inbox.wait_for(1, DELIVERY).await;
    let delivered_after = restarted.elapsed();
    let mails = inbox.stays_at(1, DUPLICATE_WATCH).await;
    assert_eq!(mails[0].to, grace);
    assert_eq!(
        sql(
            &s,
            &format!(
                "SELECT state FROM outbox WHERE id = '{}'",
                outbox_id(&mails[0])
            )
        ),
        "sent"
    );
    let closed = eventually(DELIVERY, || async {
        smtp_breaker(&s).await == "closed" && health(&s).await["status"] == "healthy"
    })
    .await;
    assert!(
        closed,
        "breaker {}, health {}",
        smtp_breaker(&s).await,
        health(&s).await
    );
    assert_eq!(metric(&s, "gatehouse_outbox_pending", &[]).await, 0.0);
    assert_eq!(
        metric(
            &s,
            "gatehouse_circuit_breaker_state",
            &[("breaker", "smtp")]
        )
        .await,
        0.0
    );
    assert_eq!(
        metric(
            &s,
            "gatehouse_emails_total",
            &[("kind", "verify_address"), ("result", "sent")]
        )
        .await,
        1.0
    );
    eprintln!(
        "relay back: delivered {delivered_after:?} after the restart, {} attempts in all",
        outbox_row(&s, &grace).1
    );
}

#[tokio::test]
async fn a_message_is_given_up_after_max_attempts_and_never_sent_later() {
    gatehouse_testkit::require_smtp_sink!();
    let mut sink = SmtpSink::start();
    sink.stop();
    let s = via(&sink).env("GATEHOUSE__EMAIL__MAX_ATTEMPTS", 2).start();
    let henry = address("henry");
    s.register("henry").await.ok(201);
    let dead = eventually(DELIVERY, || async { outbox_row(&s, &henry).0 == "dead" }).await;
    assert!(dead, "{:?}", outbox_row(&s, &henry));
    assert_eq!(outbox_row(&s, &henry), ("dead".to_owned(), 2));
    assert_eq!(events(&s, "email.dead").await.len(), 1);
    assert_eq!(
        metric(
            &s,
            "gatehouse_emails_total",
            &[("kind", "verify_address"), ("result", "dead")]
        )
        .await,
        1.0
    );
    let gauge_zero = eventually(DELIVERY, || async {
        metric(&s, "gatehouse_outbox_pending", &[]).await == 0.0
    })
    .await;
    assert!(gauge_zero);

    // Back up: a later message goes; the given-up one never does.
    sink.restart();
    s.register("ivy").await.ok(201);
    let inbox = Inbox::Smtp(&sink);
    inbox.wait_for(1, DELIVERY).await;
    let mails = inbox.stays_at(1, DUPLICATE_WATCH).await;
    assert_eq!(mails[0].to, address("ivy"));
    assert_eq!(outbox_row(&s, &henry), ("dead".to_owned(), 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_committed_before_a_sigkill_is_delivered_once_after_restart() {
    gatehouse_testkit::require_smtp_sink!();
    let mut sink = SmtpSink::start();
    sink.stop();
    let dir = DataDir::new();
    let mut s = via(&sink).dir(&dir).start();
    let jack = address("jack");
    s.register("jack").await.ok(201);
    // Tried once and not leased: committed, not delivered.
    let tried = eventually(DELIVERY, || async {
        outbox_row(&s, &jack) == ("pending".to_owned(), 1)
            && count(
                &s,
                &format!("outbox WHERE recipient = '{jack}' AND lease_owner IS NULL"),
            ) == 1
    })
    .await;
    assert!(tried, "{:?}", outbox_row(&s, &jack));
    gatehouse_testkit::signal(s.pid(), "KILL");
    let status = tokio::task::block_in_place(|| s.terminate());
    assert!(!status.success(), "{status:?}");
    drop(s);

    sink.restart();
    let again = via(&sink).dir(&dir).start();
    let inbox = Inbox::Smtp(&sink);
    inbox.wait_for(1, DELIVERY).await;
    let mails = inbox.stays_at(1, DUPLICATE_WATCH).await;
    assert_eq!(mails[0].to, jack);
    assert_eq!(outbox_row(&again, &jack).0, "sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_send_each_message_once() {
    gatehouse_testkit::require_smtp_sink!();
    let mut sink = SmtpSink::start();
    sink.stop();
    let dir = DataDir::new();
    let start = || {
        via(&sink)
            .dir(&dir)
            .env("GATEHOUSE__CIRCUIT_BREAKER__SMTP__FAILURE_THRESHOLD", 1000)
            .start()
    };
    let (a, b) = (start(), start());
    let names: Vec<String> = (0..20).map(|i| format!("pair{i}")).collect();
    register_all(&[&a, &b], &names).await;
    // Every message tried once while the relay is down: both instances
    // then find all twenty due at about the same time.
    let tried = eventually(DELIVERY, || async {
        count(&a, "outbox WHERE attempts >= 1 AND state = 'pending'") == 20
    })
    .await;
    assert!(tried, "{} tried", count(&a, "outbox WHERE attempts >= 1"));
    sink.restart();
    let inbox = Inbox::Smtp(&sink);
    inbox.wait_for(20, Duration::from_secs(20)).await;
    let mails = inbox.stays_at(20, DUPLICATE_WATCH).await;
    once_each(&mails, &names);
    assert_eq!(count(&a, "outbox WHERE state = 'sent'"), 20);
    let (by_a, by_b) = (
        events(&a, "email.sent").await.len(),
        events(&b, "email.sent").await.len(),
    );
    assert_eq!(by_a + by_b, 20, "sent by a: {by_a}, by b: {by_b}");
    eprintln!("two instances: {by_a} sent by one, {by_b} by the other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_mailer_loses_and_repeats_no_message() {
    gatehouse_testkit::require_smtp_sink!();
    const QUEUED: i64 = 40;
    let mut sink = SmtpSink::start();
    sink.stop();
    let s = via(&sink)
        .env("GATEHOUSE__MONITORING__CHAOS", "true")
        .env("GATEHOUSE__CIRCUIT_BREAKER__SMTP__FAILURE_THRESHOLD", 1000)
        .start();
    let kill = || async {
        s.send(s.request(Method::POST, "/api/v1/monitoring/actors/mailer/kill"))
            .await
            .ok(202);
    };
    let mailer = || async {
        let a = s.get("/api/v1/monitoring/actors", None).await.body;
        (
            a["actors"]["mailer"]["status"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            a["actors"]["mailer"]["restarts"].as_u64().unwrap_or(0),
        )
    };
    let names: Vec<String> = (0..QUEUED).map(|i| format!("queued{i}")).collect();
    register_all(&[&s], &names).await;
    kill().await;
    let tried = eventually(DELIVERY, || async {
        count(&s, "outbox WHERE attempts >= 1") == QUEUED
    })
    .await;
    assert!(tried, "{} tried", count(&s, "outbox WHERE attempts >= 1"));

    // Up again, and killed again while it delivers.
    sink.restart();
    let inbox = Inbox::Smtp(&sink);
    // More than one round's batch, so that rounds remain when it is killed.
    let mut arrived = Vec::new();
    for after in [1, QUEUED as usize / 2] {
        inbox.wait_for(after, DELIVERY).await;
        kill().await;
        arrived.push(inbox.mails().len());
    }
    eprintln!("mailer killed with {arrived:?} of {QUEUED} messages delivered");
    inbox
        .wait_for(QUEUED as usize, Duration::from_secs(20))
        .await;
    let mails = inbox.stays_at(QUEUED as usize, DUPLICATE_WATCH).await;
    once_each(&mails, &names);
    let running = eventually(DELIVERY, || async {
        let (status, restarts) = mailer().await;
        status == "running" && restarts >= 3
    })
    .await;
    assert!(running, "{:?}", mailer().await);
    assert_eq!(count(&s, "outbox WHERE state = 'sent'"), QUEUED);
}

/// `circuit_breaker.smtp.*` are "keys as for `database`": the same values are refused.
#[test]
fn the_smtp_breaker_settings_are_checked_like_the_database_ones() {
    for key in [
        "failure_threshold",
        "reset_timeout_ms",
        "half_open_max_calls",
    ] {
        let run = |breaker: &str| {
            let out = cli(
                &[
                    std::ffi::OsStr::new("--config"),
                    shipped_config().as_os_str(),
                    std::ffi::OsStr::new("--check-config"),
                ],
                &[
                    (
                        "GATEHOUSE__AUTH__JWT_SECRET",
                        crate::harness::SECRET.to_owned(),
                    ),
                    ("GATEHOUSE__EMAIL__TRANSPORT", "smtp".to_owned()),
                    (
                        &format!(
                            "GATEHOUSE__CIRCUIT_BREAKER__{}__{}",
                            breaker.to_uppercase(),
                            key.to_uppercase()
                        ),
                        "0".to_owned(),
                    ),
                ],
            );
            (out.status.code(), stderr(&out))
        };
        let (code, said) = run("database");
        assert_eq!(code, Some(2), "database {key} = 0: {said}");
        let (code, said) = run("smtp");
        assert_eq!(
            code,
            Some(2),
            "circuit_breaker.smtp.{key} = 0 is accepted: {said}"
        );
        assert!(
            said.contains(&format!("circuit_breaker.smtp.{key}")),
            "{said}"
        );
    }
}
