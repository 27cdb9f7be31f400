//! The fixtures against the real services, and skipping (or failing) when a
//! service is absent, observed from a child process of this test binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::time::Duration;

use gatehouse_testkit::fantoccini::Locator;
use gatehouse_testkit::{
    Browser, CHROMEDRIVER, PHONE_WINDOW, PgDatabase, PrivateRedis, REQUIRE_SERVICES, SmtpSink,
};
use lettre::address::Envelope;
use lettre::message::MultiPart;
use lettre::{Message, SmtpTransport, Transport};

#[test]
fn a_postgres_database_of_its_own_is_dropped_with_it() {
    gatehouse_testkit::require_postgres!();
    let db = PgDatabase::create();
    assert_eq!(db.query("SELECT current_database()"), db.name);
    db.query("CREATE TABLE t (v text); INSERT INTO t VALUES ('a'), (NULL)");
    assert_eq!(db.query("SELECT count(*) FROM t"), "2");
    assert_eq!(db.query("SELECT v FROM t WHERE v IS NULL"), "");
    assert_eq!(db.query("SELECT v FROM t WHERE false"), "");
    assert_eq!(db.query("SELECT true"), "t");
    let name = db.name.clone();
    drop(db);
    let other = PgDatabase::create();
    assert_eq!(
        other.query(&format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{name}'"
        )),
        "0"
    );
}

#[tokio::test]
async fn postgres_fixtures_work_from_inside_a_runtime() {
    gatehouse_testkit::require_postgres!();
    let db = PgDatabase::create();
    assert_eq!(db.query("SELECT 1 + 1"), "2");
}

#[test]
fn a_private_redis_stops_and_restarts_on_its_port() {
    gatehouse_testkit::require_redis_server!();
    let mut redis = PrivateRedis::start();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert!(TcpStream::connect(("127.0.0.1", redis.port())).is_ok());
    redis.stop();
    assert!(TcpStream::connect(("127.0.0.1", redis.port())).is_err());
    redis.restart();
    assert!(TcpStream::connect(("127.0.0.1", redis.port())).is_ok());
}

/// Plain SMTP to the sink on `port`.
fn mailer(port: u16) -> SmtpTransport {
    SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(Duration::from_secs(10)))
        .build()
}

/// A mail as the coming verification mails will be: text and HTML.
fn code_mail(to: &str, code: &str) -> Message {
    Message::builder()
        .from("Gatehouse <noreply@gatehouse.test>".parse().unwrap())
        .to(format!("Ada <{to}>").parse().unwrap())
        .subject(format!("Your code — {code}"))
        .multipart(MultiPart::alternative_plain_html(
            format!("Your code is {code}.\r\n"),
            format!("<p>Your code is <b>{code}</b>.</p>"),
        ))
        .unwrap()
}

#[test]
fn an_smtp_sink_keeps_what_it_is_sent_while_up_across_a_restart() {
    gatehouse_testkit::require_smtp_sink!();
    let mut sink = SmtpSink::start();
    assert!(sink.messages().is_empty());
    let envelope = Envelope::new(
        Some("bounces@gatehouse.test".parse().unwrap()),
        vec!["ada@example.test".parse().unwrap()],
    )
    .unwrap();
    let first = code_mail("ada@example.test", "123456");
    mailer(sink.port())
        .send_raw(&envelope, &first.formatted())
        .unwrap();
    let mails = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.envelope_from, "bounces@gatehouse.test");
    assert_eq!(mail.envelope_to, ["ada@example.test"]);
    assert_eq!(mail.subject, "Your code — 123456");
    assert_eq!(mail.from, "Gatehouse <noreply@gatehouse.test>");
    assert_eq!(mail.to, "Ada <ada@example.test>");
    assert_eq!(
        mail.text.as_deref().map(str::trim_end),
        Some("Your code is 123456.")
    );
    assert_eq!(
        mail.html.as_deref().map(str::trim_end),
        Some("<p>Your code is <b>123456</b>.</p>")
    );
    assert_eq!(mail.header("mime-version").as_deref(), Some("1.0"));
    // The data as sent (the transport ends it with a line break of its own).
    assert_eq!(
        mail.raw.trim_ascii_end(),
        first.formatted().trim_ascii_end()
    );

    // The relay is down: nothing listens, and a send fails.
    sink.stop();
    assert!(TcpStream::connect(("127.0.0.1", sink.port())).is_err());
    let second = code_mail("grace@example.test", "654321");
    assert!(mailer(sink.port()).send(&second).is_err());

    // Up again on the same port, with what it kept.
    sink.restart();
    mailer(sink.port()).send(&second).unwrap();
    let mails = sink.wait_for(2, Duration::from_secs(10));
    let subjects: Vec<&str> = mails.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(subjects, ["Your code — 123456", "Your code — 654321"]);
    assert_eq!(mails[1].envelope_from, "noreply@gatehouse.test");
    assert_eq!(mails[1].envelope_to, ["grace@example.test"]);
    assert_eq!(mails[1].to, "Ada <grace@example.test>");
}

/// The page the browser test fills in: a form posting a name to `/greet`.
const FORM_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Who are you?</title>
</head>
<body>
<form method="post" action="/greet">
<label for="name">Name</label>
<input id="name" name="name" autocomplete="off">
<button type="submit">Greet me</button>
</form>
</body>
</html>
"#;

/// A one-page site on a port of its own: `GET /` is [`FORM_PAGE`], and
/// `POST /greet` greets the name posted. Each connection has a thread, so
/// that a browser's idle spare connection holds nothing up.
fn serve_form_page() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream));
        }
    });
    port
}

