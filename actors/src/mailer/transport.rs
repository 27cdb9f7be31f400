//! Delivering one rendered message: building it (lettre's builder: From, To,
//! Subject, Date, a `Message-ID` derived from the outbox row, and a
//! multipart/alternative body with the text and HTML parts) and handing it
//! to the configured transport.
//!
//! * `file` writes `<file_dir>/<id>.eml` (RFC 5322) atomically: a temporary
//!   file, synced, then renamed. lettre's own file transport names files
//!   with a random UUID and writes them in place, so a retry would leave a
//!   second copy and a reader could see half a message.
//! * `smtp` is lettre's `AsyncSmtpTransport` on tokio with rustls, one
//!   connection per message (the volume is small, and a fresh connection
//!   makes every failure the relay's answer to this message).
//!
//! Retries, back-off, the breaker and the outbox are the mailer actor's;
//! this module only says whether a failure is worth retrying
//! ([`SendError::permanent`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncWriteExt as _;

use super::settings::{EmailSettings, SmtpTls, TransportKind};
use super::templates::Rendered;
use crate::error::{Error, Result};

/// How long one step of an SMTP conversation (connect, each command) may take.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a whole SMTP delivery may take, however the relay dribbles.
pub const SEND_DEADLINE: Duration = Duration::from_secs(60);

/// The longest outbox id accepted (it becomes a file name and a Message-ID).
const MAX_ID_LEN: usize = 128;

/// The longest [`SendError::detail`] kept.
const MAX_DETAIL_LEN: usize = 400;

/// RFC 3834: an automatic message, so that auto-responders stay quiet.
const AUTO_SUBMITTED: HeaderName = HeaderName::new_from_ascii_str("Auto-Submitted");

/// One message to deliver.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The outbox row's id, the same on every attempt: it names the
    /// `Message-ID` (`<id@domain of from>`, so a receiver can drop a
    /// duplicate) and the `file` transport's file. Letters, digits, `-`, `_`
    /// and inner dots only.
    pub id: String,
    /// The recipient's address.
    pub to: String,
    /// Subject and bodies (`Debug` prints neither body).
    pub rendered: Rendered,
}

/// Why a message was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct SendError {
    /// Retrying cannot help (the relay will not take the recipient, or it
    /// is not an address); otherwise the failure may pass (connection
    /// refused, timeout, 4xx, a 5xx about the relay's setup, a full disk).
    pub permanent: bool,
    /// What happened, safe to log: no credentials, no message content.
    pub detail: String,
}

impl SendError {
    fn fatal(detail: impl Into<String>) -> Self {
        Self {
            permanent: true,
            detail: log_safe(&detail.into()),
        }
    }

    fn retryable(detail: impl Into<String>) -> Self {
        Self {
            permanent: false,
            detail: log_safe(&detail.into()),
        }
    }
}

/// Delivers messages the way `[email]` says.
pub enum Transport {
    /// `.eml` files in a directory.
    File(FileDrop),
    /// An SMTP relay.
    Smtp(SmtpRelay),
}

/// The `file` transport: `<dir>/<id>.eml` per message.
pub struct FileDrop {
    dir: PathBuf,
    from: Mailbox,
}

/// The `smtp` transport.
pub struct SmtpRelay {
    relay: AsyncSmtpTransport<Tokio1Executor>,
    /// `host:port`, for error details.
    server: String,
    from: Mailbox,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(t) => f.debug_struct("File").field("dir", &t.dir).finish(),
            Self::Smtp(t) => f
                .debug_struct("Smtp")
                .field("server", &t.server)
                .finish_non_exhaustive(),
        }
    }
}

