//! The pages the links in emails open (`/verify-email`, `/reset-password`),
//! as a person sees them: a real headless Chromium in a phone-sized window
//! follows the link from the mail, fills the form and submits it, and a
//! screenshot of each page is kept in `target/test-output/screenshots`. Over
//! plain HTTP: every page's headers, its status, and that nothing given in a
//! request comes back as markup.

use std::time::Duration;

use gatehouse_testkit::fantoccini::{Client, Locator};
use gatehouse_testkit::{Browser, Mail, free_port};
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{PASSWORD, Reply, Server, eventually};

/// The contract's policy for every page.
const PAGE_CSP: &str =
    "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'";

/// What a used, expired or unknown link's page says (its `<h1>`).
const UNUSABLE: &str = "expired or was already used";

/// A server whose `server.public_url` is its own address, so the links in
/// its mails open its own pages, as they would in a deployment.
fn server() -> Server {
    let listen = format!("127.0.0.1:{}", free_port());
    let s = Server::builder()
        .env("GATEHOUSE__SERVER__LISTEN", &listen)
        .env("GATEHOUSE__SERVER__PUBLIC_URL", format!("http://{listen}"))
        .start();
    assert_eq!(s.base, format!("http://{listen}"));
    s
}

/// The link to `{public_url}/{page}?token=…` in the first mail to `to`,
/// waiting for it (mail is sent asynchronously).
async fn mailed_link(s: &Server, to: &str, page: &str) -> String {
    let prefix = format!("{}/{page}?token=", s.base);
    let mut found = None;
    let arrived = eventually(Duration::from_secs(10), || {
        found = mails(s).into_iter().find_map(|mail| {
            if !mail.to.contains(to) {
                return None;
            }
            let text = mail.text?;
            let at = text.find(&prefix)?;
            let token: String = text[at + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
                .collect();
            Some(format!("{prefix}{token}"))
        });
        let arrived = found.is_some();
        async move { arrived }
    })
    .await;
    assert!(
        arrived,
        "no mail to {to} with a link {prefix}… within 10 s; mails: {:?}",
        mails(s)
            .iter()
            .map(|m| (&m.to, &m.subject, &m.text))
            .collect::<Vec<_>>()
    );
    let link = found.unwrap();
    assert!(
        link.len() >= prefix.len() + 22,
        "a link's token has at least 128 bits: {link}"
    );
    link
}

/// Every message the `file` transport wrote so far.
fn mails(s: &Server) -> Vec<Mail> {
    let Ok(entries) = std::fs::read_dir(s.dir.mail_dir()) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| std::fs::read(p).ok())
        .map(|raw| Mail::parse(String::new(), vec![], raw))
        .collect()
}

/// The path and query of a link to this server.
fn path_of<'a>(s: &Server, link: &'a str) -> &'a str {
    link.strip_prefix(&s.base)
        .unwrap_or_else(|| panic!("{link} is not a link to {}", s.base))
}

async fn email_verified(s: &Server, access: &str) -> Value {
    let me = s.get("/api/v1/users/me", Some(access)).await;
    me.ok(200);
    me.body["email_verified"].clone()
}