fn answer(mut stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let mut words = request_line.split_whitespace();
    let (status, page) = match (words.next(), words.next()) {
        (Some("GET"), Some("/")) => ("200 OK", FORM_PAGE.to_owned()),
        (Some("POST"), Some("/greet")) => {
            let name = form_urlencoded::parse(&body)
                .find(|(k, _)| k == "name")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            let page = format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
                 <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
                 <title>Greeted</title></head><body><p id=\"greeting\">Hello, {name}!</p>\
                 </body></html>"
            );
            ("200 OK", page)
        }
        _ => ("404 Not Found", "not here".to_owned()),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
        page.len()
    );
}

#[tokio::test]
async fn a_browser_fills_in_a_form_on_a_phone_and_takes_a_screenshot() {
    gatehouse_testkit::require_browser!();
    let site = serve_form_page();
    let browser = Browser::start().await;
    let client = browser.client();
    client
        .goto(&format!("http://127.0.0.1:{site}/"))
        .await
        .unwrap();
    assert_eq!(client.title().await.unwrap(), "Who are you?");
    let viewport = client
        .execute("return [window.innerWidth, window.innerHeight]", vec![])
        .await
        .unwrap();
    assert_eq!(
        (viewport[0].clone(), viewport[1].clone()),
        (PHONE_WINDOW.0.into(), PHONE_WINDOW.1.into()),
        "the viewport"
    );
    client
        .find(Locator::Css("#name"))
        .await
        .unwrap()
        .send_keys("Ada Lovelace")
        .await
        .unwrap();
    client
        .find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let greeting = client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#greeting"))
        .await
        .unwrap();
    assert_eq!(greeting.text().await.unwrap(), "Hello, Ada Lovelace!");
    assert_eq!(client.current_url().await.unwrap().path(), "/greet");

    let path = browser.screenshot("testkit-greeted").await;
    assert!(path.ends_with("target/test-output/screenshots/testkit-greeted.png"));
    let png = std::fs::read(&path).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is no PNG",
        path.display()
    );
    // The image's width (the IHDR chunk's first field) is the phone's.
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert_eq!(width, PHONE_WINDOW.0);
    browser.close().await;
}

/// Set in the child processes that run the probes.
const PROBE: &str = "GATEHOUSE_TESTKIT_PROBE";

fn probing() -> bool {
    std::env::var_os(PROBE).is_some()
}

/// Run by [`run_probe`], in a child process (does nothing elsewhere).
#[test]
#[ignore = "a probe, run in a child process by the tests below"]
fn probe_postgres() {
    if !probing() {
        return;
    }
    gatehouse_testkit::require_postgres!();
    panic!("went on without PostgreSQL");
}

/// Run by [`run_probe`], in a child process (does nothing elsewhere).
#[test]
#[ignore = "a probe, run in a child process by the tests below"]
fn probe_postgres_store() {
    if !probing() {
        return;
    }
    let _dir = gatehouse_testkit::DataDir::new();
    panic!("went on without PostgreSQL");
}

/// Run by [`an_absent_browser_skips_the_test_with_a_reason`], in a child
/// process (does nothing elsewhere).
#[test]
#[ignore = "a probe, run in a child process by the tests below"]
fn probe_browser() {
    if !probing() {
        return;
    }
    gatehouse_testkit::require_browser!();
    panic!("went on without a browser");
}

/// Runs probe `name` of this binary with PostgreSQL pointed at a closed port.
fn run_probe(name: &str, store: bool, required: bool) -> (Output, String, String) {
    let closed = gatehouse_testkit::free_port();
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([name, "--exact", "--ignored"])
        .env(PROBE, "1")
        .env(
            "GATEHOUSE_TEST_POSTGRES_URL",
            format!("postgres://postgres@127.0.0.1:{closed}"),
        )
        .env_remove(REQUIRE_SERVICES)
        .env_remove("GATEHOUSE_TEST_STORE");
    if store {
        command.env("GATEHOUSE_TEST_STORE", "postgres");
    }
    if required {
        command.env(REQUIRE_SERVICES, "1");
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, format!("{stderr}\n--- at 127.0.0.1:{closed}"))
}

#[test]
fn an_absent_service_skips_the_test_with_a_reason() {
    let (out, stdout, stderr) = run_probe("probe_postgres", false, false);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let port = stderr.rsplit(':').next().unwrap();
    assert!(
        stderr.contains(&format!(
            "skipped: PostgreSQL is not reachable at 127.0.0.1:{port} (probe_postgres)"
        )),
        "{stderr}"
    );
}

#[test]
fn an_absent_service_fails_the_test_when_services_are_required() {
    let (out, stdout, stderr) = run_probe("probe_postgres", false, true);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("GATEHOUSE_TEST_REQUIRE_SERVICES=1 requires it"),
        "{stdout}"
    );
}

#[test]
fn the_postgres_store_without_postgres_skips_the_binary_or_fails() {
    let (out, stdout, stderr) = run_probe("probe_postgres_store", true, false);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("skipped: GATEHOUSE_TEST_STORE=postgres, but PostgreSQL is not reachable"),
        "{stderr}"
    );
    let (out, stdout, stderr) = run_probe("probe_postgres_store", true, true);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("GATEHOUSE_TEST_REQUIRE_SERVICES=1 requires it"),
        "{stdout}"
    );
}

#[test]
fn an_absent_browser_skips_the_test_with_a_reason() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["probe_browser", "--exact", "--ignored"])
        .env(PROBE, "1")
        .env(CHROMEDRIVER, "/nonexistent/chromedriver")
        .env_remove(REQUIRE_SERVICES)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "skipped: /nonexistent/chromedriver is not installed \
             (set GATEHOUSE_TEST_CHROMEDRIVER to where it is) (probe_browser)"
        ),
        "{stderr}"
    );
}