impl Transport {
    /// The transport `settings` describe, with the relay's password (read by
    /// the config loader from `email.smtp.password` or `.password_file`).
    /// Creates the `file` transport's directory. Refuses what
    /// [`EmailSettings::validate`] refuses, and a username without a password.
    pub fn new(settings: &EmailSettings, smtp_password: Option<SecretString>) -> Result<Self> {
        let from = settings
            .from_mailbox()
            .map_err(|e| Error::Internal(format!("email.from is not a mailbox: {e}")))?;
        match settings.transport {
            TransportKind::File => {
                let dir = settings.file_dir.clone();
                std::fs::create_dir_all(&dir).map_err(|e| {
                    Error::Internal(format!(
                        "cannot create email.file_dir {}: {e}",
                        dir.display()
                    ))
                })?;
                Ok(Self::File(FileDrop { dir, from }))
            }
            TransportKind::Smtp => {
                let smtp = &settings.smtp;
                let host = smtp.host.trim();
                if host.is_empty() || smtp.port == 0 {
                    return Err(Error::Internal(
                        "email.smtp.host and email.smtp.port must be set".into(),
                    ));
                }
                let tls_error = |e: lettre::transport::smtp::Error| {
                    Error::Internal(format!("cannot set up TLS for the SMTP relay {host}: {e}"))
                };
                let builder = match smtp.tls {
                    SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                        .map_err(tls_error)?,
                    SmtpTls::Implicit => {
                        AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(tls_error)?
                    }
                    // Production refuses this off a loopback host (the config
                    // loader's rule); a development relay in a container may need it.
                    SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
                };
                let mut builder = builder.port(smtp.port).timeout(Some(SMTP_TIMEOUT));
                if !smtp.username.is_empty() {
                    let password = smtp_password.ok_or_else(|| {
                        Error::Internal(
                            "email.smtp.username is set but no password \
                             (email.smtp.password or email.smtp.password_file)"
                                .into(),
                        )
                    })?;
                    builder = builder.credentials(Credentials::new(
                        smtp.username.clone(),
                        password.expose_secret().to_owned(),
                    ));
                }
                Ok(Self::Smtp(SmtpRelay {
                    relay: builder.build(),
                    server: format!("{host}:{}", smtp.port),
                    from,
                }))
            }
        }
    }

    /// Which kind of transport this is.
    pub fn kind(&self) -> TransportKind {
        match self {
            Self::File(_) => TransportKind::File,
            Self::Smtp(_) => TransportKind::Smtp,
        }
    }

    /// Delivers `m` once. `Ok` means the relay accepted it (or the file is in
    /// place); sending the same `m` again makes a message with the same
    /// `Message-ID` (and, for `file`, replaces the same file).
    pub async fn send(&self, m: &Outbound) -> Result<(), SendError> {
        match self {
            Self::File(t) => {
                let message = build(&t.from, m)?;
                write_atomically(&t.dir, &m.id, &message.formatted()).await
            }
            Self::Smtp(t) => {
                let message = build(&t.from, m)?;
                match tokio::time::timeout(SEND_DEADLINE, t.relay.send(message)).await {
                    Ok(Ok(_response)) => Ok(()),
                    Ok(Err(e)) => Err(SendError {
                        permanent: refused_for_good(&e),
                        detail: log_safe(&format!("SMTP relay {}: {e}", t.server)),
                    }),
                    Err(_elapsed) => Err(SendError::retryable(format!(
                        "SMTP relay {}: no answer within {}s",
                        t.server,
                        SEND_DEADLINE.as_secs()
                    ))),
                }
            }
        }
    }
}

/// Whether the relay refused the message for good: it will not take the
/// recipient (550, 551, 553). Any other refusal, a 5xx too (a wrong login,
/// TLS required, a policy block), is about the relay or its setup, and
/// worth trying again once that is mended.
fn refused_for_good(e: &lettre::transport::smtp::Error) -> bool {
    e.is_permanent()
        && e.status()
            .is_some_and(|code| matches!(code.to_string().as_str(), "550" | "551" | "553"))
}

