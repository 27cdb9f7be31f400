//! `/verify-email` and `/reset-password`: what the links in the emails
//! open. A GET only shows a form (mail scanners open links too); the form's
//! POST does the work.

use gatehouse_actors::Error;
use gatehouse_actors::model::LinkPurpose;
use hyper::StatusCode;
use hyper::header::{CACHE_CONTROL, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::error::ApiError;
use crate::http::body;
use crate::http::{AppState, Ctx, HttpResponse, ReadRequest, empty, respond};
use crate::pages::{Form, Page, STYLESHEET};

/// What both forms post.
#[derive(Deserialize)]
struct Posted {
    token: Option<SecretString>,
    new_password: Option<SecretString>,
}

const LINK_UNUSABLE: &str = "This link has expired or was already used";

/// The link's `token` query parameter (the last one, if repeated).
fn query_token(req: &ReadRequest) -> Option<String> {
    form_urlencoded::parse(req.uri().query()?.as_bytes())
        .filter(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .last()
        .filter(|t| !t.is_empty())
}

fn result(state: &AppState, status: StatusCode, title: &str, message: &str) -> HttpResponse {
    state.pages.render(&Page {
        status,
        title,
        message,
        problem: None,
        form: Form::None,
        token: "",
    })
}

fn unusable(state: &AppState, again: &str) -> HttpResponse {
    result(state, StatusCode::BAD_REQUEST, LINK_UNUSABLE, again)
}

/// What a failure the page cannot explain looks like: the status the API
/// would give, in words.
fn trouble(state: &AppState, e: Error) -> HttpResponse {
    state
        .pages
        .failure(&empty(ApiError::from(e).parts().status))
}

fn posted(req: &ReadRequest) -> Option<Posted> {
    body::decode::<Posted>(req).ok()
}

const VERIFY_AGAIN: &str =
    "Log in and ask for a new verification email; each link works once and only for a while.";
const RESET_AGAIN: &str =
    "Ask for a new password-reset email; each link works once and only for a while.";

pub async fn verify_form(
    state: &AppState,
    req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let Some(token) = query_token(&req) else {
        return Ok(unusable(state, VERIFY_AGAIN));
    };
    let usable = state
        .gatehouse
        .recovery
        .link_usable(&token, LinkPurpose::Verify)
        .await;
    Ok(match usable {
        Ok(true) => state.pages.render(&Page {
            status: StatusCode::OK,
            title: "Confirm your email address",
            message: "Press the button to confirm that this address is yours.",
            problem: None,
            form: Form::Verify,
            token: &token,
        }),
        Ok(false) => unusable(state, VERIFY_AGAIN),
        Err(e) => trouble(state, e),
    })
}

pub async fn verify_submit(
    state: &AppState,
    req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let Some(token) = posted(&req).and_then(|p| p.token) else {
        return Ok(unusable(state, VERIFY_AGAIN));
    };
    Ok(
        match state
            .gatehouse
            .recovery
            .verify_email(token.expose_secret())
            .await
        {
            Ok(()) => result(
                state,
                StatusCode::OK,
                "Your email address is confirmed",
                "Thank you. You can close this page.",
            ),
            Err(Error::BadLink) => unusable(state, VERIFY_AGAIN),
            Err(e) => trouble(state, e),
        },
    )
}

pub async fn reset_form(
    state: &AppState,
    req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let Some(token) = query_token(&req) else {
        return Ok(unusable(state, RESET_AGAIN));
    };
    let usable = state
        .gatehouse
        .recovery
        .link_usable(&token, LinkPurpose::Reset)
        .await;
    Ok(match usable {
        Ok(true) => reset_page(state, StatusCode::OK, &token, None),
        Ok(false) => unusable(state, RESET_AGAIN),
        Err(e) => trouble(state, e),
    })
}

fn reset_page(
    state: &AppState,
    status: StatusCode,
    token: &str,
    problem: Option<&str>,
) -> HttpResponse {
    state.pages.render(&Page {
        status,
        title: "Choose a new password",
        message: "After this, every device logged in to your account is logged out.",
        problem,
        form: Form::Reset,
        token,
    })
}

pub async fn reset_submit(
    state: &AppState,
    req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let Some(Posted {
        token: Some(token),
        new_password,
    }) = posted(&req)
    else {
        return Ok(unusable(state, RESET_AGAIN));
    };
    let token = token.expose_secret();
    let Some(new_password) = new_password else {
        // Say what is wrong with the link before asking for what is missing.
        match state
            .gatehouse
            .recovery
            .link_usable(token, LinkPurpose::Reset)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Ok(unusable(state, RESET_AGAIN)),
            Err(e) => return Ok(trouble(state, e)),
        }
        return Ok(reset_page(
            state,
            StatusCode::BAD_REQUEST,
            token,
            Some("Type a new password."),
        ));
    };
    Ok(
        match state
            .gatehouse
            .recovery
            .reset_password(token, new_password)
            .await
        {
            Ok(()) => result(
                state,
                StatusCode::OK,
                "Your password is changed",
                "You can now log in with your new password. Every device that was logged in \
                 has been logged out.",
            ),
            Err(Error::BadLink) => unusable(state, RESET_AGAIN),
            Err(Error::Validation(problems)) => {
                let problem = problems
                    .first()
                    .map(|p| format!("That password cannot be used: it {}.", p.message));
                reset_page(state, StatusCode::BAD_REQUEST, token, problem.as_deref())
            }
            Err(e) => trouble(state, e),
        },
    )
}

pub async fn stylesheet(
    _state: &AppState,
    _req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let mut response = respond(StatusCode::OK, "text/css; charset=utf-8", STYLESHEET);
    response.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    Ok(response)
}
