//! The command line and configuration validation, through the binary.

use std::ffi::OsStr;
use std::process::Output;

use crate::harness::{cli, shipped_config, stderr};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    cli(&args, env)
}

fn config_file(contents: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), contents).unwrap();
    file
}

#[test]
fn shipped_config_checks_clean() {
    let config = shipped_config();
    let out = run(
        &["--config", config.to_str().unwrap(), "--check-config"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn gatehouse_config_variable_names_the_file() {
    let file = config_file("[server]\nlisten_adress = \"x\"\n");
    let out = run(
        &["--check-config"],
        &[("GATEHOUSE_CONFIG", file.path().to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("listen_adress"), "{}", stderr(&out));
}

#[test]
fn each_problem_gets_its_own_line_and_exit_code_2() {
    let config = shipped_config();
    let out = run(
        &["--config", config.to_str().unwrap(), "--check-config"],
        &[
            ("GATEHOUSE_ENV", "production"),
            ("GATEHOUSE__PASSWORD__MIN_LENGTH", "0"),
            ("GATEHOUSE__MONITORING__CHAOS", "true"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    for expected in ["shipped development value", "hsts", "chaos", "min_length"] {
        assert_eq!(
            lines.iter().filter(|l| l.contains(expected)).count(),
            1,
            "{expected}: {err}"
        );
    }
}

#[test]
fn an_invalid_configuration_never_starts_the_server() {
    let file = config_file("[auth]\njwt_secret = \"x\"\njwt_secret_file = \"/dev/null\"\n");
    let out = run(
        &["--config", file.path().to_str().unwrap()],
        &[("GATEHOUSE__SERVER__LISTEN", "127.0.0.1:0")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("both set"), "{err}");
    assert!(!err.contains("listening on"), "{err}");
}

#[test]
fn a_missing_file_or_a_bad_value_is_reported() {
    let out = run(
        &["--config", "/nonexistent/gatehouse.toml", "--check-config"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not found"));
    let config = shipped_config();
    let out = run(
        &["--config", config.to_str().unwrap(), "--check-config"],
        &[("GATEHOUSE__SERVER__MAX_BODY_BYTES", "lots")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).to_lowercase().contains("max_body_bytes"),
        "{}",
        stderr(&out)
    );
}