/// `m` as a message from `from`.
fn build(from: &Mailbox, m: &Outbound) -> Result<Message, SendError> {
    if !valid_id(&m.id) {
        return Err(SendError::fatal(
            "the outbox id is not usable as a Message-ID",
        ));
    }
    let to: Mailbox =
        m.to.parse()
            .map_err(|_| SendError::fatal("the recipient is not an email address"))?;
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(m.rendered.subject.clone())
        .message_id(Some(format!("<{}@{}>", m.id, from.email.domain())))
        .raw_header(HeaderValue::new(AUTO_SUBMITTED, "auto-generated".into()))
        .multipart(MultiPart::alternative_plain_html(
            m.rendered.text.clone(),
            m.rendered.html.clone(),
        ))
        .map_err(|e| SendError::fatal(format!("the message cannot be built: {e}")))
}

/// Whether `id` is safe as a file name and as the left part of a
/// Message-ID (an RFC 5322 dot-atom).
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && !id.ends_with('.')
        && !id.contains("..")
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Writes `bytes` to `<dir>/<id>.eml` so that a reader sees all of it or
/// nothing: a hidden temporary file of its own, synced, then renamed.
async fn write_atomically(dir: &Path, id: &str, bytes: &[u8]) -> Result<(), SendError> {
    let target = dir.join(format!("{id}.eml"));
    let temp = dir.join(format!(".{id}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = async {
        let mut file = tokio::fs::File::create(&temp).await?;
        file.write_all(bytes).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&temp, &target).await
    }
    .await;
    if let Err(e) = written {
        // Best effort: a leftover hidden file is harmless, only untidy.
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(SendError::retryable(format!(
            "cannot write {}: {e}",
            target.display()
        )));
    }
    Ok(())
}

