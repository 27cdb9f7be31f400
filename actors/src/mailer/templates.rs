//! The messages Gatehouse sends, rendered from the templates shipped in
//! `actors/templates/email/` (embedded at compile time): for each
//! [`MailKind`], `<kind>.subject.txt`, `<kind>.txt` and `<kind>.html`, the last
//! two extending `layout.txt` / `layout.html`.
//!
//! The HTML templates are auto-escaped (minijinja escapes by the `.html`
//! extension), the text ones are not. Nothing but the link carries a secret,
//! and [`Context`]'s and [`Rendered`]'s `Debug` print neither the link nor
//! the bodies. Sending lives in [`super::transport`].

use std::sync::LazyLock;

use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a message is for; its [`name`](Self::name) labels metrics and names
/// its templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MailKind {
    /// A link that confirms an address (at registration, or a pending change).
    VerifyAddress,
    /// A link that sets a new password.
    ResetPassword,
    /// Notice: the password was changed or reset.
    PasswordChanged,
    /// Notice to the old address: a change to another address was asked for.
    EmailChangeRequested,
    /// Notice: the second factor was turned off (by the user or an admin).
    MfaDisabled,
}

impl MailKind {
    /// Every kind, in a fixed order.
    pub const ALL: [MailKind; 5] = [
        Self::VerifyAddress,
        Self::ResetPassword,
        Self::PasswordChanged,
        Self::EmailChangeRequested,
        Self::MfaDisabled,
    ];

    /// The snake_case label (metrics, the outbox, template names).
    pub fn name(self) -> &'static str {
        match self {
            Self::VerifyAddress => "verify_address",
            Self::ResetPassword => "reset_password",
            Self::PasswordChanged => "password_changed",
            Self::EmailChangeRequested => "email_change_requested",
            Self::MfaDisabled => "mfa_disabled",
        }
    }

    /// The kind whose [`name`](Self::name) is `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// Notices tell of a change already made; they are exempt from the
    /// per-recipient cap, so that a flood of them cannot hide one.
    pub fn is_notice(self) -> bool {
        matches!(
            self,
            Self::PasswordChanged | Self::EmailChangeRequested | Self::MfaDisabled
        )
    }

    /// Whether the message is pointless without a link (the notices may
    /// carry one, but need not).
    pub fn needs_link(self) -> bool {
        !self.is_notice()
    }
}

/// What the templates are filled with.
#[derive(Clone, Serialize)]
pub struct Context {
    /// The product's name as users know it (e.g. "Gatehouse").
    pub product: String,
    /// Whom the message greets; escaped in the HTML part.
    pub username: String,
    /// The link to act on (it holds a single-use token): required for
    /// [`MailKind::VerifyAddress`] and [`MailKind::ResetPassword`], optional
    /// in notices (where to reset the password). Only `http(s)://` links.
    pub link: Option<String>,
    /// How long the link works, in words ([`human_duration`]).
    pub expires_in: Option<String>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("product", &self.product)
            .field("username", &self.username)
            .field("link", &self.link.as_ref().map(|_| "[REDACTED]"))
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// A message ready to send: one subject line and the two bodies of a
/// multipart/alternative message.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendered {
    /// One line, never empty.
    pub subject: String,
    /// The text/plain part.
    pub text: String,
    /// The text/html part.
    pub html: String,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bodies hold the link, and with it a token.
        f.debug_struct("Rendered")
            .field("subject", &self.subject)
            .field("text_bytes", &self.text.len())
            .field("html_bytes", &self.html.len())
            .finish()
    }
}

