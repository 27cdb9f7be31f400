//! `/api/v1/auth/*`: registration, login, refresh, logout.

use gatehouse_actors::{LoginRequest, Registration, Tokens};
use hyper::StatusCode;
use hyper::header::USER_AGENT;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::authenticate;
use crate::error::ApiError;
use crate::http::body;
use crate::http::{AppState, Ctx, HttpResponse, ReadRequest, empty, json};

/// Longest `User-Agent` kept with a session.
const MAX_USER_AGENT: usize = 512;

#[derive(Deserialize)]
struct RegisterBody {
    email: Option<String>,
    username: Option<String>,
    password: Option<SecretString>,
}

pub async fn register(state: &AppState, req: &ReadRequest) -> Result<HttpResponse, ApiError> {
    let RegisterBody {
        email,
        username,
        password,
    } = body::decode(req)?;
    let (email, username, password) = match (email, username, password) {
        (Some(email), Some(username), Some(password)) => (email, username, password),
        (email, username, password) => {
            return Err(body::missing(&[
                ("email", email.is_none()),
                ("username", username.is_none()),
                ("password", password.is_none()),
            ]));
        }
    };
    let user = state
        .gatehouse
        .register(Registration {
            email,
            username,
            password,
        })
        .await?;
    json(StatusCode::CREATED, &user)
}

/// The login body, as JSON or as an OAuth2 password-grant form.
#[derive(Deserialize)]
struct LoginBody {
    username: Option<String>,
    password: Option<SecretString>,
    grant_type: Option<String>,
}

pub async fn login(
    state: &AppState,
    req: &ReadRequest,
    ctx: &Ctx,
) -> Result<HttpResponse, ApiError> {
    let LoginBody {
        username,
        password,
        grant_type,
    } = body::decode(req)?;
    if grant_type.as_deref().is_some_and(|g| g != "password") {
        return Err(
            gatehouse_actors::Error::validation("grant_type", "must be \"password\"").into(),
        );
    }
    let (login, password) = match (username, password) {
        (Some(login), Some(password)) => (login, password),
        (login, password) => {
            return Err(body::missing(&[
                ("username", login.is_none()),
                ("password", password.is_none()),
            ]));
        }
    };
    let user_agent = req
        .headers()
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(MAX_USER_AGENT).collect());
    let tokens = state
        .gatehouse
        .login(LoginRequest {
            login,
            password,
            ip: ctx.client,
            user_agent,
        })
        .await?;
    json(StatusCode::OK, &TokenBody::from(&tokens))
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: Option<SecretString>,
}

pub async fn refresh(state: &AppState, req: &ReadRequest) -> Result<HttpResponse, ApiError> {
    let RefreshBody { refresh_token } = body::decode(req)?;
    let Some(refresh_token) = refresh_token else {
        return Err(body::missing(&[("refresh_token", true)]));
    };
    let tokens = state
        .gatehouse
        .refresh(refresh_token.expose_secret())
        .await?;
    json(StatusCode::OK, &TokenBody::from(&tokens))
}

pub async fn logout(state: &AppState, req: &ReadRequest) -> Result<HttpResponse, ApiError> {
    let who = authenticate(state, req).await?;
    state.gatehouse.logout(&who).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub async fn logout_all(state: &AppState, req: &ReadRequest) -> Result<HttpResponse, ApiError> {
    let who = authenticate(state, req).await?;
    state.gatehouse.logout_all(&who).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// The contract's token response.
#[derive(Serialize)]
pub struct TokenBody<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
    refresh_token: &'a str,
}

impl<'a> From<&'a Tokens> for TokenBody<'a> {
    fn from(t: &'a Tokens) -> Self {
        Self {
            access_token: t.access_token.expose_secret(),
            token_type: "bearer",
            expires_in: t.expires_in,
            refresh_token: t.refresh_token.expose_secret(),
        }
    }
}