/// `detail` on one line, without control characters, at most
/// [`MAX_DETAIL_LEN`] characters.
fn log_safe(detail: &str) -> String {
    let mut out: String = detail
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_DETAIL_LEN)
        .collect();
    if detail.chars().count() > MAX_DETAIL_LEN {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailer::templates::{Context, MailKind, render};
    use mail_parser::{MessageParser, PartType};

    const LINK: &str = "https://auth.example.com/reset-password?token=Zm9vYmFyYmF6cXV1eA_the-token";

    fn settings(dir: &Path) -> EmailSettings {
        EmailSettings {
            file_dir: dir.join("mail"),
            from: "Gatehouse <no-reply@gatehouse.example>".into(),
            ..EmailSettings::default()
        }
    }

    fn outbound(id: &str, to: &str) -> Outbound {
        outbound_of(MailKind::ResetPassword, id, to)
    }

    fn outbound_of(kind: MailKind, id: &str, to: &str) -> Outbound {
        let rendered = render(
            kind,
            &Context {
                product: "Gatehouse".into(),
                username: "<b>zoë</b>".into(),
                link: Some(LINK.into()),
                expires_in: Some("1 hour".into()),
            },
        )
        .unwrap();
        Outbound {
            id: id.into(),
            to: to.into(),
            rendered,
        }
    }

    #[tokio::test]
    async fn the_file_transport_writes_a_message_that_parses() {
        let tmp = tempfile::tempdir().unwrap();
        let s = settings(tmp.path());
        let transport = Transport::new(&s, None).unwrap();
        assert_eq!(transport.kind(), TransportKind::File);
        assert!(s.file_dir.is_dir(), "the directory is made on new");

        let id = "0190b5d2-7c1e-7a4e-9d7b-3f1c2a9e8b11";
        let m = outbound(id, "Zoë <zoe@example.com>");
        transport.send(&m).await.unwrap();

        let names: Vec<String> = std::fs::read_dir(&s.file_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [format!("{id}.eml")], "no temporary file is left");
        let raw = std::fs::read(s.file_dir.join(format!("{id}.eml"))).unwrap();
        let parsed = MessageParser::default().parse(&raw[..]).unwrap();
        assert_eq!(parsed.subject(), Some("Reset your Gatehouse password"));
        assert_eq!(
            parsed
                .to()
                .and_then(|a| a.first())
                .and_then(|a| a.address()),
            Some("zoe@example.com")
        );
        let from = parsed.from().and_then(|a| a.first()).unwrap();
        assert_eq!(from.address(), Some("no-reply@gatehouse.example"));
        assert_eq!(from.name(), Some("Gatehouse"));
        assert_eq!(
            parsed.message_id(),
            Some(format!("{id}@gatehouse.example").as_str())
        );
        assert!(parsed.date().is_some(), "a Date header");
        assert_eq!(
            parsed.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-generated")
        );
        let text = match parsed.text_part(0).map(|p| &p.body) {
            Some(PartType::Text(text)) => text.to_string(),
            other => panic!("no text part: {other:?}"),
        };
        let html = match parsed.html_part(0).map(|p| &p.body) {
            Some(PartType::Html(html)) => html.to_string(),
            other => panic!("no html part: {other:?}"),
        };
        assert_eq!(text.replace("\r\n", "\n").trim(), m.rendered.text.trim());
        assert!(text.contains(LINK));
        assert!(html.contains(&minijinja::HtmlEscape(LINK).to_string()));
        assert!(html.contains("&lt;b&gt;zoë&lt;"), "escaped, and UTF-8 kept");
        assert!(
            String::from_utf8_lossy(&raw)
                .to_lowercase()
                .contains("multipart/alternative")
        );

        // A retry replaces the same file: still one message for the row.
        transport.send(&m).await.unwrap();
        assert_eq!(std::fs::read_dir(&s.file_dir).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn bad_recipients_and_ids_are_permanent_failures() {
        let tmp = tempfile::tempdir().unwrap();
        let transport = Transport::new(&settings(tmp.path()), None).unwrap();
        for (id, to) in [
            ("ok-id", "not an address"),
            ("ok-id", ""),
            ("../escape", "a@example.com"),
            ("", "a@example.com"),
            ("a b", "a@example.com"),
            (".hidden", "a@example.com"),
            ("x@y", "a@example.com"),
        ] {
            let e = transport.send(&outbound(id, to)).await.unwrap_err();
            assert!(e.permanent, "{id:?} {to:?}: {e:?}");
            assert!(!e.detail.contains("token"), "{e:?}");
        }
        assert_eq!(
            std::fs::read_dir(tmp.path().join("mail")).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn an_unwritable_directory_is_a_transient_failure() {
        let tmp = tempfile::tempdir().unwrap();
        let s = settings(tmp.path());
        let transport = Transport::new(&s, None).unwrap();
        std::fs::remove_dir(&s.file_dir).unwrap();
        let e = transport
            .send(&outbound("row-1", "a@example.com"))
            .await
            .unwrap_err();
        assert!(!e.permanent, "{e:?}");
    }

    #[tokio::test]
    async fn smtp_settings_are_checked_when_the_transport_is_made() {
        let mut s = EmailSettings {
            transport: TransportKind::Smtp,
            ..EmailSettings::default()
        };
        s.smtp.tls = SmtpTls::None;
        s.smtp.host = String::new();
        assert!(matches!(Transport::new(&s, None), Err(Error::Internal(_))));
        s.smtp.host = "127.0.0.1".into();
        s.smtp.port = 2525;
        let t = Transport::new(&s, None).unwrap();
        assert_eq!(t.kind(), TransportKind::Smtp);
        assert!(format!("{t:?}").contains("127.0.0.1:2525"));

        s.smtp.username = "gatehouse".into();
        assert!(
            Transport::new(&s, None).is_err(),
            "a username needs a password"
        );
        let t = Transport::new(&s, Some(SecretString::from("relay-secret-123"))).unwrap();
        assert!(!format!("{t:?}").contains("relay-secret"));

        for tls in [SmtpTls::Starttls, SmtpTls::Implicit] {
            s.smtp.tls = tls;
            s.smtp.host = "smtp.example.com".into();
            assert!(Transport::new(&s, Some("x".into())).is_ok(), "{tls:?}");
        }
        s.from = "nope".into();
        assert!(Transport::new(&s, None).is_err());
    }

    #[tokio::test]
    async fn a_refused_connection_is_transient() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut s = EmailSettings {
            transport: TransportKind::Smtp,
            ..EmailSettings::default()
        };
        s.smtp.tls = SmtpTls::None;
        s.smtp.host = "127.0.0.1".into();
        s.smtp.port = port;
        let t = Transport::new(&s, None).unwrap();
        let e = t
            .send(&outbound("row-2", "a@example.com"))
            .await
            .unwrap_err();
        assert!(!e.permanent, "{e:?}");
        assert!(e.detail.contains(&format!("127.0.0.1:{port}")), "{e:?}");
    }

    #[test]
    fn details_are_one_bounded_line() {
        assert_eq!(log_safe("a\r\nb\tc"), "a  b c");
        let long = "x".repeat(1000);
        assert_eq!(log_safe(&long).chars().count(), MAX_DETAIL_LEN + 1);
        assert!(valid_id("0190b5d2-7c1e-7a4e-9d7b-3f1c2a9e8b11"));
        assert!(valid_id("a.b_c"));
        assert!(!valid_id("a..b") && !valid_id("a.") && !valid_id(&"a".repeat(129)));
    }

    /// Against a real SMTP server (the testkit's sink: aiosmtpd on loopback).
    #[tokio::test]
    async fn messages_reach_a_real_smtp_server_and_a_down_relay_is_transient() {
        gatehouse_testkit::require_smtp_sink!();
        let wait = Duration::from_secs(15);
        let mut sink = gatehouse_testkit::SmtpSink::start();
        let mut s = EmailSettings {
            transport: TransportKind::Smtp,
            from: "Gatehouse <no-reply@gatehouse.example>".into(),
            ..EmailSettings::default()
        };
        s.smtp.host = "127.0.0.1".into();
        s.smtp.port = sink.port();
        s.smtp.tls = SmtpTls::None;
        let relay = Transport::new(&s, None).unwrap();

        let id = "0190b5d2-0001-7000-8000-000000000001";
        relay
            .send(&outbound_of(MailKind::VerifyAddress, id, "zoe@example.com"))
            .await
            .unwrap();
        relay
            .send(&outbound_of(
                MailKind::MfaDisabled,
                "row-2",
                "Zoë <zoe@example.com>",
            ))
            .await
            .unwrap();
        let mails = sink.wait_for_async(2, wait).await;
        let got = &mails[0];
        assert_eq!(got.subject, "Confirm your email address for Gatehouse");
        assert_eq!(got.envelope_from, "no-reply@gatehouse.example");
        assert_eq!(got.envelope_to, ["zoe@example.com"]);
        assert_eq!(got.from, "Gatehouse <no-reply@gatehouse.example>");
        assert_eq!(
            got.header("Message-ID"),
            Some(format!("<{id}@gatehouse.example>"))
        );
        assert!(got.text.as_deref().unwrap_or_default().contains(LINK));
        let html = got.html.as_deref().unwrap_or_default();
        assert!(html.contains("&lt;b&gt;zoë&lt;"), "the username is escaped");
        assert_eq!(
            mails[1].subject,
            "Two-step verification was turned off for your Gatehouse account"
        );
        assert_eq!(mails[1].to, "Zoë <zoe@example.com>");

        // The relay is down: refused connections are worth retrying, and
        // nothing of the message is in the error.
        sink.stop();
        let later = outbound("row-3", "zoe@example.com");
        let err = relay.send(&later).await.unwrap_err();
        assert!(!err.permanent, "{err:?}");
        assert!(!err.detail.contains("token"), "{err:?}");
        // Back up: the same transport delivers again.
        sink.restart();
        relay.send(&later).await.unwrap();
        let mails = sink.wait_for_async(3, wait).await;
        assert_eq!(mails[2].subject, "Reset your Gatehouse password");

        // A recipient the relay will not take is refused for good; a refusal
        // by policy (a 5xx too) is worth trying again.
        let for_good = relay
            .send(&outbound("row-4", "refuse-550@example.com"))
            .await
            .unwrap_err();
        assert!(for_good.permanent, "{for_good:?}");
        let policy = relay
            .send(&outbound("row-5", "refuse-554@example.com"))
            .await
            .unwrap_err();
        assert!(!policy.permanent, "{policy:?}");
    }
}
