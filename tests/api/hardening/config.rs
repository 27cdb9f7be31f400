//! Finding 10: production refuses dangerous values (staging warns about them).
//! Finding 11e: `--check-config` reports every problem of a file, one line each.

use std::ffi::OsStr;
use std::process::Output;

use crate::harness::{cli, shipped_config, stderr};

fn check(env: &[(&str, String)], config: &std::path::Path) -> Output {
    let args = [
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("--check-config"),
    ];
    cli(&args, env)
}

/// A production configuration that passes every rule, as overrides of the
/// shipped file. Extend it when production starts requiring more.
fn production_baseline() -> Vec<(&'static str, String)> {
    vec![
        ("GATEHOUSE_ENV", "production".into()),
        ("GATEHOUSE__SECURITY__HSTS", "true".into()),
        (
            "GATEHOUSE__AUTH__KEY_ENCRYPTION_SECRET",
            "q7Vd2LxR9mTz4KpW8cNf3HbJ6sYg1AeU5oXiQ0rZ".into(),
        ),
        (
            "GATEHOUSE__SERVER__PUBLIC_URL",
            "https://auth.example.com".into(),
        ),
        (
            "GATEHOUSE__MONITORING__TOKEN",
            "mT4kQ9zR2wX7vB1nC8pL5sD3fG6hJ0aY".into(),
        ),
        ("GATEHOUSE__EMAIL__TRANSPORT", "smtp".into()),
        ("GATEHOUSE__EMAIL__SMTP__HOST", "smtp.example.com".into()),
    ]
}

/// `baseline` with `key` set to `value` (replacing it if the baseline sets it).
fn with(
    baseline: Vec<(&'static str, String)>,
    key: &'static str,
    value: &str,
) -> Vec<(&'static str, String)> {
    let mut env: Vec<_> = baseline.into_iter().filter(|(k, _)| *k != key).collect();
    env.push((key, value.to_owned()));
    env
}

fn staging(env: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
    with(env, "GATEHOUSE_ENV", "staging")
}

/// (override, its value, what a line about it must say)
fn dangerous() -> Vec<(&'static str, String, &'static [&'static str])> {
    vec![
        (
            "GATEHOUSE__AUTH__LEEWAY_S",
            "1000000000".into(),
            &["leeway_s"],
        ),
        (
            "GATEHOUSE__AUTH__ACCESS_TOKEN_TTL_S",
            "90000".into(),
            &["access_token_ttl_s"],
        ),
        (
            "GATEHOUSE__SERVER__TRUSTED_PROXIES",
            "[\"0.0.0.0/0\"]".into(),
            &["trusted_proxies"],
        ),
        (
            "GATEHOUSE__SERVER__TRUSTED_PROXIES",
            "[\"::/0\"]".into(),
            &["trusted_proxies"],
        ),
        (
            "GATEHOUSE__MONITORING__TOKEN",
            "x".into(),
            &["monitoring", "token"],
        ),
        (
            "GATEHOUSE__SERVER__PUBLIC_URL",
            "http://auth.example.com".into(),
            &["public_url"],
        ),
        (
            "GATEHOUSE__EMAIL__TRANSPORT",
            "file".into(),
            &["email.transport"],
        ),
        (
            "GATEHOUSE__EMAIL__SMTP__TLS",
            "none".into(),
            &["email.smtp.tls", "loopback"],
        ),
        (
            "GATEHOUSE__AUTH__JWT_SECRET",
            "a".repeat(40),
            &["jwt_secret"],
        ),
        (
            "GATEHOUSE__AUTH__KEY_ENCRYPTION_SECRET",
            "gatehouse-development-key-encryption-secret-do-not-use-in-production".into(),
            &["key_encryption_secret", "development"],
        ),
        (
            "GATEHOUSE__AUTH__KEY_ENCRYPTION_SECRET",
            "abcd".repeat(10),
            &["key_encryption_secret", "distinct"],
        ),
    ]
}

fn a_line_names(err: &str, words: &[&str]) -> bool {
    err.lines().any(|l| words.iter().all(|w| l.contains(w)))
}

fn a_warning_names(err: &str, words: &[&str]) -> bool {
    err.lines()
        .any(|l| l.to_lowercase().contains("warn") && words.iter().all(|w| l.contains(w)))
}

#[test]
fn production_refuses_dangerous_values_and_staging_warns() {
    let config = shipped_config();
    let ok = check(&production_baseline(), &config);
    assert_eq!(ok.status.code(), Some(0), "baseline: {}", stderr(&ok));
    let ok = check(&staging(production_baseline()), &config);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "staging baseline: {}",
        stderr(&ok)
    );

    let mut failures = Vec::new();
    for (key, value, words) in dangerous() {
        let out = check(&with(production_baseline(), key, &value), &config);
        let err = stderr(&out);
        if out.status.code() != Some(2) || !a_line_names(&err, words) {
            failures.push(format!(
                "production {key}={value}: exit {:?}: {err}",
                out.status.code()
            ));
        }
        let out = check(&staging(with(production_baseline(), key, &value)), &config);
        let err = stderr(&out);
        if out.status.code() != Some(0) || !a_warning_names(&err, words) {
            failures.push(format!(
                "staging {key}={value}: exit {:?}: {err}",
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // No monitoring token at all is allowed, with a warning.
    let out = check(
        &with(production_baseline(), "GATEHOUSE__MONITORING__TOKEN", ""),
        &config,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(a_warning_names(&err, &["monitoring", "token"]), "{err}");
}

/// The shipped file with each `(from, to)` replacement made once.
fn broken_config(edits: &[(&str, &str)]) -> tempfile::NamedTempFile {
    let mut text = std::fs::read_to_string(shipped_config()).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{from} not in config.toml");
        text = text.replacen(from, to, 1);
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

/// Exit 2, and for each key a line naming it and none of the others.
#[track_caller]
fn each_problem_on_its_own_line(edits: &[(&str, &str)], keys: &[&str]) {
    let file = broken_config(edits);
    let out = check(&[], file.path());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{edits:?}: {err}");
    for key in keys {
        let own_line = err
            .lines()
            .any(|l| l.contains(key) && keys.iter().filter(|k| *k != key).all(|k| !l.contains(k)));
        assert!(own_line, "{edits:?}: no line of its own names {key}: {err}");
    }
}

#[test]
fn check_config_reports_every_problem_of_a_file() {
    each_problem_on_its_own_line(
        &[
            ("listen = \"127.0.0.1:8080\"", "listen = \"not-an-address\""),
            ("max_body_bytes = 65536", "max_body_bytes = \"abc\""),
        ],
        &["listen", "max_body_bytes"],
    );
    each_problem_on_its_own_line(
        &[
            (
                "request_timeout_ms = 10000",
                "request_timeout_ms = \"soon\"",
            ),
            ("leeway_s = 5", "leeway_s = -1"),
        ],
        &["request_timeout_ms", "leeway_s"],
    );
    each_problem_on_its_own_line(
        &[
            ("[server]\n", "[server]\nlisten_adress = \"x\"\n"),
            ("max_body_bytes = 65536", "max_body_bytes = \"abc\""),
        ],
        &["listen_adress", "max_body_bytes"],
    );
}
