//! The `[email]` section of the configuration: which transport delivers the
//! mail, who it is from, where links point, the SMTP relay, and the delivery
//! limits; plus the checks a loaded section must pass ([`EmailSettings::validate`]).
//!
//! Reading `smtp.password_file` and resolving an empty `link_base` to
//! `server.public_url` are the front end's config loader's job, not this
//! module's.

use std::net::IpAddr;
use std::path::PathBuf;

use lettre::message::Mailbox;
use secrecy::SecretString;
use serde::Deserialize;

/// The most delivery attempts `max_attempts` may ask for.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;

/// No retry waits longer than this (seconds).
pub const MAX_RETRY_S: u64 = 15 * 60;

/// `email.transport`: how messages leave Gatehouse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Each message becomes an RFC 5322 `.eml` file in `file_dir` (development).
    #[default]
    File,
    /// Each message goes to the SMTP relay of `[email.smtp]`.
    Smtp,
}

/// `auth.email_verification`: whether addresses are verified, and whether
/// login waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailVerification {
    /// No verification links; an email change applies at once.
    Off,
    /// Links are sent and an email change waits for its link; login does not.
    #[default]
    Optional,
    /// As `optional`, and login with an unverified address is refused.
    Required,
}

/// `email.smtp.tls`: how the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS; the upgrade is required.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Implicit,
    /// No encryption at all: only for a relay on a loopback address.
    None,
}

/// The `[email]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailSettings {
    /// `file` for development, `smtp` for real delivery.
    pub transport: TransportKind,
    /// Where the `file` transport writes its `.eml` files; created when missing.
    pub file_dir: PathBuf,
    /// The `From` of every message, as a mailbox (`Name <address>` or `address`);
    /// its domain also names the messages' `Message-ID`s.
    pub from: String,
    /// Base of the links in messages; empty means `server.public_url` (the
    /// front end fills it in), another value points links at your own pages.
    pub link_base: String,
    /// The relay the `smtp` transport delivers to.
    pub smtp: SmtpSettings,
    /// Delivery attempts before a message is given up.
    pub max_attempts: u32,
    /// (Gatehouse's own) the first retry waits this long, each further one
    /// twice as long as the last, at most 15 minutes.
    pub first_retry_s: u64,
    /// Messages to one address per hour at most (notices are exempt).
    pub per_recipient_per_hour: u32,
}

impl Default for EmailSettings {
    fn default() -> Self {
        Self {
            transport: TransportKind::File,
            file_dir: PathBuf::from("mail"),
            from: "Gatehouse <no-reply@localhost>".into(),
            link_base: String::new(),
            smtp: SmtpSettings::default(),
            max_attempts: 8,
            first_retry_s: 30,
            per_recipient_per_hour: 5,
        }
    }
}

/// The `[email.smtp]` section: the relay and how to reach it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSettings {
    /// The relay's host name or address (the name its TLS certificate carries).
    pub host: String,
    /// The relay's port: 587 for STARTTLS submission, 465 for implicit TLS.
    pub port: u16,
    /// Login name at the relay; empty means no authentication.
    pub username: String,
    /// Password at the relay; `Debug` prints nothing of it.
    pub password: Option<SecretString>,
    /// A file holding the password instead (its trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// How the connection is protected.
    pub tls: SmtpTls,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 587,
            username: String::new(),
            password: None,
            password_file: None,
            tls: SmtpTls::Starttls,
        }
    }
}

/// Whether `host` is a loopback address in the contract's sense:
/// 127.0.0.0/8, `::1` or `localhost` (in any case).
pub fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => ip.is_loopback(),
        Err(_) => false,
    }
}

impl EmailSettings {
    /// Whether mail would cross a network unencrypted: `tls = "none"` to a
    /// relay off this machine (production refuses it).
    pub fn unencrypted_off_host(&self) -> bool {
        self.transport == TransportKind::Smtp
            && self.smtp.tls == SmtpTls::None
            && !is_loopback_host(self.smtp.host.trim())
    }

    /// The `from` mailbox, parsed.
    pub fn from_mailbox(&self) -> Result<Mailbox, String> {
        self.from.parse::<Mailbox>().map_err(|e| e.to_string())
    }

