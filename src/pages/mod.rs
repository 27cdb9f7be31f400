//! The pages email links open when a team does not serve its own
//! (`email.link_base` left to this service): plain HTML forms, no script,
//! one stylesheet, readable on a phone. A page answers HTML whatever
//! happens, with a status that says how it went.

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_SECURITY_POLICY, HeaderValue, RETRY_AFTER};
use minijinja::Environment;
use serde::Serialize;

use crate::http::{HttpResponse, respond};

/// The policy every page is sent with (the contract's).
pub const PAGE_CSP: &str =
    "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'";

/// The pages' one stylesheet.
pub const STYLESHEET: &str = include_str!("pages.css");

/// What the page shows besides its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    /// Nothing to fill in: the result of what was asked.
    None,
    /// A button that confirms an address.
    Verify,
    /// A new-password field.
    Reset,
}

/// One page's content.
pub struct Page<'a> {
    pub status: StatusCode,
    pub title: &'a str,
    pub message: &'a str,
    /// Said as an alert above the form (a refused password).
    pub problem: Option<&'a str>,
    pub form: Form,
    /// The link's token, carried by the form.
    pub token: &'a str,
}

/// The rendered template and what it shows of the configuration.
pub struct Pages {
    env: Environment<'static>,
    product: String,
    min_length: usize,
    max_length: usize,
}

#[derive(Serialize)]
struct View<'a> {
    product: &'a str,
    title: &'a str,
    message: &'a str,
    problem: Option<&'a str>,
    form: Form,
    token: &'a str,
    min_length: usize,
    max_length: usize,
}

impl Pages {
    pub fn new(product: String, min_length: usize, max_length: usize) -> Result<Self, String> {
        let mut env = Environment::new();
        env.add_template("page.html", include_str!("page.html"))
            .map_err(|e| format!("the page template does not parse: {e}"))?;
        Ok(Self {
            env,
            product,
            min_length,
            max_length,
        })
    }

    /// What a page says when the request failed before (or outside) what
    /// the page itself explains: `failed`'s status and its `Retry-After` and
    /// `Allow`, in words instead of the API's JSON envelope.
    pub fn failure(&self, failed: &HttpResponse) -> HttpResponse {
        let status = failed.status();
        let (title, message) = match status {
            StatusCode::TOO_MANY_REQUESTS => (
                "Too many attempts",
                "Please wait a while, then open the link from your email again.",
            ),
            s if s.is_server_error() => (
                "Something went wrong",
                "We could not finish this just now. Please try again in a minute.",
            ),
            _ => (
                "This page cannot do that",
                "Open the link from your email again, and use the form on its page.",
            ),
        };
        let mut response = self.render(&Page {
            status,
            title,
            message,
            problem: None,
            form: Form::None,
            token: "",
        });
        for name in [RETRY_AFTER, ALLOW] {
            if let Some(value) = failed.headers().get(&name) {
                response.headers_mut().insert(name, value.clone());
            }
        }
        response
    }

    /// `page` as an HTML response (auto-escaped: nothing typed can become markup).
    pub fn render(&self, page: &Page<'_>) -> HttpResponse {
        let view = View {
            product: &self.product,
            title: page.title,
            message: page.message,
            problem: page.problem,
            form: page.form,
            token: page.token,
            min_length: self.min_length,
            max_length: self.max_length,
        };
        let rendered = self
            .env
            .get_template("page.html")
            .and_then(|t| t.render(&view));
        let (status, body) = match rendered {
            Ok(html) => (page.status, html),
            Err(e) => {
                tracing::error!(error = %e, "a page did not render");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "<!doctype html><title>Error</title><p>Something went wrong. Try again later.</p>"
                        .to_owned(),
                )
            }
        };
        let mut response = respond(status, "text/html; charset=utf-8", Bytes::from(body));
        let headers = response.headers_mut();
        headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
        // A page may carry a token: never kept by a cache.
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}
