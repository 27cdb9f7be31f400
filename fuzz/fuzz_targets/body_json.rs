//! Fuzzes `gatehouse::http::body::json` as `serde_json::Value` and as a
//! login/register-shaped body. Oracle: it never panics, whatever the bytes.
#![no_main]

use gatehouse::error::ApiError;
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Body {
    email: Option<String>,
    username: Option<String>,
    password: Option<SecretString>,
    grant_type: Option<String>,
}

fuzz_target!(|data: &[u8]| {
    let _: Result<serde_json::Value, ApiError> = gatehouse::http::body::json(data);
    let _: Result<Body, ApiError> = gatehouse::http::body::json(data);
});