    /// Every problem with this section, one line each, in words an operator
    /// can act on; empty when it is fine. Says nothing of the password.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = self.from_mailbox() {
            problems.push(format!(
                "email.from must be a mailbox such as `Gatehouse <no-reply@example.com>` ({e})"
            ));
        }
        if self.transport == TransportKind::File && self.file_dir.as_os_str().is_empty() {
            problems.push("email.file_dir must not be empty".into());
        }
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS_LIMIT {
            problems.push(format!(
                "email.max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}"
            ));
        }
        if !(1..=MAX_RETRY_S).contains(&self.first_retry_s) {
            problems.push(format!(
                "email.first_retry_s must be between 1 and {MAX_RETRY_S}"
            ));
        }
        if self.per_recipient_per_hour == 0 {
            problems.push(
                "email.per_recipient_per_hour must be at least 1 (0 would send no link at all)"
                    .into(),
            );
        }
        let smtp = &self.smtp;
        if smtp.host.trim().is_empty() {
            problems.push("email.smtp.host must not be empty".into());
        }
        if smtp.port == 0 {
            problems.push("email.smtp.port must be between 1 and 65535".into());
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_contracts_and_valid() {
        let s = EmailSettings::default();
        assert_eq!(s.transport, TransportKind::File);
        assert_eq!(s.file_dir, PathBuf::from("mail"));
        assert_eq!(s.from, "Gatehouse <no-reply@localhost>");
        assert_eq!(s.link_base, "");
        assert_eq!(s.max_attempts, 8);
        assert_eq!(s.per_recipient_per_hour, 5);
        assert_eq!(s.smtp.host, "localhost");
        assert_eq!(s.smtp.port, 587);
        assert_eq!(s.smtp.username, "");
        assert!(s.smtp.password.is_none() && s.smtp.password_file.is_none());
        assert_eq!(s.smtp.tls, SmtpTls::Starttls);
        assert_eq!(s.validate(), Vec::<String>::new());
        let from = s.from_mailbox().unwrap();
        assert_eq!(from.name.as_deref(), Some("Gatehouse"));
        assert_eq!(from.email.to_string(), "no-reply@localhost");
    }

    #[test]
    fn the_section_deserializes_with_lowercase_names_and_refuses_unknown_keys() {
        let s: EmailSettings = serde_json::from_value(serde_json::json!({
            "transport": "smtp",
            "from": "no-reply@example.com",
            "smtp": {"host": "smtp.example.com", "port": 465, "tls": "implicit",
                     "username": "gatehouse", "password": "hunter2-but-longer"}
        }))
        .unwrap();
        assert_eq!(s.transport, TransportKind::Smtp);
        assert_eq!(s.smtp.tls, SmtpTls::Implicit);
        assert_eq!(s.smtp.port, 465);
        assert_eq!(s.max_attempts, 8, "unset keys keep their defaults");
        assert!(s.validate().is_empty(), "{:?}", s.validate());
        assert!(
            !format!("{s:?}").contains("hunter2"),
            "Debug never prints the password"
        );
        for tls in ["starttls", "implicit", "none"] {
            let smtp: SmtpSettings =
                serde_json::from_value(serde_json::json!({ "tls": tls })).unwrap();
            assert_eq!(format!("{:?}", smtp.tls).to_lowercase(), tls);
        }
        assert!(
            serde_json::from_value::<EmailSettings>(serde_json::json!({"transprt": "file"}))
                .is_err()
        );
        assert!(
            serde_json::from_value::<EmailSettings>(serde_json::json!({"transport": "File"}))
                .is_err()
        );
        assert!(serde_json::from_value::<SmtpSettings>(serde_json::json!({"tls": "ssl"})).is_err());
    }

    #[test]
    fn loopback_hosts_are_the_contracts() {
        for host in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.1.2.3",
            "127.255.255.255",
            "::1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "128.0.0.1",
            "10.0.0.1",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
            "smtp.example.com",
            "localhost.example.com",
            "mylocalhost",
            "[::1]",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    /// One edit of the default settings.
    type Change = fn(&mut EmailSettings);

    fn problems_with(change: Change) -> Vec<String> {
        let mut s = EmailSettings::default();
        change(&mut s);
        s.validate()
    }

    #[test]
    fn each_broken_rule_is_one_line_naming_its_key() {
        let cases: [(&str, Change); 9] = [
            ("email.from", |s| s.from = "not a mailbox".into()),
            ("email.from", |s| s.from = String::new()),
            ("email.from", |s| s.from = "Gatehouse <no-reply@>".into()),
            ("email.max_attempts", |s| s.max_attempts = 0),
            ("email.max_attempts", |s| s.max_attempts = 101),
            ("email.per_recipient_per_hour", |s| {
                s.per_recipient_per_hour = 0
            }),
            ("email.smtp.port", |s| s.smtp.port = 0),
            ("email.smtp.host", |s| s.smtp.host = " ".into()),
            ("email.file_dir", |s| s.file_dir = PathBuf::new()),
        ];
        for (key, change) in cases {
            let problems = problems_with(change);
            assert_eq!(problems.len(), 1, "{key}: {problems:?}");
            assert!(problems[0].starts_with(key), "{key}: {problems:?}");
            assert!(!problems[0].contains('\n'), "{problems:?}");
        }
    }

    #[test]
    fn only_tls_none_to_another_host_is_unencrypted_off_host() {
        let mut s = EmailSettings {
            transport: TransportKind::Smtp,
            ..EmailSettings::default()
        };
        assert!(!s.unencrypted_off_host());
        s.smtp.tls = SmtpTls::None;
        for (host, off) in [
            ("127.0.0.1", false),
            ("localhost", false),
            ("mailpit", true),
        ] {
            s.smtp.host = host.into();
            assert_eq!(s.unencrypted_off_host(), off, "{host}");
        }
        s.transport = TransportKind::File;
        assert!(!s.unencrypted_off_host());
    }

    #[test]
    fn what_is_allowed_passes() {
        for change in [
            (|s: &mut EmailSettings| s.max_attempts = 1) as Change,
            |s| s.max_attempts = 100,
            |s| {
                s.smtp.tls = SmtpTls::None;
                s.smtp.host = "127.0.0.1".into();
                s.smtp.port = 2525;
            },
            |s| {
                s.smtp.tls = SmtpTls::None;
                s.smtp.host = "::1".into();
            },
            |s| s.from = "no-reply@example.com".into(),
            |s| s.from = "\"Gatehouse, the service\" <no-reply@example.com>".into(),
            // An SMTP transport does not need a file directory.
            |s| {
                s.transport = TransportKind::Smtp;
                s.file_dir = PathBuf::new();
            },
        ] {
            assert_eq!(problems_with(change), Vec::<String>::new());
        }
    }

    #[test]
    fn several_problems_are_all_listed() {
        let problems = problems_with(|s: &mut EmailSettings| {
            s.from = "nope".into();
            s.max_attempts = 0;
            s.smtp.port = 0;
        });
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
