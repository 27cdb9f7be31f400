//! `/api/v1/users/me*`: the caller's own account and sessions.

use gatehouse_actors::gatehouse::SessionInfo;
use gatehouse_actors::model::ProfileChange;
use hyper::StatusCode;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::authenticate;
use crate::error::ApiError;
use crate::http::body;
use crate::http::{AppState, HttpResponse, ReadRequest, empty, json};

pub async fn me(state: &AppState, req: &ReadRequest) -> Result<HttpResponse, ApiError> {
    let who = authenticate(state, req).await?;
    let user = state.gatehouse.me(&who).await?;
    json(StatusCode::OK, &user)
}

#[derive(Deserialize)]
struct ProfileBody {
    email: Option<String>,
    username: Option<String>,
}

pub async fn update(state: &AppState, req: &ReadRequest) -> Result<HttpResponse, ApiError> {
    let who = authenticate(state, req).await?;
    let ProfileBody { email, username } = body::decode(req)?;
    let user = state
        .gatehouse
        .update_profile(&who, ProfileChange { email, username })
        .await?;
    json(StatusCode::OK, &user)
}

#[derive(Deserialize)]
struct PasswordBody {
    current_password: Option<SecretString>,
    new_password: Option<SecretString>,
}

pub async fn change_password(
    state: &AppState,
    req: &ReadRequest,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(state, req).await?;
    let PasswordBody {
        current_password,
        new_password,
    } = body::decode(req)?;
    let (current, new) = match (current_password, new_password) {
        (Some(current), Some(new)) => (current, new),
        (current, new) => {
            return Err(body::missing(&[
                ("current_password", current.is_none()),
                ("new_password", new.is_none()),
            ]));
        }
    };
    state.gatehouse.change_password(&who, current, new).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub async fn deactivate(state: &AppState, req: &ReadRequest) -> Result<HttpResponse, ApiError> {
    let who = authenticate(state, req).await?;
    state.gatehouse.deactivate(&who).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

#[derive(Serialize)]
struct Sessions {
    sessions: Vec<SessionInfo>,
}

pub async fn sessions(state: &AppState, req: &ReadRequest) -> Result<HttpResponse, ApiError> {
    let who = authenticate(state, req).await?;
    let sessions = state.gatehouse.sessions(&who).await?;
    json(StatusCode::OK, &Sessions { sessions })
}

pub async fn delete_session(
    state: &AppState,
    req: &ReadRequest,
    id: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(state, req).await?;
    let id = id.ok_or(ApiError::NotFound)?;
    state.gatehouse.revoke_session(&who, &id).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}
