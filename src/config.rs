//! The configuration: typed sections, the file + environment overlay, and validation.
//!
//! Precedence, lowest first: built-in defaults, the TOML file, `GATEHOUSE_ENV`
//! (for `environment`), then `GATEHOUSE__SECTION__KEY` variables. Unknown
//! keys are errors everywhere, so a typo never falls back to a default.
//! [`load`] returns every problem it finds, one line each.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use gatehouse_actors::breaker::BreakerSettings;
use gatehouse_actors::passwords::PasswordSettings;
use gatehouse_actors::rate_limiter::RateLimitSettings;
use gatehouse_actors::supervisor::RestartPolicy;
use gatehouse_actors::token_issuer::AuthSettings;
use gatehouse_actors::user_repo::DatabaseSettings;
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The longest rate-limit window accepted: a day.
const MAX_WINDOW_MS: i64 = 86_400_000;

/// The JWT secret shipped in `config.toml` for development; production refuses it.
pub const DEV_JWT_SECRET: &str = "gatehouse-development-secret-do-not-use-in-production";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    #[default]
    Development,
    Staging,
    Production,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub environment: Environment,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub password: PasswordSettings,
    pub rate_limit: RateLimitSettings,
    pub circuit_breaker: CircuitBreakers,
    pub security: SecuritySettings,
    pub logging: LoggingSettings,
    pub monitoring: MonitoringSettings,
    pub supervisor: SupervisorSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// Larger bodies get 413.
    pub max_body_bytes: usize,
    /// Whole-request deadline.
    pub request_timeout_ms: u64,
    /// How long in-flight requests may take to finish at shutdown.
    pub shutdown_grace_ms: u64,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// A client must send a request's headers within this long.
    pub header_read_timeout_ms: u64,
    /// Open connections at most; further clients wait in the accept queue.
    pub max_connections: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 65_536,
            request_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            trusted_proxies: Vec::new(),
            header_read_timeout_ms: 5_000,
            max_connections: 10_000,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakers {
    pub database: BreakerSettings,
    /// Gatehouse's own: guards Redis when `rate_limit.backend = "redis"`.
    pub redis: BreakerSettings,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySettings {
    /// Exact origins allowed to call from a browser.
    pub cors_allowed_origins: Vec<String>,
    /// Send `Strict-Transport-Security`.
    pub hsts: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSettings {
    /// A level (`info`) or a tracing filter (`info,gatehouse=debug`).
    pub level: String,
    pub format: LogFormat,
}

impl Default for LoggingSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Json,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitoringSettings {
    /// When non-empty, monitoring routes but health, and `/metrics`, need it as a Bearer token.
    pub token: Option<SecretString>,
    /// Enables `POST /api/v1/monitoring/actors/{name}/kill`.
    pub chaos: bool,
}

impl MonitoringSettings {
    /// The token, if one is configured.
    pub fn required_token(&self) -> Option<&str> {
        self.token
            .as_ref()
            .map(ExposeSecret::expose_secret)
            .filter(|t| !t.is_empty())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorSettings {
    /// Restarts of one actor tolerated within `restart_window_s` before giving up on it.
    pub max_restarts: usize,
    pub restart_window_s: u64,
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            restart_window_s: 10,
        }
    }
}

impl SupervisorSettings {
    pub fn policy(&self) -> RestartPolicy {
        RestartPolicy {
            max_restarts: self.max_restarts,
            window: Duration::from_secs(self.restart_window_s),
        }
    }
}

/// A configuration that loaded and passed validation.
pub struct Loaded {
    pub config: Config,
    /// The HS256 key, from `auth.jwt_secret` or the file `auth.jwt_secret_file` names.
    pub jwt_secret: SecretString,
    /// Not fatal, but worth a line in the log.
    pub warnings: Vec<String>,
}

/// Prefix of the variables that override keys: `GATEHOUSE__SECTION__KEY`.
const OVERRIDE_PREFIX: &str = "GATEHOUSE__";

/// Keys whose values are text, whatever they look like.
const TEXT_KEYS: &[&str] = &[
    "auth.jwt_secret",
    "auth.jwt_secret_file",
    "auth.issuer",
    "auth.audience",
    "database.path",
    "database.url",
    "rate_limit.redis_url",
    "rate_limit.redis_prefix",
    "logging.level",
    "monitoring.token",
];

/// Reads `path` and the environment, and validates the result.
pub fn load(path: &Path) -> Result<Loaded, Vec<String>> {
    if !path.is_file() {
        return Err(vec![format!(
            "config file {} not found (use --config or GATEHOUSE_CONFIG)",
            path.display()
        )]);
    }
    let mut figment = Figment::new()
        .merge(Toml::file_exact(path))
        .merge(
            Env::raw()
                .only(&["GATEHOUSE_ENV"])
                .map(|_| "environment".into()),
        )
        .merge(Env::prefixed(OVERRIDE_PREFIX).split("__"));
    // Figment reads `12345` or `true` in a variable as a number or a boolean;
    // for keys that hold text (a secret, a token, a name) keep what was typed.
    for (key, value) in std::env::vars() {
        let Some(rest) = key.strip_prefix(OVERRIDE_PREFIX) else {
            continue;
        };
        let path = rest.to_lowercase().replace("__", ".");
        if TEXT_KEYS.contains(&path.as_str()) {
            figment = figment.merge((path, value));
        }
    }
    let config: Config = figment.extract().map_err(|errors| {
        errors
            .into_iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    })?;
    validate(config)
}

/// Every rule a loaded configuration must meet, checked all at once.
fn validate(config: Config) -> Result<Loaded, Vec<String>> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let production = config.environment == Environment::Production;
    let mut check = |ok: bool, problem: &str| {
        if !ok {
            problems.push(problem.to_owned());
        }
    };

    let s = &config.server;
    check(
        s.max_body_bytes > 0,
        "server.max_body_bytes must be at least 1",
    );
    check(
        s.request_timeout_ms > 0,
        "server.request_timeout_ms must be at least 1",
    );
    check(
        s.header_read_timeout_ms > 0,
        "server.header_read_timeout_ms must be at least 1",
    );
    check(
        s.max_connections > 0,
        "server.max_connections must be at least 1",
    );

    let db = &config.database;
    check(db.pool_size > 0, "database.pool_size must be at least 1");
    check(
        db.busy_timeout_ms > 0,
        "database.busy_timeout_ms must be at least 1",
    );
    check(
        db.statement_timeout_ms > 0,
        "database.statement_timeout_ms must be at least 1",
    );
    check(
        !db.path.as_os_str().is_empty() || !db.url.is_empty(),
        "database.path must not be empty",
    );
    check(
        db.url.is_empty()
            || db.url.starts_with("postgres://")
            || db.url.starts_with("postgresql://"),
        "database.url must be empty (SQLite) or start with postgres:// or postgresql://",
    );

    let a = &config.auth;
    check(!a.issuer.is_empty(), "auth.issuer must not be empty");
    check(!a.audience.is_empty(), "auth.audience must not be empty");
    check(
        a.access_token_ttl_s > 0,
        "auth.access_token_ttl_s must be at least 1",
    );
    check(
        a.refresh_token_ttl_s > 0,
        "auth.refresh_token_ttl_s must be at least 1",
    );
    check(
        a.session_max_lifetime_s >= a.access_token_ttl_s,
        "auth.session_max_lifetime_s must not be shorter than auth.access_token_ttl_s",
    );
    check(
        a.max_failed_logins > 0,
        "auth.max_failed_logins must be at least 1",
    );
    check(a.lockout_s > 0, "auth.lockout_s must be at least 1");

    let p = &config.password;
    check(
        (10..=20).contains(&p.scrypt_log_n),
        "password.scrypt_log_n must be between 10 and 20",
    );
    if let Err(e) = p.params() {
        check(false, &format!("password.scrypt_*: {e}"));
    }
    check(p.min_length >= 1, "password.min_length must be at least 1");
    check(
        p.min_length <= p.max_length,
        "password.min_length must not exceed password.max_length",
    );
    check(
        p.max_length <= 4096,
        "password.max_length must be at most 4096",
    );
    check(
        p.max_concurrent_hashes >= 1,
        "password.max_concurrent_hashes must be at least 1",
    );
    if production && p.scrypt_log_n < 17 {
        warnings.push(format!(
            "password.scrypt_log_n = {} is below OWASP's recommended 17",
            p.scrypt_log_n
        ));
    }

    let rl = &config.rate_limit;
    for (class, window) in rl.routes.all() {
        check(
            window.limit >= 1 && (1_000..=MAX_WINDOW_MS).contains(&window.window_ms),
            &format!(
                "rate_limit.routes.{}: limit must be at least 1 and window_s between 1 and 86400",
                class.name()
            ),
        );
    }
    check(
        rl.max_tracked_keys >= 1,
        "rate_limit.max_tracked_keys must be at least 1",
    );
    if rl.backend == gatehouse_actors::rate_limiter::Backend::Redis {
        check(
            rl.redis_url.starts_with("redis://") || rl.redis_url.starts_with("rediss://"),
            "rate_limit.redis_url must start with redis:// or rediss://",
        );
    }

    let breakers = &config.circuit_breaker;
    for (name, b) in [("database", &breakers.database), ("redis", &breakers.redis)] {
        check(
            b.failure_threshold >= 1,
            &format!("circuit_breaker.{name}.failure_threshold must be at least 1"),
        );
        check(
            b.reset_timeout_ms >= 1,
            &format!("circuit_breaker.{name}.reset_timeout_ms must be at least 1"),
        );
        check(
            b.half_open_max_calls >= 1,
            &format!("circuit_breaker.{name}.half_open_max_calls must be at least 1"),
        );
    }

    for origin in &config.security.cors_allowed_origins {
        check(
            is_origin(origin),
            &format!(
                "security.cors_allowed_origins: {origin:?} is not an origin like https://app.example.com"
            ),
        );
    }
    if production {
        check(
            config.security.hsts,
            "security.hsts must be true in production",
        );
        check(
            !config.monitoring.chaos,
            "monitoring.chaos must be false in production",
        );
    }

    check(
        tracing_subscriber::EnvFilter::try_new(&config.logging.level).is_ok(),
        &format!(
            "logging.level: {:?} is not a level or filter",
            config.logging.level
        ),
    );

    check(
        config.supervisor.max_restarts >= 1,
        "supervisor.max_restarts must be at least 1",
    );
    check(
        config.supervisor.restart_window_s >= 1,
        "supervisor.restart_window_s must be at least 1",
    );

    let secret = jwt_secret(a, production, &mut problems, &mut warnings);
    match secret {
        Some(jwt_secret) if problems.is_empty() => Ok(Loaded {
            config,
            jwt_secret,
            warnings,
        }),
        _ => Err(problems),
    }
}

/// Resolves the HS256 key and checks it against the environment's rules.
fn jwt_secret(
    auth: &AuthSettings,
    production: bool,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Option<SecretString> {
    let secret = match (&auth.jwt_secret, &auth.jwt_secret_file) {
        (Some(_), Some(_)) => {
            problems.push("auth.jwt_secret and auth.jwt_secret_file are both set; set one".into());
            return None;
        }
        (None, None) => {
            problems.push("auth.jwt_secret or auth.jwt_secret_file must be set".into());
            return None;
        }
        (Some(secret), None) => secret.expose_secret().to_owned(),
        (None, Some(file)) => match read_secret_file(file) {
            Ok(secret) => secret,
            Err(problem) => {
                problems.push(problem);
                return None;
            }
        },
    };
    if secret.is_empty() {
        problems.push("auth.jwt_secret must not be empty".into());
        return None;
    }
    if production && secret == DEV_JWT_SECRET {
        problems.push(
            "auth.jwt_secret is the shipped development secret; production needs its own".into(),
        );
    } else if secret.len() < 32 {
        let line = "auth.jwt_secret must be at least 32 bytes";
        if production {
            problems.push(format!("{line} in production"));
        } else {
            warnings.push(format!("{line}; production will refuse it"));
        }
    }
    Some(secret.into())
}

fn read_secret_file(path: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|e| format!("auth.jwt_secret_file: cannot read {}: {e}", path.display()))
}

/// `scheme://host[:port]`, nothing more: what browsers send in `Origin`.
fn is_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', ' ', '@'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Loads `toml` with exactly the given environment, inside figment's jail
    /// (which serializes tests that touch the process environment).
    #[allow(clippy::result_large_err)] // figment's error type, test-only
    fn load_toml(toml: &str, env: &[(&str, &str)]) -> Result<Loaded, Vec<String>> {
        let mut out = None;
        figment::Jail::expect_with(|jail| {
            jail.create_file("config.toml", toml)?;
            for (k, v) in env {
                jail.set_env(k, v);
            }
            out = Some(load(Path::new("config.toml")));
            Ok(())
        });
        out.unwrap()
    }

    const MINIMAL: &str = "[auth]\njwt_secret = \"0123456789abcdef0123456789abcdef\"\n";

    #[test]
    fn shipped_config_is_valid_and_documents_every_section() {
        let shipped = include_str!("../config.toml");
        let loaded = load_toml(shipped, &[]).unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(loaded.config.environment, Environment::Development);
        for section in [
            "[server]",
            "[database]",
            "[auth]",
            "[password]",
            "[rate_limit]",
            "[rate_limit.routes.login]",
            "[circuit_breaker.database]",
            "[security]",
            "[logging]",
            "[monitoring]",
            "[supervisor]",
        ] {
            assert!(
                shipped.contains(section),
                "{section} missing from config.toml"
            );
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = load_toml(MINIMAL, &[]).unwrap().config;
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.max_body_bytes, 65_536);
        assert_eq!(c.auth.access_token_ttl_s, 900);
        assert_eq!(c.auth.leeway_s, 5);
        assert_eq!(c.password.scrypt_log_n, 17);
        assert_eq!(c.circuit_breaker.database.failure_threshold, 5);
        assert_eq!(c.logging.format, LogFormat::Json);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let problems = load_toml(&format!("{MINIMAL}[server]\nlisten_addr = \"x\"\n"), &[])
            .err()
            .unwrap();
        assert!(
            problems.iter().any(|p| p.contains("listen_addr")),
            "{problems:?}"
        );
        let problems = load_toml(&format!("{MINIMAL}[sever]\n"), &[])
            .err()
            .unwrap();
        assert!(problems.iter().any(|p| p.contains("sever")), "{problems:?}");
    }

    #[test]
    fn environment_overrides_with_double_underscores() {
        let loaded = load_toml(
            MINIMAL,
            &[
                ("GATEHOUSE__SERVER__LISTEN", "127.0.0.1:0"),
                ("GATEHOUSE__RATE_LIMIT__ROUTES__LOGIN__LIMIT", "7"),
                (
                    "GATEHOUSE__AUTH__JWT_SECRET",
                    "00012345678901234567890123456789",
                ),
                ("GATEHOUSE__MONITORING__TOKEN", "12345678901234567890"),
                ("GATEHOUSE__AUTH__ISSUER", "true"),
            ],
        )
        .unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(loaded.config.server.listen.port(), 0);
        assert_eq!(loaded.config.rate_limit.routes.login.limit, Some(7));
        // Text stays text, exactly as typed, even when it looks like a number.
        assert_eq!(
            loaded.jwt_secret.expose_secret(),
            "00012345678901234567890123456789"
        );
        assert_eq!(
            loaded.config.monitoring.required_token(),
            Some("12345678901234567890")
        );
        assert_eq!(loaded.config.auth.issuer, "true");
    }

    #[test]
    fn every_problem_is_reported_on_its_own_line() {
        let toml = "environment = \"production\"\n\
                    [auth]\njwt_secret = \"short\"\n\
                    [password]\nscrypt_log_n = 9\n\
                    [monitoring]\nchaos = true\n";
        let problems = load_toml(toml, &[]).err().unwrap();
        for expected in ["scrypt_log_n", "hsts", "chaos", "32 bytes"] {
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{expected}: {problems:?}"
            );
        }
        assert!(problems.iter().all(|p| !p.contains('\n')));
    }

    #[test]
    fn production_refuses_the_dev_secret_and_both_secret_sources() {
        let toml = format!(
            "environment = \"production\"\n[security]\nhsts = true\n[auth]\njwt_secret = \"{DEV_JWT_SECRET}\"\n"
        );
        let problems = load_toml(&toml, &[]).err().unwrap();
        assert!(
            problems.iter().any(|p| p.contains("development secret")),
            "{problems:?}"
        );
        let both =
            "[auth]\njwt_secret = \"0123456789abcdef0123456789abcdef\"\njwt_secret_file = \"/x\"\n";
        assert!(load_toml(both, &[]).err().unwrap()[0].contains("both"));
    }

    #[test]
    fn secret_file_is_read_and_trimmed() {
        let mut secret = tempfile::NamedTempFile::new().unwrap();
        writeln!(secret, "from-a-file-that-is-long-enough-for-prod").unwrap();
        let toml = format!("[auth]\njwt_secret_file = {:?}\n", secret.path());
        let loaded = load_toml(&toml, &[]).unwrap();
        assert_eq!(
            loaded.jwt_secret.expose_secret(),
            "from-a-file-that-is-long-enough-for-prod"
        );
    }

    #[test]
    fn origins_are_checked() {
        assert!(is_origin("https://app.example.com"));
        assert!(is_origin("http://localhost:3000"));
        for bad in [
            "app.example.com",
            "https://x.com/",
            "ftp://x.com",
            "https://",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }
}
