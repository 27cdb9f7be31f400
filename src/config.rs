//! The configuration: typed sections, the file + environment overlay, and validation.
//!
//! Precedence, lowest first: built-in defaults, the TOML file, `GATEHOUSE_ENV`
//! (for `environment`), then `GATEHOUSE__SECTION__KEY` variables. Unknown
//! keys are errors everywhere, so a typo never falls back to a default.
//! [`load`] returns every problem it finds, one line each.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::value::Value;
use figment::{Figment, Provider};
use gatehouse_actors::breaker::BreakerSettings;
use gatehouse_actors::mailer::{EmailSettings, TransportKind};
use gatehouse_actors::passwords::PasswordSettings;
use gatehouse_actors::rate_limiter::RateLimitSettings;
use gatehouse_actors::supervisor::RestartPolicy;
use gatehouse_actors::token_issuer::AuthSettings;
use gatehouse_actors::token_issuer::keys::SigningAlgorithm;
use gatehouse_actors::user_repo::DatabaseSettings;
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The longest rate-limit window accepted: a day.
const MAX_WINDOW_MS: i64 = 86_400_000;

/// The JWT secret the tests and HS256 examples use for development; production refuses it.
pub const DEV_JWT_SECRET: &str = "gatehouse-development-secret-do-not-use-in-production";

/// The key-encryption secret shipped in `config.toml`; production refuses it.
pub const DEV_KEY_ENCRYPTION_SECRET: &str =
    "gatehouse-development-key-encryption-secret-do-not-use-in-production";

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
    pub email: EmailSettings,
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
    /// A connection with no request in flight for this long is closed (at most 60 s).
    pub idle_timeout_ms: u64,
    /// Base URL of this service as users reach it; links and metadata are built from it.
    pub public_url: String,
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
            idle_timeout_ms: 60_000,
            public_url: "http://127.0.0.1:8080".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakers {
    pub database: BreakerSettings,
    /// Gatehouse's own: guards Redis when `rate_limit.backend = "redis"`.
    pub redis: BreakerSettings,
    /// Guards the SMTP relay when `email.transport = "smtp"`.
    pub smtp: BreakerSettings,
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
    /// The HS256 key, from `auth.jwt_secret` or the file `auth.jwt_secret_file`
    /// names, when either is given (required with `signing_algorithm = "HS256"`).
    pub jwt_secret: Option<SecretString>,
    /// From `auth.key_encryption_secret` or `auth.key_encryption_secret_file`.
    pub key_encryption_secret: SecretString,
    /// From `email.smtp.password` or `email.smtp.password_file`, if either is set.
    pub smtp_password: Option<SecretString>,
    /// Not fatal, but worth a line in the log.
    pub warnings: Vec<String>,
}

/// Prefix of the variables that override keys: `GATEHOUSE__SECTION__KEY`.
const OVERRIDE_PREFIX: &str = "GATEHOUSE__";

/// Keys whose values are text, whatever they look like.
const TEXT_KEYS: &[&str] = &[
    "server.public_url",
    "auth.jwt_secret",
    "auth.jwt_secret_file",
    "auth.key_encryption_secret",
    "auth.key_encryption_secret_file",
    "auth.issuer",
    "auth.audience",
    "database.path",
    "database.url",
    "rate_limit.redis_url",
    "rate_limit.redis_prefix",
    "logging.level",
    "monitoring.token",
    "email.file_dir",
    "email.from",
    "email.link_base",
    "email.smtp.host",
    "email.smtp.username",
    "email.smtp.password",
    "email.smtp.password_file",
];

/// The longest idle keep-alive the contract allows.
const MAX_IDLE_TIMEOUT_MS: u64 = 60_000;

/// Keys whose values must never be repeated back, not even in a complaint about them.
const SECRET_KEYS: &[&str] = &[
    "auth.jwt_secret",
    "auth.key_encryption_secret",
    "monitoring.token",
    "email.smtp.password",
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
    let config: Config = figment
        .extract()
        .map_err(|first| every_problem(&figment, first))?;
    validate(config)
}

