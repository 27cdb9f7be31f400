//! The commands besides serving: `gatehouse keys …`. They work on the
//! configured database while servers run (every instance sees a change
//! within a second), and print JSON lines on stdout.

use std::sync::Arc;

use gatehouse_actors::clock::{Clock, SystemClock};
use gatehouse_actors::sealing::Sealer;
use gatehouse_actors::token_issuer::keys;
use gatehouse_actors::token_issuer::log_changes;
use gatehouse_actors::token_issuer::ring::{KeyInfo, KeyOp, KeyState};
use gatehouse_actors::user_repo::{self, Store};
use serde::Serialize;

use crate::config::Loaded;

/// `gatehouse keys …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysCommand {
    /// One line per key.
    List,
    /// Publish a new next key (or, with `now`, make a key sign at once); prints the key.
    Rotate { now: bool },
    /// Remove a key from the ring; its tokens stop verifying.
    Revoke { kid: String },
}

/// Why a command failed: what to print, and the exit code.
pub struct Failed {
    pub message: String,
    pub code: u8,
}

fn failed(code: u8) -> impl Fn(gatehouse_actors::Error) -> Failed {
    move |e| Failed {
        message: e.to_string(),
        code,
    }
}

/// A key as the command (and the admin API) shows it: never key material.
#[derive(Serialize)]
pub struct KeyLine<'a> {
    pub kid: &'a str,
    pub alg: &'a str,
    pub state: &'static str,
    pub created_at: String,
    /// When a next key starts signing; null for the others.
    pub activates_at: Option<String>,
}

impl<'a> From<&'a KeyInfo> for KeyLine<'a> {
    fn from(k: &'a KeyInfo) -> Self {
        Self {
            kid: &k.kid,
            alg: &k.alg,
            state: k.state.name(),
            created_at: crate::http::rfc3339(k.created_at),
            activates_at: (k.state == KeyState::Next).then(|| crate::http::rfc3339(k.activates_at)),
        }
    }
}

/// Runs a `keys` command against the configured database; the lines to print.
pub async fn keys(loaded: &Loaded, command: KeysCommand) -> Result<Vec<String>, Failed> {
    let auth = &loaded.config.auth;
    let alg = auth.signing_algorithm;
    if !alg.stored() {
        return Err(Failed {
            message:
                "auth.signing_algorithm is HS256: it signs with auth.jwt_secret and keeps no keys"
                    .into(),
            code: 2,
        });
    }
    let store: Arc<dyn Store> = user_repo::open(&loaded.config.database)
        .await
        .map_err(failed(1))?;
    let line = |k: &KeyInfo| serde_json::to_string(&KeyLine::from(k)).unwrap_or_default();
    let ring = |store: Arc<dyn Store>| async move {
        let ring = store.key_ring().await.map_err(failed(1))?;
        Ok::<Vec<KeyInfo>, Failed>(ring.into_iter().map(|k| k.info).collect())
    };
    let op = match command {
        KeysCommand::List => {
            let lines = ring(Arc::clone(&store)).await?.iter().map(line).collect();
            let _ = store.close().await;
            return Ok(lines);
        }
        KeysCommand::Rotate { now } => KeyOp::Rotate { now },
        KeysCommand::Revoke { ref kid } => KeyOp::Revoke { kid: kid.clone() },
    };
    let sealer = Sealer::new(&loaded.key_encryption_secret, "signing-keys").map_err(failed(1))?;
    let fresh = keys::generate(alg, &sealer).map_err(failed(1))?;
    let now = SystemClock.now_ms();
    let changes = store
        .change_keys(op, auth.ring_policy(), fresh, now)
        .await
        .map_err(|e| match e {
            gatehouse_actors::Error::NotFound => Failed {
                message: "no such key".into(),
                code: 1,
            },
            other => failed(1)(other),
        })?;
    log_changes(&changes, "gatehouse keys");
    let after = ring(Arc::clone(&store)).await?;
    let _ = store.close().await;
    let shown = match command {
        KeysCommand::Rotate { now: true } => after.iter().find(|k| k.state == KeyState::Active),
        KeysCommand::Rotate { now: false } => after.iter().find(|k| k.state == KeyState::Next),
        KeysCommand::List | KeysCommand::Revoke { .. } => None,
    };
    Ok(shown.map(line).into_iter().collect())
}
