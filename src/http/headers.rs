//! Headers every response carries: request id, security headers, CORS, rate limits.

use std::collections::HashSet;

use gatehouse_actors::RateLimitInfo;
use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The caller's request id if it is 1–128 characters of `[A-Za-z0-9._-]`, else a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            (1..=128).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// What the response headers depend on, besides the response itself.
pub struct Policy {
    pub hsts: bool,
    pub cors_origins: HashSet<String>,
}

const EXPOSED: &str =
    "X-Request-ID, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset";
pub const ALLOWED_REQUEST_HEADERS: &str = "Authorization, Content-Type, X-Request-ID";

impl Policy {
    /// The request's `Origin`, if it is one of ours.
    pub fn allowed_origin<'h>(&self, headers: &'h HeaderMap) -> Option<&'h HeaderValue> {
        headers
            .get(hyper::header::ORIGIN)
            .filter(|o| o.to_str().is_ok_and(|o| self.cors_origins.contains(o)))
    }

    /// Adds the headers every response gets.
    pub fn apply(
        &self,
        headers: &mut HeaderMap,
        request_id: &str,
        origin: Option<HeaderValue>,
        api: bool,
        rate: Option<RateLimitInfo>,
    ) {
        use hyper::header as h;
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert(REQUEST_ID, id);
        }
        headers.insert(
            h::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(h::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(h::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        // A page sets its own policy (it needs its stylesheet and its form).
        headers
            .entry(h::CONTENT_SECURITY_POLICY)
            .or_insert(HeaderValue::from_static(
                "default-src 'none'; frame-ancestors 'none'",
            ));
        if api {
            headers.insert(h::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        if self.hsts {
            headers.insert(
                h::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000; includeSubDomains"),
            );
        }
        if let Some(origin) = origin {
            headers.insert(h::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                h::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSED),
            );
            headers.append(h::VARY, HeaderValue::from_static("Origin"));
        }
        if let Some(rate) = rate {
            headers.insert("ratelimit-limit", rate.limit.into());
            headers.insert("ratelimit-remaining", rate.remaining.into());
            headers.insert("ratelimit-reset", rate.reset_s.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_safe() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(REQUEST_ID, HeaderValue::from_str(v).unwrap());
            request_id(&h)
        };
        assert_eq!(with("abc-123_X.y"), "abc-123_X.y");
        assert_ne!(with("has space"), "has space");
        assert_ne!(with(&"a".repeat(129)), "a".repeat(129));
        assert_eq!(with(&"a".repeat(128)), "a".repeat(128));
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }
}
