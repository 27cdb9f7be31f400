//! Sessions: who a bearer token speaks for, and the caller's own sessions
//! (listing them, ending one, all, or the current one).

use tracing::Level;

use super::Database;
use crate::audit::{self, Event};
use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::model::{Principal, Revoke, Session};
use crate::token_issuer::Tokens;

/// A session as its owner sees it in the list.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub session: Session,
    /// The session making this request.
    pub current: bool,
}

#[derive(Clone)]
pub struct Sessions {
    pub db: Database,
    pub tokens: Tokens,
    pub clock: SharedClock,
}

impl Sessions {
    /// Checks a bearer token and that its session is still active.
    pub async fn authenticate(&self, token: &str) -> Result<Principal> {
        let now = self.clock.now_ms();
        let claims = self.tokens.verify(token, now.div_euclid(1000))?;
        // A cache hit needs no database, so it passes even an open breaker.
        let session = match self.db.repo.cached_session(&claims.sid, now) {
            Some(session) => session,
            None => self
                .db
                .call(self.db.repo.active_session(&claims.sid, now))
                .await?
                .ok_or(Error::SessionRevoked)?,
        };
        if session.user_id != claims.sub {
            return Err(Error::InvalidToken);
        }
        // Bookkeeping only: the request does not wait for it.
        self.db.repo.touch(&claims.sid, now);
        Ok(Principal {
            user_id: claims.sub,
            session_id: claims.sid,
            fresh_since: None,
        })
    }

    /// Revokes sessions of the caller; `Ok(false)` when none matched.
    async fn revoke(&self, who: &Principal, scope: Revoke, reason: &'static str) -> Result<bool> {
        let now = self.clock.now_ms();
        let session = match &scope {
            Revoke::Session(id) => id.as_str(),
            Revoke::All | Revoke::AllBut(_) => "*",
        };
        let events = vec![
            Event::new("session.revoked", now)
                .user(&who.user_id)
                .detail("session_id", session)
                .detail("reason", reason),
        ];
        let changes = self
            .db
            .call(
                self.db
                    .repo
                    .revoke(who.clone(), scope.clone(), now, events.clone()),
            )
            .await?;
        if !changes.is_empty() {
            audit::log_all(&events, Level::INFO, "session revoked");
        }
        Ok(!changes.is_empty())
    }

    /// Ends the calling session.
    pub async fn logout(&self, who: &Principal) -> Result<()> {
        self.revoke(who, Revoke::Session(who.session_id.clone()), "logout")
            .await
            .map(drop)
    }

    /// Ends every session of the caller.
    pub async fn logout_all(&self, who: &Principal) -> Result<()> {
        self.revoke(who, Revoke::All, "logout_all").await.map(drop)
    }

    /// Ends one of the caller's sessions; `NotFound` for anyone else's.
    pub async fn revoke_session(&self, who: &Principal, session_id: &str) -> Result<()> {
        let scope = Revoke::Session(session_id.to_owned());
        match self.revoke(who, scope, "deleted").await? {
            true => Ok(()),
            false => Err(Error::NotFound),
        }
    }

    /// The caller's active sessions, the calling one marked `current`.
    pub async fn list(&self, who: &Principal) -> Result<Vec<SessionInfo>> {
        let now = self.clock.now_ms();
        let sessions = self
            .db
            .call(self.db.repo.sessions(who.user_id.clone(), now))
            .await?;
        Ok(sessions
            .into_iter()
            .map(|session| SessionInfo {
                current: session.id == who.session_id,
                session,
            })
            .collect())
    }
}