/// What the browser shows now, once its `<h1>` says `title` (a form's
/// submission may still be loading when `click` returns).
async fn showing(browser: &Browser, title: &str) -> String {
    let client = browser.client();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = h1(client).await;
        if seen.contains(title) {
            return seen;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "the page never said {title:?}; its <h1> is {seen:?}, at {:?}:\n{}",
                client.current_url().await.map(|u| u.to_string()),
                client.source().await.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn h1(client: &Client) -> String {
    match client.find(Locator::Css("h1")).await {
        Ok(h1) => h1.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Runs `script` (a function body that returns a value) in the page.
async fn run(client: &Client, script: &str) -> Value {
    client
        .execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("run {script:?}: {e}"))
}

/// The HTTP status the browser got for the page it shows.
async fn status_shown(client: &Client) -> Value {
    run(
        client,
        "return performance.getEntriesByType('navigation')[0].responseStatus;",
    )
    .await
}

/// What makes the page readable on a phone: the one stylesheet is applied
/// (not blocked by the page's own policy), nothing is wider than the screen,
/// a form's controls are as wide as the form, and there is no script.
#[track_caller]
fn readable_on_a_phone(page: &str, layout: &Value) {
    assert_eq!(
        layout["inner_width"], 390,
        "{page}: a phone's viewport: {layout}"
    );
    assert_eq!(layout["sheets"], 1, "{page}: one stylesheet: {layout}");
    assert!(
        layout["rules"].as_u64().unwrap_or(0) > 0,
        "{page}: the stylesheet was loaded: {layout}"
    );
    assert_eq!(
        layout["main_background"], "rgb(255, 255, 255)",
        "{page}: the stylesheet is applied: {layout}"
    );
    assert!(
        layout["scroll_width"].as_f64().unwrap() <= layout["inner_width"].as_f64().unwrap(),
        "{page}: no horizontal scroll: {layout}"
    );
    assert!(
        layout["main_right"].as_f64().unwrap() <= layout["inner_width"].as_f64().unwrap(),
        "{page}: the text fits the screen: {layout}"
    );
    assert_eq!(layout["scripts"], 0, "{page}: no script: {layout}");
    if !layout["button_width"].is_null() {
        assert_eq!(
            layout["button_width"], layout["form_width"],
            "{page}: the button spans the form: {layout}"
        );
        assert!(
            layout["button_height"].as_f64().unwrap() >= 44.0,
            "{page}: the button is big enough to tap: {layout}"
        );
    }
    if !layout["input_width"].is_null() {
        assert_eq!(
            layout["input_width"], layout["form_width"],
            "{page}: the field spans the form: {layout}"
        );
    }
}

async fn layout(client: &Client) -> Value {
    run(
        client,
        "const rect = (s) => { const e = document.querySelector(s); \
             return e ? e.getBoundingClientRect() : null; }; \
         const main = document.querySelector('main'); \
         return { \
           inner_width: window.innerWidth, \
           scroll_width: document.documentElement.scrollWidth, \
           sheets: document.styleSheets.length, \
           rules: document.styleSheets.length ? document.styleSheets[0].cssRules.length : 0, \
           main_background: main ? getComputedStyle(main).backgroundColor : null, \
           main_right: main ? main.getBoundingClientRect().right : null, \
           scripts: document.scripts.length, \
           form_width: rect('form') && rect('form').width, \
           button_width: rect('form button') && rect('form button').width, \
           button_height: rect('form button') && rect('form button').height, \
           input_width: rect('input[type=password]') && rect('input[type=password]').width, \
         };",
    )
    .await
}

/// Opens `url` in the browser, waits for `title`, saves screenshot `shot`,
/// and checks the page reads well on a phone; returns its HTTP status.
async fn look(browser: &Browser, shot: &str, title: &str) -> Value {
    let client = browser.client();
    showing(browser, title).await;
    let path = browser.screenshot(shot).await;
    assert!(path.is_file(), "{} was not written", path.display());
    readable_on_a_phone(shot, &layout(client).await);
    status_shown(client).await
}

/// Types `password` into the new-password field (emptied first) and presses
/// the save button.
async fn submit_password(client: &Client, password: &str) {
    let field = client
        .find(Locator::Css("input#new_password[name=new_password]"))
        .await
        .expect("the new-password field");
    field.clear().await.expect("clear the field");
    field.send_keys(password).await.expect("type a password");
    client
        .find(Locator::Css("button#save"))
        .await
        .expect("the save button")
        .click()
        .await
        .expect("press save");
}

#[tokio::test]
async fn reset_a_password_in_a_real_browser() {
    gatehouse_testkit::require_browser!();
    let s = server();
    let (old_access, _) = s.user("resetter").await;
    s.post(
        "/api/v1/auth/password-reset/request",
        json!({"email": "resetter@example.com"}),
        None,
    )
    .await
    .ok(202);
    let link = mailed_link(&s, "resetter@example.com", "reset-password").await;

    let browser = Browser::start().await;
    let client = browser.client();
    client.goto(&link).await.expect("open the link");
    assert_eq!(
        look(&browser, "reset-form", "Choose a new password").await,
        200
    );
    assert_eq!(client.current_url().await.unwrap().as_str(), link);

    // Too short: the field says so, and the browser does not send it.
    submit_password(client, "short").await;
    let refused_here = run(
        client,
        "return document.querySelector('#new_password').validity.tooShort;",
    )
    .await;
    assert_eq!(refused_here, true, "the field knows its minimum length");
    assert_eq!(h1(client).await, "Choose a new password");
    assert_eq!(client.current_url().await.unwrap().as_str(), link);

    // One the browser lets through but the policy refuses (the address).
    submit_password(client, "resetter@example.com").await;
    assert_eq!(
        look(&browser, "reset-refused", "Choose a new password").await,
        400
    );
    let problem = client
        .find(Locator::Css("p.problem[role=alert]"))
        .await
        .expect("an alert that says what is wrong")
        .text()
        .await
        .unwrap();
    assert!(
        problem.contains("cannot be used") && problem.contains("username"),
        "{problem}"
    );
    assert!(
        client.current_url().await.unwrap().as_str() == s.url("/reset-password"),
        "the form posts to /reset-password"
    );
    // The refused password is not shown back, and the token still works:
    // the form again, on the page of the refusal.
    let field = client.find(Locator::Css("#new_password")).await.unwrap();
    assert_eq!(field.prop("value").await.unwrap().as_deref(), Some(""));
    s.get(path_of(&s, &link), None).await.ok(200);

    let new_password = "a brand new passphrase, much longer";
    submit_password(client, new_password).await;
    assert_eq!(
        look(&browser, "reset-done", "Your password is changed").await,
        200
    );
    let source = client.source().await.unwrap();
    assert!(
        !source.contains(new_password),
        "the page never holds the password"
    );

    s.login("resetter", new_password).await.ok(200);
    s.login("resetter", PASSWORD).await.ok(401);
    s.get("/api/v1/users/me", Some(&old_access)).await.ok(401);

    // The same link once more.
    client.goto(&link).await.expect("open the link again");
    assert_eq!(look(&browser, "reset-used", UNUSABLE).await, 400);
    assert!(client.find(Locator::Css("form")).await.is_err(), "no form");
    browser.close().await;
}

#[tokio::test]
async fn verify_an_address_in_a_real_browser() {
    gatehouse_testkit::require_browser!();
    let s = server();
    let (access, _) = s.user("verifier").await;
    assert_eq!(email_verified(&s, &access).await, false);
    let link = mailed_link(&s, "verifier@example.com", "verify-email").await;

    let browser = Browser::start().await;
    let client = browser.client();
    client.goto(&link).await.expect("open the link");
    assert_eq!(
        look(&browser, "verify-form", "Confirm your email address").await,
        200
    );
    // Opening the link (as a mail scanner would, and a second time) changes nothing.
    assert_eq!(email_verified(&s, &access).await, false);
    s.get(path_of(&s, &link), None).await.ok(200);
    s.send(s.request(Method::HEAD, path_of(&s, &link)))
        .await
        .ok(200);
    assert_eq!(email_verified(&s, &access).await, false);

    client
        .find(Locator::Css("form[method=post] button#confirm"))
        .await
        .expect("the confirm button")
        .click()
        .await
        .expect("press confirm");
    assert_eq!(
        look(&browser, "verify-done", "Your email address is confirmed").await,
        200
    );
    assert_eq!(
        client.current_url().await.unwrap().as_str(),
        s.url("/verify-email")
    );
    assert_eq!(email_verified(&s, &access).await, true);

    // Used: the link's page says so, and offers no button.
    client.goto(&link).await.expect("open the link again");
    assert_eq!(
        status_shown(client).await,
        400,
        "{}",
        client.source().await.unwrap_or_default()
    );
    showing(&browser, UNUSABLE).await;
    assert!(client.find(Locator::Css("button")).await.is_err());
    browser.close().await;
}

/// Checks what every page is: HTML (not the API's JSON) with the contract's
/// headers, `status`, an `<h1>` that says `title`, the one stylesheet, no
/// script and no inline style (the policy would block both). Returns the HTML.
#[track_caller]
fn page(r: &Reply, status: u16, title: &str) -> String {
    let at = format!("a {status} page ({title})");
    r.ok(status);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{at} is HTML: {:?}",
        r.header("content-type")
    );
    assert!(r.body.is_null(), "{at} is not JSON: {}", r.text);
    assert_eq!(r.header("content-security-policy"), Some(PAGE_CSP), "{at}");
    assert_eq!(r.header("cache-control"), Some("no-store"), "{at}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{at}");
    let html = r.text.clone();
    let h1 = html
        .split_once("<h1>")
        .and_then(|(_, rest)| rest.split_once("</h1>"))
        .map(|(h1, _)| h1)
        .unwrap_or_else(|| panic!("{at} has an <h1>: {html}"));
    assert!(h1.contains(title), "{at}: <h1>{h1}</h1>");
    assert_eq!(
        html.matches(r#"<link rel="stylesheet" href="assets/pages.css">"#)
            .count(),
        1,
        "{at} links its stylesheet once: {html}"
    );
    let lower = html.to_ascii_lowercase();
    for banned in ["<script", "<style", " style=", "javascript:"] {
        assert!(!lower.contains(banned), "{at} has no {banned:?}: {html}");
    }
    // No event-handler attribute (` onclick=`, ` onsubmit=`…).
    let handler = lower.match_indices(" on").any(|(i, _)| {
        let name = &lower[i + 3..];
        let rest = name.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        rest.len() < name.len() && rest.starts_with('=')
    });
    assert!(!handler, "{at} has no event handler: {html}");
    html
}

fn form_post(s: &Server, path: &str, form: &[(&str, &str)]) -> reqwest::RequestBuilder {
    s.request(Method::POST, path).form(form)
}

#[tokio::test]
async fn pages_answer_html_with_their_policy_and_escape_what_they_are_sent() {
    // A product name with markup in it: the pages escape configuration too.
    let listen = format!("127.0.0.1:{}", free_port());
    let s = Server::builder()
        .env("GATEHOUSE__SERVER__LISTEN", &listen)
        .env("GATEHOUSE__SERVER__PUBLIC_URL", format!("http://{listen}"))
        .env(
            "GATEHOUSE__EMAIL__FROM",
            r#""Tom & <b>Jerry</b>" <no-reply@localhost>"#,
        )
        .start();
    let hostile = r#""><script>alert(1)</script>"#;
    let escaped_product = "Tom &amp; &lt;b&gt;Jerry&lt;";

    // Links that are missing, empty, unknown or hostile: a 400 page.
    for page_path in ["/verify-email", "/reset-password"] {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", hostile)
            .finish();
        for path in [
            page_path.to_owned(),
            format!("{page_path}?token="),
            format!("{page_path}?token=not-a-real-token"),
            format!("{page_path}?{query}"),
        ] {
            let r = s.get(&path, None).await;
            let html = page(&r, 400, UNUSABLE);
            assert!(!html.contains("<script"), "GET {path}: {html}");
            assert!(html.contains(escaped_product), "GET {path}: {html}");
            assert!(!html.contains("<b>"), "GET {path}: {html}");
        }
        for form in [
            vec![],
            vec![
                ("token", "not-a-real-token"),
                ("new_password", "a long enough passphrase"),
            ],
            vec![("token", hostile), ("new_password", hostile)],
        ] {
            let r = s.send(form_post(&s, page_path, &form)).await;
            let html = page(&r, 400, UNUSABLE);
            assert!(
                !html.contains("<script"),
                "POST {page_path} {form:?}: {html}"
            );
        }
    }
    // What the pipeline refuses before a page runs is a page too.
    for page_path in ["/verify-email", "/reset-password"] {
        let r = s.send(s.request(Method::PUT, page_path)).await;
        assert_eq!(r.status.as_u16(), 405, "PUT {page_path}");
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with("text/html")),
            "PUT {page_path}: {:?}",
            r.header("content-type")
        );
        assert!(r.header("allow").is_some_and(|a| a.contains("POST")));
        assert_eq!(r.header("content-security-policy"), Some(PAGE_CSP));
    }

    let css = s.get("/assets/pages.css", None).await;
    css.ok(200);
    assert!(
        css.header("content-type")
            .is_some_and(|t| t.starts_with("text/css")),
        "{:?}",
        css.header("content-type")
    );
    assert!(css.text.contains("button"));

    // Verify: the page (twice: it changes nothing), then its form.
    let (access, _) = s.user("httpverifier").await;
    let link = mailed_link(&s, "httpverifier@example.com", "verify-email").await;
    let token = link.split_once("?token=").unwrap().1.to_owned();
    for _ in 0..2 {
        let html = page(
            &s.get(path_of(&s, &link), None).await,
            200,
            "Confirm your email address",
        );
        assert!(html.contains(r#"<form method="post" action="verify-email">"#));
        assert!(html.contains(&format!(
            r#"<input type="hidden" name="token" value="{token}">"#
        )));
        assert!(html.contains(r#"<button type="submit" id="confirm">"#));
        assert!(html.contains(escaped_product), "{html}");
    }
    assert_eq!(email_verified(&s, &access).await, false);
    let done = s
        .send(form_post(&s, "/verify-email", &[("token", &token)]))
        .await;
    page(&done, 200, "Your email address is confirmed");
    assert_eq!(email_verified(&s, &access).await, true);
    page(
        &s.send(form_post(&s, "/verify-email", &[("token", &token)]))
            .await,
        400,
        UNUSABLE,
    );
    page(&s.get(path_of(&s, &link), None).await, 400, UNUSABLE);

    // Reset: the form, a refused password (the form again, with an alert;
    // the link still works), then a good one.
    s.post(
        "/api/v1/auth/password-reset/request",
        json!({"email": "httpverifier@example.com"}),
        None,
    )
    .await
    .ok(202);
    let link = mailed_link(&s, "httpverifier@example.com", "reset-password").await;
    let token = link.split_once("?token=").unwrap().1.to_owned();
    let html = page(
        &s.get(path_of(&s, &link), None).await,
        200,
        "Choose a new password",
    );
    assert!(html.contains(r#"<form method="post" action="reset-password">"#));
    assert!(html.contains(r#"id="new_password" name="new_password""#));
    assert!(html.contains(r#"id="save""#));
    assert!(!html.contains(r#"class="problem""#));
    for (refused, says) in [
        ("short", "at least 8 characters"),
        ("", "Type a new password"),
    ] {
        let form: Vec<(&str, &str)> = if refused.is_empty() {
            vec![("token", &token)]
        } else {
            vec![("token", &token), ("new_password", refused)]
        };
        let r = s.send(form_post(&s, "/reset-password", &form)).await;
        let html = page(&r, 400, "Choose a new password");
        let problem = html
            .split_once(r#"<p class="problem" role="alert">"#)
            .and_then(|(_, rest)| rest.split_once("</p>"))
            .map(|(p, _)| p)
            .unwrap_or_else(|| panic!("an alert for {refused:?}: {html}"));
        assert!(problem.contains(says), "{refused:?}: {problem}");
        assert!(html.contains(&format!(
            r#"<input type="hidden" name="token" value="{token}">"#
        )));
        page(
            &s.get(path_of(&s, &link), None).await,
            200,
            "Choose a new password",
        );
    }
    let new_password = "another long enough passphrase";
    let done = s
        .send(form_post(
            &s,
            "/reset-password",
            &[("token", &token), ("new_password", new_password)],
        ))
        .await;
    let html = page(&done, 200, "Your password is changed");
    assert!(!html.contains(new_password));
    s.login("httpverifier", new_password).await.ok(200);
    s.get("/api/v1/users/me", Some(&access)).await.ok(401);
    page(&s.get(path_of(&s, &link), None).await, 400, UNUSABLE);
    page(
        &s.send(form_post(
            &s,
            "/reset-password",
            &[
                ("token", &token),
                ("new_password", "yet another passphrase"),
            ],
        ))
        .await,
        400,
        UNUSABLE,
    );
    s.login("httpverifier", new_password).await.ok(200);
}

/// A reset form posted with an unknown token and no `new_password` field:
/// the link is bad, so the page must say so (400, "expired or already
/// used"), as it does when a password is sent. It answers the new-password
/// form instead ("Type a new password."), for a link that cannot work, with
/// whatever token was posted carried in it.
#[tokio::test]
async fn a_reset_form_with_a_bad_token_and_no_password_says_the_link_is_unusable() {
    let s = Server::start();
    for token in ["not-a-real-token", r#""><script>alert(1)</script>"#] {
        let r = s
            .send(form_post(&s, "/reset-password", &[("token", token)]))
            .await;
        let html = page(&r, 400, UNUSABLE);
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<form"), "no form for a bad link: {html}");
    }
}
