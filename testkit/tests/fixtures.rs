//! The fixtures against the real services, and skipping (or failing) when a
//! service is absent, observed from a child process of this test binary.

use std::net::TcpStream;
use std::process::{Command, Output};

use gatehouse_testkit::{PgDatabase, PrivateRedis, REQUIRE_SERVICES};

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
