//! Emails, usernames and login names: what is accepted, and the one form
//! each is stored and looked up in.
//!
//! Look-alike addresses must not become distinct accounts, so an email is
//! stored in one canonical form: Unicode NFC, lower-cased, with its domain in
//! IDNA ASCII (punycode). Addresses holding characters a reader cannot see
//! (controls, zero-width and bidi formatting characters, other default
//! ignorables) are refused, and so are quoted local parts, which let two
//! spellings name one mailbox.

use email_address::{EmailAddress, Options};
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::error::FieldError;

/// Longest email accepted, in bytes of its canonical form (RFC 5321's path limit).
pub const MAX_EMAIL_BYTES: usize = 254;

/// Longest login name worth looking up: no username or email is longer.
pub const MAX_LOGIN_CHARS: usize = 254;

/// The canonical form of an email address, or why it is refused.
pub fn normalize_email(raw: &str) -> Result<String, FieldError> {
    let invalid = || FieldError::new("email", "must be a valid email address");
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(FieldError::new("email", "is required"));
    }
    if raw.chars().any(invisible) {
        return Err(FieldError::new(
            "email",
            "must not contain invisible or control characters",
        ));
    }
    if raw.contains('"') {
        return Err(FieldError::new(
            "email",
            "quoted local parts are not accepted",
        ));
    }
    let (local, domain) = raw.rsplit_once('@').ok_or_else(invalid)?;
    let local: String = local
        .nfc()
        .collect::<String>()
        .to_lowercase()
        .nfc()
        .collect();
    let domain = idna::domain_to_ascii_strict(domain).map_err(|_| invalid())?;
    let email = format!("{local}@{domain}");
    let options = Options::default()
        .with_required_tld()
        .without_display_text()
        .without_domain_literal();
    if email.len() > MAX_EMAIL_BYTES || EmailAddress::parse_with_options(&email, options).is_err() {
        return Err(invalid());
    }
    Ok(email)
}

/// A character nobody sees in an address: controls, format characters
/// (zero-width, bidi controls, tags), separators, whitespace, and the other
/// default-ignorable code points that render as nothing.
fn invisible(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
            | GeneralCategory::SpaceSeparator
            | GeneralCategory::Unassigned
            | GeneralCategory::PrivateUse
            | GeneralCategory::Surrogate
    ) || c.is_whitespace()
        || matches!(c,
            '\u{034F}' // combining grapheme joiner
            | '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' // Hangul fillers
            | '\u{17B4}' | '\u{17B5}' // Khmer inherent vowels
            | '\u{180B}'..='\u{180F}' // Mongolian variation selectors
            | '\u{FE00}'..='\u{FE0F}' // variation selectors
            | '\u{E0100}'..='\u{E01EF}' // variation selectors supplement
        )
}

/// Why a username is refused, if it is.
pub fn username_problem(username: &str) -> Option<FieldError> {
    let valid_chars = username
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !(3..=32).contains(&username.len()) || !valid_chars {
        Some(FieldError::new(
            "username",
            "must be 3 to 32 characters of letters, digits, '_', '.' or '-'",
        ))
    } else {
        None
    }
}

/// A login name as looked up and throttled: an email in its canonical form
/// (so `café@bücher.example` finds what was registered under either
/// spelling), anything else trimmed and lower-cased.
pub fn normalize_login(login: &str) -> String {
    if login.contains('@')
        && let Ok(email) = normalize_email(login)
    {
        return email;
    }
    login.trim().to_lowercase()
}

/// A login name as it may appear in a log line: cut to a sane length.
pub fn loggable(login: &str) -> &str {
    login
        .char_indices()
        .nth(MAX_LOGIN_CHARS)
        .map_or(login, |(at, _)| &login[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["abc", "Alice_01", "a.b-c", &"x".repeat(32)] {
            assert!(username_problem(ok).is_none(), "{ok}");
        }
        for bad in [
            "ab",
            &"x".repeat(33),
            "has space",
            "émile",
            "semi;colon",
            "",
        ] {
            assert!(username_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn valid_emails_are_canonical() {
        for (raw, canonical) in [
            ("a@example.com", "a@example.com"),
            (
                " First.Last+Tag@Sub.Example.ORG ",
                "first.last+tag@sub.example.org",
            ),
            ("caf\u{e9}@example.com", "caf\u{e9}@example.com"),
            ("cafe\u{301}@example.com", "caf\u{e9}@example.com"),
            ("CAF\u{c9}@example.com", "caf\u{e9}@example.com"),
            ("user@b\u{fc}cher.example", "user@xn--bcher-kva.example"),
            ("user@B\u{dc}CHER.example", "user@xn--bcher-kva.example"),
            ("user@xn--bcher-kva.example", "user@xn--bcher-kva.example"),
        ] {
            assert_eq!(normalize_email(raw).as_deref(), Ok(canonical), "{raw:?}");
        }
    }

    #[test]
    fn invalid_and_invisible_emails_are_refused() {
        for bad in [
            "",
            "plain",
            "a@b",
            "Name <a@example.com>",
            "a@[127.0.0.1]",
            "@example.com",
            "\"john doe\"@example.com",
            "\"x\"@example.com",
            "ca\u{200b}fe@example.com",
            "ca\u{200d}fe@example.com",
            "cafe\u{202e}@example.com",
            "a\u{2066}b@example.com",
            "a\u{feff}@example.com",
            "a\u{ad}b@example.com",
            "a\u{7}b@example.com",
            "a b@example.com",
            "a@exa mple.com",
            "a@ex\u{200b}ample.com",
            "a\u{fe0f}@example.com",
            "a\u{e0041}@example.com",
            "a@exa_mple.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(normalize_email(&long).is_err());
    }

    #[test]
    fn logins_find_either_spelling() {
        assert_eq!(normalize_login(" Alice "), "alice");
        assert_eq!(
            normalize_login("USER@B\u{dc}cher.example"),
            "user@xn--bcher-kva.example"
        );
        assert_eq!(normalize_login("not@valid@"), "not@valid@");
    }
}
