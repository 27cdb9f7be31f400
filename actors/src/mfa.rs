//! The second factor's arithmetic: TOTP per RFC 6238 as authenticator apps
//! support it (SHA-1, 6 digits, 30 s steps, one step of skew) through
//! `totp-rs`, with replay refused by remembering the last accepted step, and
//! recovery codes, stored as digests like every other token. Nothing here
//! reads a clock: the time is an argument.

use totp_rs::{Algorithm, Builder, Secret, Totp};

use crate::error::{Error, Result};
use crate::token_issuer::token_digest;

/// Bytes of a TOTP secret: 160 bits, as RFC 4226 recommends.
pub const SECRET_BYTES: usize = 20;

/// Recovery codes handed out at once.
pub const RECOVERY_CODES: usize = 10;

/// Characters of a recovery code (without its dash): 50 bits each.
const RECOVERY_CHARS: usize = 10;

/// What a recovery code is written with: 32 characters (so each random
/// byte maps without bias), without the i, l, o and 1 people misread.
const RECOVERY_ALPHABET: &[u8; 32] = b"abcdefghjkmnpqrstuvwxyz023456789";

/// One user's TOTP key.
pub struct TotpKey {
    totp: Totp,
}

impl TotpKey {
    /// A fresh random secret.
    pub fn generate() -> Result<Vec<u8>> {
        let mut secret = vec![0u8; SECRET_BYTES];
        getrandom::fill(&mut secret).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
        Ok(secret)
    }

    /// The key of `secret`, labelled `issuer:account` in authenticator apps.
    pub fn new(secret: &[u8], issuer: &str, account: &str) -> Result<Self> {
        // A colon separates issuer and account in the label: none may hold one.
        let clean = |s: &str| s.replace(':', " ");
        let totp = Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(6)
            .with_skew(1)
            .with_step_duration(30)
            .with_secret(Secret::from(secret))
            .with_issuer(Some(clean(issuer)))
            .with_account_name(clean(account))
            .build()
            .map_err(|e| Error::Internal(format!("building the TOTP key: {e}")))?;
        Ok(Self { totp })
    }

    /// The secret as apps want it typed: base32, no padding.
    pub fn base32(&self) -> String {
        self.totp.secret().to_base32()
    }

    /// The `otpauth://totp/…` URI an app scans.
    pub fn uri(&self) -> Result<String> {
        self.totp
            .to_url()
            .map_err(|e| Error::Internal(format!("the otpauth URI: {e}")))
    }

    /// The step `code` is valid for at `now_s` (± one step), if it is valid
    /// and later than `last_step` (the last one accepted): a code is
    /// accepted once, and nor is an earlier one after it.
    pub fn accept(&self, code: &str, now_s: u64, last_step: Option<u64>) -> Option<u64> {
        let code = code.trim();
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.totp
            .check(code, now_s)
            .filter(|step| last_step.is_none_or(|last| *step > last))
    }

    /// The code at `now_s`.
    #[cfg(test)]
    fn code_at(&self, now_s: u64) -> String {
        self.totp.generate(now_s).to_string()
    }
}

/// Fresh recovery codes (shown once) and the digests stored for them.
pub fn recovery_codes() -> Result<Vec<(String, String)>> {
    let mut codes = Vec::with_capacity(RECOVERY_CODES);
    for _ in 0..RECOVERY_CODES {
        let mut raw = [0u8; RECOVERY_CHARS];
        getrandom::fill(&mut raw).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
        let chars: String = raw
            .iter()
            .map(|b| char::from(RECOVERY_ALPHABET[usize::from(b % 32)]))
            .collect();
        let code = format!("{}-{}", &chars[..5], &chars[5..]);
        let digest = recovery_digest(&code);
        codes.push((code, digest));
    }
    Ok(codes)
}

/// What is stored for a recovery code, however it was typed (case, spaces,
/// the dash).
pub fn recovery_digest(typed: &str) -> String {
    let normal: String = typed
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    token_digest(&normal)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B's SHA-1 secret.
    const RFC_SECRET: &[u8] = b"12345678901234567890";

    #[test]
    fn codes_are_rfc_6238_sha1_six_digits() {
        let key = TotpKey::new(RFC_SECRET, "Gatehouse", "ada@example.com").unwrap();
        // Appendix B: 94287082 at T = 59 and 07081804 at T = 1111111109;
        // six digits are the last six.
        assert_eq!(key.code_at(59), "287082");
        assert_eq!(key.code_at(1_111_111_109), "081804");
    }

    #[test]
    fn a_code_works_one_step_either_side_and_only_once() {
        let key = TotpKey::new(RFC_SECRET, "Gatehouse", "ada").unwrap();
        let now = 1_000_000_020;
        let code = key.code_at(now);
        let step = key.accept(&code, now, None).expect("valid now");
        assert_eq!(key.accept(&code, now + 30, None), Some(step), "next step");
        assert_eq!(key.accept(&code, now - 30, None), Some(step), "step before");
        assert_eq!(key.accept(&code, now + 60, None), None, "two steps later");
        assert_eq!(key.accept(&code, now, Some(step)), None, "replayed");
        let earlier = key.code_at(now - 30);
        assert_eq!(
            key.accept(&earlier, now, Some(step)),
            None,
            "older than the last"
        );
        for bad in ["", "12345", "1234567", "abcdef", " 12 345"] {
            assert_eq!(key.accept(bad, now, None), None, "{bad:?}");
        }
    }

    #[test]
    fn the_uri_names_issuer_account_and_the_parameters_apps_support() {
        let secret = TotpKey::generate().unwrap();
        assert_eq!(secret.len(), SECRET_BYTES);
        let key = TotpKey::new(&secret, "Acme: Auth", "ada@example.com").unwrap();
        let uri = key.uri().unwrap();
        assert!(
            uri.starts_with("otpauth://totp/Acme%20%20Auth:ada%40example.com?"),
            "{uri}"
        );
        assert!(uri.contains(&format!("secret={}", key.base32())), "{uri}");
        assert!(uri.contains("issuer=Acme"), "{uri}");
        assert_eq!(
            Secret::try_from_base32(key.base32()).unwrap().as_ref(),
            &secret[..]
        );
    }

    #[test]
    fn recovery_codes_are_ten_distinct_and_match_however_typed() {
        let codes = recovery_codes().unwrap();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let distinct: std::collections::BTreeSet<_> = codes.iter().map(|(c, _)| c).collect();
        assert_eq!(distinct.len(), RECOVERY_CODES);
        let (code, digest) = &codes[0];
        assert_eq!(code.len(), 11);
        assert_eq!(&recovery_digest(code), digest);
        assert_eq!(
            &recovery_digest(&code.to_uppercase().replace('-', " ")),
            digest
        );
        assert_ne!(&recovery_digest("zzzzz-zzzzz"), digest);
    }
}