/// The templates, by the name `extends` and [`render`] use.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "layout.txt",
        include_str!("../../templates/email/layout.txt"),
    ),
    (
        "layout.html",
        include_str!("../../templates/email/layout.html"),
    ),
    (
        "verify_address.subject.txt",
        include_str!("../../templates/email/verify_address.subject.txt"),
    ),
    (
        "verify_address.txt",
        include_str!("../../templates/email/verify_address.txt"),
    ),
    (
        "verify_address.html",
        include_str!("../../templates/email/verify_address.html"),
    ),
    (
        "reset_password.subject.txt",
        include_str!("../../templates/email/reset_password.subject.txt"),
    ),
    (
        "reset_password.txt",
        include_str!("../../templates/email/reset_password.txt"),
    ),
    (
        "reset_password.html",
        include_str!("../../templates/email/reset_password.html"),
    ),
    (
        "password_changed.subject.txt",
        include_str!("../../templates/email/password_changed.subject.txt"),
    ),
    (
        "password_changed.txt",
        include_str!("../../templates/email/password_changed.txt"),
    ),
    (
        "password_changed.html",
        include_str!("../../templates/email/password_changed.html"),
    ),
    (
        "email_change_requested.subject.txt",
        include_str!("../../templates/email/email_change_requested.subject.txt"),
    ),
    (
        "email_change_requested.txt",
        include_str!("../../templates/email/email_change_requested.txt"),
    ),
    (
        "email_change_requested.html",
        include_str!("../../templates/email/email_change_requested.html"),
    ),
    (
        "mfa_disabled.subject.txt",
        include_str!("../../templates/email/mfa_disabled.subject.txt"),
    ),
    (
        "mfa_disabled.txt",
        include_str!("../../templates/email/mfa_disabled.txt"),
    ),
    (
        "mfa_disabled.html",
        include_str!("../../templates/email/mfa_disabled.html"),
    ),
];

/// The templates, compiled once; an error (a broken template) is kept and
/// reported by every [`render`], and caught by the tests.
static TEMPLATE_ENV: LazyLock<std::result::Result<Environment<'static>, String>> =
    LazyLock::new(|| {
        let mut env = Environment::new();
        // A misspelt variable is an error, not an empty string.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Block tags on lines of their own leave no blank lines behind.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .map_err(|e| format!("email template {name}: {e}"))?;
        }
        Ok(env)
    });

/// What every template sees: the context plus the rendered subject (the
/// HTML `<title>`).
#[derive(Serialize)]
struct View<'a> {
    product: &'a str,
    username: &'a str,
    link: Option<&'a str>,
    expires_in: Option<&'a str>,
    subject: &'a str,
}

/// The message of `kind` for `ctx`.
pub fn render(kind: MailKind, ctx: &Context) -> Result<Rendered> {
    let env = TEMPLATE_ENV
        .as_ref()
        .map_err(|e| Error::Internal(e.clone()))?;
    match &ctx.link {
        None if kind.needs_link() => {
            return Err(Error::Internal(format!(
                "a {} message needs a link",
                kind.name()
            )));
        }
        Some(link) if !(link.starts_with("https://") || link.starts_with("http://")) => {
            return Err(Error::Internal(format!(
                "the link of a {} message is not an http(s) URL",
                kind.name()
            )));
        }
        _ => {}
    }
    let mut view = View {
        product: &ctx.product,
        username: &ctx.username,
        link: ctx.link.as_deref(),
        expires_in: ctx.expires_in.as_deref(),
        subject: "",
    };
    let fill = |part: &str, view: &View<'_>| -> Result<String> {
        let name = format!("{}.{part}", kind.name());
        env.get_template(&name)
            .and_then(|template| template.render(view))
            .map_err(|e| Error::Internal(format!("rendering email template {name}: {e}")))
    };
    let subject = fill("subject.txt", &view)?.trim().to_owned();
    if subject.is_empty() || subject.contains(['\r', '\n']) {
        return Err(Error::Internal(format!(
            "the subject of a {} message is not one line",
            kind.name()
        )));
    }
    view.subject = &subject;
    let text = fill("txt", &view)?;
    let html = fill("html", &view)?;
    Ok(Rendered {
        text: format!("{}\n", text.trim()),
        html: format!("{}\n", html.trim()),
        subject,
    })
}

