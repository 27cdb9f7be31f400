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

/// Whether a request says it carries no body: no `Content-Type`, and no
/// length or a length of zero (and not chunked).
pub fn absent<B>(req: &hyper::Request<B>) -> bool {
    let headers = req.headers();
    headers.get(CONTENT_TYPE).is_none()
        && headers.get(hyper::header::TRANSFER_ENCODING).is_none()
        && headers
            .get(hyper::header::CONTENT_LENGTH)
            .is_none_or(|len| len.as_bytes() == b"0")
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
/// them when `Content-Length` already says so. The caller bounds the time.
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

/// The body of a request whose media type the pipeline checked, decoded as
/// what it came as: a form, or JSON.
pub fn decode<T: DeserializeOwned>(req: &hyper::Request<Bytes>) -> Result<T, ApiError> {
    if media_type(req.headers()).as_deref() == Some(FORM) {
        form(req.body())
    } else {
        json(req.body())
    }
}

/// Decodes a JSON body. What is wrong with it is said without repeating any
/// of it: no submitted value and no type of ours appears in the message.
pub fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    use serde_json::error::Category;
    if bytes.is_empty() {
        return Err(ApiError::Malformed("a JSON object is required".into()));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let decoded = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| (field_of(e.path()), e.into_inner()))
        .and_then(|value| de.end().map(|()| value).map_err(|e| (None, e)));
    decoded.map_err(|(field, e)| {
        ApiError::Malformed(match e.classify() {
            Category::Syntax => format!(
                "the body is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
            Category::Eof => "the body ends before its JSON does".into(),
            Category::Data | Category::Io => match field {
                Some(field) => format!("field `{field}` has the wrong type or appears twice"),
                None => "the body must be a JSON object of the documented fields".into(),
            },
        })
    })
}

/// The field a decoding error is about, when it is one of ours: a plain
/// name of the kind our request bodies use (anything else stays unnamed).
fn field_of(path: &serde_path_to_error::Path) -> Option<String> {
    let field = path.to_string();
    let plain = !field.is_empty()
        && field.len() <= 32
        && field.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    plain.then_some(field)
}

/// Decodes an `application/x-www-form-urlencoded` body, as strictly as JSON
/// and with messages as discreet.
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
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(bytes));
    serde_path_to_error::deserialize(de).map_err(|e| {
        ApiError::Malformed(match field_of(e.path()) {
            Some(field) => format!("field `{field}` has the wrong type or appears twice"),
            None => "the form must hold the documented fields, each once".into(),
        })
    })
}

/// 422 naming each absent field; `fields` pairs a name with whether it is absent.
/// Both fields of a body, or the 422 that names whichever is missing.
pub fn both<A, B>(
    (a, a_name): (Option<A>, &'static str),
    (b, b_name): (Option<B>, &'static str),
) -> Result<(A, B), ApiError> {
    match (a, b) {
        (Some(a), Some(b)) => Ok((a, b)),
        (a, b) => Err(missing(&[(a_name, a.is_none()), (b_name, b.is_none())])),
    }
}

pub fn missing(fields: &[(&'static str, bool)]) -> ApiError {
    let problems = fields
        .iter()
        .filter(|(_, absent)| *absent)
        .map(|(name, _)| FieldError::new(name, "is required"))
        .collect();
    Error::Validation(problems).into()
}
