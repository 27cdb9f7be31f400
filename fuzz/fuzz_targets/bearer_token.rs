//! Fuzzes `Verifier::verify` on arbitrary UTF-8 (and on the same bytes
//! reshaped into `a.b.c` base64url segments) and `gatehouse::http::guard::bearer`
//! on an `Authorization` header made of the raw bytes. Oracle: nothing panics.
#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_actors::token_issuer::{AuthSettings, Verifier, hs256};
use hyper::HeaderMap;
use hyper::header::{AUTHORIZATION, HeaderValue};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

const NOW: i64 = 1_800_000_000;

static KEYS: LazyLock<Verifier> = LazyLock::new(|| {
    match hs256(
        &SecretString::from("k".repeat(32)),
        &AuthSettings::default(),
    ) {
        Ok((_, verifier)) => verifier,
        Err(e) => panic!("hs256() refused a 32-byte key: {e}"),
    }
});

/// Base64url (no padding) of `bytes`, so that every input also reaches the
/// JWT parser past its segment and alphabet checks.
fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fuzz_target!(|data: &[u8]| {
    let keys = &*KEYS;

    if let Ok(token) = std::str::from_utf8(data) {
        let _ = keys.verify(token, NOW);
    }

    // `a.b.c`: the input split on its first two NUL bytes (or in thirds),
    // each part base64url-encoded: header JSON, claims JSON, signature.
    let mut parts = data.splitn(3, |&b| b == 0);
    let (h, c, s) = match (parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(c), Some(s)) => (h, c, s),
        _ => {
            let third = data.len() / 3;
            (&data[..third], &data[third..2 * third], &data[2 * third..])
        }
    };
    let token = format!("{}.{}.{}", b64url(h), b64url(c), b64url(s));
    let _ = keys.verify(&token, NOW);

    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value);
        if let Ok(token) = gatehouse::http::guard::bearer(&headers) {
            let _ = keys.verify(token, NOW);
        }
    }
});