/// `secs` in words, at most two units, rounded down (a link never lasts
/// less than it says): "1 hour", "24 hours", "1 hour and 30 minutes",
/// "2 days", "45 seconds". Hours up to 48, so a day-long link reads "24 hours".
pub fn human_duration(secs: u64) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    fn unit(n: u64, one: &str) -> String {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {one}s")
        }
    }
    let (big, rest, big_name, small_name, small_size) = if secs < MINUTE {
        return unit(secs, "second");
    } else if secs < HOUR {
        (secs / MINUTE, 0, "minute", "", 1)
    } else if secs < 2 * DAY {
        (secs / HOUR, secs % HOUR, "hour", "minute", MINUTE)
    } else {
        (secs / DAY, secs % DAY, "day", "hour", HOUR)
    };
    let small = rest / small_size;
    if small == 0 {
        unit(big, big_name)
    } else {
        format!("{} and {}", unit(big, big_name), unit(small, small_name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINK: &str = "https://auth.example.com/verify-email?token=AbCdEf0123456789_-xyz&x=1";

    fn ctx(username: &str, link: Option<&str>) -> Context {
        Context {
            product: "Gatehouse".into(),
            username: username.into(),
            link: link.map(str::to_owned),
            expires_in: Some(human_duration(3600)),
        }
    }

    #[test]
    fn kinds_have_stable_names_that_parse_back() {
        let names: Vec<&str> = MailKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(
            names,
            [
                "verify_address",
                "reset_password",
                "password_changed",
                "email_change_requested",
                "mfa_disabled"
            ]
        );
        for kind in MailKind::ALL {
            assert_eq!(MailKind::parse(kind.name()), Some(kind));
        }
        assert_eq!(MailKind::parse("VerifyAddress"), None);
        assert_eq!(MailKind::parse(""), None);
        let notices: Vec<MailKind> = MailKind::ALL
            .into_iter()
            .filter(|k| k.is_notice())
            .collect();
        assert_eq!(
            notices,
            [
                MailKind::PasswordChanged,
                MailKind::EmailChangeRequested,
                MailKind::MfaDisabled
            ]
        );
    }

    #[test]
    fn every_kind_renders_with_its_link_in_both_parts() {
        let escaped_link = minijinja::HtmlEscape(LINK).to_string();
        for kind in MailKind::ALL {
            let r = render(kind, &ctx("alice", Some(LINK))).unwrap();
            assert!(r.text.contains(LINK), "{kind:?} text:\n{}", r.text);
            assert!(
                r.html.contains(&format!("href=\"{escaped_link}\"")),
                "{kind:?} html:\n{}",
                r.html
            );
            assert!(r.text.contains("alice") && r.html.contains("alice"));
            assert!(r.text.contains("Gatehouse") && r.html.contains("Gatehouse"));
            assert!(!r.text.contains("{{") && !r.text.contains("{%"), "{kind:?}");
            assert!(!r.html.contains("{{") && !r.html.contains("{%"), "{kind:?}");
            assert!(
                !r.text.contains("\n\n\n"),
                "{kind:?}: no runs of blank lines:\n{}",
                r.text
            );
        }
    }

    #[test]
    fn subjects_are_single_lines_people_understand() {
        let subjects: Vec<String> = MailKind::ALL
            .into_iter()
            .map(|kind| render(kind, &ctx("alice", Some(LINK))).unwrap().subject)
            .collect();
        for s in &subjects {
            assert!(!s.is_empty() && !s.contains(['\r', '\n']), "{s:?}");
            assert_eq!(s.trim(), s);
            assert!(s.contains("Gatehouse"), "{s}");
            assert!(s.len() < 78, "{s}");
        }
        assert_eq!(subjects[0], "Confirm your email address for Gatehouse");
        assert_eq!(subjects[1], "Reset your Gatehouse password");
        assert_eq!(subjects[2], "Your Gatehouse password was changed");
        let distinct: std::collections::HashSet<&String> = subjects.iter().collect();
        assert_eq!(distinct.len(), subjects.len());
    }

    #[test]
    fn usernames_are_escaped_in_html_and_kept_in_text() {
        for kind in MailKind::ALL {
            let r = render(kind, &ctx("<b>x</b>", Some(LINK))).unwrap();
            assert!(!r.html.contains("<b>x</b>"), "{kind:?}:\n{}", r.html);
            assert!(r.html.contains("&lt;b&gt;x&lt;"), "{kind:?}:\n{}", r.html);
            assert!(r.text.contains("<b>x</b>"), "{kind:?}");
        }
        let r = render(
            MailKind::PasswordChanged,
            &ctx("\" onclick=\"alert(1)", None),
        )
        .unwrap();
        assert!(!r.html.contains("\" onclick"), "{}", r.html);
    }

    #[test]
    fn the_html_is_self_contained() {
        for kind in MailKind::ALL {
            let html = render(kind, &ctx("alice", Some(LINK))).unwrap().html;
            let lower = html.to_lowercase();
            for banned in ["<script", "<img", "<link", "src=", "url(", "@import"] {
                assert!(!lower.contains(banned), "{kind:?} has {banned}");
            }
            assert!(lower.starts_with("<!doctype html>"));
            assert!(lower.contains("name=\"viewport\""), "readable on a phone");
            assert!(lower.contains("<title>"));
        }
    }

    #[test]
    fn notices_say_what_to_do_and_render_without_a_link() {
        for kind in MailKind::ALL.into_iter().filter(|k| k.is_notice()) {
            let r = render(kind, &ctx("alice", None)).unwrap();
            for body in [&r.text, &r.html] {
                let words = body
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase();
                assert!(
                    words.contains("if you did not") || words.contains("if not"),
                    "{kind:?}: {words}"
                );
                assert!(words.contains("reset your password"), "{kind:?}: {words}");
            }
            assert!(!r.text.contains("http"), "{kind:?}:\n{}", r.text);
            assert!(!r.html.contains("href="), "{kind:?}");
        }
    }

    #[test]
    fn expiry_appears_when_given() {
        let mut c = ctx("alice", Some(LINK));
        c.expires_in = Some(human_duration(86_400));
        for kind in [MailKind::VerifyAddress, MailKind::ResetPassword] {
            let r = render(kind, &c).unwrap();
            assert!(r.text.contains("expires in 24 hours"), "{}", r.text);
            assert!(r.html.contains("expires in 24 hours"));
        }
        c.expires_in = None;
        let r = render(MailKind::ResetPassword, &c).unwrap();
        assert!(!r.text.contains("expires"));
        assert!(r.text.contains("The link works once."));
    }

    #[test]
    fn links_are_required_where_needed_and_only_http() {
        for kind in [MailKind::VerifyAddress, MailKind::ResetPassword] {
            assert!(matches!(
                render(kind, &ctx("alice", None)),
                Err(Error::Internal(_))
            ));
        }
        for link in ["javascript:alert(1)", "ftp://x/y", "//x/y", ""] {
            assert!(
                render(MailKind::VerifyAddress, &ctx("alice", Some(link))).is_err(),
                "{link}"
            );
        }
        assert!(
            render(
                MailKind::VerifyAddress,
                &ctx("a", Some("http://127.0.0.1:8080/v"))
            )
            .is_ok()
        );
    }

    #[test]
    fn debug_prints_no_link() {
        let c = ctx("alice", Some(LINK));
        let r = render(MailKind::ResetPassword, &c).unwrap();
        for printed in [format!("{c:?}"), format!("{r:?}")] {
            assert!(!printed.contains("AbCdEf"), "{printed}");
        }
    }

    #[test]
    fn durations_read_as_people_say_them() {
        for (secs, words) in [
            (0, "0 seconds"),
            (1, "1 second"),
            (45, "45 seconds"),
            (60, "1 minute"),
            (119, "1 minute"),
            (900, "15 minutes"),
            (3_599, "59 minutes"),
            (3_600, "1 hour"),
            (3_659, "1 hour"),
            (5_400, "1 hour and 30 minutes"),
            (7_200, "2 hours"),
            (86_400, "24 hours"),
            (90_000, "25 hours"),
            (172_799, "47 hours and 59 minutes"),
            (172_800, "2 days"),
            (183_600, "2 days and 3 hours"),
            (604_800, "7 days"),
        ] {
            assert_eq!(human_duration(secs), words, "{secs}");
        }
    }
}
