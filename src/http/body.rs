//! Request bodies: media type, size limit, JSON and form decoding.
//!
//! Request structs keep every field optional, so a missing field is a 422 with
//! a `fields` entry, while wrong types, duplicate keys, invalid UTF-8 and
//! anything that is not JSON are a 400 (serde rejects duplicate fields).

use bytes::Bytes;
use gatehouse_actors::{Error, FieldError};
use http_body_util::{BodyExt, Limited};
use hyper::HeaderMap;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub const JSON: &str = "application/json";
pub const FORM: &str = "application/x-www-form-urlencoded";

/// The essence of `Content-Type` (`application/json; charset=utf-8` → `application/json`).
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next()?.trim().to_ascii_lowercase();
    Some(essence)
}

/// Refuses a body whose media type is not one of `accepted` (415).
pub fn expect_media_type(
    headers: &HeaderMap,
    accepted: &[&'static str],
) -> Result<&'static str, ApiError> {
    let found = media_type(headers);
    accepted
        .iter()
        .find(|m| found.as_deref() == Some(**m))
        .copied()
        .ok_or(ApiError::UnsupportedMediaType(
            accepted.first().copied().unwrap_or(JSON),
        ))
}

/// Reads the whole body, refusing more than `limit` bytes (413) before reading
/// them when `Content-Length` already says so.
pub async fn read(
    mut body: Incoming,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        drain(body, declared).await;
        return Err(ApiError::TooLarge(limit));
    }
    match Limited::new(&mut body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            drain(body, declared).await;
            Err(ApiError::TooLarge(limit))
        }
        Err(_) => Err(ApiError::Malformed(
            "the request body could not be read".into(),
        )),
    }
}

/// Reads and drops what is left of a refused body, when it is small enough,
/// so that the client gets to read our 413 instead of a reset connection.
/// Anything larger or slower is cut off with the connection.
async fn drain(body: Incoming, declared: Option<u64>) {
    const DRAIN_AT_MOST: usize = 1 << 20;
    if declared.is_some_and(|n| n > DRAIN_AT_MOST as u64) {
        return;
    }
    let rest = Limited::new(body, DRAIN_AT_MOST).collect();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), rest).await;
}

/// The body of a route that accepts the `accepted` media types, checked
/// before reading it, with the one it came as.
pub async fn read_request(
    state: &crate::http::AppState,
    req: hyper::Request<Incoming>,
    accepted: &[&'static str],
) -> Result<(&'static str, hyper::http::request::Parts, Bytes), ApiError> {
    let media = expect_media_type(req.headers(), accepted)?;
    let (parts, incoming) = req.into_parts();
    let bytes = read(incoming, &parts.headers, state.max_body_bytes).await?;
    Ok((media, parts, bytes))
}

/// The body of a JSON-only route, decoded.
pub async fn json_request<T: DeserializeOwned>(
    state: &crate::http::AppState,
    req: hyper::Request<Incoming>,
) -> Result<T, ApiError> {
    let (_, _, bytes) = read_request(state, req, &[JSON]).await?;
    json(&bytes)
}

pub fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::Malformed("a JSON object is required".into()));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::Malformed(e.to_string()))
}

pub fn form<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde_urlencoded replaces invalid UTF-8 silently; a form must be as strict as JSON.
    let decodes = bytes.split(|b| *b == b'&').all(|pair| {
        let pair: Vec<u8> = pair
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        percent_encoding::percent_decode(&pair)
            .decode_utf8()
            .is_ok()
    });
    if !decodes {
        return Err(ApiError::Malformed("the form is not valid UTF-8".into()));
    }
    serde_urlencoded::from_bytes(bytes).map_err(|e| ApiError::Malformed(e.to_string()))
}

/// 422 naming each absent field; `fields` pairs a name with whether it is absent.
pub fn missing(fields: &[(&'static str, bool)]) -> ApiError {
    let problems = fields
        .iter()
        .filter(|(_, absent)| *absent)
        .map(|(name, _)| FieldError::new(name, "is required"))
        .collect();
    Error::Validation(problems).into()
}