/// Deserialization stops at its first error, but an operator should see every
/// bad key of a file in one run. Each key given is tried alone on top of the
/// defaults (which are valid), so each bad one is reported on its own line.
fn every_problem(figment: &Figment, first: figment::Error) -> Vec<String> {
    let mut leaves = Vec::new();
    if let Ok(data) = figment.data() {
        for dict in data.values() {
            collect_leaves(String::new(), dict, &mut leaves);
        }
    }
    let mut problems: Vec<String> = Vec::new();
    for (path, value) in leaves {
        if let Err(errors) = Figment::new()
            .merge((path.as_str(), value))
            .extract::<Config>()
        {
            for e in errors {
                let line = describe(&e, &path);
                if !problems.contains(&line) {
                    problems.push(line);
                }
            }
        }
    }
    if problems.is_empty() {
        problems = first.into_iter().map(|e| describe(&e, "")).collect();
    }
    problems
}

fn collect_leaves(prefix: String, dict: &figment::value::Dict, out: &mut Vec<(String, Value)>) {
    for (key, value) in dict {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Dict(_, inner) if !inner.is_empty() => collect_leaves(path, inner, out),
            _ => out.push((path, value.clone())),
        }
    }
}

/// A multi-line message (a TOML syntax error with its snippet) as one line,
/// without the snippet, which may quote a secret.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| {
            let snippet = line
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start();
            !line.is_empty() && !snippet.starts_with('|')
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// One line about one bad key: its path and what is wrong, without its value.
fn describe(e: &figment::Error, fallback_path: &str) -> String {
    use figment::error::{Actual, Kind};
    let path = if e.path.is_empty() {
        fallback_path.to_owned()
    } else {
        // A quoted key may hold control characters: shown escaped, on one line.
        e.path
            .join(".")
            .chars()
            .map(|c| match c.is_control() {
                true => c.escape_default().to_string(),
                false => c.to_string(),
            })
            .collect()
    };
    let found = |actual: &Actual| match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a number with a fraction",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        _ => "a value of another kind",
    };
    let what = match &e.kind {
        Kind::InvalidType(actual, expected) => {
            format!("expected {expected}, found {}", found(actual))
        }
        Kind::InvalidValue(actual, expected) => {
            format!("{} out of range: expected {expected}", found(actual))
        }
        Kind::UnknownField(..) => "unknown key (a typo?)".to_owned(),
        Kind::UnknownVariant(_, expected) => format!("must be one of {}", expected.join(", ")),
        Kind::Message(_) if SECRET_KEYS.contains(&path.as_str()) => "invalid value".to_owned(),
        Kind::Message(message) => one_line(message),
        other => other.to_string(),
    };
    if path.is_empty() {
        what
    } else {
        format!("{path}: {what}")
    }
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
    check(
        (1..=MAX_IDLE_TIMEOUT_MS).contains(&s.idle_timeout_ms),
        "server.idle_timeout_ms must be between 1 and 60000",
    );
    check(
        public_url(&s.public_url).is_some(),
        "server.public_url must be an http:// or https:// URL with a host, no query or fragment",
    );
    check(
        config.email.link_base.is_empty() || public_url(&config.email.link_base).is_some(),
        "email.link_base must be empty or an http:// or https:// URL with a host, no query or fragment",
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
        db.audit_retention_days > 0,
        "database.audit_retention_days must be at least 1",
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
    check(
        a.verification_ttl_s > 0,
        "auth.verification_ttl_s must be at least 1",
    );
    check(a.reset_ttl_s > 0, "auth.reset_ttl_s must be at least 1");

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
    for (name, b) in [
        ("database", &breakers.database),
        ("redis", &breakers.redis),
        ("smtp", &breakers.smtp),
    ] {
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

    check(
        a.key_rotation_days <= 3650,
        "auth.key_rotation_days must be at most 3650 (0 rotates only by hand)",
    );
    check(
        a.refresh_reuse_grace_s <= 300,
        "auth.refresh_reuse_grace_s must be at most 300",
    );
    let jwt_secret = secret(
        "auth.jwt_secret",
        &a.jwt_secret,
        &a.jwt_secret_file,
        a.signing_algorithm == SigningAlgorithm::HS256,
        &mut problems,
    );
    let key_encryption_secret = secret(
        "auth.key_encryption_secret",
        &a.key_encryption_secret,
        &a.key_encryption_secret_file,
        true,
        &mut problems,
    );
    if key_encryption_secret
        .as_ref()
        .is_some_and(|kek| kek.expose_secret().len() < 32)
    {
        problems.push("auth.key_encryption_secret must be at least 32 bytes".into());
    }
    problems.extend(config.email.validate());
    let smtp = &config.email.smtp;
    // The contract's default is "": no password.
    let given = smtp
        .password
        .clone()
        .filter(|p| !p.expose_secret().is_empty());
    let smtp_password = secret(
        "email.smtp.password",
        &given,
        &smtp.password_file,
        false,
        &mut problems,
    );
    if config.email.transport == TransportKind::Smtp
        && !smtp.username.is_empty()
        && smtp_password.is_none()
    {
        problems.push(
            "email.smtp.username is set but neither email.smtp.password nor email.smtp.password_file"
                .into(),
        );
    }
    let broken = production_rules(&config, jwt_secret.as_ref(), key_encryption_secret.as_ref());
    match config.environment {
        Environment::Production => problems.extend(broken),
        Environment::Staging => warnings.extend(
            broken
                .into_iter()
                .map(|rule| format!("{rule}; production will refuse it")),
        ),
        Environment::Development => {}
    }
    if config.environment != Environment::Development
        && config.monitoring.required_token().is_none()
    {
        warnings.push(
            "monitoring.token is empty: monitoring routes and /metrics are open to anyone who can reach them"
                .into(),
        );
    }
    match key_encryption_secret {
        Some(key_encryption_secret) if problems.is_empty() => Ok(Loaded {
            config,
            jwt_secret,
            key_encryption_secret,
            smtp_password,
            warnings,
        }),
        _ => Err(problems),
    }
}

/// Resolves a secret given as `key` or in the file `key_file`; a missing
/// one is a problem only when `needed`.
fn secret(
    key: &str,
    value: &Option<SecretString>,
    file: &Option<PathBuf>,
    needed: bool,
    problems: &mut Vec<String>,
) -> Option<SecretString> {
    let secret = match (value, file) {
        (Some(_), Some(_)) => {
            problems.push(format!("{key} and {key}_file are both set; set one"));
            return None;
        }
        (None, None) => {
            if needed {
                problems.push(format!("{key} or {key}_file must be set"));
            }
            return None;
        }
        (Some(secret), None) => secret.expose_secret().to_owned(),
        (None, Some(path)) => match read_secret_file(key, path) {
            Ok(secret) => secret,
            Err(problem) => {
                problems.push(problem);
                return None;
            }
        },
    };
    if secret.is_empty() {
        problems.push(format!("{key} must not be empty"));
        return None;
    }
    Some(secret.into())
}

/// Fewest distinct byte values a secret may have in production: a key of one
/// repeated byte, or of a few, is guessable whatever its length.
const MIN_DISTINCT_SECRET_BYTES: usize = 16;

/// The rules a production deployment must meet (staging is warned about
/// them): each broken rule, one line each.
fn production_rules(
    config: &Config,
    jwt_secret: Option<&SecretString>,
    key_encryption_secret: Option<&SecretString>,
) -> Vec<String> {
    let a = &config.auth;
    let mut broken = Vec::new();
    let mut rule = |ok: bool, problem: String| {
        if !ok {
            broken.push(problem);
        }
    };
    rule(
        config.security.hsts,
        "security.hsts must be true in production".into(),
    );
    rule(
        !config.monitoring.chaos,
        "monitoring.chaos must be false in production".into(),
    );
    rule(
        a.leeway_s <= 60,
        "auth.leeway_s must be at most 60 in production".into(),
    );
    rule(
        a.access_token_ttl_s <= 86_400,
        "auth.access_token_ttl_s must be at most 86400 in production".into(),
    );
    rule(
        !config
            .server
            .trusted_proxies
            .iter()
            .any(|net| net.prefix_len() == 0),
        "server.trusted_proxies must not trust every address (0.0.0.0/0 or ::/0) in production"
            .into(),
    );
    rule(
        config
            .monitoring
            .required_token()
            .is_none_or(|t| t.chars().count() >= 24),
        "monitoring.token must be at least 24 characters in production".into(),
    );
    rule(
        config.server.public_url.starts_with("https://"),
        "server.public_url must be https:// in production".into(),
    );
    rule(
        config.email.transport != TransportKind::File,
        "email.transport must be \"smtp\" in production (\"file\" only writes .eml files)".into(),
    );
    rule(
        !config.email.unencrypted_off_host(),
        "email.smtp.tls must not be \"none\" in production unless email.smtp.host is a loopback \
         address (127.0.0.0/8, ::1, localhost)"
            .into(),
    );
    for (key, secret, shipped) in [
        ("auth.jwt_secret", jwt_secret, DEV_JWT_SECRET),
        (
            "auth.key_encryption_secret",
            key_encryption_secret,
            DEV_KEY_ENCRYPTION_SECRET,
        ),
    ] {
        let Some(secret) = secret.map(ExposeSecret::expose_secret) else {
            continue;
        };
        if secret == shipped {
            rule(
                false,
                format!("{key} is the shipped development value; production needs its own"),
            );
            continue;
        }
        rule(
            secret.len() >= 32,
            format!("{key} must be at least 32 bytes in production"),
        );
        rule(
            distinct_bytes(secret) >= MIN_DISTINCT_SECRET_BYTES,
            format!(
                "{key} must have at least {MIN_DISTINCT_SECRET_BYTES} distinct byte values in production"
            ),
        );
    }
    broken
}

fn distinct_bytes(secret: &str) -> usize {
    secret
        .bytes()
        .collect::<std::collections::HashSet<u8>>()
        .len()
}

/// `server.public_url` without a trailing slash, if it is usable.
pub fn public_url(raw: &str) -> Option<String> {
    let url = url::Url::parse(raw).ok()?;
    let usable = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none();
    usable.then(|| raw.trim_end_matches('/').to_owned())
}

/// Longest secret file read: a key is bytes, not megabytes (and a path like
/// `/dev/zero` must not hang the start-up).
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

fn read_secret_file(key: &str, path: &PathBuf) -> Result<String, String> {
    use std::io::Read;
    let cannot = |why: String| format!("{key}_file: cannot read {}: {why}", path.display());
    let metadata = std::fs::metadata(path).map_err(|e| cannot(e.to_string()))?;
    if !metadata.is_file() {
        return Err(cannot("not a regular file".into()));
    }
    let mut secret = String::new();
    std::fs::File::open(path)
        .and_then(|file| {
            file.take(MAX_SECRET_FILE_BYTES + 1)
                .read_to_string(&mut secret)
        })
        .map_err(|e| cannot(e.to_string()))?;
    if secret.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(cannot(format!("longer than {MAX_SECRET_FILE_BYTES} bytes")));
    }
    Ok(secret.trim_end_matches(['\r', '\n']).to_owned())
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
            // A strong key-encryption secret, unless the file or the test sets one.
            if !toml.contains("key_encryption_secret") {
                jail.set_env("GATEHOUSE__AUTH__KEY_ENCRYPTION_SECRET", STRONG_KEK);
            }
            for (k, v) in env {
                jail.set_env(k, v);
            }
            out = Some(load(Path::new("config.toml")));
            Ok(())
        });
        out.unwrap()
    }

    /// A key-encryption secret production accepts.
    const STRONG_KEK: &str = "Kq2#wT9v!Lm4Pz7@Rx1&Nc8$Hb5^Gd3*Yf6";

    const MINIMAL: &str = "[auth]\nissuer = \"gatehouse\"\n";

    #[test]
    fn the_relay_login_needs_a_password_and_an_empty_one_is_none() {
        let smtp = "[email]\ntransport = \"smtp\"\n[email.smtp]\npassword = \"\"\n";
        let loaded = load_toml(smtp, &[]).unwrap_or_else(|p| panic!("{p:?}"));
        assert!(loaded.smtp_password.is_none());
        let problems = load_toml(smtp, &[("GATEHOUSE__EMAIL__SMTP__USERNAME", "gatehouse")])
            .err()
            .unwrap_or_default();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("email.smtp.username")),
            "{problems:?}"
        );
        let given = load_toml(
            smtp,
            &[
                ("GATEHOUSE__EMAIL__SMTP__USERNAME", "gatehouse"),
                ("GATEHOUSE__EMAIL__SMTP__PASSWORD", "relay-secret"),
            ],
        )
        .unwrap_or_else(|p| panic!("{p:?}"));
        assert!(given.smtp_password.is_some());
    }

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
        // Found by the config fuzzer: a quoted key with a newline in it.
        let problems = load_toml(&format!("\"+\\n\\\"\"=\"\"\n{MINIMAL}"), &[])
            .err()
            .unwrap();
        assert!(
            problems.iter().all(|p| !p.contains('\n') && !p.is_empty()),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.contains("+\\n")), "{problems:?}");
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
            loaded.jwt_secret.as_ref().map(ExposeSecret::expose_secret),
            Some("00012345678901234567890123456789")
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
    fn every_bad_key_of_a_file_is_reported_without_its_value() {
        let toml = format!(
            "{MINIMAL}leeway_s = -1\n\
             [server]\nlisten = \"not-an-address\"\nmax_body_bytes = \"abc\"\nbogus = 1\n\
             [monitoring]\ntoken = 12345\n"
        );
        let problems = load_toml(&toml, &[]).err().unwrap();
        for key in [
            "server.listen:",
            "server.max_body_bytes:",
            "server.bogus:",
            "auth.leeway_s:",
            "monitoring.token:",
        ] {
            assert_eq!(
                problems.iter().filter(|p| p.starts_with(key)).count(),
                1,
                "{key}: {problems:?}"
            );
        }
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(
            !problems
                .iter()
                .any(|p| p.contains("12345") || p.contains("abc"))
        );
    }

    #[test]
    fn a_syntax_error_is_one_line_without_the_file_s_text() {
        let problems = load_toml("[auth]\njwt_secret = \"s3cr3t-value\n", &[])
            .err()
            .unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            !problems[0].contains('\n') && !problems[0].contains("s3cr3t"),
            "{problems:?}"
        );
    }

    /// A production configuration that meets every rule.
    const PRODUCTION: &str = "environment = \"production\"\n\
        [server]\npublic_url = \"https://auth.example.com\"\n\
        [security]\nhsts = true\n\
        [auth]\njwt_secret = \"Zq8#vL2m!Rt5pW9xKc3@Hn7bYf4&Dg6sJ1e\"\n\
        [monitoring]\ntoken = \"m0n1t0r-t0ken-0123456789abcdef\"\n\
        [email]\ntransport = \"smtp\"\n[email.smtp]\nhost = \"smtp.example.com\"\n";

    #[test]
    fn production_refuses_dangerous_values_and_staging_warns() {
        load_toml(PRODUCTION, &[]).unwrap_or_else(|p| panic!("{p:?}"));
        let dangerous = [
            ("GATEHOUSE__AUTH__LEEWAY_S", "1000000000", "auth.leeway_s"),
            (
                "GATEHOUSE__AUTH__ACCESS_TOKEN_TTL_S",
                "90000",
                "auth.access_token_ttl_s",
            ),
            (
                "GATEHOUSE__SERVER__TRUSTED_PROXIES",
                "[\"0.0.0.0/0\"]",
                "server.trusted_proxies",
            ),
            (
                "GATEHOUSE__SERVER__TRUSTED_PROXIES",
                "[\"10.0.0.0/8\", \"::/0\"]",
                "server.trusted_proxies",
            ),
            ("GATEHOUSE__MONITORING__TOKEN", "x", "monitoring.token"),
            (
                "GATEHOUSE__SERVER__PUBLIC_URL",
                "http://auth.example.com",
                "server.public_url",
            ),
            ("GATEHOUSE__EMAIL__TRANSPORT", "file", "email.transport"),
            ("GATEHOUSE__EMAIL__SMTP__TLS", "none", "email.smtp.tls"),
            (
                "GATEHOUSE__AUTH__JWT_SECRET",
                &"a".repeat(40),
                "auth.jwt_secret",
            ),
            (
                "GATEHOUSE__AUTH__JWT_SECRET",
                &"abcd".repeat(10),
                "distinct",
            ),
        ];
        let shipped_kek = (
            "GATEHOUSE__AUTH__KEY_ENCRYPTION_SECRET",
            DEV_KEY_ENCRYPTION_SECRET,
            "auth.key_encryption_secret",
        );
        let weak_kek = (
            "GATEHOUSE__AUTH__KEY_ENCRYPTION_SECRET",
            &*"kek!".repeat(10),
            "auth.key_encryption_secret",
        );
        for (key, value, named) in dangerous.into_iter().chain([shipped_kek, weak_kek]) {
            let problems = load_toml(PRODUCTION, &[(key, value)])
                .err()
                .unwrap_or_default();
            assert!(
                problems.iter().any(|p| p.contains(named)),
                "{key}={value}: {problems:?}"
            );
            let staging = load_toml(PRODUCTION, &[(key, value), ("GATEHOUSE_ENV", "staging")])
                .unwrap_or_else(|p| panic!("staging {key}: {p:?}"));
            assert!(
                staging.warnings.iter().any(|w| w.contains(named)),
                "{key}: {:?}",
                staging.warnings
            );
        }
        let open = load_toml(PRODUCTION, &[("GATEHOUSE__MONITORING__TOKEN", "")]).unwrap();
        assert!(open.warnings.iter().any(|w| w.contains("monitoring.token")));
        assert!(
            load_toml(MINIMAL, &[]).unwrap().warnings.is_empty(),
            "development is quiet"
        );
    }

    #[test]
    fn production_refuses_the_dev_secret_and_both_secret_sources() {
        let toml = format!(
            "environment = \"production\"\n[security]\nhsts = true\n[auth]\njwt_secret = \"{DEV_JWT_SECRET}\"\n"
        );
        let problems = load_toml(&toml, &[]).err().unwrap();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("auth.jwt_secret is the shipped development value")),
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
            loaded.jwt_secret.as_ref().map(ExposeSecret::expose_secret),
            Some("from-a-file-that-is-long-enough-for-prod")
        );
    }

    #[test]
    fn a_secret_file_must_be_a_small_regular_file() {
        for path in ["/dev/zero", "/"] {
            let toml = format!("[auth]\njwt_secret_file = {path:?}\n");
            let problems = load_toml(&toml, &[]).err().unwrap();
            assert!(problems[0].contains("jwt_secret_file"), "{problems:?}");
        }
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
